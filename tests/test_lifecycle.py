"""A cell's process lifecycle under the local executor: time limits, SIGTERM, a SIGKILLed
parent, inherited signal dispositions, and the progress a person reads in a log.

Real processes and real signals throughout; the parents that receive the signals are
started with the dispositions they rely on set explicitly (SIGINT ignored, as a
background job inherits it, unless a test says otherwise).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import _executor_work as fns  # tests/ is on sys.path (pytest's default import mode)
import pytest
from click.testing import CliRunner
from conftest import TINY_GRID

from harness.executor_progress import (
    CellProgress,
    EtaEstimator,
    cell_line,
    format_duration,
    summary_line,
)
from plugins.executors.local import LocalExecutor

TESTS = Path(__file__).parent


def _background_job() -> None:
    """In a child before exec: SIGINT ignored, as ``cmd &`` or ``nohup`` leave it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.05)


def marks(folder: Path, cell_id: str, what: str) -> dict:
    return json.loads((folder / f"{cell_id}.{what}").read_text())


# ---------------------------------------------------------------------- progress and ETA


def test_eta_is_recent_mean_duration_times_rounds_left():
    eta = EtaEstimator(total=10, workers=2, window=3)
    assert eta.eta() is None  # nothing finished yet
    eta.add(10.0)
    eta.add(20.0)
    assert eta.eta() == pytest.approx(15.0 * 4)  # 8 left on 2 workers: 4 rounds of 15 s
    eta.add(30.0)
    eta.add(40.0)  # the window keeps 20, 30, 40: the first cell also filled caches
    assert eta.eta() == pytest.approx(30.0 * 3)
    for _ in range(6):
        eta.add(5.0)
    assert eta.eta() == 0.0
    odd = EtaEstimator(total=4, workers=3)
    odd.add(6.0)
    assert odd.eta() == pytest.approx(6.0)  # 3 left on 3 workers: one round


def test_durations_read_like_a_person_would_write_them():
    assert format_duration(24.06) == "24.1 s"
    assert format_duration(540) == "9 min"
    assert format_duration(89) == "1 min"
    assert format_duration(3600 + 5 * 60) == "1 h 05 min"
    assert format_duration(None) == "?"


def test_one_line_per_cell_with_fid_time_and_eta():
    result = {
        "cell_id": "abc",
        "label": "place | prune0.5 -> prune0.8 | s1",
        "status": "finished",
        "metrics": {"fid": 88.94, "iter_per_s": 20.0},
    }
    assert cell_line(17, 72, result, 24.06, 540.0) == (
        "[17/72] place | prune0.5 -> prune0.8 | s1  finished  FID 88.9  24.1 s  ETA 9 min"
    )
    failed = {"cell_id": "abc", "label": None, "status": "failed", "error": "timed out after 5 s"}
    assert cell_line(72, 72, failed, 5.2, 0.0) == "[72/72] abc  failed  timed out after 5 s  5.2 s"
    nan = {"cell_id": "x", "label": "x", "status": "diverged", "metrics": {"fid": float("nan")}}
    assert cell_line(1, 2, nan, 1.0, None) == "[1/2] x  diverged  1.0 s  ETA ?"
    summary = summary_line([failed, result, result], 1860.0)
    assert summary == "cells: 1 failed, 2 finished in 31 min"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_only_when_stdout_is_not_a_terminal():
    result = {"cell_id": "a", "label": "a", "status": "finished"}
    log = io.StringIO()
    with CellProgress(2, progress=None, stream=log, workers=1) as progress:
        progress.update(result, 3.0)
        progress.update(result, 5.0)
    lines = log.getvalue().splitlines()
    assert lines[:2] == ["[1/2] a  finished  3.0 s  ETA 3.0 s", "[2/2] a  finished  5.0 s"]
    assert lines[2].startswith("cells: 2 finished in ")
    assert len(lines) == 3
    terminal = _Terminal()
    with CellProgress(1, progress=False, stream=terminal) as progress:
        progress.update(result, 1.0)
    assert terminal.getvalue() == ""  # a terminal keeps its bar (here switched off)
    quiet = io.StringIO()
    with CellProgress(1, progress=False, stream=quiet) as progress:
        progress.update(result, 1.0)
    assert quiet.getvalue() == ""  # progress=False silences the lines too


def test_a_tiny_grid_in_a_log_prints_one_line_per_cell_and_a_summary(tmp_path):
    grid = tmp_path / "lines.toml"
    grid.write_text(textwrap.dedent(TINY_GRID).replace("NAME", "lines"))
    from harness.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(grid),
            "--set",
            "objectives=['none', 'place']",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-leaderboard",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert len(lines) == 3, result.output  # the teacher job, then two cells
    assert lines[0].startswith("[1/1] ")
    first, second = lines[1:]
    assert first.startswith("[1/2] none | ") and "  finished  FID " in first and "ETA " in first
    assert second.startswith("[2/2] place | ") and "  finished  FID " in second
    assert "ETA" not in second  # nothing left
    assert "cells: 2 finished in " in result.output


