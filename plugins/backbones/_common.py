"""Shared helpers of the built-in backbones: preset resolution, option checks, labels.

A model is described by its *architecture config*: the keyword arguments of the diffusers
class (plus a few wrapper options such as MMDiT's ``cond_tokens``) without the ones that
follow from the data (image size, channels, classes), which ``build`` derives.  ``build``
starts from a preset (the backbone's ``default_preset`` when none is named) and applies
``config`` on top; the model's ``spec`` stores the merged config (every preset key plus
the overrides) next to the preset name, and ``build(spec["preset"], config=spec["config"])``
rebuilds the architecture.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from harness.backbone import DiffusionModel
from harness.errors import OptionError, ShapeError
from harness.registry import did_you_mean


class ConditionedModel(DiffusionModel):
    """A ``DiffusionModel`` that knows its class count (``spec["num_classes"]``, 0: none)."""

    def __init__(
        self, inner: torch.nn.Module, backbone: str, spec: dict[str, Any], taps: list[str]
    ):
        super().__init__(inner, backbone, spec, taps)
        self.num_classes = int(spec.get("num_classes") or 0)


def init_kwargs(cls: type) -> list[str]:
    """The keyword arguments of a diffusers model's ``__init__``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]


def resolve(
    backbone: str,
    presets: dict[str, dict[str, Any]],
    preset: str | None,
    default_preset: str,
    config: dict[str, Any] | None,
    valid: list[str],
    derived: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Merge ``presets[preset]`` with ``config`` and check every key; return (preset, arch).

    ``valid``: the accepted architecture keys; ``derived``: key -> the ``build`` argument
    that sets it (rejected in ``config`` with a message naming that argument).
    """
    name = default_preset if preset is None else preset
    if name not in presets:
        raise OptionError(
            f"{backbone} has no preset {name!r}{did_you_mean(name, presets)}; "
            f"valid presets: {', '.join(presets)}"
        )
    arch = dict(presets[name])
    for key, value in (config or {}).items():
        if key in derived:
            raise OptionError(
                f"{backbone} config key {key!r} is set by build's {derived[key]!r} argument; "
                "remove it from config"
            )
        if key not in valid:
            raise OptionError(
                f"{backbone} has no config key {key!r}{did_you_mean(key, valid)}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )
        arch[key] = list(value) if isinstance(value, tuple) else value
    for key, value in arch.items():
        if isinstance(value, tuple):
            arch[key] = list(value)
    return name, arch


def check_common(backbone: str, image_size: int, channels: int, num_classes: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise OptionError(f"{backbone}: image_size must be a positive integer, got {image_size!r}")
    if not isinstance(channels, int) or channels < 1:
        raise OptionError(f"{backbone}: channels must be a positive integer, got {channels!r}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise OptionError(f"{backbone}: num_classes must be an integer >= 0, got {num_classes!r}")


def class_labels(
    cond: Any, num_classes: int, batch: int, device: torch.device, what: str, extra_rows: int = 0
) -> Tensor | None:
    """Integer labels ``[B]`` for a class-conditional model, ``None`` for an unconditional one.

    Unconditional models ignore ``cond`` (data sets give label 0 there).  A conditional
    model needs labels in ``[0, num_classes + extra_rows)``; ``extra_rows`` admits a null
    class row where the model has one.
    """
    if num_classes == 0:
        return None
    if cond is None:
        raise ShapeError(
            f"{what} is class-conditional ({num_classes} classes): pass labels [B] as cond"
        )
    if not isinstance(cond, Tensor) or cond.dim() != 1 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ShapeError(f"{what}: cond must be integer labels of shape [{batch}], got {shape}")
    if cond.is_floating_point():
        raise ShapeError(f"{what}: cond labels must be integers, got {cond.dtype}")
    return cond.to(device=device, dtype=torch.long)


def timesteps(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``t`` as a float tensor of shape ``[B]`` (a scalar is broadcast)."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ShapeError(f"timesteps must have shape [{batch}], got {tuple(t.shape)}")
    return t.float()


def pretrained_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` kwargs; without ``accelerate`` installed, load the plain way."""
    import importlib.util

    out = dict(kwargs)
    if importlib.util.find_spec("accelerate") is None:
        out.setdefault("low_cpu_mem_usage", False)
    return out


def check_patch_size(backbone: str, image_size: int, arch: dict[str, Any], label: str) -> None:
    """A transformer backbone patchifies the image: its size must be a multiple of the patch."""
    patch = arch.get("patch_size", 2)
    if image_size % patch:
        raise OptionError(
            f"{backbone} {label}: image_size {image_size} must be divisible by the patch size "
            f"{patch}"
        )
