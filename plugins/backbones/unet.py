"""U-Net backbone: diffusers ``UNet2DModel`` (Ho et al., DDPM, NeurIPS 2020).

Presets, smallest to largest (parameters at 16x16, 1 channel, 10 classes):

- ``xxs`` .. ``l``: CPU-sized ladder (~45k, ~0.28M, ~1.1M, ~3.6M, ~10M) with attention at
  the second level (8x8 features at 16x16, as DDPM attends at 16x16 for 32x32 images) and
  in the mid block; multi-head attention (head width ``attention_head_dim``).
- ``cifar10``: DDPM's CIFAR-10 model, the layout of ``google/ddpm-cifar10-32`` (35.7M):
  channels (128, 256, 256, 256), two res blocks per level, single-head attention at the
  second level (16x16 for 32x32 images).
- ``celeba``: the DDIM CelebA 64x64 model that Diff-Pruning prunes (78.7M): channels
  (128, 256, 256, 256, 512), two res blocks per level, single-head attention at the third
  level (16x16 for 64x64 images, the same 16x16 placement as ``google/ddpm-celebahq-256``)
  and in the mid block.  The weights cannot be downloaded here; the layout was checked by
  parameter count (78,700,803 at 64x64 with 3 channels).

Every preset uses the settings of the diffusers ports of the original DDPM code
(``flip_sin_to_cos=False``, ``freq_shift=1``, ``downsample_padding=0``, ``norm_eps=1e-6``)
and ``dropout=0``.  Class conditioning: ``num_class_embeds=num_classes`` (no null class;
add one through ``config`` only when classifier-free guidance is wanted later).

Taps: the output of every down block, the mid block and every up block.  A down block
returns ``(hidden_states, residuals)``; the tap records ``hidden_states`` (element 0).
"""

from __future__ import annotations

from typing import Any, ClassVar

from diffusers import UNet2DModel
from torch import Tensor

from harness import hookimpl
from harness.backbone import Backbone
from harness.errors import OptionError
from plugins.backbones._common import (
    ConditionedModel,
    check_common,
    class_labels,
    init_kwargs,
    pretrained_kwargs,
    resolve,
    timesteps,
)

_DDPM = {
    "act_fn": "silu",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "dropout": 0.0,
}


def _layout(channels: tuple[int, ...], attn_levels: tuple[int, ...]) -> dict[str, Any]:
    n = len(channels)
    return {
        "block_out_channels": list(channels),
        "down_block_types": [
            "AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)
        ],
        "up_block_types": [
            "AttnUpBlock2D" if (n - 1 - i) in attn_levels else "UpBlock2D" for i in range(n)
        ],
    }


def _preset(channels, attn_levels, layers, groups, head_dim) -> dict[str, Any]:
    return {
        **_DDPM,
        **_layout(channels, attn_levels),
        "layers_per_block": layers,
        "norm_num_groups": groups,
        "attention_head_dim": head_dim,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "xxs": _preset((8, 16), (1,), 1, 4, 8),
    "xs": _preset((16, 32, 32), (1,), 1, 8, 8),
    "s": _preset((32, 64, 64), (1,), 1, 8, 8),
    "m": _preset((48, 96, 96), (1,), 2, 8, 8),
    "l": _preset((80, 160, 160), (1,), 2, 16, 16),
    "cifar10": _preset((128, 256, 256, 256), (1,), 2, 32, None),
    "celeba": _preset((128, 256, 256, 256, 512), (2,), 2, 32, None),
}

_DERIVED = {
    "sample_size": "image_size",
    "in_channels": "channels",
    "out_channels": "channels",
    "num_class_embeds": "num_classes",
}


class UNetModel(ConditionedModel):
    """A ``UNet2DModel`` predicting epsilon: ``forward(x_t, t, cond) -> [B, C, H, W]``."""

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x_t.shape[0]
        labels = class_labels(cond, self.num_classes, b, x_t.device, "unet")
        return self.inner(x_t, timesteps(t, b, x_t.device), class_labels=labels).sample

    def extra_tap_sets(self) -> dict[str, list[str]]:
        return {"submodules": unet_submodule_taps(self.inner)}


