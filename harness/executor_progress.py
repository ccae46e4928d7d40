"""Progress over a grid's cells that a person can follow in a terminal and in a log.

In a terminal (stderr a tty) a tqdm bar counts the cells; when stdout is not a terminal
(CI logs, ``kdbench run ... | tee log``, a SLURM log) one line per finished or failed cell
is printed instead, and a summary line at the end::

    [17/72] place | prune0.5 -> prune0.8 | s1  finished  FID 88.9  24.1 s  ETA 9 min
    cells: 70 finished, 2 failed in 31.5 min

The ETA (:class:`EtaEstimator`) adds up the expected duration of every cell still to
run and spreads it over the ``workers``: a cell whose kind (its objective's label) has
finished before is expected to take the mean of those; any other the mean of the most
recent cells.  Kinds matter because a grid runs its cells objective by objective and a
FeatKD cell takes twice as long as a no-KD one: the recent mean alone misjudged a bench
run by 10 minutes at its start.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from typing import Any, TextIO

from harness.executor import progress_bar, tally
from harness.schema import Metric


def cell_kind(cell: Any) -> str:
    """What a cell's duration is predicted from: its objective's label (a teacher job:
    ``"teacher"``)."""
    if isinstance(cell, Mapping):
        return str(cell.get("objective_label") or cell.get("kind") or "cell")
    return str(getattr(cell, "objective_label", None) or getattr(cell, "kind", None) or "cell")


class EtaEstimator:
    """Remaining wall time of a grid from the durations of its finished cells.

    Without ``kinds``: ``mean(last `window` durations) * ceil(remaining / workers)``.
    With ``kinds`` (each cell's kind, e.g. by :func:`cell_kind`, as a list or a mapping
    from cell id): ``sum over the cells left of their kind's mean duration / workers``,
    a kind not seen yet counting the recent mean.  None before the first cell ends.
    """

    def __init__(
        self,
        total: int,
        workers: int = 1,
        window: int = 10,
        kinds: Mapping[str, str] | list[str] | None = None,
    ):
        self.total = total
        self.workers = max(1, int(workers))
        self.durations: deque[float] = deque(maxlen=window)
        self.done = 0
        values = list(kinds.values()) if isinstance(kinds, Mapping) else kinds
        self.left: Counter[str] | None = Counter(values) if values else None
        self.by_kind: dict[str, list[float]] = defaultdict(list)

    def add(self, seconds: float, kind: str | None = None) -> None:
        self.done += 1
        self.durations.append(float(seconds))
        if kind is not None and self.left is not None and self.left[kind] > 0:
            self.left[kind] -= 1
            self.by_kind[kind].append(float(seconds))

    def eta(self) -> float | None:
        if not self.durations:
            return None
        remaining = max(0, self.total - self.done)
        recent = statistics.fmean(self.durations)
        if self.left is None:
            return recent * math.ceil(remaining / self.workers)
        work = sum(
            n * (statistics.fmean(self.by_kind[k]) if self.by_kind.get(k) else recent)
            for k, n in self.left.items()
        )
        return work / self.workers if remaining else 0.0


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
    terminal and ``progress`` is not False.  ``kinds`` maps each cell id to its kind
    (:func:`cell_kind`) for the ETA.
    """

    def __init__(
        self,
        total: int,
        progress: bool | None,
        desc: str = "cells",
        workers: int = 1,
        lines: bool | None = None,
        stream: TextIO | None = None,
        kinds: Mapping[str, str] | None = None,
    ):
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        if lines is None:
            isatty = getattr(self.stream, "isatty", None)
            lines = progress is not False and not (isatty and isatty())
        self.lines = bool(lines)
        self.bar = progress_bar(total, progress, desc)
        self.kinds = dict(kinds or {})
        self.estimator = EtaEstimator(total, workers, kinds=self.kinds)
        self.results: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def update(self, result: dict[str, Any], seconds: float) -> None:
        """Record one cell that ended after ``seconds``."""
        self.results.append(result)
        self.estimator.add(seconds, self.kinds.get(str(result.get("cell_id"))))
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
    "cell_kind",
    "cell_line",
    "format_duration",
    "summary_line",
]
