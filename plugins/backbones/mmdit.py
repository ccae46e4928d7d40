"""MMDiT backbone: diffusers ``SD3Transformer2DModel`` (Esser et al., "Scaling Rectified
Flow Transformers", ICML 2024), trained with rectified flow (velocity) by default.

Joint attention mixes image tokens with condition tokens.  Conditioning choices:

- Class labels: the wrapper owns two learned tables with ``num_classes + 1`` rows (the
  last row is a null class, the only row of an unconditional model): one gives
  ``cond_tokens`` tokens of width ``joint_attention_dim`` (``encoder_hidden_states``),
  the other a ``pooled_projection_dim`` vector (``pooled_projections``).  Both start from
  ``nn.Embedding``'s N(0, 1) initialisation, like diffusers' label embeddings.
- Real conditioning: ``cond`` may be a dict ``{"encoder_hidden_states": [B, L, joint],
  "pooled_projections": [B, pooled]}`` (e.g. text-encoder outputs); it is passed through.
- An unconditional model ignores label ``cond`` and uses the null row.
- ``caption_projection_dim`` always equals the model width (SD3 requires it).
- ``pos_embed_max_size`` defaults to ``image_size // patch_size`` (SD3's 96/192 only
  matter for cropping at several resolutions, which kdbench does not do).

Presets: ``xxs`` .. ``l`` (CPU ladder, ~80k to ~10.5M at 16x16, patch 2) and
``sd3-medium`` (24 joint blocks, 24 heads of 64, joint dim 4096, pooled dim 2048: ~2.0B).
Taps: the image-stream output of every joint block (a block returns
``(encoder_hidden_states, hidden_states)``; the tap records element 1, ``[B, N, D]``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from torch import Tensor, nn

from harness import hookimpl
from harness.errors import OptionError, ShapeError
from plugins.backbones._common import (
    ConditionedModel,
    DiffusersBackbone,
    class_labels,
    timesteps,
)

_WRAPPER_KEYS = {"cond_tokens": 4}


def _preset(
    width: int,
    depth: int,
    heads: int,
    joint: int | None = None,
    pooled: int | None = None,
    patch: int = 2,
    tokens: int = 4,
) -> dict[str, Any]:
    return {
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "num_layers": depth,
        "joint_attention_dim": joint or width,
        "pooled_projection_dim": pooled or width,
        "patch_size": patch,
        "cond_tokens": tokens,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "xxs": _preset(32, 2, 2),
    "xs": _preset(64, 4, 4),
    "s": _preset(96, 4, 4),
    "m": _preset(128, 6, 4),
    "l": _preset(192, 8, 6),
    "sd3-medium": _preset(1536, 24, 24, joint=4096, pooled=2048, tokens=8),
}

_DERIVED = {
    "sample_size": "image_size",
    "in_channels": "channels",
    "out_channels": "channels",
}


class MMDiTModel(ConditionedModel):
    """An ``SD3Transformer2DModel`` predicting velocity: ``forward(x_t, t, cond) -> [B,C,H,W]``."""

    def __init__(
        self, inner: SD3Transformer2DModel, backbone: str, spec: dict[str, Any], taps: list[str]
    ):
        super().__init__(inner, backbone, spec, taps)
        rows = self.num_classes + 1
        cfg = inner.config
        self.cond_tokens = int(spec["config"]["cond_tokens"])
        self.cond_embed = nn.Embedding(rows, self.cond_tokens * cfg.joint_attention_dim)
        self.pooled_embed = nn.Embedding(rows, cfg.pooled_projection_dim)
        # Every joint block returns (encoder_hidden_states, hidden_states): tap the image stream.
        self.tap_output_index = {tap: 1 for tap in taps}

    def condition(self, cond: Any, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states, pooled_projections)`` for labels, a dict, or None."""
        if isinstance(cond, dict):
            missing = {"encoder_hidden_states", "pooled_projections"} - set(cond)
            if missing:
                raise ShapeError(f"mmdit: cond dict lacks {', '.join(sorted(missing))}")
            return cond["encoder_hidden_states"], cond["pooled_projections"]
        n = self.num_classes
        labels = class_labels(cond, n, batch, device, "mmdit")
        if labels is None:
            labels = torch.full((batch,), n, dtype=torch.long, device=device)
        tokens = self.cond_embed(labels).view(batch, self.cond_tokens, -1)
        return tokens, self.pooled_embed(labels)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        b = x_t.shape[0]
        tokens, pooled = self.condition(cond, b, x_t.device)
        return self.inner(
            x_t,
            encoder_hidden_states=tokens.to(x_t.dtype),
            pooled_projections=pooled.to(x_t.dtype),
            timestep=timesteps(t, b, x_t.device),
        ).sample


