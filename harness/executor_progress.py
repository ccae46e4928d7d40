"""Progress over a grid's cells that a person can follow in a terminal and in a log.

In a terminal (stderr a tty) a tqdm bar counts the cells; when stdout is not a terminal
(CI logs, ``kdbench run ... | tee log``, a SLURM log) one line per finished or failed cell
is printed instead, and a summary line at the end::

    [17/72] place | prune0.5 -> prune0.8 | s1  finished  FID 88.9  24.1 s  ETA 9 min
    cells: 70 finished, 2 failed in 31.5 min

The ETA (:class:`EtaEstimator`) is the mean duration of the most recent cells times the
number of rounds of ``workers`` parallel cells still to run: recent cells, because the
first ones of a grid also fill caches (teacher predictions, reference features).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, deque
from typing import Any, TextIO

from harness.executor import progress_bar, tally
from harness.schema import Metric


class EtaEstimator:
    """Remaining wall time of a grid from the durations of its finished cells.

    ``eta = mean(last `window` durations) * ceil(remaining / workers)``; None before the
    first cell ends.
    """

    def __init__(self, total: int, workers: int = 1, window: int = 10):
        self.total = total
        self.workers = max(1, int(workers))
        self.durations: deque[float] = deque(maxlen=window)
        self.done = 0

    def add(self, seconds: float) -> None:
        self.done += 1
        self.durations.append(float(seconds))

    def eta(self) -> float | None:
        if not self.durations:
            return None
        remaining = max(0, self.total - self.done)
        mean = sum(self.durations) / len(self.durations)
        return mean * math.ceil(remaining / self.workers)


def format_duration(seconds: float | None) -> str:
    """``"24.1 s"`` under a minute, ``"9 min"`` under an hour, then ``"2 h 05 min"``."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def cell_line(done: int, total: int, result: dict[str, Any], seconds: float, eta: float | None):
    """One line for a finished (or failed, diverged, killed) cell."""
    cell_id, label = result.get("cell_id"), result.get("label")
    status = result.get("status", "?")
    parts = [f"[{done}/{total}] {label or cell_id}", str(status)]
    fid = (result.get("metrics") or {}).get(Metric.FID)
    if isinstance(fid, (int, float)) and math.isfinite(fid):
        parts.append(f"FID {fid:.1f}")
    if result.get("error"):
        parts.append(str(result["error"]))
    parts.append(format_duration(seconds))
    if done < total:
        parts.append(f"ETA {format_duration(eta) if eta is not None else '?'}")
    return "  ".join(parts)


def summary_line(results: list[dict[str, Any] | None], seconds: float) -> str:
    counts = Counter(r["status"] for r in results if r is not None)
    what = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none run"
    return f"cells: {what} in {format_duration(seconds)}"


class CellProgress:
    """A bar in a terminal, one line per cell when ``stream`` (stdout) is not a terminal.

    ``progress``: True/False forces the bar on or off; None shows it when stderr is a
    terminal.  Lines are printed when ``lines`` is True, or (None) when ``stream`` is not a
    terminal and ``progress`` is not False.
    """

    def __init__(
        self,
        total: int,
        progress: bool | None,
        desc: str = "cells",
        workers: int = 1,
        lines: bool | None = None,
        stream: TextIO | None = None,
    ):
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        if lines is None:
            isatty = getattr(self.stream, "isatty", None)
            lines = progress is not False and not (isatty and isatty())
        self.lines = bool(lines)
        self.bar = progress_bar(total, progress, desc)
        self.estimator = EtaEstimator(total, workers)
        self.results: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def update(self, result: dict[str, Any], seconds: float) -> None:
        """Record one cell that ended after ``seconds``."""
        self.results.append(result)
        self.estimator.add(seconds)
        self.bar.update(1)
        tally(self.bar, self.results)
        if self.lines:
            line = cell_line(self.estimator.done, self.total, result, seconds, self.estimator.eta())
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.lines and self.results:
            seconds = time.monotonic() - self.started
            print(summary_line(self.results, seconds), file=self.stream, flush=True)

    def __enter__(self) -> CellProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


__all__ = [
    "CellProgress",
    "EtaEstimator",
    "cell_line",
    "format_duration",
    "summary_line",
]
