"""Cell functions for the executor tests (top level, so that every executor can pickle them).

Each reads what to do from its cell: ``dir`` (a folder for marker files), ``x``, ``sleep``,
``crash`` ("exit", "sigkill", "raise").
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _mark(cell: dict, what: str, **data) -> None:
    path = Path(cell["dir"]) / f"{cell['cell_id']}.{what}"
    path.write_text(json.dumps({"time": time.time(), "pid": os.getpid(), **data}))


def record(cell: dict) -> dict:
    """Write start and end times, sleep as asked, return x squared."""
    _mark(cell, "start")
    time.sleep(cell.get("sleep", 0.0))
    _mark(cell, "end")
    return {"status": "finished", "value": cell["x"] ** 2, "pid": os.getpid()}


def crash(cell: dict) -> dict:
    """Die in the way the cell asks for, or behave like :func:`record`."""
    how = cell.get("crash")
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "raise":
        raise ValueError(f"boom in {cell['cell_id']}")
    if how == "bad-status":
        return {"status": "done"}
    return record(cell)


def environment(cell: dict) -> dict:
    """Report what the cell's process sees of the executor's pinning and thread settings."""
    torch = sys.modules.get("torch")  # imported by the executor only when it sets threads
    _mark(cell, "start")
    time.sleep(cell.get("sleep", 0.0))
    _mark(cell, "end")
    return {
        "status": "finished",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads() if torch else None,
        "blas_threads": _blas_threads(),
        "pid": os.getpid(),
    }


def _blas_threads() -> list[int]:
    import numpy  # noqa: F401  (loads its OpenBLAS if nothing did)
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def until_interrupted(cell: dict) -> dict:
    """Run until interrupted; ``mode`` says how the cell reacts to SIGINT.

    polite: catch KeyboardInterrupt, write a marker, report killed (what a trainer does).
    raw: let KeyboardInterrupt escape.  stubborn: ignore SIGINT altogether.
    """
    mode = cell.get("mode", "polite")
    if mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _mark(cell, "start")
    try:
        for _ in range(1200):  # training steps (Ray delivers its interrupt between them)
            time.sleep(0.1)
    except KeyboardInterrupt:
        if mode == "raw":
            raise
        sigints = 1
        try:
            time.sleep(0.5)  # saving the checkpoint: a second SIGINT here would be harmful
        except KeyboardInterrupt:
            sigints += 1
        _mark(cell, "interrupted", sigints=sigints)
        return {"status": "killed", "note": "checkpoint kept"}
    return {"status": "finished"}


def resumable(cell: dict) -> dict:
    """A cell that is preempted on its first attempt and resumes from its marker file."""
    marker = Path(cell["dir"]) / f"{cell['cell_id']}.attempt"
    attempt = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempt))
    if attempt == 1:
        time.sleep(60)  # the scheduler's preemption signal arrives meanwhile
    return {"status": "finished", "attempt": attempt}


def hang(cell: dict) -> dict:
    """A cell that never returns and ignores SIGINT and SIGTERM (a deadlocked plugin)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(cell, "start")
    while True:
        time.sleep(0.1)


def hang_or_record(cell: dict) -> dict:
    """The cell ``hung`` hangs; the others behave like :func:`record`."""
    return hang(cell) if cell["cell_id"] == "hung" else record(cell)


def polite_or_hang(cell: dict) -> dict:
    """The cell ``hung`` hangs; the others run until interrupted, politely."""
    return hang(cell) if cell["cell_id"] == "hung" else until_interrupted(cell)