# ---------------------------------------------------------------------- a hung cell


def test_a_hung_cell_is_killed_at_its_time_limit_and_the_grid_goes_on(tmp_path):
    cells = [
        dict(cell_id="hung", label="hung", dir=str(tmp_path)),
        dict(cell_id="fine", label="fine", dir=str(tmp_path), x=3, sleep=0.5),
    ]
    executor = LocalExecutor(workers=2, timeout_s=4, progress=False)
    results = executor.run(cells, fns.hang_or_record)
    assert results[0] == {
        "cell_id": "hung",
        "label": "hung",
        "status": "failed",
        "error": "timed out after 4 s",
    }
    assert results[1]["status"] == "finished" and results[1]["value"] == 9
    assert not _alive(marks(tmp_path, "hung", "start")["pid"])  # killed, not left running


def test_timeout_option_is_checked():
    from harness.errors import OptionError

    for bad in (0, -1, "10", True):
        with pytest.raises(OptionError, match="option timeout_s must be a positive number"):
            LocalExecutor(timeout_s=bad)
    with pytest.raises(OptionError, match="start_method must be one of forkserver, spawn"):
        LocalExecutor(start_method="fork")


def test_default_time_limit_grows_with_the_grid_and_is_off_under_debug(tmp_path):
    from harness.config import load_config
    from harness.grid import default_cell_timeout_s, executor_options

    grid = tmp_path / "limit.toml"
    grid.write_text(textwrap.dedent(TINY_GRID).replace("NAME", "limit"))
    cfg = load_config(grid, ["executor.options={threads=1}"])
    # 1 h + 2 s x (pretrain 10 + fine-tune 5 + assistant = student 10 + student 10)
    assert default_cell_timeout_s(cfg) == 3600 + 2 * 35
    assert executor_options(cfg)["timeout_s"] == 3670
    assert "timeout_s" not in executor_options(cfg, debug=True)
    longer = load_config(grid, ["executor.options={threads=1}", "train.steps=100000"])
    assert default_cell_timeout_s(longer) == 3600 + 2 * (15 + 200000)
    mine = load_config(grid, ["executor.options={timeout_s=30}"])
    assert executor_options(mine, debug=True)["timeout_s"] == 30  # set by hand: kept


# ---------------------------------------------------------------------- SIGTERM, SIGKILL

_PARENT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import _executor_work as fns
    from harness.executor import GridInterrupted
    from plugins.executors.local import LocalExecutor
    cells = [dict(cell_id=mode, label=mode, dir={dir!r}, mode=mode) for mode in {modes!r}]
    executor = LocalExecutor(workers={workers}, grace_s=3, progress=False, preload=[])
    try:
        executor.run(cells, fns.{work})
    except GridInterrupted as exc:
        json.dump({{"results": exc.results, "signum": exc.signum, "code": exc.exit_code}},
                  open({out!r}, "w"))
        sys.exit(exc.exit_code)
""")


def _parent(tmp_path: Path, modes: list[str], work: str, workers: int) -> subprocess.Popen:
    script = _PARENT.format(
        tests=str(TESTS),
        dir=str(tmp_path),
        modes=modes,
        work=work,
        workers=workers,
        out=str(tmp_path / "out.json"),
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, preexec_fn=_background_job
    )


def test_sigterm_to_the_parent_stops_the_grid_like_ctrl_c(tmp_path):
    """``docker stop`` / systemd: SIGTERM to the grid's process alone, SIGINT ignored."""
    parent = _parent(tmp_path, ["polite", "raw", "later"], "until_interrupted", workers=2)
    try:
        wait_until(lambda: len(list(tmp_path.glob("*.start"))) == 2, 120, "two cells started")
        os.kill(parent.pid, signal.SIGTERM)
        assert parent.wait(timeout=60) == 143
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["signum"] == signal.SIGTERM and report["code"] == 143
    polite, raw, later = report["results"]
    assert polite["status"] == "killed" and polite["note"] == "checkpoint kept"
    assert marks(tmp_path, "polite", "interrupted")["sigints"] == 1
    assert raw["status"] == "killed" and raw["error"] == "interrupted before the cell returned"
    assert later["status"] == "skipped"


def test_sigterm_to_every_process_interrupts_each_cell_once(tmp_path):
    """SLURM at the end of a job's time: SIGTERM to the parent and to every cell."""
    parent = _parent(tmp_path, ["polite"], "until_interrupted", workers=1)
    try:
        wait_until(lambda: (tmp_path / "polite.start").exists(), 120, "the cell started")
        cell = marks(tmp_path, "polite", "start")["pid"]
        os.kill(cell, signal.SIGTERM)
        os.kill(parent.pid, signal.SIGTERM)  # which forwards one SIGINT: ignored by then
        assert parent.wait(timeout=60) == 143
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    [polite] = json.loads((tmp_path / "out.json").read_text())["results"]
    assert polite["status"] == "killed" and polite["note"] == "checkpoint kept"
    assert marks(tmp_path, "polite", "interrupted")["sigints"] == 1


