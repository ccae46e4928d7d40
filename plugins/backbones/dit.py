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

from typing import Any, ClassVar

import torch
from diffusers import DiTTransformer2DModel
from torch import Tensor

from harness import hookimpl
from harness.backbone import Backbone
from harness.errors import OptionError
from plugins.backbones._common import (
    ConditionedModel,
    check_common,
    check_patch_size,
    class_labels,
    init_kwargs,
    pretrained_kwargs,
    resolve,
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


class DiTBackbone(Backbone):
    """DiT (diffusers DiTTransformer2DModel), from ~60k parameters to DiT-XL/2."""

    name: ClassVar[str] = "dit"
    default_process: ClassVar[str] = "ddpm"
    default_preset: ClassVar[str] = "s"
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    cpu_presets: ClassVar[tuple[str, ...]] = ("xxs", "xs", "s", "m", "l")

    def _arch(self, preset: str | None, config: dict[str, Any] | None) -> tuple[str, dict]:
        valid = [k for k in init_kwargs(DiTTransformer2DModel) if k not in _DERIVED]
        return resolve(
            self.name, self.presets, preset, self.default_preset, config, valid, _DERIVED
        )

    @staticmethod
    def _check_size(image_size: int, arch: dict[str, Any], label: str) -> None:
        check_patch_size("dit", image_size, arch, label)

    def check_image_size(self, image_size: int, preset: str | None = None) -> None:
        name, arch = self._arch(preset, None)
        self._check_size(image_size, arch, repr(name))

    def build(
        self,
        preset: str | None = None,
        *,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        config: dict[str, Any] | None = None,
    ) -> DiTModel:
        check_common(self.name, image_size, channels, num_classes)
        name, arch = self._arch(preset, config)
        self._check_size(image_size, arch, repr(name))
        out = arch.pop("out_channels", None)
        if out not in (None, channels, 2 * channels):
            raise OptionError(
                f"dit: out_channels must be {channels} (epsilon) or {2 * channels} "
                f"(epsilon and learned sigma), got {out!r}"
            )
        if out == 2 * channels:
            arch["out_channels"] = out
        try:
            inner = DiTTransformer2DModel(
                sample_size=image_size,
                in_channels=channels,
                out_channels=arch.get("out_channels", channels),
                num_embeds_ada_norm=max(num_classes, 1),
                **{k: v for k, v in arch.items() if k != "out_channels"},
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise OptionError(f"dit config is invalid: {exc}") from exc
        disable_class_dropout(inner)
        spec = {
            "backbone": self.name,
            "preset": name,
            "config": arch,
            "image_size": image_size,
            "channels": channels,
            "num_classes": num_classes,
        }
        return DiTModel(inner, self.name, spec, dit_taps(inner))

    def from_pretrained(self, path_or_id: str, **kwargs: Any) -> DiTModel:
        """``DiTTransformer2DModel.from_pretrained(path_or_id, **kwargs)`` (folder or hub
        id; pass ``subfolder="transformer"`` for a pipeline folder)."""
        try:
            inner = DiTTransformer2DModel.from_pretrained(path_or_id, **pretrained_kwargs(kwargs))
        except (OSError, ValueError) as exc:
            raise OptionError(f"dit: cannot load pretrained {path_or_id!r}: {exc}") from exc
        disable_class_dropout(inner)
        cfg = dict(inner.config)
        channels = cfg["in_channels"]
        valid = set(init_kwargs(DiTTransformer2DModel)) - set(_DERIVED) - {"out_channels"}
        arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in valid}
        if inner.out_channels == 2 * channels:
            arch["out_channels"] = inner.out_channels
        elif inner.out_channels != channels:
            raise OptionError(
                f"dit: {path_or_id!r} predicts {inner.out_channels} channels from {channels}; "
                f"kdbench needs {channels} or {2 * channels}"
            )
        spec = {
            "backbone": self.name,
            "preset": None,
            "config": arch,
            "image_size": int(cfg["sample_size"]),
            "channels": channels,
            "num_classes": int(cfg["num_embeds_ada_norm"]),
            "source": str(path_or_id),
        }
        return DiTModel(inner, self.name, spec, dit_taps(inner))


def dit_taps(inner: DiTTransformer2DModel) -> list[str]:
    return [f"inner.transformer_blocks.{i}" for i in range(len(inner.transformer_blocks))]


@hookimpl
def register_backbones(register):
    register(DiTBackbone)
