"""An example kdbench objective plugin: cosine output distillation.

``L = mean over samples of (1 - cos(s_i, t_i))`` where ``s_i`` and ``t_i`` are the
flattened student and teacher predictions of sample i.  It ignores the scale of the
prediction and keeps only its direction; ``eps`` guards the norms.
"""

import torch.nn.functional as F

import kdbench


class CosineKD(kdbench.Objective):
    """Cosine output KD: 1 - cos(student, teacher) per sample."""

    name = "cosine"

    def __init__(self, *, eps: float = 1e-8):
        super().__init__()
        if eps <= 0:
            raise kdbench.OptionError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(
        self,
        student: kdbench.Outputs,
        teacher: kdbench.Outputs,
        step: int = 0,
        total_steps: int = 1,
    ):
        kdbench.check_pair(student.pred, teacher.pred)
        s = student.pred.flatten(1)
        t = teacher.pred.detach().flatten(1)
        loss = (1 - F.cosine_similarity(s, t, dim=1, eps=self.eps)).mean()
        return {"loss": loss}


@kdbench.hookimpl
def register_objectives(register):
    register(CosineKD)
