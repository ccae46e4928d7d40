"""What a cell's own process sets up before it runs: its signals and its tie to the parent.

- **One interrupt.** SIGINT and SIGTERM both raise ``KeyboardInterrupt`` once (the cell
  then flushes its metrics, keeps its checkpoint and ends its run ``killed``); later ones
  are ignored, so a scheduler's SIGTERM to every process of a job (SLURM) followed by the
  parent's forwarded SIGINT cannot interrupt the cell while it saves.  Whatever the
  dispositions the process inherited (a background job inherits SIGINT ignored).
- **No orphans.** A cell ends with the grid's process.  On Linux the kernel sends SIGTERM
  when the process that started the cell ends (``prctl(PR_SET_PDEATHSIG)``; with the
  forkserver that is the forkserver, which exits when the grid's process does).  On every
  platform a watchdog thread waits on multiprocessing's parent sentinel (a pipe whose
  write end only the grid's process holds): when it closes, the cell gets SIGTERM and,
  if it is still alive ``grace_s`` later (hung, or deaf to signals), SIGKILL.  SIGTERM
  first, so that a healthy cell ends its run ``killed`` itself; its checkpoint stays
  either way, and the next run closes a run left RUNNING and resumes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _interrupt_once(signum: int, frame: Any) -> None:
    for other in INTERRUPT_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` once, then are ignored."""
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, _interrupt_once)


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``signum`` when this process's parent ends (Linux); True if set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(grace_s: float = 10.0) -> threading.Thread | None:
    """SIGTERM, then SIGKILL after ``grace_s``, to this process once its parent is gone.

    The parent is multiprocessing's (the grid's process, also under the forkserver).
    """
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return None

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            wait([sentinel])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace_s)
            os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="kdbench-parent-watchdog", daemon=True)
    thread.start()
    return thread


def guard_cell_process() -> None:
    """All of the above, first thing in a cell's process."""
    install_interrupt_handlers()
    die_with_parent()
    watch_parent()
