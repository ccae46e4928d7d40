"""The objective contract: ``Outputs``, ``Objective`` and weighted combinations.

Objectives are built by name with ``harness.factories.get_objective`` and
``build_combination`` (also exported as ``harness.get_objective``).

An objective is an ``nn.Module`` called as
``obj(student=Outputs(...), teacher=Outputs(...), step=i, total_steps=n)`` and returns a
dict of named scalar terms; ``terms["loss"]`` is the one summed into the training loss.
Options are the keyword arguments of the subclass's ``__init__``; unknown ones raise an
``OptionError`` that lists the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.errors import OptionError, ShapeError
from harness.tunables import Choice, LogUniform, Tunable, Uniform


@dataclass
class Outputs:
    """A model's prediction ``[B,C,H,W]`` and its tapped features (tap name -> tensor).

    Student and teacher features are keyed alike: the trainer pairs taps first, so
    ``student.features[k]`` is distilled towards ``teacher.features[k]``.
    """

    pred: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of KD objectives (the README's "Objectives" table lists the built-in
    ones with their papers; each module under ``plugins/objectives/`` states its math).

    Class attributes a subclass sets:
      ``name``: the registry name; ``needs_features``: the trainer then taps features;
      ``needs_assistant``: the cell runner distils through a teaching assistant (TAKD);
      ``needs_teacher``: False for the no-KD baseline, whose cells then skip the teacher;
      ``tunables``: the options ``kdbench tune`` searches, option -> ``LogUniform`` /
      ``Uniform`` / ``Choice`` (``harness.tunables``); ``weight`` is the KD weight.  The
      default tunes the weight log-uniformly over two decades around 1.
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False
    needs_assistant: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    tunables: ClassVar[dict[str, Tunable]] = {"weight": LogUniform(0.1, 10.0)}

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Called once with a sample batch before the optimizer is built (adapters).

        The trainer seeds torch's global generator from the training seed for this call
        (``harness.trainer.seeded_rng``): initialise parameters here to be reproducible.
        """

    def check_inputs(self, student: Outputs, teacher: Outputs) -> None:
        """Raise an ``OptionError`` when these options cannot train on predictions shaped
        like these (e.g. a term that is constant for the data); the grid's preflight calls
        it once on random predictions shaped like the grid's images."""

    def assistant_capacity(
        self,
        teacher: Any,
        student: Any,
        *,
        preset_sizes: Callable[[], dict[str, int]],
        teacher_params: int,
        student_params: Callable[[], int],
    ) -> Any:
        """The assistant's ``harness.config.Capacity``, asked when ``needs_assistant`` is set.

        ``teacher`` and ``student`` are the cell's capacities; ``preset_sizes()`` gives the
        backbone's size presets with their parameter counts and ``student_params()`` the
        student's count (both computed only when called).
        """
        raise NotImplementedError(
            f"objective {self.name!r} sets needs_assistant but does not choose an assistant"
        )

    @classmethod
    def option_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    @classmethod
    def tunable_options(cls) -> dict[str, Tunable]:
        """The declared search space, checked: only ``weight`` and real options."""
        space = dict(cls.tunables)
        valid = ["weight", *cls.option_names()]
        for key, spec in space.items():
            if key not in valid:
                raise OptionError(
                    f"objective {cls.name!r} declares tunable {key!r}, which is not an option; "
                    f"valid: {', '.join(valid)}"
                )
            if not isinstance(spec, (LogUniform, Uniform, Choice)):
                raise OptionError(f"objective {cls.name!r}: tunable {key!r} is not a spec")
        return space

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in getattr(self, "options", {}).items())


def check_pair(s: Tensor, t: Tensor, what: str = "prediction") -> None:
    """Raise a ShapeError when student and teacher tensors cannot be compared."""
    if s.shape != t.shape:
        raise ShapeError(
            f"student and teacher {what} shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}"
        )
    if s.dtype != t.dtype:
        raise ShapeError(f"student and teacher {what} dtypes differ: {s.dtype} vs {t.dtype}")


class Combination(nn.Module):
    """A weighted sum of objectives, e.g. ``place`` at 1.0 plus ``featkd`` at 1e-6 (Eq. 8).

    Terms are prefixed with the objective's name (``place/coarse``); ``loss`` is the
    weighted sum; each objective's unweighted loss is kept as ``<name>/loss``.
    """

    def __init__(self, parts: list[tuple[float, Objective]]):
        super().__init__()
        if not parts:
            raise OptionError("an objective combination needs at least one objective")
        for weight, obj in parts:
            if not isinstance(weight, (int, float)) or weight < 0 or weight != weight:
                raise OptionError(f"objective {obj.name!r}: weight must be >= 0, got {weight!r}")
        self.weights = [float(w) for w, _ in parts]
        self.parts = nn.ModuleList([o for _, o in parts])

    @property
    def label(self) -> str:
        return "+".join(o.name for o in self.parts)

    @property
    def needs_features(self) -> bool:
        return any(o.needs_features for o in self.parts)

    @property
    def tap_set(self) -> str:
        """The backbone tap set the feature objectives ask for (``tap_set``, default blocks)."""
        sets = {getattr(o, "tap_set", "blocks") for o in self.parts if o.needs_features}
        if len(sets) > 1:
            raise OptionError(
                f"objectives {self.label!r} ask for different tap sets {sorted(sets)}"
            )
        return sets.pop() if sets else "blocks"

    @property
    def needs_assistant(self) -> bool:
        return any(o.needs_assistant for o in self.parts)

    @property
    def needs_teacher(self) -> bool:
        return any(o.needs_teacher for o in self.parts)

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        for obj in self.parts:
            obj.setup(student, teacher)

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = student.pred.new_zeros(())
        for weight, obj in zip(self.weights, self.parts):
            out = obj(student=student, teacher=teacher, step=step, total_steps=total_steps)
            if not isinstance(out, dict) or "loss" not in out:
                raise OptionError(f"objective {obj.name!r} returned no 'loss' term")
            for key, value in out.items():
                terms[f"{obj.name}/{key}"] = value
            if weight:
                total = total + weight * out["loss"]
        terms["loss"] = total
        return terms


def finite_terms(terms: dict[str, Tensor]) -> dict[str, float]:
    """Terms as floats for logging (one device sync for all of them)."""
    keys = list(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, values))
