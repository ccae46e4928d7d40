"""Faults and untrusted input: Ctrl-C, corrupt caches, concurrent writers, PostgreSQL,
unreachable or credentialed tracking URIs, the UI's bind address, crafted model files.

Every fault is injected for real: a SIGKILL of a cell's worker and a SIGINT to the
process group of a running ``kdbench run``, bytes flipped in a cached teacher, eight processes writing to one store
at once (SQLite, and an ``mlflow server`` backed by a PostgreSQL server started here on
loopback), a pickle with code in it.  Each test then reads the MLflow store back and
checks that nothing was lost, duplicated or left RUNNING.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import (
    TINY_GRID,
    free_port,
    run_kdbench,
    running_mlflow_server,
    start_kdbench,
    wait_for,
)
from mlflow.tracking import MlflowClient
from test_grid_e2e import cell_runs, grid_file, history, run
from test_tracking import fast_dir  # noqa: F401 (a fixture)

from harness.cli import cli


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return {"root": root, "cache": root / "cache", "uri": f"sqlite:///{root / 'mlflow.db'}"}


# ---------------------------------------------------------------------- SIGKILL, Ctrl-C


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_of(pid: int) -> int | None:
    """The running cell's worker: spawned by ``pid``, or forked by its forkserver."""
    children = _children(pid)
    servers = [c for c in children if "multiprocessing.forkserver" in _cmdline(c)]
    workers = [c for c in children if "spawn_main" in _cmdline(c)]
    workers += [w for server in servers for w in _children(server)]
    return workers[0] if len(workers) == 1 else None


def terminal_signals() -> None:
    """In ``kdbench run`` before exec: Ctrl-C and SIGTERM as a terminal's foreground job
    has them, whatever this test process inherited (a background job ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def kdbench_run(grid: Path, uri: str, cache: Path, *extra: str) -> subprocess.Popen:
    """``kdbench run`` as a real process in its own session (a terminal's process group).

    A terminal's kdbench sees Ctrl-C even when these tests run with SIGINT ignored (a
    background job): the child must not inherit that."""
    return start_kdbench(grid, uri, cache, *extra, preexec_fn=terminal_signals)


@pytest.mark.slow
def test_killed_worker_and_ctrl_c_lose_nothing_and_a_rerun_resumes_them(space):
    """One grid of three cells, run by a real ``kdbench run`` with a worker per cell.

    Cell A: its worker is SIGKILLed at its first checkpoint -> run ``failed``, the grid
    goes on.  Cell B: finishes.  Cell C: Ctrl-C (SIGINT to the process group) at its first
    checkpoint -> exit 130, run ``killed``.  The re-run resumes A and C in their own MLflow
    runs from their checkpoints, skips B, and every logged step is in the history.
    """
    from harness.config import expand
    from harness.storage import read_metadata, verify

    grid = ["objectives=['outkd', 'none', 'place']", "train.steps=60"]
    path, cfg = grid_file(space["root"], "hard-faults", grid)
    a, b, c = (cell["cell_id"] for cell in expand(cfg))
    ckpt = {cell: space["cache"] / "checkpoints" / f"{cell}.safetensors" for cell in (a, c)}
    proc = kdbench_run(
        path,
        space["uri"],
        space["cache"],
        *sum((["--set", o] for o in grid + ["executor.options={threads=1}"]), []),
    )
    try:
        wait_for(proc, ckpt[a])
        worker = worker_of(proc.pid)
        assert worker is not None, [_cmdline(x) for x in _children(proc.pid)]
        os.kill(worker, signal.SIGKILL)
        wait_for(proc, ckpt[c])
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "kdbench: interrupted" in err and "Traceback" not in err

    experiment = "kdbench-hard-faults"
    [ra], [rb], [rc] = (cell_runs(space["uri"], experiment, cell) for cell in (a, b, c))
    assert ra.info.status == "FAILED" and ra.data.tags["kdbench.status"] == "failed"
    assert ra.data.tags["kdbench.error"] == "worker killed by signal SIGKILL"
    assert rb.info.status == "FINISHED" and rb.data.tags["kdbench.status"] == "finished"
    assert rc.info.status == "KILLED" and rc.data.tags["kdbench.status"] == "killed"
    client = MlflowClient(tracking_uri=space["uri"])
    exp = client.get_experiment_by_name(experiment)
    assert [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"] == []
    for cell in (a, c):  # intact: each matches the SHA-256 recorded when it was written
        verify(ckpt[cell])
        assert int(read_metadata(ckpt[cell])["step"]) % 5 == 0
    assert not [p for p in ckpt[a].parent.iterdir() if p.name.endswith(".tmp")]

    # Re-run (in this process: the executor is not part of a cell's identity).
    again = run(space, "hard-faults", grid)
    assert again.skipped == [b]
    assert {r["cell_id"]: (r["status"], r["resumed"], r["run_id"]) for r in again.results} == {
        a: ("finished", True, ra.info.run_id),
        c: ("finished", True, rc.info.run_id),
    }
    for cell in (a, c):
        [r] = cell_runs(space["uri"], experiment, cell)
        assert r.info.status == "FINISHED" and r.data.tags["kdbench.status"] == "finished"
        assert "fid" in r.data.metrics
        # Nothing lost: the history before each fault was flushed up to the checkpoint it
        # resumed from (re-done steps may repeat, with the same values).
        steps = {s for s, _ in history(space["uri"], r.info.run_id, "train/loss")}
        assert steps == set(range(0, 60, 2)) | {59}
        assert not ckpt[cell].exists()  # a finished cell drops its checkpoint
    [rb_after] = cell_runs(space["uri"], experiment, b)
    assert (rb_after.info.run_id, rb_after.info.end_time) == (rb.info.run_id, rb.info.end_time)


# ---------------------------------------------------------------------- corrupt cache


def test_corrupt_cached_teacher_is_reported_and_rebuilt_not_loaded(space, caplog):
    import torch

    from harness.storage import load_tensors, verify

    grid = ["teachers=[{prune=0.3}]", "objectives=['outkd']", "train.steps=4"]
    first = run(space, "hard-corrupt-a", grid)
    [teacher_file] = glob.glob(str(space["cache"] / "teachers" / "*.safetensors"))
    original = {k: v.clone() for k, v in load_tensors(teacher_file).items()}  # not a mmap
    data = bytearray(Path(teacher_file).read_bytes())
    data[-100] ^= 0xFF  # inside the weights: the header still parses, a weight changes
    Path(teacher_file).write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="kdbench"):
        second = run(space, "hard-corrupt-b", grid)
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1 and "corrupt (sha256" in warnings[0], caplog.text
    assert Path(teacher_file).name in warnings[0] and "rebuilding" in warnings[0]
    verify(teacher_file)
    rebuilt = load_tensors(teacher_file)  # rebuilt, reproducibly: the same weights
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)
    # The teacher that was evaluated and taught is the rebuilt one, not the corrupt bytes.
    t1, t2 = first.teacher_results[0], second.teacher_results[0]
    assert t2["metrics"]["fid"] == t1["metrics"]["fid"]
    assert t2["metrics"]["class_acc"] == t1["metrics"]["class_acc"]
    assert second.results[0]["status"] == "finished"


# ---------------------------------------------------------------------- eight writers


WRITER = """
import sys, time
from pathlib import Path

