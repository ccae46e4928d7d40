"""DiT backbone: diffusers ``DiTTransformer2DModel`` (Peebles & Xie, ICCV 2023).

Class-conditional adaLN-Zero transformer on image patches; diffusers does the patch
embedding and the unpatchify, so ``forward`` returns ``[B, C, H, W]``.

Choices:

- No learned sigma: ``out_channels = channels`` (DiT's learned-variance half is dropped;
  kdbench trains with the simple epsilon loss).  A pretrained DiT that predicts ``2C``
  channels (e.g. ``facebook/DiT-XL-2-256``, subfolder ``transformer``) is accepted and
  its first ``C`` channels (epsilon) are returned.
- diffusers builds every block's label embedder with a 10% class-label dropout that is
  active in training mode.  In KD the student would see dropped labels while the eval-mode
  teacher does not, so ``build`` and ``from_pretrained`` set it to 0 in every block.  The
  embedding table keeps diffusers' extra null-class row (label ``num_classes``).
- DiT needs labels: an unconditional model (``num_classes == 0``) has one class and
  every sample gets label 0 (``cond`` is ignored).
- diffusers' DiT gives each block its own timestep and label embedder (the released
  checkpoints share one), so parameter counts are above the paper's (DiT-XL/2 at 256x256
  latents: ~750M here, 675M in the paper).

Presets: ``xxs`` .. ``l`` (CPU ladder, ~60k to ~7.6M at 16x16, patch 2) and the paper's
``dit-s2``, ``dit-b2``, ``dit-l2``, ``dit-xl2`` (depth 12/12/24/28, width 384/768/1024/1152,
6/12/16/16 heads).  The patch size is configurable (``config={"patch_size": 4}``).
Taps: the output of every transformer block (``[B, N, D]`` tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiTTransformer2DModel
from torch import Tensor

from harness import hookimpl
from harness.errors import OptionError
from plugins.backbones._common import (
    ConditionedModel,
    DiffusersBackbone,
    class_labels,
    timesteps,
)


def _preset(width: int, depth: int, heads: int, patch: int = 2) -> dict[str, Any]:
    return {
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "num_layers": depth,
        "patch_size": patch,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "xxs": _preset(32, 2, 2),
    "xs": _preset(64, 4, 4),
    "s": _preset(96, 6, 4),
    "m": _preset(128, 8, 4),
    "l": _preset(192, 10, 6),
    "dit-s2": _preset(384, 12, 6),
    "dit-b2": _preset(768, 12, 12),
    "dit-l2": _preset(1024, 24, 16),
    "dit-xl2": _preset(1152, 28, 16),
}

_DERIVED = {
    "sample_size": "image_size",
    "in_channels": "channels",
    "num_embeds_ada_norm": "num_classes",
}


def disable_class_dropout(inner: DiTTransformer2DModel) -> None:
    """Set the label dropout of every block's adaLN embedder to 0 (see module docstring)."""
    for block in inner.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0


class DiTModel(ConditionedModel):
    """A ``DiTTransformer2DModel`` predicting epsilon: ``forward(x_t, t, cond) -> [B,C,H,W]``."""

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x_t.shape[0]
        labels = class_labels(cond, self.num_classes, b, x_t.device, "dit")
        if labels is None:
            labels = torch.zeros(b, dtype=torch.long, device=x_t.device)
        out = self.inner(x_t, timestep=timesteps(t, b, x_t.device), class_labels=labels).sample
        return out[:, : x_t.shape[1]] if out.shape[1] != x_t.shape[1] else out


class DiTBackbone(DiffusersBackbone):
    """DiT (diffusers DiTTransformer2DModel), from ~60k parameters to DiT-XL/2."""

    name = "dit"
    default_process = "ddpm"
    presets = PRESETS
    model_class = DiTTransformer2DModel
    wrapper = DiTModel
    derived = _DERIVED
    invalid_config_errors = (ValueError, TypeError, NotImplementedError)

    def model_kwargs(
        self, arch: dict[str, Any], image_size: int, channels: int, num_classes: int
    ) -> dict[str, Any]:
        """``out_channels`` stays in ``arch`` only for a learned-sigma model (``2C``)."""
        out = arch.pop("out_channels", None)
        if out not in (None, channels, 2 * channels):
            raise OptionError(
                f"dit: out_channels must be {channels} (epsilon) or {2 * channels} "
                f"(epsilon and learned sigma), got {out!r}"
            )
        if out == 2 * channels:
            arch["out_channels"] = out
        return {
            "sample_size": image_size,
            "in_channels": channels,
            "out_channels": arch.get("out_channels", channels),
            "num_embeds_ada_norm": max(num_classes, 1),
            **{k: v for k, v in arch.items() if k != "out_channels"},
        }

    def prepare(self, inner: DiTTransformer2DModel) -> None:
        disable_class_dropout(inner)

    def taps(self, inner: DiTTransformer2DModel) -> list[str]:
        return dit_taps(inner)

    def from_pretrained(self, path_or_id: str, **kwargs: Any) -> DiTModel:
        """``DiTTransformer2DModel.from_pretrained(path_or_id, **kwargs)`` (folder or hub
        id; pass ``subfolder="transformer"`` for a pipeline folder)."""
        inner = self.load_pretrained(path_or_id, kwargs)
        cfg = dict(inner.config)
        channels = cfg["in_channels"]
        arch = self.arch_of(cfg, exclude=("out_channels",))
        if inner.out_channels == 2 * channels:
            arch["out_channels"] = inner.out_channels
        elif inner.out_channels != channels:
            raise OptionError(
                f"dit: {path_or_id!r} predicts {inner.out_channels} channels from {channels}; "
                f"kdbench needs {channels} or {2 * channels}"
            )
        spec = self.spec(
            None,
            arch,
            image_size=int(cfg["sample_size"]),
            channels=channels,
            num_classes=int(cfg["num_embeds_ada_norm"]),
            source=str(path_or_id),
        )
        return DiTModel(inner, self.name, spec, dit_taps(inner))


def dit_taps(inner: DiTTransformer2DModel) -> list[str]:
    return [f"inner.transformer_blocks.{i}" for i in range(len(inner.transformer_blocks))]


@hookimpl
def register_backbones(register):
    register(DiTBackbone)
