"""``featkd``: FitNets-style feature KD with trainable adapters (Romero et al., ICLR 2015)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness import hookimpl
from harness.errors import OptionError, ShapeError
from harness.objective import Objective, Outputs, check_pair
from harness.tunables import LogUniform
from plugins.objectives._checks import as_float, check_choice

ADAPTER_INIT = 0.005
TAP_SETS = ("blocks", "submodules")


def _slot(tap: str) -> str:
    """A module-name-safe key for a tap path (``down_blocks.0`` -> ``down_blocks__0``)."""
    return tap.replace(".", "__")


def _channel_dim(x: Tensor) -> int:
    return 1 if x.dim() == 4 else -1


def _keep(x: Tensor, correction: int = 0) -> Tensor:
    """TinyFusion's mask: per sample, elements within two standard deviations of the mean."""
    dims = tuple(range(1, x.dim()))
    sigma, mu = torch.std_mean(x, dim=dims, correction=correction, keepdim=True)
    return (x - mu).abs() < 2 * sigma


class FeatKD(Objective):
    """Feature KD: ``sum over taps of mean((adapter(f_s) - sg(f_t))^2)``.

    Student tap ``k`` distils to teacher tap ``k`` (the trainer pairs taps first).  When
    channel counts differ, a trainable bias-free adapter maps student to teacher channels:
    a 1x1 ``Conv2d`` for ``[B, C, H, W]`` maps, a ``Linear`` on the last dim for ``[B, N, D]``
    tokens (or ``[B, D]``), initialised uniform in +-0.005 as Diff-Pruning's LIFT code does
    (from torch's global generator, which the trainer seeds from the cell's seed for
    ``setup``); identity when channels match.  Adapters are built by ``setup`` (or by the first
    ``forward``) in float32 (float64 for float64 features), live in ``self.adapters`` (an
    ``nn.ModuleDict``, '.' in tap names -> '__'), train with the student and are never part
    of it.  Per-tap terms: ``layer/<tap>``.

    Options: ``layers`` restricts the taps used (default: every student tap);
    ``taps`` names the backbone's tap set the trainer records: ``"blocks"`` (default: every
    down/mid/up block or transformer block output) or ``"submodules"`` (U-Net: every
    ResnetBlock, attention and resampler of each level and the mid block's three children,
    the 41 forward hooks of Diff-Pruning's FitNet on the CelebA U-Net);
    ``reduction``: ``"mean"`` (default) averages each tap over its elements, ``"sum"``
    sums it over C_l*H_l*W_l (or N*D) and averages over the batch, as Diff-Pruning's
    ``FitNetLoss`` (its weight 1e-6 multiplies that scale);
    ``decay``: ``"none"`` (default) or ``"linear"``, the loss times ``1 - step/total_steps``
    (TinyFusion's feature weight, which it lowers linearly to 0 per epoch);
    ``mask_style`` (with ``masked``): ``"kept"`` (default) averages the squared error over
    the elements both masks keep; ``"zeroed"`` is TinyFusion's ``training_losses_kd_rep``:
    ``mean((mask_s * f_s - mask_t * f_t)^2)`` over all elements, masks from the unbiased
    std (``torch.var_mean``'s default there);
    ``layer_mean``: divide the sum over taps by their number (TinyFusion's ``/ cnt``);
    ``masked`` applies TinyFusion's (Fang et al., CVPR 2025) massive-activation mask:
    per sample, with the mean and population std over all non-batch dims, keep elements
    with ``|f - mu| < 2 sigma``; the student's mask is taken on ``adapter(f_s)`` (in the
    teacher's channel space, so masks align elementwise), the teacher's on ``f_t``; the MSE
    averages over elements kept by both (a tap with none kept contributes 0).
    """

    name = "featkd"
    needs_features = True
    # Per tap and after reductions, 0.1 here is 5e3-2e4x heavier than Diff-Pruning's 1e-6 on
    # summed features: the range spans both.
    tunables = {"weight": LogUniform(1e-5, 1.0)}

    def __init__(
        self,
        *,
        layers: list[str] | None = None,
        masked: bool = False,
        taps: str = "blocks",
        reduction: str = "mean",
        decay: str = "none",
        mask_style: str = "kept",
        layer_mean: bool = False,
    ):
        super().__init__()
        self.mask_style = check_choice(self.name, "mask_style", mask_style, ("kept", "zeroed"))
        if not isinstance(layer_mean, bool):
            raise OptionError(
                f"objective 'featkd': layer_mean must be true or false, got {layer_mean!r}"
            )
        self.layer_mean = layer_mean
        self.tap_set = check_choice(self.name, "taps", taps, TAP_SETS)
        self.reduction = check_choice(self.name, "reduction", reduction, ("mean", "sum"))
        self.decay = check_choice(self.name, "decay", decay, ("none", "linear"))
        if layers is not None:
            if (
                isinstance(layers, str)
                or not isinstance(layers, (list, tuple))
                or not layers
                or not all(isinstance(k, str) and k for k in layers)
            ):
                raise OptionError(
                    f"objective 'featkd': layers must be a non-empty list of tap names or None, "
                    f"got {layers!r}"
                )
            layers = list(dict.fromkeys(layers))
        if not isinstance(masked, bool):
            raise OptionError(f"objective 'featkd': masked must be true or false, got {masked!r}")
        self.layers = layers
        self.masked = masked
        self.adapters = nn.ModuleDict()

    def _taps(self, student: Outputs, teacher: Outputs) -> list[str]:
        if not student.features:
            raise ShapeError(
                "objective 'featkd' got no student features; the trainer must tap features "
                "for objectives with needs_features"
            )
        taps = self.layers if self.layers is not None else list(student.features)
        for tap in taps:
            if tap not in student.features:
                raise OptionError(
                    f"objective 'featkd': layers names tap {tap!r}, which the student does not "
                    f"have; student taps: {', '.join(student.features)}"
                )
            if tap not in teacher.features:
                listed = ", ".join(teacher.features) or "none"
                raise ShapeError(
                    f"objective 'featkd': tap {tap!r} has no teacher feature; teacher taps: {listed}"
                )
        return taps

    @staticmethod
    def _check_tap(tap: str, fs: Tensor, ft: Tensor) -> tuple[int, int]:
        """Channel counts ``(student, teacher)``; every other dim must match."""
        if fs.dim() not in (2, 3, 4) or fs.dim() != ft.dim():
            raise ShapeError(
                f"objective 'featkd': tap {tap!r} must be [B,C,H,W], [B,N,D] or [B,D] on both "
                f"sides, got {tuple(fs.shape)} vs {tuple(ft.shape)}"
            )
        dim = _channel_dim(fs)
        rest_s = [n for i, n in enumerate(fs.shape) if i != dim % fs.dim()]
        rest_t = [n for i, n in enumerate(ft.shape) if i != dim % ft.dim()]
        if rest_s != rest_t:
            raise ShapeError(
                f"objective 'featkd': tap {tap!r} differs in batch or spatial size: student "
                f"{tuple(fs.shape)} vs teacher {tuple(ft.shape)}; only channels may differ"
            )
        if fs.dtype != ft.dtype:
            raise ShapeError(
                f"objective 'featkd': tap {tap!r} dtypes differ: {fs.dtype} vs {ft.dtype}"
            )
        return fs.shape[dim], ft.shape[dim]

    @staticmethod
    def _adapter_dims(adapter: nn.Module) -> tuple[int, int] | None:
        if isinstance(adapter, nn.Conv2d):
            return adapter.in_channels, adapter.out_channels
        if isinstance(adapter, nn.Linear):
            return adapter.in_features, adapter.out_features
        return None

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build the adapters each selected tap needs (existing ones are kept)."""
        for tap in self._taps(student, teacher):
            fs, ft = student.features[tap], teacher.features[tap]
            c_s, c_t = self._check_tap(tap, fs, ft)
            slot = _slot(tap)
            if slot in self.adapters:
                dims = self._adapter_dims(self.adapters[slot])
                if (dims or (c_t, c_t)) != (c_s, c_t):
                    raise ShapeError(
                        f"objective 'featkd': tap {tap!r} now maps {c_s} -> {c_t} channels, but "
                        f"its adapter was built for {dims or 'identity'}"
                    )
                continue
            if c_s == c_t:
                adapter: nn.Module = nn.Identity()
            elif fs.dim() == 4:
                adapter = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
            else:
                adapter = nn.Linear(c_s, c_t, bias=False)
            for p in adapter.parameters():
                nn.init.uniform_(p, -ADAPTER_INIT, ADAPTER_INIT)
            self.adapters[slot] = adapter.to(device=fs.device, dtype=as_float(fs).dtype)

    def forward(
        self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1
    ) -> dict[str, Tensor]:
        check_pair(student.pred, teacher.pred)
        taps = self._taps(student, teacher)
        if any(_slot(tap) not in self.adapters for tap in taps):
            self.setup(student, teacher)
        terms: dict[str, Tensor] = {}
        total: Tensor | float = 0.0
        for tap in taps:
            fs, ft = student.features[tap], teacher.features[tap].detach()
            self._check_tap(tap, fs, ft)
            mapped = as_float(self.adapters[_slot(tap)](as_float(fs)))
            target = as_float(ft)
            sq = (mapped - target).square()
            if self.masked and self.mask_style == "zeroed":
                with torch.no_grad():
                    keep_s, keep_t = _keep(mapped.detach(), 1), _keep(target, 1)
                sq = (mapped * keep_s - target * keep_t).square()
                term = sq.sum() / sq.shape[0] if self.reduction == "sum" else sq.mean()
            elif self.masked:
                with torch.no_grad():
                    keep = _keep(mapped.detach()) & _keep(target)
                kept = torch.where(keep, sq, 0).sum()
                term = (
                    kept / sq.shape[0]
                    if self.reduction == "sum"
                    else kept / keep.sum().clamp(min=1)
                )
            else:
                term = sq.sum() / sq.shape[0] if self.reduction == "sum" else sq.mean()
            terms[f"layer/{tap}"] = term
            total = total + term
        if self.layer_mean:
            total = total / len(taps)
        if self.decay == "linear":
            total = total * max(0.0, 1.0 - step / max(total_steps, 1))
        terms["loss"] = total  # taps is never empty, so total is a tensor
        return terms


@hookimpl
def register_objectives(register):
    register(FeatKD)
