"""A grid in MLflow: one grid run with its cells nested, the leaderboard inside, a usable student.

One tiny grid (two objectives, one teacher, one pruned student, unconditional so that
diffusers' ``DDIMPipeline`` can draw from it) is run through ``run_grid`` and read back
with ``MlflowClient``: the grid run and its children, the experiment's description and
kind, the leaderboard artifacts against ``kdbench leaderboard`` rebuilt from the cell runs,
the headline numbers against the cell runs' FIDs, the saved student drawn through
diffusers, the HTML page in headless Chromium, resuming, and ``kdbench ui``'s addresses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chromium_or_skip, ddim_draw
from mlflow.tracking import MlflowClient
from test_grid_e2e import grid_file

import leaderboards as lb
from harness.grid import run_grid
from harness.gridrun import MODEL_TRAINING, ui_addresses
from harness.modelio import load_pretrained
from leaderboards.browser import inspect_page

OVERRIDES = [
    "objectives=['none','outkd']",
    "model.conditional=false",
    "eval.save_student=true",
]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("gridrun")
    _, cfg = grid_file(root, "gridrun", OVERRIDES)
    uri = f"sqlite:///{root / 'mlflow.db'}"

    def go():
        return run_grid(
            cfg,
            tracking_uri=uri,
            cache_dir=str(root / "cache"),
            progress=False,
            workdir=root,
        )

    result = go()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(result.experiment)
    return {"root": root, "uri": uri, "result": result, "client": client, "exp": exp, "go": go}


def runs_of(grid, kind):
    return grid["client"].search_runs(
        [grid["exp"].experiment_id], f"tags.`kdbench.kind` = '{kind}'", max_results=100
    )


def test_cells_and_teacher_nest_under_one_grid_run(grid):
    result = grid["result"]
    [grid_run] = runs_of(grid, "grid")
    assert grid_run.info.run_id == result.grid_run_id
    assert grid_run.info.status == "FINISHED" and grid_run.data.tags["kdbench.status"] == "finished"
    assert grid_run.data.tags["kdbench.grid_id"] == result.grid_id
    cells, teachers = runs_of(grid, "cell"), runs_of(grid, "teacher")
    assert len(cells) == 2 and len(teachers) == 1
    for r in cells + teachers:
        assert r.data.tags["mlflow.parentRunId"] == grid_run.info.run_id
    for r in cells:
        note = r.data.tags["mlflow.note.content"]
        assert "\n" not in note and r.data.params["objective"] in note and "seed 0" in note
    tags = grid["client"].get_experiment(grid["exp"].experiment_id).tags
    assert tags["mlflow.experimentKind"] == MODEL_TRAINING
    assert "kdbench grid `gridrun`" in tags["mlflow.note.content"]
    assert "2 cells" in tags["mlflow.note.content"]


def test_grid_run_holds_the_leaderboard_rebuilt_from_cells_alone(grid):
    client, result = grid["client"], grid["result"]
    rid = result.grid_run_id
    names = {a.path for a in client.list_artifacts(rid)}
    assert {"leaderboard.html", "leaderboard.md", "leaderboard.csv", "config.json"} <= names
    plots = {a.path for a in client.list_artifacts(rid, "plots")}
    assert {"plots/capacity_gap_fid.png", "plots/samples.png"} <= plots
    folder = Path(client.download_artifacts(rid, "", str(grid["root"] / "dl-grid")))
    config = json.loads((folder / "config.json").read_text())
    assert config["grid"]["name"] == "gridrun" and config["eval"]["save_student"] is True
    # The tables equal those `kdbench leaderboard` rebuilds from the cell runs (the grid run
    # is no cell: it would add a row or change the run counts otherwise).
    again = lb.report(grid["uri"], grid_ids=[result.grid_id], fmt="md")
    logged = (folder / "leaderboard.md").read_text()
    assert logged[logged.index("\n## ") :] == again[again.index("\n## ") :]
    assert "2 cells (2 finished), 1 teacher evaluations" in again
    df = lb.load_runs(grid["uri"], grid_ids=[result.grid_id])
    assert sorted(df["kind"]) == ["cell", "cell", "teacher"]
    # Headline: the best objective per teacher, from the cells' own FIDs.
    cells = runs_of(grid, "cell")
    fids = {r.data.params["objective"]: r.data.metrics["fid"] for r in cells}
    best = min(fids, key=fids.get)
    teacher = cells[0].data.params["teacher"]
    run = client.get_run(rid)
    assert run.data.tags[f"kdbench.best_objective/{teacher}"] == best
    assert run.data.metrics[f"best_fid/{teacher}"] == pytest.approx(fids[best])
    assert run.data.metrics["cells_finished"] == 2
    assert f"teacher {teacher}: {best}" in run.data.tags["mlflow.note.content"]
    html = (folder / "leaderboard.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(plots)


def test_resumed_grid_reuses_its_run_and_publishes_again(grid):
    first = grid["result"]
    again = grid["go"]()
    assert again.skipped and again.results == []
    assert again.grid_run_id == first.grid_run_id
    [grid_run] = runs_of(grid, "grid")
    assert grid_run.info.status == "FINISHED" and again.leaderboard["text"]


def test_saved_student_draws_through_ddim_pipeline(grid):
    from diffusers import UNet2DModel

    [cell] = [r for r in runs_of(grid, "cell") if r.data.params["objective"] == "outkd"]
    client = grid["client"]
    files = {a.path for a in client.list_artifacts(cell.info.run_id, "student")}
    assert {"student/config.json", "student/diffusion_pytorch_model.safetensors"} <= files
    local = Path(
        client.download_artifacts(cell.info.run_id, "student", str(grid["root"] / "dl-student"))
    )
    student = load_pretrained(local, backbone="unet")  # pruned: kdbench rebuilds its widths
    assert isinstance(student.inner, UNet2DModel)
    assert student.num_parameters() == int(cell.data.params["student_params"])
    images = ddim_draw(local, student.inner, n=3, steps=3, seed=0)
    assert images.shape == (3, 16, 16, 1)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


def test_grid_run_page_renders_in_chromium(grid):
    chromium_or_skip()
    client, rid = grid["client"], grid["result"].grid_run_id
    page = Path(client.download_artifacts(rid, "leaderboard.html", str(grid["root"] / "dl-h")))
    seen = inspect_page(page, screenshot=grid["root"] / "shot.png")
    assert seen.errors == [] and seen.requests == [] and seen.broken_images == []
    assert len(seen.tables) >= 3 and all(rows >= 2 for rows in seen.tables)
    assert len(seen.images) == len(client.list_artifacts(rid, "plots"))
    assert (grid["root"] / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ui_prints_the_runs_table_and_grid_run_addresses(grid, monkeypatch):
    client, result = grid["client"], grid["result"]
    eid = grid["exp"].experiment_id
    client.delete_experiment_tag(eid, "mlflow.experimentKind")  # a store from before the tag
    lines = ui_addresses(client, "http://127.0.0.1:5000/")
    mode = "?workflowType=machine_learning"  # the UI's model-training mode, not GenAI
    assert f"  runs table: http://127.0.0.1:5000/#/experiments/{eid}/runs{mode}" in lines
    assert (
        f"  grid run:   http://127.0.0.1:5000/#/experiments/{eid}/runs/{result.grid_run_id}{mode}"
        in lines
    )
    assert client.get_experiment(eid).tags["mlflow.experimentKind"] == MODEL_TRAINING
    # `kdbench ui` prints them, then starts MLflow's UI on the store (recorded here).
    from harness.cli import cli

    started = []
    monkeypatch.setattr("subprocess.call", lambda cmd: started.append(cmd) or 0)
    out = CliRunner().invoke(cli, ["ui", "--tracking-uri", grid["uri"]], catch_exceptions=False)
    assert out.exit_code == 0
    assert f"#/experiments/{eid}/runs/{result.grid_run_id}" in out.output
    [cmd] = started
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and grid["uri"] in cmd