class MMDiTBackbone(DiffusersBackbone):
    """MMDiT (diffusers SD3Transformer2DModel), from ~80k parameters to an SD3-medium size."""

    name = "mmdit"
    default_process = "flow"
    presets = PRESETS
    model_class = SD3Transformer2DModel
    wrapper = MMDiTModel
    derived = _DERIVED
    wrapper_keys = _WRAPPER_KEYS

    def check_arch(self, arch: dict[str, Any]) -> None:
        if not isinstance(arch["cond_tokens"], int) or arch["cond_tokens"] < 1:
            raise OptionError(
                f"mmdit: cond_tokens must be an integer >= 1, got {arch['cond_tokens']!r}"
            )

    def model_kwargs(
        self, arch: dict[str, Any], image_size: int, channels: int, num_classes: int
    ) -> dict[str, Any]:
        """The caption projection must match the width; ``arch`` records it."""
        width = arch["num_attention_heads"] * arch["attention_head_dim"]
        if arch.setdefault("caption_projection_dim", width) != width:
            raise OptionError(
                f"mmdit: caption_projection_dim must equal the width heads*head_dim = {width}, "
                f"got {arch['caption_projection_dim']}"
            )
        kwargs = {k: v for k, v in arch.items() if k not in _WRAPPER_KEYS}
        kwargs.setdefault("pos_embed_max_size", image_size // arch.get("patch_size", 2))
        return {
            "sample_size": image_size,
            "in_channels": channels,
            "out_channels": channels,
            **kwargs,
        }

    def taps(self, inner: SD3Transformer2DModel) -> list[str]:
        return mmdit_taps(inner)

    def from_pretrained(
        self, path_or_id: str, *, num_classes: int = 0, cond_tokens: int = 4, **kwargs: Any
    ) -> MMDiTModel:
        """``SD3Transformer2DModel.from_pretrained(path_or_id, **kwargs)`` (pass
        ``subfolder="transformer"`` for a pipeline folder).  The label tables are new unless
        the folder holds ``kdbench_extra.safetensors`` (written by ``export_diffusers``)."""
        inner = self.load_pretrained(path_or_id, kwargs)
        cfg = dict(inner.config)
        self.check_predicts_input(path_or_id, cfg, "the velocity")
        extra = _read_cond_tables(path_or_id, kwargs.get("subfolder"))
        if extra is not None and set(extra) != {"cond_embed.weight", "pooled_embed.weight"}:
            raise OptionError(
                f"mmdit: {path_or_id!r} has a label-table file with keys "
                f"{sorted(extra)}; expected cond_embed.weight, pooled_embed.weight"
            )
        if extra is not None:
            num_classes = extra["cond_embed.weight"].shape[0] - 1
            cond_tokens = extra["cond_embed.weight"].shape[1] // cfg["joint_attention_dim"]
        arch = self.arch_of(cfg)
        arch["cond_tokens"] = cond_tokens
        spec = self.spec(
            None,
            arch,
            image_size=int(cfg["sample_size"]),
            channels=cfg["in_channels"],
            num_classes=num_classes,
            source=str(path_or_id),
        )
        model = MMDiTModel(inner, self.name, spec, mmdit_taps(inner))
        if extra is not None:
            model.cond_embed.weight.data.copy_(extra["cond_embed.weight"])
            model.pooled_embed.weight.data.copy_(extra["pooled_embed.weight"])
        return model


def _read_cond_tables(path_or_id: str, subfolder: str | None) -> dict[str, Tensor] | None:
    from pathlib import Path

    from safetensors.torch import load_file

    from harness.modelio import EXTRA_FILE

    file = Path(path_or_id) / (subfolder or "") / EXTRA_FILE
    return load_file(str(file)) if file.is_file() else None


def mmdit_taps(inner: SD3Transformer2DModel) -> list[str]:
    return [f"inner.transformer_blocks.{i}" for i in range(len(inner.transformer_blocks))]


@hookimpl
def register_backbones(register):
    register(MMDiTBackbone)
