"""Search-space specs that objectives declare for equal-budget tuning (``kdbench tune``).

An objective lists its tunable options in the class attribute ``tunables``
(``{"weight": LogUniform(0.1, 10), "coarse": Choice(["l1", "l2"])}``); ``weight`` is the
objective's KD weight in the summed loss.  A tuner maps points of the unit cube (from a
quasi-random sequence, as AlgoPerf's external tuning ruleset does: Dahl et al., 2023,
arXiv 2306.07179) onto these specs: each spec turns one coordinate ``u`` in [0, 1) into a
value.  Floats are rounded to 3 significant digits, so labels and written grid files stay
readable (the rounding moves a log-uniform point by < 0.5 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.errors import OptionError


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def _bounds(kind: str, low: Any, high: Any) -> tuple[float, float]:
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise OptionError(f"{kind} range needs two finite numbers, got [{low!r}, {high!r}]")
    if low > high:
        raise OptionError(f"{kind} range [{low:g}, {high:g}] has low > high")
    return float(low), float(high)


@dataclass(frozen=True)
class LogUniform:
    """A positive number, uniform in log-space on [low, high] (the KD weight's scale)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds("log-uniform", self.low, self.high)
        if self.low <= 0:
            raise OptionError(f"log-uniform range needs low > 0, got {self.low!r}")

    def value(self, u: float) -> float:
        a, b = math.log(self.low), math.log(self.high)
        return _round(math.exp(a + u * (b - a)))

    def narrowed(self, given: Any) -> LogUniform:
        """The same kind of spec on a user's ``[low, high]``."""
        return LogUniform(*_pair(given))

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform:
    """A number uniform on [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds("uniform", self.low, self.high)

    def value(self, u: float) -> float:
        return _round(self.low + u * (self.high - self.low))

    def narrowed(self, given: Any) -> Uniform:
        return Uniform(*_pair(given))

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice:
    """One of a few values, each with an equal share of the unit interval."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.values, (list, tuple)) or not self.values:
            raise OptionError(f"a choice needs a non-empty list of values, got {self.values!r}")
        object.__setattr__(self, "values", tuple(self.values))

    def value(self, u: float) -> Any:
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def narrowed(self, given: Any) -> Choice:
        if not isinstance(given, (list, tuple)):
            raise OptionError(f"a choice needs a list of values, got {given!r}")
        return Choice(tuple(given))

    def describe(self) -> str:
        return "{" + ", ".join(str(v) for v in self.values) + "}"


Tunable = LogUniform | Uniform | Choice


def _pair(given: Any) -> tuple[Any, Any]:
    if not isinstance(given, (list, tuple)) or len(given) != 2:
        raise OptionError(f"a range is [low, high], got {given!r}")
    return given[0], given[1]
