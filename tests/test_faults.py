"""Faults of long grids on shared machines: a full disk, a tracking server that goes away,
two grids racing on one store and cache.

Every fault is injected for real in real ``kdbench run`` processes: ``ENOSPC`` from the
kernel's point of view (``os.fsync`` of the checkpoint's files fails, injected by
``tests/faults/sitecustomize.py`` in the process and its spawned workers), a real
``mlflow server`` stopped with SIGTERM while a cell trains and started again on the same
port, two ``kdbench run`` processes started together, and a claim left by a SIGKILLed
grid.  Each test then reads the store back: every logged step there exactly once, nothing
left RUNNING, no cell trained twice.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, running_mlflow_server, start_kdbench, wait_for
from mlflow.tracking import MlflowClient
from test_grid_e2e import cell_runs, grid_file, run
from test_tracking import fast_dir  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).resolve().parent / "faults"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"root": root, "cache": root / "cache", "uri": f"sqlite:///{root / 'mlflow.db'}"}


def kdbench(grid: Path, uri: str, cache: Path, *extra: str, env: dict | None = None):
    """``kdbench run`` in its own session, with the fault injectors importable; ``env`` is
    added to ours."""
    path = os.pathsep.join([str(FAULTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return start_kdbench(grid, uri, cache, *extra, env={"PYTHONPATH": path, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def steps_logged(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    """Every logged step of ``key``, sorted, repeats kept (a duplicate shows twice)."""
    return sorted(p.step for p in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def sets(*overrides: str) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


# ---------------------------------------------------------------------- a full disk


def test_full_disk_while_writing_keeps_the_previous_file_and_its_checksum(tmp_path, monkeypatch):
    """ENOSPC at the data or at the sidecar: the old file and sidecar stay, verified."""
    from harness.errors import StorageError
    from harness.storage import load_tensors, save_tensors

    path = tmp_path / "cache" / "teacher-preds" / "chunk0.safetensors"
    save_tensors(path, {"pred": torch.zeros(3)})
    real_fsync = os.fsync
    for victim in (".safetensors.", ".sha256."):

        def full(fd, victim=victim):
            if victim in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StorageError) as info:
            save_tensors(path, {"pred": torch.ones(3)})
        monkeypatch.setattr(os, "fsync", real_fsync)
        message = str(info.value)
        assert f"no space left on device writing {path}" in message and "\n" not in message
        assert torch.equal(load_tensors(path)["pred"], torch.zeros(3))  # verified: intact
        assert sorted(p.name for p in path.parent.iterdir()) == [
            "chunk0.safetensors",
            "chunk0.safetensors.sha256",
        ]
    save_tensors(path, {"pred": torch.ones(3)})  # space is back
    assert torch.equal(load_tensors(path)["pred"], torch.ones(3))


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_fails_the_cell_and_a_rerun_resumes_it(space):
    """A real grid whose second checkpoint meets a full disk (its checksum's fsync).

    The cell fails with one line naming the file, the first checkpoint stays valid, and
    the re-run (space back) resumes the same run from it: every step once in the history.
    """
    from harness.config import expand
    from harness.storage import read_metadata, verify

    grid = ["objectives=['none']", "train.steps=15"]
    path, cfg = grid_file(space["root"], "full-disk", grid)
    [cell] = expand(cfg)
    ckpt = space["cache"] / "checkpoints" / f"{cell['cell_id']}.safetensors"
    env = {
        "KDBENCH_FAULT_ENOSPC": r"/checkpoints/\..*\.sha256\..*\.tmp$",
        "KDBENCH_FAULT_ENOSPC_AFTER": "1",  # the first checkpoint is written, then the disk fills
    }
    proc = kdbench(path, space["uri"], space["cache"], *sets(*grid), env=env)
    out, err = finish(proc)
    assert proc.returncode == 1, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("  failed: ")]
    assert f"StorageError: no space left on device writing {ckpt}.sha256" in line
    assert "Traceback" not in err
    verify(ckpt)  # the previous checkpoint, intact and verified
    assert read_metadata(ckpt)["step"] == "5"
    assert [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")] == []
    [failed] = cell_runs(space["uri"], "kdbench-full-disk")
    assert failed.data.tags["kdbench.status"] == "failed" and failed.info.status == "FAILED"
    assert str(ckpt) in failed.data.tags["kdbench.error"]
    assert steps_logged(space["uri"], failed.info.run_id) == [0, 2, 4, 6, 8]

    again = run(space, "full-disk", grid)  # space is back
    [result] = again.results
    assert (result["status"], result["resumed"]) == ("finished", True)
    assert result["run_id"] == failed.info.run_id
    [done] = cell_runs(space["uri"], "kdbench-full-disk")
    assert done.data.tags["kdbench.status"] == "finished" and "fid" in done.data.metrics
    assert steps_logged(space["uri"], done.info.run_id) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert not ckpt.exists()


# ---------------------------------------------------------------------- the server goes away


LONG = ["objectives=['none']", "train.steps=200", "train.checkpoint_every=10"]
LONG_STEPS = list(range(0, 200, 2)) + [199]


def _server_grid(space, name):
    from harness.config import expand

    path, cfg = grid_file(space["root"], name, LONG)
    [cell] = expand(cfg)
    return path, space["cache"] / "checkpoints" / f"{cell['cell_id']}.safetensors"


@pytest.mark.slow
def test_server_stopped_mid_training_and_started_again_loses_no_step(space, fast_dir):  # noqa: F811
    """SIGTERM to ``mlflow server`` after the cell's first checkpoint, a new server on the
    same port and store a few seconds later: the cell waits, then logs everything once."""
    backend, port = f"sqlite:///{fast_dir / 'server.db'}", free_port()
    path, ckpt = _server_grid(space, "server-away")
    env = {"KDBENCH_TRACKING_RETRY_S": "240"}
    with running_mlflow_server(backend, space["root"], port=port) as url:
        proc = kdbench(path, url, space["cache"], *sets(*LONG), env=env)
        wait_for(proc, ckpt)
    try:  # the server is down now, while the cell trains on
        time.sleep(3)
        with running_mlflow_server(backend, space["root"], port=port) as url:
            out, err = finish(proc)
            assert proc.returncode == 0, err[-3000:]
            assert "does not answer" in err and "is back after" in err  # it was hit, and waited
            [r] = cell_runs(url, "kdbench-server-away")
            assert r.data.tags["kdbench.status"] == "finished" and "fid" in r.data.metrics
            assert steps_logged(url, r.info.run_id) == LONG_STEPS  # each once: none lost
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.mark.slow
def test_server_that_never_comes_back_is_one_line_and_the_next_run_resumes(space, fast_dir):  # noqa: F811
    backend, port = f"sqlite:///{fast_dir / 'server.db'}", free_port()
    path, ckpt = _server_grid(space, "server-gone")
    env = {"KDBENCH_TRACKING_RETRY_S": "4"}
    with running_mlflow_server(backend, space["root"], port=port) as url:
        secret = url.replace("http://", "http://alice:s3cret@")
        proc = kdbench(path, secret, space["cache"], *sets(*LONG), env=env)
        wait_for(proc, ckpt)
    out, err = finish(proc)
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"kdbench: error: tracking server http://alice:***@127.0.0.1:{port} ")
    assert "did not answer" in last and "re-run the grid" in last and "KDBENCH_TRACKING" in last
    assert "s3cret" not in out + err and "Traceback" not in err
    assert ckpt.exists()

    with running_mlflow_server(backend, space["root"], port=port) as url:
        [before] = cell_runs(url, "kdbench-server-gone")
        logged = steps_logged(url, before.info.run_id)
        assert logged == sorted(set(logged)) and logged[:5] == [0, 2, 4, 6, 8]
        again = kdbench(path, url, space["cache"], *sets(*LONG))
        out, err = finish(again)
        assert again.returncode == 0, err[-3000:]
        [r] = cell_runs(url, "kdbench-server-gone")  # the same run, resumed
        assert r.info.run_id == before.info.run_id
        assert r.data.tags["kdbench.status"] == "finished" and r.info.status == "FINISHED"
        assert steps_logged(url, r.info.run_id) == LONG_STEPS


# ---------------------------------------------------------------------- two grids racing


def _summary(out: str) -> str:
    [line] = [x for x in out.splitlines() if x.startswith("grid ")]
    return line


def test_a_claim_is_exclusive_and_expires_with_its_owner(tmp_path):
    """Unit level, with real processes: a held claim is refused; a SIGKILLed owner's is not."""
    from harness.claims import ClaimHeld, claim, claim_path

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from harness.claims import claim\n"
            "with claim(sys.argv[1], 'c1'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ClaimHeld) as info:
            with claim(tmp_path, "c1"):
                pass
        assert f"pid {holder.pid} on " in info.value.owner and "heartbeat" in info.value.owner
        with claim(tmp_path, "c2"):  # other cells are free
            pass
        holder.kill()
        holder.wait()
        assert claim_path(tmp_path, "c1").exists()  # left behind by the dead owner...
        with claim(tmp_path, "c1") as owner:  # ...and expired with it
            assert owner["pid"] == os.getpid()
        assert not claim_path(tmp_path, "c1").exists()  # released
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.slow
def test_two_grids_started_together_train_each_cell_once(space):
    from harness.config import expand

    grid = ["objectives=['none', 'outkd']", "train.steps=120"]
    path, cfg = grid_file(space["root"], "race", grid)
    procs = [kdbench(path, space["uri"], space["cache"], *sets(*grid)) for _ in range(2)]
    outs = [finish(p) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    summaries = [_summary(out) for out, _ in outs]
    finished = [int(s.split(": ")[1].split(" finished")[0]) for s in summaries]
    assert sum(finished) == 2, summaries  # each cell trained by exactly one of them
    runs = cell_runs(space["uri"], "kdbench-race")
    assert sorted(r.data.tags["kdbench.cell_id"] for r in runs) == sorted(
        c["cell_id"] for c in expand(cfg)
    )
    assert all(r.data.tags["kdbench.status"] == "finished" for r in runs)
    client = MlflowClient(tracking_uri=space["uri"])
    exp = client.get_experiment_by_name("kdbench-race")
    teachers = client.search_runs([exp.experiment_id], "tags.`kdbench.kind` = 'teacher'")
    assert len(teachers) == 1  # the teacher's evaluation is recorded once too
    for r in runs:
        assert steps_logged(space["uri"], r.info.run_id) == list(range(0, 120, 2)) + [119]


@pytest.mark.slow
def test_a_claimed_cell_is_left_alone_and_taken_over_when_its_owner_dies(space):
    """A holds the cell (stopped with SIGSTOP mid-training): B skips it and says so.  A is
    SIGKILLed: C resumes A's run from A's checkpoint, and every step is logged once."""
    import signal

    grid = ["objectives=['none']", "train.steps=40", "train.checkpoint_every=10"]
    path, cfg = grid_file(space["root"], "race-owner", grid)
    from harness.config import expand

    [cell] = expand(cfg)
    ckpt = space["cache"] / "checkpoints" / f"{cell['cell_id']}.safetensors"
    a = kdbench(path, space["uri"], space["cache"], *sets(*grid))
    try:
        wait_for(a, ckpt)
        os.killpg(a.pid, signal.SIGSTOP)
        b = kdbench(path, space["uri"], space["cache"], *sets(*grid))
        out, err = finish(b)
        assert b.returncode == 0, err[-3000:]
        assert _summary(out).endswith("0 failed, 0 already done, 1 claimed by another run")
        assert f"claimed by another run: {cell['cell_id']}: pid {a.pid} on " in out
        [held] = cell_runs(space["uri"], "kdbench-race-owner")
        assert held.data.tags["kdbench.status"] == "running"  # B created no run of its own
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    c = kdbench(path, space["uri"], space["cache"], *sets(*grid))
    out, err = finish(c)
    assert c.returncode == 0, err[-3000:]
    assert _summary(out).endswith("1 finished, 0 diverged, 0 failed, 0 already done")
    [r] = cell_runs(space["uri"], "kdbench-race-owner")
    assert r.info.run_id == held.info.run_id and r.data.tags["kdbench.status"] == "finished"
    assert steps_logged(space["uri"], r.info.run_id) == list(range(0, 40, 2)) + [39]
