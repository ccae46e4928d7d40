"""``benchmarks/gpu_check.sh``: its plan, parsing, budget and report, and a CPU dry run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def args(**kw):
    base = {"dry_run": False, "steps": 300, "data": None, "tox": False, "tests": "tests"}
    return argparse.Namespace(**{**base, **kw})


def test_plan_runs_gpu_tests_cell_and_perf_within_the_budget():
    stages = gpu_check.plan(args())
    assert [s.name for s in stages] == ["gpu-tests", "paper-cell", "perf"]
    pytest_cmd = stages[0].command
    assert pytest_cmd[1:3] == ["-m", "pytest"] and pytest_cmd[-1] == "tests"
    assert pytest_cmd[pytest_cmd.index("-m", 2) + 1] == "gpu"
    assert "--tiny" not in stages[1].command and "300" in stages[1].command
    assert stages[2].command[-2:] == [str(ROOT / "benchmarks" / "run_all.py"), "--quick"]
    assert all(s.run for s in stages)
    assert sum(s.limit_s for s in stages) <= gpu_check.BUDGET_S
    tox = gpu_check.plan(args(tox=True))[2].command
    assert tox == ["tox", "-e", "perf", "--", "--quick"]


def test_dry_run_plan_uses_cpu_stand_ins():
    stages = gpu_check.plan(args(dry_run=True, steps=3))
    assert stages[0].command[-1] == "--collect-only"
    assert "--tiny" in stages[1].command
    assert not stages[2].run
    gpu_check.run_stage(stages[2], 1e9)
    assert stages[2].status == "dry-run" and "run_all.py --quick" in stages[2].summary


def test_summaries_of_pytest_cell_and_timeouts():
    tests = gpu_check.Stage("gpu-tests", [], 1)
    gpu_check.summarise(tests, "....\n4 passed, 1 skipped, 396 deselected in 3.1s\n", 0)
    assert tests.status == "ok"
    assert tests.details == {"passed": 4, "skipped": 1, "deselected": 396}
    failed = gpu_check.Stage("gpu-tests", [], 1)
    gpu_check.summarise(failed, "F...\n1 failed, 3 passed in 3.0s\n", 1)
    assert failed.status == "failed (1)" and failed.details["failed"] == 1
    empty = gpu_check.Stage("gpu-tests", [], 1)
    gpu_check.summarise(empty, "no tests ran\n", 5)
    assert empty.status == "no tests"
    cell = gpu_check.Stage("paper-cell", [], 1)
    values = {
        "steps": 300,
        "teacher_params": 78.7e6,
        "student_params": 4.9e6,
        "size": 64,
        "batch": 64,
        "iter_per_s": 12.5,
        "peak_mem_mb": 20480.0,
        "teacher_share": 0.4,
        "autocast": "bfloat16",
        "finite": True,
    }
    gpu_check.summarise(cell, "noise\n" + gpu_check.CELL_MARK + json.dumps(values) + "\n", 0)
    assert cell.status == "ok" and cell.details == values
    assert "12.50 it/s, peak 20480 MiB, teacher 40% of a step, autocast bfloat16" in cell.summary
    diverged = gpu_check.Stage("paper-cell", [], 1)
    text = gpu_check.CELL_MARK + json.dumps({**values, "finite": False})
    gpu_check.summarise(diverged, text, 0)
    assert diverged.status == "failed (loss not finite)"
    slow = gpu_check.Stage("perf", [], 1)
    gpu_check.summarise(slow, "partial", None)
    assert slow.status == "timeout"


def test_a_stage_that_cannot_fit_the_remaining_budget_is_skipped():
    stage = gpu_check.Stage("perf", [sys.executable, "-c", "raise SystemExit(3)"], 100)
    gpu_check.run_stage(stage, 99.0)
    assert stage.status == "skipped" and "99 s left" in stage.summary
    gpu_check.run_stage(stage, 1000.0)
    assert stage.status == "failed (3)"
    text = gpu_check.report([stage], "a GPU", 12.0)
    assert text.splitlines()[0] == f"GPU check on a GPU: 12 s of the {gpu_check.BUDGET_S} s budget"
    assert "perf" in text.splitlines()[1] and "failed (3)" in text


def test_without_cuda_a_real_run_refuses_with_a_one_line_hint(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "use --dry-run" in capsys.readouterr().err


def test_dry_run_on_the_cpu_end_to_end(tmp_path):
    out = tmp_path / "report.json"
    cmd = [
        str(ROOT / "benchmarks" / "gpu_check.sh"),
        "--dry-run",
        "--tests",
        "tests/test_gpu.py",
        "--json",
        str(out),
    ]
    run = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("GPU check on cpu (dry run):")
    report = json.loads(out.read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["gpu-tests"]["status"] == "ok"
    assert "4 tests collected" in stages["gpu-tests"]["summary"]
    cell = stages["paper-cell"]
    assert cell["status"] == "ok" and cell["details"]["finite"] is True
    assert cell["details"]["steps"] == 3 and cell["details"]["taps"] == 14
    assert cell["details"]["autocast"] == "float32" and cell["details"]["device"] == "cpu"
    assert stages["perf"]["status"] == "dry-run"


@pytest.mark.parametrize("flag", ["--help"])
def test_shell_wrapper_shows_the_options(flag):
    run = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), flag],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert run.returncode == 0
    assert "--dry-run" in run.stdout and "--json" in run.stdout
