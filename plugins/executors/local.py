"""The ``local`` executor: every cell in a fresh process on this machine.

Choices:

- One process per cell, at most ``workers`` at a time; the result comes back through a
  Pipe.  A worker that dies (segfault, OOM kill, SIGKILL, an exception that ``work`` did
  not catch) gives ``{"status": "failed", "error": "<one line>"}`` and the grid goes on.
- Cheap start with isolation kept: by default (``start_method="forkserver"`` where the
  platform has it) cells are forked from multiprocessing's *forkserver*, a clean
  single-threaded process started once per grid that imports the heavy modules first
  (``preload``: torch, diffusers, MLflow and the cell's own modules), so a cell does not
  pay those imports again, yet each cell is still a fresh process that cannot corrupt
  the next.  The forkserver only imports: it never initialises CUDA (no fork after CUDA
  init) and never runs a torch op (no OpenMP pool to fork).  The parent's environment
  (``CUDA_VISIBLE_DEVICES`` pinning included), stdout and stderr are handed to each cell
  as they are when the cell starts, as a spawned process would see them.
  ``start_method="spawn"`` starts every cell from scratch (the imports again).
- GPUs: by default one worker per visible CUDA device, each pinned with
  ``CUDA_VISIBLE_DEVICES=<its device>``; more workers than devices share them round-robin.
  Without a GPU the default is one worker. ``threads`` exports ``OMP_NUM_THREADS`` and
  ``MKL_NUM_THREADS`` to the child and sets torch's and the loaded BLAS libraries' thread
  pools to it there (``harness.threads``).
- Ctrl-C and SIGTERM (SLURM, ``docker stop``, systemd): while the grid runs, both are only
  counted in the parent. The executor then sends one SIGINT to each running cell's
  process group (each cell leads its own group, so a terminal's Ctrl-C does not hit it
  twice), which surfaces as ``KeyboardInterrupt`` inside ``work``; it waits ``grace_s``
  seconds, then kills what is left (a second signal cuts the wait short). Cells not
  started are ``"skipped"``, interrupted ones ``"killed"`` unless ``work`` returned its own
  result. Finally it raises :class:`GridInterrupted`, a ``KeyboardInterrupt`` whose
  ``results`` attribute holds one dict per cell, in order, and whose ``signum`` says
  which signal stopped it; the same list is kept in the executor's ``results``.
- A hung cell: ``timeout_s`` bounds each cell's wall time. A cell past it is killed
  (SIGKILL to its process group: a hung cell cannot be trusted to stop) and reported
  ``failed`` with ``"timed out after N s"``; the grid goes on and a re-run resumes it
  from its last checkpoint.
- No orphans: a cell's process ends when the grid's process does, even by SIGKILL
  (:mod:`harness.executor_child`).
- Progress: a bar in a terminal, one line per cell with an ETA when stdout is not one
  (:mod:`harness.executor_progress`).

The result, error, progress and interrupt helpers come from the core
(:mod:`harness.executor`), as for every executor.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_handles
from typing import Any

from harness import hookimpl
from harness.errors import OptionError
from harness.executor import (
    Cell,
    Executor,
    InterruptCounter,
    Work,
    check_non_negative,
    check_positive,
    describe,
    failed,
    finalize,
    identify,
    outcome,
    skipped,
)
from harness.executor_progress import CellProgress
from harness.schema import Status

_POLL_S = 0.2

START_METHODS = ("forkserver", "spawn")
DEFAULT_PRELOAD = (
    "torch",
    "torchvision",
    "timm",
    "torch_pruning",
    "diffusers",
    "scipy.io",
    "sklearn.datasets",
    "sklearn.model_selection",
    "PIL.PngImagePlugin",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.db.utils",
    "alembic.command",
    "alembic.autogenerate",
    "alembic.runtime.migration",
    "mako.template",
    "harness.cell",
    "harness.capacity",
    "harness.evaluate",
    "harness.features",
    "harness.metrics",
    "harness.modelio",
    "harness.process",
    "harness.pruning",
    "harness.trainer",
    "harness.tracking",
    "harness.teacher_cache",
)
"""What the forkserver imports once, found by listing the modules a cell of the embedded
default imports after these (import only: no CUDA, no torch ops, no threads started by
kdbench; a module missing here is skipped by the forkserver)."""


def default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# ---------------------------------------------------------------------------------------
# GPU pinning (pure functions)


def gpu_ids(count: int, visible: str | None) -> list[str]:
    """The ids to pin workers to: ``count`` devices, named as ``CUDA_VISIBLE_DEVICES`` names them.

    ``visible`` is the parent's ``CUDA_VISIBLE_DEVICES`` (None when unset): with ``"3,5"`` the
    children get ``"3"`` and ``"5"`` (indices, UUIDs and MIG ids are passed through as given).
    """
    if visible is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return entries[:count]


def device_slots(workers: int | None, gpus: list[str]) -> list[str | None]:
    """One entry per worker slot: the device it is pinned to, or None on a CPU-only machine.

    ``workers=None`` means one worker per GPU (one worker without GPUs); more workers than
    GPUs share them round-robin.
    """
    if workers is None:
        workers = len(gpus) or 1
    if not gpus:
        return [None] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


_GPU_DRIVER_PATHS = ("/proc/driver/nvidia/gpus", "/dev/nvidiactl", "/dev/kfd")


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use (empty without torch or CUDA).

    On Linux without an NVIDIA or ROCm driver this answers without importing torch (seconds).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not gpu_ids(1, visible):
        return []
    if (
        sys.platform.startswith("linux")
        and "torch" not in sys.modules
        and not any(os.path.exists(p) for p in _GPU_DRIVER_PATHS)
    ):
        return []
    try:
        import torch
    except ImportError:
        return []
    return gpu_ids(torch.cuda.device_count(), visible)


# ---------------------------------------------------------------------------------------
# The child process


class _InheritedFd:
    """A file descriptor of the parent handed to the child as it starts (spawn or forkserver)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_detach_fd, (reduction.DupFd(self.fd),))


