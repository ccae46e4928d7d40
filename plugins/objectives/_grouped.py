"""PLACE's grouped line fit as one autograd function (Han, Yoo, Yeo, CVPR 2026).

Rows are the (sample, channel) sets of ``N = H*W`` elements.  ``difficulty_order`` sorts each
row by a key once; the fit then works on the sorted copies, where group ``g`` is the
contiguous slice ``[g*G, (g+1)*G)`` (the last group also takes the ``N mod G`` remainder),
so every group statistic is a reduction over a view, not a scatter.

Speed choices (measured by ``benchmarks/bench_objectives.py``):

* Ordering.  On CPU the key's float32 bits (monotone for non-negative floats) and the
  element index are packed into one int64 and sorted by NumPy's vectorised sort (AVX2 /
  AVX-512 ``x86-simd-sort``), about 4x faster than ``torch.argsort``; ties break by index,
  as a stable sort would.  Elsewhere (CUDA) and for float64 keys, ``torch.argsort(stable=True)``
  runs on the device (a segmented sort of 4-byte keys; stable so runs are reproducible).
* Gradient.  The backward pass is written out instead of recorded op by op: per group,
  ``d beta1/d s_i = (dt_i - 2 beta1 ds_i) / (n (Var + eps))`` and
  ``d beta0/d s_i = -mean(s) d beta1/d s_i - beta1 / n`` (``ds``, ``dt`` centred in the
  group), so the whole gradient is ``ds * P + dt * Q + R`` with three coefficients per group,
  followed by one permutation scatter back to the original order.  The autograd version
  keeps a dozen intermediates and scatter-adds twice.
* Fine residual.  With ``beta0 = mean(t) - beta1 mean(s)``, ``beta1 s + beta0 - t`` equals
  ``beta1 ds - dt`` exactly in real arithmetic; the centred form is the one computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from plugins.objectives._fit import coarse_penalty, fit_deviation

_PACKABLE = (torch.float32, torch.float16, torch.bfloat16)


def difficulty_order(key: Tensor) -> Tensor:
    """Per row of a non-negative ``key [R, N]``, the indices that sort it ascending (int64)."""
    n = key.shape[-1]
    bits = max(1, (n - 1).bit_length())
    if key.device.type == "cpu" and key.dtype in _PACKABLE and bits <= 32:
        # float32 bits of a non-negative number (or NaN) fit in 31 bits, the index in `bits`.
        k32 = key.detach().float().contiguous()
        packed = k32.view(torch.int32).to(torch.int64).bitwise_left_shift_(bits)
        packed.bitwise_or_(torch.arange(n))
        packed.numpy().sort(axis=-1)
        return packed.bitwise_and_((1 << bits) - 1)
    return torch.argsort(key.detach(), dim=-1, stable=True)


class GroupLayout:
    """Consecutive groups of ``G`` along dim 1 of ``[R, N]``; the remainder joins the last."""

    def __init__(self, rows: int, n: int, group_size: int, device, dtype):
        self.rows, self.n, self.group_size = rows, n, group_size
        self.groups = n // group_size
        self.main = self.groups * group_size
        self.tail = n - self.main
        count = torch.full((self.groups,), float(group_size), device=device, dtype=dtype)
        count[-1] += self.tail
        self.count = count

    def _view(self, x: Tensor) -> Tensor:
        return x[:, : self.main].view(self.rows, self.groups, self.group_size)

    def sum(self, x: Tensor) -> Tensor:
        """Per-group sums ``[R, groups]``."""
        out = self._view(x).sum(-1)
        if self.tail:
            out[:, -1] += x[:, self.main :].sum(-1)
        return out

    def apply(
        self, fn: Callable[..., Tensor], full: tuple[Tensor, ...], per_group: tuple[Tensor, ...]
    ) -> Tensor:
        """``fn(*full, *per_group)`` elementwise; each ``[R, groups]`` tensor spreads over its
        group's elements of the ``[R, N]`` tensors in ``full``."""
        views = [self._view(x) for x in full]
        out = fn(*views, *(g.unsqueeze(-1) for g in per_group)).reshape(self.rows, -1)
        if not self.tail:
            return out
        rest = fn(*(x[:, self.main :] for x in full), *(g[:, -1:] for g in per_group))
        return torch.cat([out, rest], dim=1)


def _residual(dt: Tensor, ds: Tensor, beta1: Tensor) -> Tensor:
    return torch.addcmul(dt, ds, beta1, value=-1)


def _affine(ds: Tensor, dt: Tensor, p: Tensor, q: Tensor, r: Tensor) -> Tensor:
    return torch.addcmul(r, ds, p).addcmul_(dt, q)


class GroupedFit(torch.autograd.Function):
    """``(coarse, fine, deviation)`` of PLACE for ``s, t [R, N]`` and an ``order [R, N]``.

    ``coarse``: mean over groups of ``|beta1-1| + |beta0|`` (``kind="l2"``: squares);
    ``fine``: mean over all ``R*N`` elements of ``(sg(beta1) s + sg(beta0) - t)^2``;
    ``deviation``: ``mean|beta1-1| + mean|beta0|`` (no gradient).  Every group counts once
    in the group means; the remainder group's moments use its true element count.
    Gradients flow to ``s`` only (the teacher is a constant).
    """

    @staticmethod
    def forward(ctx, s, t, order, group_size: int, eps: float, kind: str):
        rows, n = s.shape
        lay = GroupLayout(rows, n, group_size, s.device, s.dtype)
        ss = s.gather(1, order)
        tt = t.gather(1, order)
        mean_s = lay.sum(ss) / lay.count
        mean_t = lay.sum(tt) / lay.count
        ds = lay.apply(torch.sub, (ss,), (mean_s,))
        dt = lay.apply(torch.sub, (tt,), (mean_t,))
        den = lay.sum(ds * ds) / lay.count + eps
        beta1 = lay.sum(ds * dt) / lay.count / den
        beta0 = mean_t - beta1 * mean_s
        # beta1 s + beta0 - t = -(dt - beta1 ds), formed in one fused pass.
        resid = lay.apply(_residual, (dt, ds), (beta1,))
        fine = resid.square_().sum() / resid.numel()
        coarse = coarse_penalty(beta1, beta0, kind)
        deviation = fit_deviation(beta1, beta0)
        ctx.save_for_backward(order, ds, dt, mean_s, beta1, beta0, den)
        ctx.layout, ctx.l2 = lay, kind == "l2"
        ctx.mark_non_differentiable(deviation)
        return coarse, fine, deviation

    @staticmethod
    @once_differentiable
    def backward(ctx, g_coarse, g_fine, _g_deviation):
        order, ds, dt, mean_s, beta1, beta0, den = ctx.saved_tensors
        lay: GroupLayout = ctx.layout
        groups = beta1.numel()
        if ctx.l2:
            u, v = 2 * (beta1 - 1), 2 * beta0
        else:
            u, v = torch.sign(beta1 - 1), torch.sign(beta0)
        u = u * (g_coarse / groups)
        v = v * (g_coarse / groups)
        k = (u - v * mean_s) / (lay.count * den)
        f = (2 / ds.numel()) * g_fine * beta1
        p = f * beta1 - 2 * k * beta1
        q = k - f
        r = -v * beta1 / lay.count
        grad_sorted = lay.apply(_affine, (ds, dt), (p, q, r))
        grad_s = torch.empty_like(grad_sorted).scatter_(1, order, grad_sorted)
        return grad_s, None, None, None, None, None
