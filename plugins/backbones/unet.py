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

from typing import Any

from diffusers import UNet2DModel
from torch import Tensor

from harness import hookimpl
from harness.errors import OptionError
from plugins.backbones._common import (
    ConditionedModel,
    DiffusersBackbone,
    class_labels,
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


class UNetBackbone(DiffusersBackbone):
    """DDPM U-Net (diffusers UNet2DModel), from ~45k to 78.7M parameters."""

    name = "unet"
    tap_sets = ("blocks", "submodules")
    default_process = "ddpm"
    presets = PRESETS
    model_class = UNet2DModel
    wrapper = UNetModel
    derived = _DERIVED

    def check_size(self, image_size: int, arch: dict[str, Any], label: str) -> None:
        factor = 2 ** (len(arch["block_out_channels"]) - 1)
        if image_size % factor:
            raise OptionError(
                f"unet {label}: image_size {image_size} must be divisible by {factor} "
                f"(2**(levels-1) for {len(arch['block_out_channels'])} levels)"
            )

    def model_kwargs(
        self, arch: dict[str, Any], image_size: int, channels: int, num_classes: int
    ) -> dict[str, Any]:
        return {
            "sample_size": image_size,
            "in_channels": channels,
            "out_channels": channels,
            "num_class_embeds": num_classes or None,
            **arch,
        }

    def taps(self, inner: UNet2DModel) -> list[str]:
        return unet_taps(inner)

    def from_pretrained(self, path_or_id: str, **kwargs: Any) -> UNetModel:
        """Load ``UNet2DModel.from_pretrained(path_or_id, **kwargs)`` (folder or hub id)."""
        inner = self.load_pretrained(path_or_id, kwargs)
        cfg = dict(inner.config)
        self.check_predicts_input(path_or_id, cfg, "epsilon")
        size = cfg["sample_size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        if not size:
            raise OptionError(f"unet: {path_or_id!r} does not state its sample_size")
        spec = self.spec(
            None,
            self.arch_of(cfg),
            image_size=int(size),
            channels=cfg["in_channels"],
            num_classes=cfg.get("num_class_embeds") or 0,
            source=str(path_or_id),
        )
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
