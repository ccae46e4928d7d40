"""Atomic, verified files: checkpoints, cached teachers, cached teacher predictions.

Every tensor file is written as safetensors to a temporary name in the same folder,
fsynced, then renamed (atomic on POSIX).  Its SHA-256 goes into a sidecar
``<file>.sha256`` written the same way; ``load_tensors`` recomputes it and raises
``CheckpointError`` on a mismatch, so a torn or tampered file is never loaded silently.
Pickles are never read: safetensors holds only tensors, and ``torch_load_safe`` uses
``weights_only=True`` for the rare ``.pt`` file a user points us at.

A full disk (ENOSPC, or EDQUOT for a quota) can strike any write or fsync.  Both the file
and its sidecar are written and fsynced under temporary names before either is renamed,
so the previous file and its checksum stay in place and valid; the error becomes one
``StorageError`` line naming the file and what to do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.errors import CheckpointError, StorageError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _full_disk(path: Path, exc: OSError) -> StorageError:
    return StorageError(
        f"no space left on device writing {path} ({exc.strerror or exc}); the previous "
        "file there is intact: free space (or move cache.dir) and re-run, unfinished cells "
        "resume from their last checkpoint"
    )


def _temp_copy(path: Path, data: bytes) -> str:
    """``data`` written and fsynced under a temporary name beside ``path``; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise _full_disk(path, exc) from None
        raise
    return tmp


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = _temp_copy(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _fsync_write(Path(path), data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    _fsync_write(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors atomically with a SHA-256 sidecar.

    Both are complete and fsynced under temporary names before the renames, so a full
    disk leaves the previous file and sidecar untouched.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    side_tmp = None
    try:
        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        try:
            save_file(clean, tmp, metadata=metadata)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in _FULL:
                raise _full_disk(path, exc) from None
            raise
        except Exception as exc:  # safetensors reports a failed write as its own error
            if "No space left" in str(exc):
                raise _full_disk(path, OSError(errno.ENOSPC, "No space left on device")) from None
            raise
        side_tmp = _temp_copy(sidecar, sha256_file(tmp).encode())
        os.replace(tmp, path)
        os.replace(side_tmp, sidecar)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if side_tmp is not None:
            Path(side_tmp).unlink(missing_ok=True)
        raise


def verify(path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        raise CheckpointError(f"{path}: no .sha256 beside it; refusing to load an unverified file")
    expected = sidecar.read_text().strip()
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path}: corrupt (sha256 {actual[:12]} != recorded {expected[:12]})")


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu", check: bool = True
) -> dict[str, torch.Tensor]:
    if check:
        verify(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc


def torch_load_safe(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (no code execution)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused to load (not a plain weights file: {type(exc).__name__})"
        ) from exc