def _detach_fd(dup: Any) -> int:
    return dup.detach()


def _adopt(env: dict[str, str], stdio: tuple[Any, Any]) -> None:
    """Take the parent's environment and stdout/stderr as they were when the cell started."""
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    for target, source in zip((1, 2), stdio):
        if isinstance(source, int) and source != target:
            os.dup2(source, target)
            os.close(source)


def _child_main(
    payload: bytes,
    conn: Any,
    threads: int | None,
    env: dict[str, str] | None = None,
    stdio: tuple[Any, Any] = (None, None),
) -> None:
    """Entry point of a cell's process: run ``work(cell)`` and send back one reply."""
    from harness.executor_child import guard_cell_process

    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own process group: the parent alone decides when to interrupt it
    guard_cell_process()  # SIGINT/SIGTERM interrupt once, whatever was inherited; no orphans
    if env is not None:
        _adopt(env, stdio)
    registry = sys.modules.get("harness.registry")
    if registry is not None and registry._state is not None:
        registry.reload()  # loaded in the forkserver: find the plugins this cell's path has
    try:
        if threads:
            from harness.threads import limit_threads

            limit_threads(threads)
        work, cell = pickle.loads(payload)
        reply: tuple[str, Any] = ("result", work(cell))
    except KeyboardInterrupt:
        reply = ("killed", "interrupted before the cell returned")
    except BaseException as exc:  # SystemExit too: the cell did not return a result
        traceback.print_exc()
        reply = ("error", describe(exc))
    try:
        conn.send(reply)
    except Exception as exc:  # an unpicklable result
        conn.send(("error", f"the cell's result cannot be sent back: {describe(exc)}"))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()


def _signal_group(proc: Any, signum: int) -> None:
    """Send ``signum`` to the cell's process group (its own data-loader workers included)."""
    if proc.pid is None or proc.exitcode is not None:
        return
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)  # not yet its own group leader


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    if code:
        return f"worker exited with code {code} without returning a result"
    return "worker exited without returning a result"


@dataclass
class _Running:
    index: int
    cell: Cell
    slot: int
    proc: Any
    conn: Any
    reply: tuple[str, Any] | None = None
    interrupted: bool = False
    note: str = ""
    started: float = 0.0
    timed_out: float | None = None  # the limit it ran past

    def read(self) -> None:
        """Take the child's reply (or notice that it closed the pipe without one)."""
        if self.conn is None:
            return
        try:
            self.reply = self.conn.recv()
        except (EOFError, OSError):
            pass
        self.conn.close()
        self.conn = None

    def result(self) -> dict[str, Any]:
        if self.reply is not None:
            kind, value = self.reply
            if kind == "result":
                return finalize(self.cell, value)
            if kind == "killed":
                return outcome(self.cell, Status.KILLED, error=value)
            return failed(self.cell, value)
        reason = _exit_reason(self.proc.exitcode)
        if self.timed_out is not None:
            return failed(self.cell, f"timed out after {self.timed_out:g} s")
        if self.interrupted:
            return outcome(self.cell, Status.KILLED, error=self.note or f"interrupted; {reason}")
        return failed(self.cell, reason)


