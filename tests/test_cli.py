"""The command line: one-line errors with exit code 2, plugins listing, dry runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner
from test_config import SMALL

from harness.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_plugins_lists_every_kind_with_provider():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {(r["kind"], r["name"]): r for r in data["plugins"]}
    assert rows[("objective", "place")]["distribution"] == "kdbench"
    assert rows[("objective", "place")]["version"] == "0.1.0"
    for key in [("backbone", "unet"), ("dataset", "digits"), ("executor", "local")]:
        assert key in rows
    text = invoke("plugins")
    assert text.exit_code == 0
    assert "place" in text.output and "kdbench 0.1.0" in text.output


def test_dry_run_prints_cells(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(textwrap.dedent(SMALL))
    result = invoke("run", str(path), "--dry-run", "--set", "grid.seeds=[3]")
    assert result.exit_code == 0, result.output
    # the no-KD baseline runs once for both teachers
    assert "5 cells" in result.output
    assert "(1 teacher-independent, run once for all teachers)" in result.output
    assert "none | all teachers -> prune0.9 | s3" in result.output
    assert "place+featkd | prune0 -> prune0.9 | s3" in result.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(textwrap.dedent(SMALL))
    result = invoke("run", str(path), "--dry-run", "--set", "objectives=['plaec']")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("kdbench: error: ")
    assert "did you mean 'place'?" in lines[0]


def test_train_classifier_asks_the_data_set(tmp_path):
    result = invoke("train-classifier", "--dataset", "imagefolder", "--out", str(tmp_path / "c"))
    assert result.exit_code == 2
    assert result.output.strip() == (
        "kdbench: error: data set 'imagefolder' ships no feature classifier to retrain"
    )
    result = invoke("train-classifier", "--dataset", "digitz")
    assert result.exit_code == 2 and "unknown dataset 'digitz' (did you mean 'digits'?)" in (
        result.output
    )
    assert not (tmp_path / "c").exists()


def test_real_process_prints_no_traceback_but_debug_does(tmp_path):
    missing = tmp_path / "missing.toml"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(missing)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"kdbench: error: {missing}: grid file not found"
    assert "Traceback" not in out.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--debug", "run", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" in debug.stderr


def test_every_shipped_grid_passes_a_dry_run_with_its_preflight():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        result = invoke("run", str(path), "--dry-run")
        assert result.exit_code == 0, (path.name, result.output)
        assert " cells, " in result.output


def test_the_bench_grid_finds_every_teacher_and_assistant_shipped(tmp_path, monkeypatch):
    """A fresh `tox -e bench` must not rebuild a model: a key change (e.g. a tuned TAKD
    weight) without re-exporting `configs/teachers/bench` costs minutes per teacher."""
    from pathlib import Path

    import harness.modelio

    def refuse(_model, path, **_kw):
        raise AssertionError(f"built instead of shipped: {Path(path).parent.name}/{path.name}")

    monkeypatch.setattr(harness.modelio, "save_model", refuse)
    bench = Path(__file__).resolve().parents[1] / "configs" / "bench.toml"
    result = invoke("teachers", str(bench), "--cache-dir", str(tmp_path))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.output.count("assistant ") == 3
