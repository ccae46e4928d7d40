"""Build registered objectives, backbones, datasets and executors by name, with clear errors."""

from __future__ import annotations

import inspect
from typing import Any

from harness.errors import OptionError
from harness.objective import Combination, Objective
from harness.registry import check_options, lookup


def _check_options(kind: str, name: str, cls: type, options: dict[str, Any]) -> None:
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) and kind != "dataset":
        return
    valid = [p for p in sig.parameters if p not in ("self", "options", "kwargs")]
    check_options(f"{kind} {name!r}", options, valid)


def get_backbone(name: str):
    """The registered backbone ``name`` (a ``Backbone``; ``.build`` makes models)."""
    return lookup("backbone", name)()


def get_dataset(name: str, **options: Any):
    """The registered data set ``name`` built with ``options`` (checked against its
    ``__init__``: an unknown option is an ``OptionError`` suggesting the closest)."""
    cls = lookup("dataset", name)
    _check_options("dataset", name, cls, options)
    return cls(**options)


def dataset_from_config(dataset: Any, split: str = "train"):
    """The data set a grid's ``[dataset]`` table (``cfg.dataset``) describes, for ``split``."""
    return get_dataset(
        dataset.name,
        root=dataset.root,
        image_size=dataset.image_size,
        split=split,
        **dataset.options,
    )


def get_executor(name: str, **options: Any):
    """The registered executor ``name`` built with checked ``options``."""
    cls = lookup("executor", name)
    _check_options("executor", name, cls, options)
    return cls(**options)


def get_objective(name: str, **options: Any) -> Objective:
    """Build a registered objective by name with validated options.

    Options are the objective's ``__init__`` keywords; an unknown one, or a value its
    constructor rejects, is an ``OptionError``.  ``obj.options`` records every option with
    its defaults filled in (logged as the run's parameters).
    """
    cls = lookup("objective", name)
    check_options(f"objective {name!r}", options, cls.option_names())
    try:
        obj = cls(**options)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(f"objective {name!r}: {exc}") from exc
    obj.options = {**cls.option_defaults(), **options}
    return obj


def teacher_independent(spec: list[dict[str, Any]]) -> bool:
    """True when no part of the objective needs a teacher, an assistant or features.

    Such a cell (the no-KD baseline) trains the same student on the same batches and
    noise whatever the grid's teacher, so ``harness.config.expand`` runs it once for all
    teachers.  Read from the registered classes' flags, never from their names.
    """
    for item in spec:
        cls = lookup("objective", item["name"])
        if cls.needs_teacher or cls.needs_assistant or cls.needs_features:
            return False
    return True


def build_combination(spec: list[dict[str, Any]]) -> Combination:
    """``[{"name": "place", "weight": 1.0, "group_size": 16}, ...]`` -> Combination."""
    parts = []
    for item in spec:
        item = dict(item)
        name = item.pop("name")
        weight = item.pop("weight", 1.0)
        parts.append((weight, get_objective(name, **item)))
    return Combination(parts)
