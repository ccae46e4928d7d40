"""``outkd``: output knowledge distillation, ``mean((s - t)^2)``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from harness import hookimpl
from harness.objective import Objective, Outputs, check_pair
from harness.tunables import LogUniform
from plugins.objectives._checks import as_float


class OutKD(Objective):
    """Output KD: the student's prediction regresses the frozen teacher's, ``mean((s - t)^2)``.

    References: BK-SDM (Kim et al., 2023, arXiv 2305.15798) and Diff-Pruning (Fang et al.,
    NeurIPS 2023) with its KD option.  Diff-Pruning's code sums over C, H, W and averages
    over the batch; kdbench averages over every element (the scale only moves lambda).
    The teacher is detached; half-precision inputs are upcast to float32.
    """

    name = "outkd"
    tunables = {"weight": LogUniform(0.1, 10.0)}

    def __init__(self):
        super().__init__()

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        s, t = student.pred, teacher.pred.detach()
        check_pair(s, t)
        return {"loss": F.mse_loss(as_float(s), as_float(t))}


@hookimpl
def register_objectives(register):
    register(OutKD)
