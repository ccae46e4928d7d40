"""Option validation shared by the built-in objectives (one-line ``OptionError`` messages)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from harness.errors import OptionError, ShapeError


def check_choice(objective: str, option: str, value: Any, valid: Iterable[str]) -> str:
    """``value`` must be one of ``valid``."""
    valid = list(valid)
    if not isinstance(value, str) or value not in valid:
        listed = ", ".join(repr(v) for v in valid)
        raise OptionError(f"objective {objective!r}: {option}={value!r} is not valid; use {listed}")
    return value


def check_number(
    objective: str, option: str, value: Any, *, minimum: float = 0.0, strict: bool = False
) -> float:
    """``value`` must be a finite real number ``>= minimum`` (``> minimum`` when ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise OptionError(
            f"objective {objective!r}: {option} must be a finite number {bound}, got {value!r}"
        )
    return float(value)


def check_int(objective: str, option: str, value: Any, *, minimum: int, why: str = "") -> int:
    """``value`` must be an integer ``>= minimum`` (bools are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        reason = f" ({why})" if why else ""
        raise OptionError(
            f"objective {objective!r}: {option} must be an integer >= {minimum}{reason}, "
            f"got {value!r}"
        )
    return value


def as_float(x: Tensor) -> Tensor:
    """Half and bfloat16 tensors are upcast to float32 for the loss arithmetic."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_image(objective: str, x: Tensor) -> None:
    """LIFT and PLACE fit per (sample, channel) over H*W: they need ``[B, C, H, W]``."""
    if x.dim() != 4:
        raise ShapeError(
            f"objective {objective!r} needs predictions shaped [B, C, H, W], got {tuple(x.shape)}"
        )
