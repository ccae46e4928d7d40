"""The benchmark scripts' command lines: every script takes the common flags of run_all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _args  # noqa: E402
import run_all  # noqa: E402


def test_common_flags_parse_and_forward():
    args = _args.parse(_args.parser("Doc line.\n\nmore"), ["--quick", "--device", "cpu"])
    assert (args.quick, args.device, args.threads) == (True, "cpu", 0)
    assert run_all.forwarded(args) == ["--quick", "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        _args.parser("x").parse_args(["--no-such-flag"])
    assert exc.value.code == 2


def test_every_script_accepts_the_common_flags():
    """``run_all.py --quick --help-scripts``: each script parses the flags run_all sends."""
    scripts = run_all.scripts()
    assert {s.name for s in scripts} >= {"bench_metrics.py", "bench_harness.py"}
    out = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--threads", "1", "--help-scripts"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failed" not in out.stdout
    sections = out.stdout.split("=== ")[1:]
    assert [s.split()[0] for s in sections] == [s.name for s in scripts]
    for section in sections:
        for flag in _args.COMMON:
            assert flag in section, section
