"""Bad input found by trying it, and hostile strings in shared leaderboards.

Each case is the command a user typed: an unwritable cache or store (``/proc`` takes no
files, not even from root), a learning rate of ``1e400`` (TOML reads it as inf), a doubled
objective, the leaderboard of a grid whose cells all failed, and objective labels, grid
names and tags carrying HTML, Markdown table syntax, newlines and terminal escapes.
"""

from __future__ import annotations

import html
import io
import os
import re
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY_GRID
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import leaderboards as lb
from harness.cli import cli


def _grid(tmp_path, name="tried"):
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(TINY_GRID).replace("NAME", name))
    return path


def _kdbench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), out.stderr
    return lines[0]


# ---------------------------------------------------------------------- unwritable places


@pytest.mark.parametrize(
    "where, args, expect",
    [
        ("cache", ["--set", 'cache.dir="/proc/x"'], "cache folder /proc/x is not writable"),
        (
            "store",
            ["--tracking-uri", "sqlite:////proc/x/mlflow.db"],
            "tracking store folder /proc/x is not writable",
        ),
    ],
)
def test_unwritable_cache_or_store_is_one_line_before_anything_runs(tmp_path, where, args, expect):
    grid = _grid(tmp_path)
    if where == "cache":
        args = [*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    line = _one_line_error(_kdbench(tmp_path, "run", str(grid), "--quiet", *args))
    assert expect in line and "--" in line  # what to change
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the store was created
    assert not (tmp_path / "kdbench-out").exists()


# ---------------------------------------------------------------------- numbers, objectives


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=1e400", "train.lr"),
        ("train.betas=[0.9, nan]", "train.betas[1]"),
        ("objective.place.weight=-inf", "objective.place.weight"),
        ("eval.collapse_fid=inf", "eval.collapse_fid"),
    ],
)
def test_non_finite_numbers_anywhere_are_refused(tmp_path, override, key):
    grid = _grid(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(grid), "--dry-run", "--set", override])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("kdbench: error: ") and f"{key}: must be a finite number" in line


def test_doubled_objective_warns_once(tmp_path):
    grid = _grid(tmp_path)
    out = _kdbench(tmp_path, "run", str(grid), "--dry-run", "--set", "objectives=['place+place']")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "more than once" in line]
    assert len(warnings) == 1, out.stderr
    assert warnings[0].startswith("kdbench: warning: objectives[0] 'place+place' names 'place'")
    assert "weight = 2.0" in warnings[0]
    ok = _kdbench(tmp_path, "run", str(grid), "--dry-run", "--set", "objectives=['place+outkd']")
    assert ok.returncode == 0 and "more than once" not in ok.stderr


# ---------------------------------------------------------------------- hostile store contents


def _log(client, eid, tags, params, metrics, status, history=()):
    run = client.create_run(eid, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()]
        + [Metric(k, v, now, s) for k, s, v in history],
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("kdbench.status", status)],
    )
    client.set_terminated(run.info.run_id, "FINISHED" if status == "finished" else "FAILED")
    return run.info.run_id


def _cell_tags(grid_name, cell):
    return {
        "kdbench.kind": "cell",
        "kdbench.grid_id": "g-hostile",
        "kdbench.grid_name": grid_name,
        "kdbench.cell_id": cell,
        "kdbench.git_commit": "abc1234",
        "kdbench.fid_features": "x",
    }


def test_leaderboard_of_a_grid_with_no_finished_cell_says_so(tmp_path):
    """All cells failed before their teacher was built: no teacher run, no teacher_params."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("kdbench-failed")
    for seed in (0, 1):
        params = {"objective": "place", "teacher": "prune0", "student": "prune0.5", "seed": seed}
        _log(client, eid, _cell_tags("failed", f"c{seed}"), params, {}, "failed")
    out = _kdbench(
        tmp_path, "leaderboard", "--tracking-uri", uri, "--format", "md", "--plot", "plots"
    )
    line = _one_line_error(out)
    assert "no finished cell" in line and "2 failed" in line and "re-run the grid" in line


HOSTILE = "<script>alert(1)</script>|x\n# table: forged\n\x1b[31mred"
HOSTILE_GRID = "grid <img src=x onerror=alert(1)> | two\nlines"


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_labels_render_inertly_in_every_format(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("kdbench-hostile")
    teacher = {"kdbench.kind": "teacher", "kdbench.grid_id": "g-hostile"}
    _log(
        client,
        eid,
        {**teacher, "kdbench.grid_name": HOSTILE_GRID},
        {"teacher": "t|<b>", "teacher_params": 1000},
        {"fid": 3.0},
        "finished",
    )
    for i, objective in enumerate(["none", HOSTILE]):
        for seed in (0, 1):
            params = {
                "objective": objective,
                "teacher": "t|<b>",
                "teacher_params": 1000,
                "student": "s",
                "seed": seed,
            }
            metrics = {"fid": 10.0 + i + seed, "iter_per_s": 5.0, "peak_mem_mb": 10.0}
            _log(client, eid, _cell_tags(HOSTILE_GRID, f"c{i}{seed}"), params, metrics, "finished")

    md = lb.report(uri, fmt="md")
    assert "<script>" not in md and "<img" not in md and "\x1b" not in md
    assert "&lt;script&gt;" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(line.replace("\\|", "").split("|")) for line in rows if "---" not in line}
    assert len(widths) == 1 or all(  # each table's rows have its header's column count
        len(line.replace("\\|", "").split("|")) in widths for line in rows
    )
    board = md.split("## ")[1]
    table_rows = [line for line in board.splitlines() if line.startswith("|")]
    assert len({len(line.replace("\\|", "").split("|")) for line in table_rows}) == 1
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;\\|x # table: forged" in r for r in table_rows)
    assert not any(line.startswith("# table") for line in md.splitlines())

    page = lb.report(uri, fmt="html")
    parser = _Tables()
    parser.feed(page)
    assert "script" not in parser.tags
    # The only images are the report's own figures, embedded as data: PNGs; none from a label.
    figures = re.findall(r'<img alt="[^"<>]*" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert parser.tags.count("img") == len(figures)
    assert any("<script>alert(1)</script>|x" in t for t in parser.text)  # shown, as text
    assert html.escape("<script>") in page

    text = lb.report(uri, fmt="text")
    assert "\x1b" not in text and "<script>alert(1)</script>|x # table: forged [31mred" in text
    assert not any(line.startswith("# table: forged") for line in text.splitlines())

    csv = lb.report(uri, fmt="csv")
    tables = lb.read_csv_tables(csv)
    assert "forged" not in tables  # a newline in a label cannot open a table of its own
    board = next(frame for title, frame in tables.items() if title.startswith("Capacity gap"))
    labels = set(board["objective"])
    assert labels == {"none", "<script>alert(1)</script>|x # table: forged [31mred"}
    frame = pd.read_csv(io.StringIO(csv.split("\n# table: ")[1].partition("\n")[2]))
    assert len(frame) == len(board)


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    from leaderboards.render import _csv_cell  # noqa

    assert _csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _csv_cell("@SUM(A1)") == "'@SUM(A1)" and _csv_cell("+1") == "'+1"
    assert _csv_cell("place+featkd") == "place+featkd" and _csv_cell(-1.5) == -1.5
