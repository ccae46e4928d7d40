"""The no-KD baseline is trained once per (student, seed) and shown at every teacher.

Decided by the objective's flags (``needs_teacher`` and friends), never by its name; the
ids of every other cell are those the grid had before (recorded from the previous
``expand``), so finished runs are still found and skipped.
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
from test_config import SMALL

import leaderboards as lb
from harness.config import expand, load_config
from harness.grid import _jobs
from harness.jobs import CellJob, GridContext, job_from_json
from harness.registry import lookup
from leaderboards.load import _typed, spread_shared_cells

# ``expand`` of test_config.SMALL before the baseline was shared (label -> cell id).
BEFORE = {
    "none | prune0 -> prune0.9 | s0": "4e116ddd692a",
    "none | prune0 -> prune0.9 | s1": "128166760388",
    "outkd | prune0 -> prune0.9 | s0": "fc791018999b",
    "outkd | prune0 -> prune0.9 | s1": "510b967e8bbf",
    "place+featkd | prune0 -> prune0.9 | s0": "047f99d30d75",
    "place+featkd | prune0 -> prune0.9 | s1": "e1d46ee81535",
    "none | prune0.5 -> prune0.9 | s0": "e00ab4b8a3d9",
    "none | prune0.5 -> prune0.9 | s1": "debecbd9834b",
    "outkd | prune0.5 -> prune0.9 | s0": "c72769265334",
    "outkd | prune0.5 -> prune0.9 | s1": "8f599424c490",
    "place+featkd | prune0.5 -> prune0.9 | s0": "2f3e5b220d98",
    "place+featkd | prune0.5 -> prune0.9 | s1": "56fd8a864014",
}


def small(tmp_path, text=SMALL, overrides=()):
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, list(overrides))


def test_distilling_cells_keep_their_ids(tmp_path):
    cells = expand(small(tmp_path))
    kd = {c["label"]: c["cell_id"] for c in cells if c["objective_label"] != "none"}
    assert kd == {k: v for k, v in BEFORE.items() if not k.startswith("none")}


def test_the_flag_decides_not_the_name(tmp_path, monkeypatch):
    """A baseline that needed a teacher would get a cell per teacher, with the old ids;
    a distilling objective that needed none would be shared."""
    monkeypatch.setattr(lookup("objective", "none"), "needs_teacher", True)
    cells = expand(small(tmp_path))
    assert {c["label"]: c["cell_id"] for c in cells} == BEFORE
    assert all(c["shared_teachers"] == [] for c in cells)
    monkeypatch.setattr(lookup("objective", "none"), "needs_teacher", False)
    monkeypatch.setattr(lookup("objective", "outkd"), "needs_teacher", False)
    shared = {c["objective_label"] for c in expand(small(tmp_path)) if c["shared_teachers"]}
    assert shared == {"none", "outkd"}


def test_baseline_id_does_not_depend_on_the_teachers(tmp_path):
    def baseline(cfg):
        return {c["seed"]: c for c in expand(cfg) if c["objective_label"] == "none"}

    both = baseline(small(tmp_path))
    one = baseline(small(tmp_path, SMALL.replace("{prune = 0.0}, {prune = 0.5}", "{prune = 0.5}")))
    assert {s: c["cell_id"] for s, c in both.items()} == {s: c["cell_id"] for s, c in one.items()}
    assert [m["teacher_name"] for m in both[0]["shared_teachers"]] == ["prune0", "prune0.5"]
    assert [m["teacher_name"] for m in one[0]["shared_teachers"]] == ["prune0.5"]
    # what it computes still matters
    steps = baseline(small(tmp_path, overrides=["train.steps=7"]))
    assert steps[0]["cell_id"] != both[0]["cell_id"]


def test_duplicate_teacher_is_still_an_error(tmp_path):
    text = SMALL.replace("{prune = 0.0}, {prune = 0.5}", "{prune = 0.5}, {prune = 0.5}")
    text = text.replace('"none", "outkd", "place+featkd"', '"none"')
    with pytest.raises(Exception, match="same cell twice"):
        expand(small(tmp_path, text))


def test_every_teacher_still_gets_its_job(tmp_path):
    """A grid of baselines alone still builds and evaluates each teacher once."""
    text = SMALL.replace('"none", "outkd", "place+featkd"', '"none"')
    cells = expand(small(tmp_path, text))
    context = GridContext({}, "sqlite:///x.db", "0", "g", str(tmp_path))
    teachers, jobs = _jobs(context, cells)
    assert [t.teacher_name for t in teachers] == ["prune0", "prune0.5"]
    assert len(jobs) == 2 and all(j.teacher_independent for j in jobs)
    assert job_from_json(jobs[0].to_json()) == jobs[0]
    assert not CellJob.from_cell(context, {**cells[0], "shared_teachers": []}).teacher_independent


def _runs() -> pd.DataFrame:
    base = {"kind": "cell", "status": "finished", "grid_id": "g", "student": "prune0.9"}
    rows = [
        {"run_id": "t0", "kind": "teacher", "grid_id": "g", "teacher": "big", "teacher_params": 9},
        {
            "run_id": "t1",
            "kind": "teacher",
            "grid_id": "g",
            "teacher": "small",
            "teacher_params": 3,
        },
    ]
    for seed in (0, 1):
        for teacher, params in (("big", 9), ("small", 3)):
            rows.append(
                {
                    **base,
                    "run_id": f"kd-{teacher}-{seed}",
                    "objective": "outkd",
                    "teacher": teacher,
                    "teacher_params": params,
                    "seed": seed,
                    "fid": 10.0 + seed + params,
                }
            )
        rows.append(
            {
                **base,
                "run_id": f"none-{seed}",
                "objective": "none",
                "teacher": "big, small",
                "shared_teachers": json.dumps(
                    [
                        {"teacher": "big", "teacher_id": "tb"},
                        {"teacher": "small", "teacher_id": "ts"},
                    ]
                ),
                "seed": seed,
                "fid": 30.0 + seed,
            }
        )
    return _typed(rows)


def test_a_shared_run_is_a_row_at_each_teacher():
    df = spread_shared_cells(_runs())
    none = df[df["objective"] == "none"].sort_values(["seed", "teacher"])
    assert none["teacher"].tolist() == ["big", "small", "big", "small"]
    assert none["teacher_params"].tolist() == [9, 3, 9, 3]
    assert none["teacher_id"].tolist() == ["tb", "ts", "tb", "ts"]
    assert none["run_id"].tolist() == ["none-0", "none-0", "none-1", "none-1"]
    assert none["fid"].tolist() == [30.0, 30.0, 31.0, 31.0]
    assert df["fid"].dtype == float and str(df["teacher_params"].dtype) == "Int64"
    assert len(df[df["objective"] == "outkd"]) == 4
    # the capacity-gap table shows the baseline in every teacher's column, n = seeds
    table = lb.capacity_gap_table(df, "fid")
    for teacher in ("big", "small"):
        assert table.data.loc[("none", teacher), "mean"] == pytest.approx(30.5)
        assert table.data.loc[("none", teacher), "n"] == 2
    # pooled overhead and the metadata count the run once
    assert lb.overhead_table(df).data.loc["none", "n"] == 2
    assert lb.run_metadata(df)["runs"].startswith("6 cells")
