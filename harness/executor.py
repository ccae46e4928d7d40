"""The executor contract and the tools every executor shares.

``run(cells, work)`` calls ``work(cell)`` (a picklable top-level function) for every
cell and returns one result dict per cell, in order.  A cell whose process dies is
reported as ``{"status": "failed", "error": ...}``; the others go on.  Ctrl-C ends in
:class:`GridInterrupted`, which carries one result per cell.

The helpers below are what the built-in executors (local, slurm, ray) are made of, so a
third-party executor reports results, errors, progress and interrupts the same way:
:func:`outcome`, :func:`failed`, :func:`skipped` and :func:`finalize` make result dicts,
:func:`one_line` and :func:`describe` make one-line errors, :class:`InterruptCounter`
counts Ctrl-C while a grid runs, :func:`progress_bar` and :func:`tally` show progress,
:func:`check_positive` and :func:`check_non_negative` validate numeric options,
:meth:`Executor.conclude` ends a run (keeps the results, raises :class:`GridInterrupted`
after Ctrl-C).
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tqdm import tqdm

from harness.errors import KDBenchError, OptionError
from harness.schema import WORK_STATUSES, Status

Cell = Any
"""A job: a record with ``cell_id`` and ``label`` attributes (``harness.jobs``), or a
mapping with those keys."""
Work = Callable[[Cell], dict[str, Any]]


def identify(cell: Cell) -> tuple[str, str | None]:
    """A cell's ``cell_id`` and ``label`` (None when it has none)."""
    if isinstance(cell, Mapping):
        return cell["cell_id"], cell.get("label")
    return cell.cell_id, getattr(cell, "label", None)


def outcome(cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    """The result dict of a cell the executor reports on itself."""
    cell_id, label = identify(cell)
    return {"cell_id": cell_id, "label": label, "status": status, **extra}


def failed(cell: Cell, error: str) -> dict[str, Any]:
    return outcome(cell, Status.FAILED, error=one_line(error))


def skipped(cell: Cell) -> dict[str, Any]:
    return outcome(cell, Status.SKIPPED)


def one_line(text: str, limit: int = 500) -> str:
    """The last non-empty line of ``text`` (a traceback's exception line), whitespace folded."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = " ".join(lines[-1].split()) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """``"ValueError: message"`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def finalize(cell: Cell, raw: Any) -> dict[str, Any]:
    """Check what ``work`` returned and tie it to its cell (``cell_id`` always the cell's)."""
    if not isinstance(raw, dict):
        return failed(cell, f"work returned {type(raw).__name__}, expected a dict with a 'status'")
    status = raw.get("status")
    if status not in WORK_STATUSES:
        return failed(cell, f"work returned status {status!r}; valid: {', '.join(WORK_STATUSES)}")
    cell_id, label = identify(cell)
    return {"label": label, **raw, "cell_id": cell_id}


def progress_bar(total: int, progress: bool | None, desc: str) -> tqdm:
    """A tqdm bar over cells; ``progress=None`` shows it only when stderr is a terminal."""
    disable = None if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="cell", disable=disable, dynamic_ncols=True)


def tally(bar: tqdm, results: list[dict[str, Any] | None]) -> None:
    """Show the count of each status so far next to the bar."""
    counts = Counter(r["status"] for r in results if r is not None)
    bar.set_postfix_str(", ".join(f"{status} {n}" for status, n in sorted(counts.items())))


class InterruptCounter:
    """Count SIGINTs and SIGTERMs while a grid runs instead of letting them raise anywhere.

    SIGTERM (SLURM at the end of a job's time, ``docker stop``, systemd) is handled as
    Ctrl-C; ``signum`` is the first signal received (the exit code is ``128 + signum``).
    Only in the main thread, and only for signals that are not ignored (a background job
    started with SIGINT ignored keeps ignoring it). While ``raising`` is true the handler
    also raises ``KeyboardInterrupt`` (a cell run in-process must see it).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.count = 0
        self.signum: int | None = None
        self.raising = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.raising:
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptCounter:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                if previous not in (signal.SIG_IGN, None):
                    self._previous[signum] = previous
                    signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def import_extra(module: str, executor: str, extra: str) -> Any:
    """``import module``, or a KDBenchError naming the pip extra that installs it.

    Executors import their cluster library on first use, so that loading the plugin (and
    ``kdbench plugins``) works without it.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        # The install hint is the whole story; ImportError's chain would be noise.
        raise KDBenchError(
            f"the {executor} executor needs `pip install kdbench[{extra}]`"
        ) from None


def check_positive(
    executor: str, option: str, value: Any, kind: type = int, allow_none: bool = True
) -> None:
    """Raise OptionError unless ``value`` is a positive ``kind`` (or None when allowed)."""
    _check_number(executor, option, value, kind, allow_none, zero=False)


def check_non_negative(
    executor: str, option: str, value: Any, kind: type = int, allow_none: bool = True
) -> None:
    """Raise OptionError unless ``value`` is a ``kind`` >= 0 (or None when allowed)."""
    _check_number(executor, option, value, kind, allow_none, zero=True)


def _check_number(
    executor: str, option: str, value: Any, kind: type, allow_none: bool, zero: bool
) -> None:
    if value is None and allow_none:
        return
    numeric = (int, float) if kind is float else (int,)
    valid = not isinstance(value, bool) and isinstance(value, numeric)
    if not valid or value < 0 or (value == 0 and not zero):
        noun = "integer" if kind is int else "number"
        what = f"{'an' if kind is int else 'a'} {noun} >= 0" if zero else f"a positive {noun}"
        unset = " or unset" if allow_none else ""
        raise OptionError(
            f"executor {executor!r}: option {option} must be {what}{unset}, got {value!r}"
        )


class Executor:
    """Base class of executors: ``options`` holds the keywords it was made with, and
    ``results`` the results of the last :meth:`run`, also when it was interrupted."""

    name: ClassVar[str] = ""

    def __init__(self, **options: Any):
        self.options = options
        self.results: list[dict[str, Any]] | None = None

    def conclude(
        self, results: list[dict[str, Any]], interrupts: InterruptCounter
    ) -> list[dict[str, Any]]:
        """Keep and return ``results`` (one per cell, in order); after a Ctrl-C or SIGTERM
        raise :class:`GridInterrupted` with them instead."""
        self.results = results
        if interrupts.count:
            raise GridInterrupted(results, interrupts.signum)
        return results

    def run(
        self, cells: list[dict[str, Any]], work: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        raise NotImplementedError


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the grid; ``results`` holds one dict per cell, in order.

    ``signum`` is the signal that stopped it (SIGINT unless told otherwise); a command
    line exits with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, results: list[dict[str, Any]], signum: int | None = None):
        counts = Counter(r["status"] for r in results)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.signum = int(signum or signal.SIGINT)
        name = signal.Signals(self.signum).name
        super().__init__(f"grid interrupted by {name} ({summary})")
        self.results = results

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