# ---------------------------------------------------------------------------------------
# The executor


class LocalExecutor(Executor):
    """Run each cell in a fresh process on this machine, one worker per GPU by default.

    Options: ``workers`` (parallel cells; default one per visible CUDA device, else 1),
    ``threads`` (torch threads per cell), ``inprocess`` (run cells in this process, for
    debugging), ``grace_s`` (how long interrupted cells may take to stop), ``progress``
    (show a bar: True/False, None = when stderr is a terminal; lines when stdout is not a
    terminal unless False), ``timeout_s`` (a cell's wall-time limit; None = none),
    ``start_method`` (``"forkserver"``, the default where available, or ``"spawn"``),
    ``preload`` (modules the forkserver imports once; default :data:`DEFAULT_PRELOAD`).

    After :meth:`run`, ``self.results`` holds the results of the last run, also when it
    was interrupted (then :class:`GridInterrupted` carries the same list).
    """

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        threads: int | None = None,
        inprocess: bool = False,
        grace_s: float = 30.0,
        progress: bool | None = None,
        timeout_s: float | None = None,
        start_method: str | None = None,
        preload: list[str] | tuple[str, ...] | None = None,
    ):
        check_positive(self.name, "workers", workers)
        check_positive(self.name, "threads", threads)
        check_positive(self.name, "timeout_s", timeout_s, kind=float)
        if start_method is not None and start_method not in START_METHODS:
            raise OptionError(
                f"executor 'local': option start_method must be one of "
                f"{', '.join(START_METHODS)}, got {start_method!r}"
            )
        if preload is not None and (
            isinstance(preload, str) or not all(isinstance(m, str) for m in preload)
        ):
            raise OptionError(
                f"executor 'local': option preload must be a list of module names, got {preload!r}"
            )
        check_non_negative(self.name, "grace_s", grace_s, kind=float, allow_none=False)
        super().__init__(
            workers=workers,
            threads=threads,
            inprocess=bool(inprocess),
            grace_s=grace_s,
            progress=progress,
            timeout_s=timeout_s,
            start_method=start_method,
            preload=preload,
        )
        self.timeout_s = float(timeout_s) if timeout_s is not None else None
        self.start_method = start_method or default_start_method()
        self.preload = list(DEFAULT_PRELOAD if preload is None else preload)
        self.workers = workers
        self.threads = threads
        self.inprocess = bool(inprocess)
        self.grace_s = float(grace_s)
        self.progress = progress

    def run(self, cells: list[Cell], work: Work) -> list[dict[str, Any]]:
        """Run ``work(cell)`` for every cell; one result dict per cell, in order.

        Raises :class:`GridInterrupted` (a ``KeyboardInterrupt``) after Ctrl-C cleanup.
        """
        self.results = None
        if not cells:
            self.results = []
            return []
        if self.inprocess:
            return self._run_inprocess(cells, work)
        try:
            pickle.dumps(work)
        except Exception as exc:
            raise TypeError(
                f"work must be a picklable top-level function: {describe(exc)}"
            ) from exc
        return self._run_processes(cells, work, device_slots(self.workers, visible_gpus()))

    # -- in separate processes ----------------------------------------------------------

    def _child_env(self, device: str | None) -> dict[str, str]:
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def _context(self) -> Any:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(self.preload)  # used when the forkserver first starts
        return ctx

    def _start(
        self, ctx: Any, index: int, cell: Cell, work: Work, slot: int, device: str | None
    ) -> _Running:
        receiver, sender = ctx.Pipe(duplex=False)
        payload = pickle.dumps((work, cell))
        stdio = (_InheritedFd(1), _InheritedFd(2))
        proc = ctx.Process(
            target=_child_main,
            args=(payload, sender, self.threads, self._child_env(device), stdio),
            name=f"kdbench-cell-{identify(cell)[0]}",
        )
        sys.stdout.flush()
        sys.stderr.flush()
        proc.start()
        sender.close()  # the child holds the only write end: EOF means it is gone
        return _Running(index, cell, slot, proc, receiver, started=time.monotonic())

    def _enforce_timeout(self, running: list[_Running]) -> None:
        """Kill the process group of every cell past ``timeout_s``."""
        if self.timeout_s is None:
            return
        now = time.monotonic()
        for child in running:
            if child.timed_out is None and now - child.started > self.timeout_s:
                child.timed_out = self.timeout_s
                print(
                    f"kdbench: cell {identify(child.cell)[0]} timed out after "
                    f"{self.timeout_s:g} s; killed",
                    file=sys.stderr,
                    flush=True,
                )
                _signal_group(child.proc, signal.SIGKILL)

    @staticmethod
    def _reap(running: list[_Running], timeout: float) -> list[_Running]:
        """Wait up to ``timeout`` s; return (and remove) the children that have exited."""
        handles: dict[Any, _Running] = {}
        for child in running:
            handles[child.proc.sentinel] = child
            if child.conn is not None:
                handles[child.conn] = child
        if not handles:
            return []
        for handle in wait_for_handles(list(handles), timeout):
            child = handles[handle]
            if handle is child.conn:
                child.read()
        finished = []
        for child in list(running):
            if child.proc.exitcode is None:
                continue
            if child.conn is not None:
                if child.conn.poll(0):
                    child.read()
                else:  # a grandchild may hold the pipe open: do not block on it
                    child.conn.close()
                    child.conn = None
            child.proc.join()
            running.remove(child)
            finished.append(child)
        return finished

    def _run_processes(
        self, cells: list[Cell], work: Work, slots: list[str | None]
    ) -> list[dict[str, Any]]:
        ctx = self._context()
        results: list[dict[str, Any] | None] = [None] * len(cells)
        free = list(range(len(slots)))
        running: list[_Running] = []
        next_cell = 0
        progress = CellProgress(len(cells), self.progress, "cells", workers=len(slots))

        def settle(done: list[_Running]) -> None:
            for child in done:
                results[child.index] = child.result()
                free.append(child.slot)
                progress.update(results[child.index], time.monotonic() - child.started)

        try:
            with InterruptCounter() as interrupts:
                while (next_cell < len(cells) or running) and not interrupts.count:
                    while free and next_cell < len(cells) and not interrupts.count:
                        slot = min(free)
                        free.remove(slot)
                        running.append(
                            self._start(ctx, next_cell, cells[next_cell], work, slot, slots[slot])
                        )
                        next_cell += 1
                    settle(self._reap(running, _POLL_S))
                    self._enforce_timeout(running)
                if interrupts.count:
                    self._stop(running, interrupts, settle)
        finally:
            for child in running:  # only when something above raised: leave no orphans
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.join()
            progress.close()
        final = [r if r is not None else skipped(cells[i]) for i, r in enumerate(results)]
        return self.conclude(final, interrupts)

    def _stop(
        self,
        running: list[_Running],
        interrupts: InterruptCounter,
        settle: Callable[[list[_Running]], None],
    ) -> None:
        """Forward one SIGINT to every running cell, wait ``grace_s``, then SIGKILL the rest."""
        for child in running:
            child.interrupted = True
            _signal_group(child.proc, signal.SIGINT)
        seen = interrupts.count
        deadline = time.monotonic() + self.grace_s
        while running and time.monotonic() < deadline and interrupts.count == seen:
            settle(self._reap(running, min(_POLL_S, max(0.0, deadline - time.monotonic()))))
        # SIGKILL, not SIGTERM: in a cell SIGTERM is one more (ignored) interrupt.
        for child in running:
            child.note = f"interrupted; did not stop within {self.grace_s:g} s, terminated"
            _signal_group(child.proc, signal.SIGKILL)
        while running:
            settle(self._reap(running, _POLL_S))

    # -- in this process (debugging) ----------------------------------------------------

    def _run_inprocess(self, cells: list[Cell], work: Work) -> list[dict[str, Any]]:
        """Cells one after the other in this process (no isolation, no time limit)."""
        if self.threads:
            from harness.threads import limit_threads

            limit_threads(self.threads)
        results: list[dict[str, Any]] = []
        with (
            InterruptCounter() as interrupts,
            CellProgress(len(cells), self.progress, "cells") as progress,
        ):
            for cell in cells:
                if interrupts.count:
                    results.append(skipped(cell))
                    continue
                started = time.monotonic()
                try:
                    interrupts.raising = True
                    try:
                        raw = work(cell)
                    finally:
                        interrupts.raising = False
                    results.append(finalize(cell, raw))
                except KeyboardInterrupt:
                    interrupts.count = max(interrupts.count, 1)
                    results.append(outcome(cell, Status.KILLED, error="interrupted"))
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    results.append(failed(cell, describe(exc)))
                progress.update(results[-1], time.monotonic() - started)
        return self.conclude(results, interrupts)


@hookimpl
def register_executors(register):
    register(LocalExecutor)
