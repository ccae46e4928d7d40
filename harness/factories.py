"""Build registered objectives, backbones, datasets and executors by name, with clear errors."""

from __future__ import annotations

import inspect
from typing import Any

from harness.errors import OptionError
from harness.objective import Combination, Objective
from harness.registry import did_you_mean, lookup


def _check_options(kind: str, name: str, cls: type, options: dict[str, Any]) -> None:
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) and kind != "dataset":
        return
    valid = [p for p in sig.parameters if p not in ("self", "options", "kwargs")]
    for key in options:
        if key not in valid:
            raise OptionError(
                f"{kind} {name!r} has no option {key!r}{did_you_mean(key, valid)}; "
                f"valid options: {', '.join(valid) or 'none'}"
            )


def get_backbone(name: str):
    return lookup("backbone", name)()


def get_dataset(name: str, **options: Any):
    cls = lookup("dataset", name)
    _check_options("dataset", name, cls, options)
    return cls(**options)


def get_executor(name: str, **options: Any):
    cls = lookup("executor", name)
    _check_options("executor", name, cls, options)
    return cls(**options)


def get_objective(name: str, **options: Any) -> Objective:
    """Build a registered objective by name with validated options."""
    cls = lookup("objective", name)
    valid = cls.option_names()
    for key in options:
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise OptionError(
                f"objective {name!r} has no option {key!r}{did_you_mean(key, valid)}; "
                f"valid options: {listed}"
            )
    try:
        obj = cls(**options)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(f"objective {name!r}: {exc}") from None
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
