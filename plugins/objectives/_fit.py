"""The closed-form line fit of LIFT and PLACE (Han, Yoo, Yeo, CVPR 2026, arXiv 2605.19729).

For one fitting set of ``n`` elements, least squares of the teacher on the student gives

    beta1 = Cov(s, t) / (Var(s) + eps),   beta0 = mean(t) - beta1 * mean(s)

with population moments.  Choice made here: the moments are *centred* (``ds = s - mean(s)``,
``Var = mean(ds^2)``, ``Cov = mean(ds * dt)``) rather than ``E[s^2] - mean(s)^2``; the
one-pass form loses every digit of a small variance when the mean is large, the centred
form never goes negative.  Arithmetic runs in float32 at least (half inputs are upcast).
"""

from __future__ import annotations

import torch
from torch import Tensor

COARSE = ("l1", "l2")


def line_fit(s: Tensor, t: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(beta1, beta0)`` of the fit of ``t`` on ``s`` over the last dim (differentiable in s)."""
    ms = s.mean(-1, keepdim=True)
    mt = t.mean(-1, keepdim=True)
    ds = s - ms
    dt = t - mt
    var = ds.square().mean(-1)
    cov = (ds * dt).mean(-1)
    beta1 = cov / (var + eps)
    beta0 = mt.squeeze(-1) - beta1 * ms.squeeze(-1)
    return beta1, beta0


def coarse_penalty(beta1: Tensor, beta0: Tensor, kind: str) -> Tensor:
    """Mean over fitting sets of ``|beta1-1| + |beta0|`` (l1, the paper) or the squares (l2)."""
    if kind == "l2":
        return ((beta1 - 1).square() + beta0.square()).mean()
    return ((beta1 - 1).abs() + beta0.abs()).mean()


@torch.no_grad()
def fit_deviation(beta1: Tensor, beta0: Tensor) -> Tensor:
    """``mean|beta1 - 1| + mean|beta0|`` (always L1), without gradient."""
    return (beta1 - 1).abs().mean() + beta0.abs().mean()


def adaptive_weight(deviation: Tensor) -> Tensor:
    """``w = 1 - min(1, deviation)``: 0 while the fit is far from identity, 1 once it is exact."""
    return 1 - deviation.detach().clamp(max=1)
