"""Checkpoints and cached models: atomic writes, verified reads, no pickles executed."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from harness import storage
from harness.errors import CheckpointError


def test_round_trip_with_sidecar_hash(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    storage.save_tensors(path, tensors, metadata={"step": "3"})
    assert (tmp_path / "m.safetensors.sha256").read_text() == storage.sha256_file(path)
    assert torch.equal(storage.load_tensors(path)["w"], tensors["w"])
    assert storage.read_metadata(path) == {"step": "3"}


def test_corrupt_file_is_detected_not_loaded(tmp_path):
    path = tmp_path / "m.safetensors"
    storage.save_tensors(path, {"w": torch.ones(64)})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        storage.load_tensors(path)


def test_missing_sidecar_and_missing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    storage.save_tensors(path, {"w": torch.ones(2)})
    (tmp_path / "m.safetensors.sha256").unlink()
    with pytest.raises(CheckpointError, match="unverified"):
        storage.load_tensors(path)
    with pytest.raises(CheckpointError, match="not found"):
        storage.load_tensors(tmp_path / "absent.safetensors")


def test_a_crash_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    storage.save_tensors(path, {"w": torch.zeros(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.save_tensors(path, {"w": torch.ones(3)})
    assert torch.equal(storage.load_tensors(path)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.sha256"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_in_it_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state": _Evil(marker)}, fh)
    with pytest.raises(CheckpointError, match="refused to load"):
        storage.torch_load_safe(path)
    assert not marker.exists()
    # The same file offered where a kdbench model is expected is not a safetensors file.
    with pytest.raises(CheckpointError):
        storage.load_tensors(path, check=False)
    assert not marker.exists()