from harness.tracking import Tracker

uri, experiment_id, index, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
tracker = Tracker.attach(uri, experiment_id)
tracker.find_runs({"kdbench.kind": "none"})  # store opened: now wait for the others
(folder / f"ready{index}").touch()
deadline = time.monotonic() + 300
while not (folder / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
rid = tracker.start_run(
    f"writer-{index}",
    params={"seed": index},
    tags={"kdbench.kind": "writer", "kdbench.cell_id": f"w{index}"},
)
for step in range(20):
    tracker.log_metrics(rid, {"train/loss": index + step / 20}, step=step)
    if step % 5 == 4:
        tracker.flush(rid)
tracker.log_metrics(rid, {"fid": float(index)})
tracker.finish(rid, "finished")
(folder / f"run{index}").write_text(rid)
"""


def eight_writers(uri: str, experiment_id: str, folder: Path) -> None:
    """Eight processes log a run each, all at once; check the store: all there, once, none
    RUNNING, every metric point present."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, experiment_id, str(i), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    try:
        deadline = time.monotonic() + 300
        while len(list(folder.glob("ready*"))) < 8 and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        (folder / "go").touch()  # the eight start writing together
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = [err[-1000:] for p, (_, err) in zip(procs, outputs) if p.returncode]
    assert errors == []
    ids = {(folder / f"run{i}").read_text() for i in range(8)}
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([experiment_id], "tags.`kdbench.kind` = 'writer'", max_results=100)
    assert sorted(r.data.tags["kdbench.cell_id"] for r in runs) == [f"w{i}" for i in range(8)]
    assert {r.info.run_id for r in runs} == ids
    for r in runs:
        i = int(r.data.params["seed"])
        assert r.info.status == "FINISHED" and r.data.tags["kdbench.status"] == "finished"
        assert r.data.metrics["fid"] == i
        points = client.get_metric_history(r.info.run_id, "train/loss")
        assert sorted(p.step for p in points) == list(range(20))


@pytest.mark.slow
def test_eight_writers_on_the_grids_sqlite_store(fast_dir):  # noqa: F811
    from harness.tracking import Tracker

    # The embedded default store, created as ``run_grid`` creates it (before any worker).
    uri = f"sqlite:///{fast_dir / 'kdbench-out' / 'mlflow.db'}"
    tracker = Tracker(uri, "kdbench-hard-writers")
    eight_writers(uri, tracker.experiment_id, fast_dir / "sync")


# ---------------------------------------------------------------------- PostgreSQL


PG_PASSWORD = "pg-S3cret-9x"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(found[-1]) if found and Path(found[-1], "pg_ctl").exists() else None


def _driver() -> str | None:
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg"
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql"
    return None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 in a temporary folder with a database ``mlflow``
    owned by role ``kd`` (password auth over TCP).  Yields its SQLAlchemy URI."""
    bindir, driver = _pg_bin(), _driver()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(.ci/postgres installs them)"
        )
    if driver is None:
        pytest.skip("psycopg is not installed (pip install 'kdbench[postgres]')")
    import psycopg

    base = Path(tempfile.mkdtemp(prefix="kdbench-pg-", dir="/tmp"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        for p in (base, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*cmd: str) -> None:
        out = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120)
        if out.returncode:
            pytest.skip(f"{Path(cmd[0]).name} failed: {(out.stderr or out.stdout)[-500:]}")

    try:
        pg(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        with psycopg.connect(
            host=str(sock), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE ROLE kd LOGIN PASSWORD '{PG_PASSWORD}'")
            conn.execute("CREATE DATABASE mlflow OWNER kd")
        yield f"{driver}://kd:{PG_PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_eight_writers_through_mlflow_server_on_postgresql(postgres, tmp_path):
    from harness.tracking import Tracker

    with running_mlflow_server(postgres, tmp_path, workers=2) as url:
        tracker = Tracker(url, "hard-postgres")
        eight_writers(url, tracker.experiment_id, tmp_path / "sync")
    # Read back from PostgreSQL itself, past the server: the same eight runs.
    client = MlflowClient(tracking_uri=postgres)
    exp = client.get_experiment_by_name("hard-postgres")
    assert len(client.search_runs([exp.experiment_id], "tags.`kdbench.kind` = 'writer'")) == 8


def test_credentials_in_the_tracking_uri_are_masked_everywhere(
    postgres, space, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a database store
    path, _ = grid_file(tmp_path, "hard-secret", ["objectives=['outkd']"])
    path.write_text(path.read_text() + f'\n[tracking]\nuri = "{postgres}"\n')
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(path),
            "--cache-dir",
            str(space["cache"]),
            "--quiet",
            "--set",
            "objectives=['outkd']",
            "--set",
            "train.steps=4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert PG_PASSWORD not in result.output
    assert "kd:***@127.0.0.1" in result.output  # the store is named, masked
    client = MlflowClient(tracking_uri=postgres)
    exp = client.get_experiment_by_name("kdbench-hard-secret")
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags["kdbench.kind"] for r in runs} == {"grid", "teacher", "cell"}
    for r in runs:
        for key, value in {**r.data.params, **r.data.tags}.items():
            assert PG_PASSWORD not in value, key
        folder = client.download_artifacts(r.info.run_id, "", str(tmp_path / r.info.run_id))
        for file in Path(folder).rglob("*"):
            if file.is_file():
                assert PG_PASSWORD.encode() not in file.read_bytes(), file.name
    [cell] = [r for r in runs if r.data.tags["kdbench.kind"] == "cell"]
    config = (tmp_path / cell.info.run_id / "config.json").read_text()
    assert "kd:***@127.0.0.1" in config


# ---------------------------------------------------------------------- tracking URI, UI


def test_unreachable_tracking_uri_fails_before_any_training(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(TINY_GRID).replace("NAME", "hard-unreachable"))
    port = free_port()
    # One short reachability check, not MLflow's minutes of retries: the subprocess'
    # timeout bounds it (a wall-clock assertion would fail on a loaded machine).
    out = run_kdbench(grid, f"http://bob:hunter2@127.0.0.1:{port}", tmp_path / "cache", timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(
        f"kdbench: error: cannot reach tracking server http://bob:***@127.0.0.1:{port}"
    )
    assert "hunter2" not in out.stderr + out.stdout and "Traceback" not in out.stderr
    assert not (tmp_path / "cache").exists()  # no teacher was built, nothing trained


def test_ui_binds_to_localhost_unless_told_otherwise(tmp_path, monkeypatch):
    help_text = CliRunner().invoke(cli, ["ui", "--help"]).output
    assert "--host TEXT" in help_text and "[default: 127.0.0.1]" in help_text
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    result = CliRunner().invoke(cli, ["ui", "--port", "5123"])
    assert result.exit_code == 0, result.output
    [cmd] = calls
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert "http://127.0.0.1:5123" in result.output


# ---------------------------------------------------------------------- untrusted files


def test_model_folder_with_a_code_pickle_is_refused(tmp_path, monkeypatch):
    import torch

    from harness.factories import get_backbone

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "evil"
    model = get_backbone("unet").build("xxs", image_size=16, channels=1, num_classes=10)
    model.inner.save_pretrained(str(folder), safe_serialization=False)
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Payload()}, folder / "diffusion_pytorch_model.bin")
    path, _ = grid_file(tmp_path, "hard-evil")
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(path),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--set",
            f"teachers=[{{pretrained='{folder}'}}]",
        ],
    )
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("kdbench: error: teachers[0].pretrained: unet: cannot load pretrained")
    assert not marker.exists()  # the pickle's code never ran
    assert not (tmp_path / "mlflow.db").exists()