class UNetBackbone(Backbone):
    """DDPM U-Net (diffusers UNet2DModel), from ~45k to 78.7M parameters."""

    name: ClassVar[str] = "unet"
    tap_sets: ClassVar[tuple[str, ...]] = ("blocks", "submodules")
    default_process: ClassVar[str] = "ddpm"
    default_preset: ClassVar[str] = "s"
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    cpu_presets: ClassVar[tuple[str, ...]] = ("xxs", "xs", "s", "m", "l")

    def _arch(self, preset: str | None, config: dict[str, Any] | None) -> tuple[str, dict]:
        valid = [k for k in init_kwargs(UNet2DModel) if k not in _DERIVED]
        return resolve(
            self.name, self.presets, preset, self.default_preset, config, valid, _DERIVED
        )

    @staticmethod
    def _check_size(image_size: int, arch: dict[str, Any], label: str) -> None:
        factor = 2 ** (len(arch["block_out_channels"]) - 1)
        if image_size % factor:
            raise OptionError(
                f"unet {label}: image_size {image_size} must be divisible by {factor} "
                f"(2**(levels-1) for {len(arch['block_out_channels'])} levels)"
            )

    def check_image_size(self, image_size: int, preset: str | None = None) -> None:
        _, arch = self._arch(preset, None)
        self._check_size(image_size, arch, repr(preset or self.default_preset))

    def build(
        self,
        preset: str | None = None,
        *,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        config: dict[str, Any] | None = None,
    ) -> UNetModel:
        check_common(self.name, image_size, channels, num_classes)
        preset, arch = self._arch(preset, config)
        self._check_size(image_size, arch, repr(preset))
        try:
            inner = UNet2DModel(
                sample_size=image_size,
                in_channels=channels,
                out_channels=channels,
                num_class_embeds=num_classes or None,
                **arch,
            )
        except (ValueError, TypeError) as exc:
            raise OptionError(f"unet config is invalid: {exc}") from None
        spec = {
            "backbone": self.name,
            "preset": preset,
            "config": arch,
            "image_size": image_size,
            "channels": channels,
            "num_classes": num_classes,
        }
        return UNetModel(inner, self.name, spec, unet_taps(inner))

    def from_pretrained(self, path_or_id: str, **kwargs: Any) -> UNetModel:
        """Load ``UNet2DModel.from_pretrained(path_or_id, **kwargs)`` (folder or hub id)."""
        try:
            inner = UNet2DModel.from_pretrained(path_or_id, **pretrained_kwargs(kwargs))
        except (OSError, ValueError) as exc:
            raise OptionError(f"unet: cannot load pretrained {path_or_id!r}: {exc}") from None
        cfg = dict(inner.config)
        if cfg["in_channels"] != cfg["out_channels"]:
            raise OptionError(
                f"unet: {path_or_id!r} maps {cfg['in_channels']} to {cfg['out_channels']} "
                "channels; kdbench needs a model that predicts epsilon of its input"
            )
        size = cfg["sample_size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        if not size:
            raise OptionError(f"unet: {path_or_id!r} does not state its sample_size")
        valid = set(init_kwargs(UNet2DModel)) - set(_DERIVED)
        arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in valid}
        spec = {
            "backbone": self.name,
            "preset": None,
            "config": arch,
            "image_size": int(size),
            "channels": cfg["in_channels"],
            "num_classes": cfg.get("num_class_embeds") or 0,
            "source": str(path_or_id),
        }
        return UNetModel(inner, self.name, spec, unet_taps(inner))


def unet_submodule_taps(inner: UNet2DModel) -> list[str]:
    """Diff-Pruning's FitNet hooks in diffusers names: the mid block's children (resnet,
    attention, resnet), then per down and up level every resnet, attention and resampler
    (41 on the CelebA U-Net: 3 + 16 + 22)."""
    taps = []
    if inner.mid_block is not None:
        mid = inner.mid_block
        taps.append("inner.mid_block.resnets.0")
        for i in range(len(mid.attentions)):
            taps.append(f"inner.mid_block.attentions.{i}")
            taps.append(f"inner.mid_block.resnets.{i + 1}")
    for kind, blocks in (("down_blocks", inner.down_blocks), ("up_blocks", inner.up_blocks)):
        for i, block in enumerate(blocks):
            for part in ("resnets", "attentions", "downsamplers", "upsamplers"):
                for j in range(len(getattr(block, part, None) or [])):
                    taps.append(f"inner.{kind}.{i}.{part}.{j}")
    return taps


def unet_taps(inner: UNet2DModel) -> list[str]:
    taps = [f"inner.down_blocks.{i}" for i in range(len(inner.down_blocks))]
    if inner.mid_block is not None:
        taps.append("inner.mid_block")
    taps += [f"inner.up_blocks.{i}" for i in range(len(inner.up_blocks))]
    return taps


@hookimpl
def register_backbones(register):
    register(UNetBackbone)
