"""``none``: the no-KD baseline (the student learns from the denoising loss alone)."""

from __future__ import annotations

from torch import Tensor

from harness import hookimpl
from harness.objective import Objective, Outputs, check_pair


class NoKD(Objective):
    """No distillation: ``loss`` is a plain zero, so only the denoising loss trains the student.

    A grid's control cell: every KD objective is compared against it at the same seed.
    The zero carries no graph (it adds nothing to the gradient).
    """

    name = "none"
    needs_teacher = False
    tunables = {}  # nothing to tune: the baseline runs as it is

    def __init__(self):
        super().__init__()

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        check_pair(student.pred, teacher.pred)
        return {"loss": student.pred.new_zeros(())}


@hookimpl
def register_objectives(register):
    register(NoKD)