def test_a_sigkilled_parent_takes_its_cells_with_it(tmp_path):
    """No orphaned trainers: a healthy cell stops politely, a hung one is killed."""
    parent = _parent(tmp_path, ["polite", "hung"], "polite_or_hang", workers=2)
    try:
        wait_until(lambda: len(list(tmp_path.glob("*.start"))) == 2, 120, "two cells started")
        cells = {mode: marks(tmp_path, mode, "start")["pid"] for mode in ("polite", "hung")}
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: not _alive(cells["polite"]), 30, "the healthy cell ended")
        wait_until(lambda: not _alive(cells["hung"]), 30, "the hung cell was killed")
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        for pid in (marks(tmp_path, m, "start")["pid"] for m in ("polite", "hung")):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # the healthy cell saw one interrupt and ran its own clean-up (a trainer's checkpoint)
    assert marks(tmp_path, "polite", "interrupted")["sigints"] == 1


# ---------------------------------------------------------------------- a real grid

_HANGING_OBJECTIVE = """
import os, time

from harness import Objective, Outputs, check_pair, hookimpl


class HangingKD(Objective):
    '''Output KD that loops forever at step 6 on its first attempt (a deadlocked plugin).'''

    name = "hangkd"

    def forward(self, student: Outputs, teacher: Outputs, step: int = 0, total_steps: int = 1):
        check_pair(student.pred, teacher.pred)
        marker = os.environ["KDBENCH_TEST_HANG_MARKER"]
        if step >= 6 and not os.path.exists(marker):
            open(marker, "w").close()
            while True:
                time.sleep(0.1)
        return {"loss": ((student.pred - teacher.pred.detach()) ** 2).mean()}


@hookimpl
def register_objectives(register):
    register(HangingKD)
"""


@pytest.mark.slow
def test_hung_cell_and_sigterm_lose_nothing_and_a_rerun_resumes_them(
    tmp_path, monkeypatch, fake_dist
):
    """A real ``kdbench run`` of two cells, one after the other, SIGINT ignored.

    Cell A (a plugin that loops forever after its first checkpoint): killed at its time
    limit, run ``failed`` with "timed out after 60 s", the grid goes on.  Cell B: SIGTERM
    to ``kdbench`` alone (``docker stop``) at its first checkpoint -> exit 143, run
    ``killed``.  The re-run resumes both in their own runs from their checkpoints and every
    logged step is in the history.
    """
    from test_grid_e2e import cell_runs, grid_file, history
    from test_hardening import kdbench_run, wait_for

    from harness.config import expand

    fake_dist(
        "hang-plugin", "1.0", {"hangkd": "fakeplug_hang"}, {"fakeplug_hang": _HANGING_OBJECTIVE}
    )
    plugin = tmp_path / "hang-plugin"  # where fake_dist installed it (also on sys.path here)
    monkeypatch.setenv("KDBENCH_TEST_HANG_MARKER", str(tmp_path / "hung-once"))
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(
            p for p in (str(plugin), str(TESTS.parent), os.environ.get("PYTHONPATH")) if p
        ),
    )
    uri, cache = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache"
    grid = [
        "objectives=['hangkd', 'outkd']",
        "train.steps=60",
        "executor.options={threads=1, workers=1, timeout_s=60}",
    ]
    path, cfg = grid_file(tmp_path, "hung", grid)
    a, b = (cell["cell_id"] for cell in expand(cfg))
    ckpt = {cell: cache / "checkpoints" / f"{cell}.safetensors" for cell in (a, b)}
    proc = kdbench_run(path, uri, cache, *sum((["--set", o] for o in grid), []))
    proc_pid = proc.pid
    try:
        wait_for(proc, ckpt[b], timeout=600)
        os.kill(proc_pid, signal.SIGTERM)  # the grid's process alone, as docker stop
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc_pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert "timed out after 60 s" in err and "Traceback" not in err

    experiment = "kdbench-hung"
    [ra], [rb] = (cell_runs(uri, experiment, cell) for cell in (a, b))
    assert ra.info.status == "FAILED" and ra.data.tags["kdbench.status"] == "failed"
    assert ra.data.tags["kdbench.error"] == "timed out after 60 s"
    assert rb.info.status == "KILLED" and rb.data.tags["kdbench.status"] == "killed"
    assert ckpt[a].exists() and ckpt[b].exists()

    again = kdbench_run(path, uri, cache, *sum((["--set", o] for o in grid), []))
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    for cell, before in ((a, ra), (b, rb)):
        [r] = cell_runs(uri, experiment, cell)
        assert r.info.run_id == before.info.run_id  # resumed, not started afresh
        assert r.info.status == "FINISHED" and "fid" in r.data.metrics
        steps = {s for s, _ in history(uri, r.info.run_id, "train/loss")}
        assert steps == set(range(0, 60, 2)) | {59}
