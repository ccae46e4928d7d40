"""``lift``: linear-fit KD (Han, Yoo, Yeo, "LIFT and PLACE", CVPR 2026, arXiv 2605.19729)."""

from __future__ import annotations

from torch import Tensor

from harness import hookimpl
from harness.objective import Objective, Outputs, check_pair
from harness.tunables import Choice, LogUniform
from plugins.objectives._checks import as_float, check_choice, check_image, check_number
from plugins.objectives._fit import COARSE, adaptive_weight, coarse_penalty, fit_deviation, line_fit


class LIFT(Objective):
    """LIFT: fit the teacher on the student per (sample, channel), then pull the fit to identity.

    Per set of H*W elements: ``beta1 = Cov(s,t)/(Var(s)+eps)``, ``beta0 = mean(t) -
    beta1 mean(s)`` (centred population moments, see ``_fit``; gradient flows through the
    betas into ``s``).  Terms: ``coarse`` = mean over sets of ``|beta1-1| + |beta0|``
    (paper, ``coarse="l1"``) or the squares (``"l2"``, the released code's choice);
    ``fine`` = mean over elements of ``(sg(beta1) s + sg(beta0) - t)^2`` (betas detached
    as in all released code); ``w = 1 - min(1, mean|beta1-1| + mean|beta0|)`` without
    gradient, always from L1 deviations; ``loss = coarse + w * fine``.  ``place`` keeps
    this loss and replaces ``fit`` (one fit per row here).
    """

    name = "lift"
    tunables = {"weight": LogUniform(0.1, 10.0), "coarse": Choice(COARSE)}

    def __init__(self, *, coarse: str = "l1", eps: float = 1e-6):
        super().__init__()
        self.coarse = check_choice(self.name, "coarse", coarse, COARSE)
        self.eps = check_number(self.name, "eps", eps, strict=True)

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        s2, t2 = self.fitting_sets(student.pred, teacher.pred.detach())
        coarse, fine, deviation = self.fit(s2, t2)
        weight = adaptive_weight(deviation)
        return {"coarse": coarse, "fine": fine, "w": weight, "loss": coarse + weight * fine}

    def fitting_sets(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Student and teacher predictions as ``[B*C, H*W]``: one row per (sample, channel)."""
        check_pair(s, t)
        check_image(self.name, s)
        b, c, h, w = s.shape
        return as_float(s).reshape(b * c, h * w), as_float(t).reshape(b * c, h * w)

    def fit(self, s2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(coarse, fine, deviation)`` of one line fit per row; ``w`` comes from the
        deviation."""
        beta1, beta0 = line_fit(s2, t2, self.eps)
        coarse = coarse_penalty(beta1, beta0, self.coarse)
        fit = beta1.detach().unsqueeze(-1) * s2 + beta0.detach().unsqueeze(-1)
        fine = (fit - t2).square().mean()
        return coarse, fine, fit_deviation(beta1, beta0)


@hookimpl
def register_objectives(register):
    register(LIFT)
