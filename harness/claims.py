"""Claims on cells, so that two grids racing on one store and cache train each cell once.

Two ``kdbench run`` processes of the same grid (two people, or a requeued job that
overlaps its predecessor) would otherwise both train a cell and both record it finished.
Before a job touches the store, it claims its cell: ``<cache>/claims/<cell id>.claim``.

Choices:

- The claim is an exclusive ``flock`` on that file, held by the process that runs the job
  for as long as it runs.  The kernel drops it when the process ends, however it ends
  (SIGKILL, OOM), so a dead owner's claim expires at once on its host.
- The file also names its owner (pid, host, start) and a heartbeat that a thread renews
  every ``HEARTBEAT_S`` seconds.  Where locks do not reach across machines (some network
  file systems), a claim whose owner is on another host and whose heartbeat is younger than
  ``STALE_S`` is respected even when the lock could be taken; on the same host a claim is
  respected only while its pid is alive.
- A claim that is held raises :class:`ClaimHeld`; the job reports its cell as claimed by
  another run and the grid goes on.  The job checks the store only after claiming, so a
  cell that the other process finished meanwhile is seen as done, not trained again.
- Released claims are removed; a process that locked a file which was removed meanwhile
  (it opened the old one) notices the new inode and tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEARTBEAT_S = 10.0
STALE_S = 120.0


class ClaimHeld(Exception):
    """Another live run holds the claim; ``owner`` describes it on one line."""

    def __init__(self, cell_id: str, owner: str):
        super().__init__(f"{cell_id} is claimed by another run ({owner})")
        self.cell_id = cell_id
        self.owner = owner


def claim_path(cache_dir: str | os.PathLike, cell_id: str) -> Path:
    return Path(cache_dir) / "claims" / f"{cell_id}.claim"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(owner: dict[str, Any], now: float | None = None) -> str:
    """``pid 123 on host-a, heartbeat 4 s ago``."""
    now = time.time() if now is None else now
    beat = owner.get("heartbeat")
    age = f", heartbeat {now - float(beat):.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{age}"


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _write(fd: int, owner: dict[str, Any]) -> None:
    data = json.dumps(owner, sort_keys=True).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _respected(owner: dict[str, Any], host: str, now: float, stale_s: float) -> bool:
    """Whether a claim whose lock we could take still belongs to someone else."""
    if not owner or owner.get("released"):
        return False
    beat = owner.get("heartbeat")
    fresh = isinstance(beat, (int, float)) and now - float(beat) < stale_s
    if owner.get("host") != host:
        return fresh  # no lock across machines: trust a recent heartbeat
    pid = owner.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid) and fresh


def _lock(path: Path, cell_id: str, stale_s: float) -> int:
    """An fd holding the exclusive lock on the claim file at ``path`` (or ClaimHeld)."""
    host = platform.node()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClaimHeld(cell_id, describe(_read(fd))) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed after we opened it: try the new file
                os.close(fd)
                continue
            owner = _read(fd)
            if _respected(owner, host, time.time(), stale_s):
                raise ClaimHeld(cell_id, describe(owner))
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


@contextlib.contextmanager
def claim(
    cache_dir: str | os.PathLike,
    cell_id: str,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
) -> Iterator[dict[str, Any]]:
    """Hold the claim on ``cell_id`` for the block; raises :class:`ClaimHeld` if taken."""
    path = claim_path(cache_dir, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(path, cell_id, stale_s)
    owner = {
        "pid": os.getpid(),
        "host": platform.node(),
        "cell_id": cell_id,
        "since": time.time(),
        "heartbeat": time.time(),
    }
    _write(fd, owner)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            owner["heartbeat"] = time.time()
            with contextlib.suppress(OSError):
                _write(fd, owner)

    thread = threading.Thread(target=beat, name=f"kdbench-claim-{cell_id}", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiter that opened it retries the new file
        os.close(fd)
