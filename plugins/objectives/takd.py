"""``takd``: teacher -> teaching assistant -> student (Mirzadeh et al., "Improved Knowledge
Distillation via Teacher Assistant", AAAI 2020).

TAKD is a procedure, not a loss: the cell runner (``needs_assistant``) first distils the
teacher into an assistant of intermediate capacity, then the assistant into the student;
each link uses the base objective that this class wraps and forwards to.  The helpers
below choose the assistant's capacity: by default halfway between teacher and student in
log-parameters (the geometric mean of the two parameter counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from harness import hookimpl
from harness.config import Capacity
from harness.errors import OptionError, PluginError
from harness.factories import get_objective
from harness.objective import Objective, Outputs, check_pair
from harness.registry import did_you_mean, entries
from harness.tunables import LogUniform


def _count(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise OptionError(f"{what} must be a positive parameter count, got {value!r}")
    return value


def _ratio(what: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 <= value < 1:
        raise OptionError(f"{what} must be a pruning ratio in [0, 1), got {value!r}")
    return float(value)


def assistant_parameters(teacher_params: int, student_params: int) -> float:
    """The assistant's target size: halfway in log-parameters, ``sqrt(teacher * student)``."""
    t = _count("teacher_params", teacher_params)
    s = _count("student_params", student_params)
    return math.exp((math.log(t) + math.log(s)) / 2)


def choose_assistant(candidates: dict[str, int], teacher_params: int, student_params: int) -> str:
    """The candidate (preset name or label -> parameter count) closest in log-parameters to
    ``assistant_parameters(teacher, student)``.

    Only candidates strictly between student and teacher are considered when there are
    any; otherwise all are.  Ties (equal to 1e-9 in log-space) go to the smaller model,
    then to the name.
    """
    if not candidates:
        raise OptionError("choose_assistant needs at least one candidate size")
    sizes = {name: _count(f"candidate {name!r}", n) for name, n in candidates.items()}
    target = math.log(assistant_parameters(teacher_params, student_params))
    lo, hi = sorted((teacher_params, student_params))
    between = {name: n for name, n in sizes.items() if lo < n < hi}
    pool = between or sizes
    return min(
        pool, key=lambda name: (round(abs(math.log(pool[name]) - target), 9), pool[name], name)
    )


def assistant_prune_ratio(
    teacher_ratio: float, student_ratio: float, base_params: int | None = None
) -> float:
    """The pruning ratio of one base model that gives an assistant halfway in log-parameters.

    Channel pruning at ratio ``r`` keeps about ``(1 - r)^2`` of a conv net's parameters (both
    the input and the output channels of each layer shrink by ``1 - r``; first/last layers
    and norms make it approximate).  The midpoint in log-parameters of ``(1-r_t)^2 base``
    and ``(1-r_s)^2 base`` is ``(1-r_t)(1-r_s) base``, so ``r = 1 - sqrt((1-r_t)(1-r_s))``.
    The base size cancels: ``base_params``, when given, is only validated.
    """
    rt = _ratio("teacher_ratio", teacher_ratio)
    rs = _ratio("student_ratio", student_ratio)
    if base_params is not None:
        _count("base_params", base_params)
    return 1 - math.sqrt((1 - rt) * (1 - rs))


class TAKD(Objective):
    """TAKD: distil through a teaching assistant, each link with a base objective.

    Options: ``base`` (any registered objective except ``takd``; default ``outkd``),
    ``base_options`` (that objective's options), ``assistant`` (a size preset name, a
    pruning ratio in [0, 1), or None for the default rule: halfway in log-parameters, see
    ``choose_assistant`` / ``assistant_prune_ratio``).  The loss and terms are the base
    objective's; the cell runner trains and caches the assistant link.
    """

    name = "takd"
    needs_assistant = True
    tunables = {"weight": LogUniform(0.1, 10.0)}

    def __init__(
        self,
        *,
        base: str = "outkd",
        base_options: dict[str, Any] | None = None,
        assistant: str | float | None = None,
    ):
        super().__init__()
        valid = sorted(n for n in entries("objective") if n != self.name)
        if not isinstance(base, str) or base == self.name:
            raise OptionError(
                f"objective 'takd': base={base!r} is not allowed (a teaching assistant chain "
                f"cannot nest); valid bases: {', '.join(valid)}"
            )
        if base_options is None:
            base_options = {}
        if not isinstance(base_options, dict):
            raise OptionError(
                f"objective 'takd': base_options must be a table of the base's options, "
                f"got {base_options!r}"
            )
        if assistant is not None:
            if isinstance(assistant, str):
                if not assistant:
                    raise OptionError("objective 'takd': assistant must not be an empty name")
            else:
                try:
                    _ratio("assistant", assistant)
                except OptionError as exc:
                    raise OptionError(
                        f"objective 'takd': {exc} (or a size preset name, or None for "
                        f"halfway in log-parameters)"
                    ) from None
        try:
            inner = get_objective(base, **base_options)
        except PluginError:
            raise OptionError(
                f"objective 'takd': base {base!r} is not a registered objective"
                f"{did_you_mean(base, valid)}; valid bases: {', '.join(valid)}"
            ) from None
        except OptionError as exc:
            raise OptionError(f"objective 'takd': base_options: {exc}") from None
        if inner.needs_assistant:
            raise OptionError(
                f"objective 'takd': base {base!r} itself needs an assistant; chains cannot nest"
            )
        self.base = inner
        self.assistant = assistant
        self.needs_features = inner.needs_features

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self.base.setup(student, teacher)

    def assistant_capacity(
        self,
        teacher: Capacity,
        student: Capacity,
        *,
        preset_sizes: Callable[[], dict[str, int]],
        teacher_params: int,
        student_params: Callable[[], int],
    ) -> Capacity:
        """The ``assistant`` option when set (a preset name or a pruning ratio); else
        halfway in log-parameters: an intermediate pruning ratio when teacher and student
        are both pruned from one base, the closest size preset otherwise."""
        if isinstance(self.assistant, str):
            return Capacity(preset=self.assistant)
        if isinstance(self.assistant, (int, float)):
            return Capacity(prune=float(self.assistant))
        if teacher.prune is not None and student.prune is not None:
            return Capacity(prune=round(assistant_prune_ratio(teacher.prune, student.prune), 4))
        return Capacity(preset=choose_assistant(preset_sizes(), teacher_params, student_params()))

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        check_pair(student.pred, teacher.pred)
        return dict(self.base(student=student, teacher=teacher, step=step, total_steps=total_steps))


@hookimpl
def register_objectives(register):
    register(TAKD)
