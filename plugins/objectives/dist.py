"""``dist``: correlation-based KD (Huang et al., "Knowledge Distillation from A Stronger
Teacher", NeurIPS 2022), adapted to dense diffusion outputs."""

from __future__ import annotations

import torch
from torch import Tensor

from harness import hookimpl
from harness.errors import OptionError, ShapeError
from harness.objective import Objective, Outputs, check_pair
from harness.tunables import LogUniform
from plugins.objectives._checks import as_float, check_choice, check_number

PEARSON_EPS = 1e-8


def pearson(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` over ``dims`` (one value per remaining index).

    ``<a - mean a, b - mean b> / (||a - mean a|| ||b - mean b|| + 1e-8)`` as DIST's code.
    Norms are ``sqrt(max(sum of squares, tiny))``: a constant instance then has correlation
    0 and a zero (not NaN) gradient.
    """
    a = a - a.mean(dims, keepdim=True)
    b = b - b.mean(dims, keepdim=True)
    tiny = torch.finfo(a.dtype).tiny
    norm_a = a.square().sum(dims).clamp(min=tiny).sqrt()
    norm_b = b.square().sum(dims).clamp(min=tiny).sqrt()
    return (a * b).sum(dims) / (norm_a * norm_b + PEARSON_EPS)


class DIST(Objective):
    """DIST: match inter- and intra-instance Pearson correlations of student and teacher.

    ``inter = 1 - mean over instances (rows) of rho``, ``intra = 1 - mean over columns of
    rho``; ``loss = beta * inter + gamma * intra``.  Following the released code (not the
    paper's pseudocode) both terms carry ``tau^2``, and the logged ``inter``/``intra`` are
    those scaled terms.

    Dense adaptation (DIST's own segmentation variant treats every pixel as an instance):
    ``instance="pixel"`` (default) reads ``[B, C, H, W]`` as the table ``[B*H*W, C]``;
    ``instance="sample"`` as ``[B, C*H*W]`` (one instance per image; better when C is 3 or 4).
    The table is never materialised: correlations reduce over the matching dims.
    ``space="raw"`` (default: noise predictions are not distributions) correlates the
    values as they are, so ``tau`` only scales the loss by ``tau^2``; ``space="softmax"``
    correlates ``softmax(x / tau)`` over channels (dim 1) in both instance modes.
    ``[B, K]`` logits work too (pixel and sample then coincide).  ``check_inputs`` (the
    grid's preflight) refuses the modes whose terms are constant on 1-channel data.
    """

    name = "dist"
    tunables = {"weight": LogUniform(0.1, 10.0)}

    def __init__(
        self,
        *,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        space: str = "raw",
        instance: str = "pixel",
    ):
        super().__init__()
        self.beta = check_number(self.name, "beta", beta)
        self.gamma = check_number(self.name, "gamma", gamma)
        self.tau = check_number(self.name, "tau", tau, strict=True)
        self.space = check_choice(self.name, "space", space, ("raw", "softmax"))
        self.instance = check_choice(self.name, "instance", instance, ("pixel", "sample"))

    def check_inputs(self, student: Outputs, teacher: Outputs) -> None:
        """1-channel predictions (the digits): softmax over one channel is the constant 1
        (both terms constant), and a ``pixel`` instance is a row of one value, whose
        correlation is 0 whatever the student does (the inter term is a constant with zero
        gradient; only intra would train).  ``instance="sample"`` in ``raw`` space trains
        both terms."""
        pred = student.pred
        if pred.dim() < 2 or pred.shape[1] != 1:
            return
        if self.space == "softmax":
            raise OptionError(
                "objective 'dist': softmax over 1-channel predictions is constant, so both "
                'DIST terms are; use space = "raw" with instance = "sample"'
            )
        if self.instance == "pixel":
            raise OptionError(
                "objective 'dist': with 1-channel predictions a pixel instance holds one value, "
                'so the inter term is constant (zero gradient); use instance = "sample"'
            )

    def _prepare(self, x: Tensor) -> Tensor:
        x = as_float(x)
        return torch.softmax(x / self.tau, dim=1) if self.space == "softmax" else x

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        s, t = student.pred, teacher.pred.detach()
        check_pair(s, t)
        if s.dim() < 2:
            raise ShapeError(
                f"objective 'dist' needs predictions shaped [B, C, ...], got {tuple(s.shape)}"
            )
        ys, yt = self._prepare(s), self._prepare(t)
        spatial = tuple(range(2, s.dim()))
        if self.instance == "pixel":  # rows (b, h, w), columns c
            row_dims, col_dims = (1,), (0, *spatial)
        else:  # rows b, columns (c, h, w)
            row_dims, col_dims = (1, *spatial), (0,)
        scale = self.tau**2
        inter = scale * (1 - pearson(ys, yt, row_dims).mean())
        intra = scale * (1 - pearson(ys, yt, col_dims).mean())
        return {"inter": inter, "intra": intra, "loss": self.beta * inter + self.gamma * intra}


@hookimpl
def register_objectives(register):
    register(DIST)
