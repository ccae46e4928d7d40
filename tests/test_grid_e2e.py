"""Whole grids, end to end, on the embedded default (digits 16x16, U-Net "xxs" base).

``run_grid`` builds the teacher, trains the cells, evaluates them and leaves one MLflow
run per cell; these tests read that record back with ``MlflowClient`` and check it:
completeness, skipping finished cells and ``--rerun``, divergence as a result,
leaderboards equal to statistics recomputed from the runs, determinism, a real MLflow
server over HTTP, and TAKD's cached assistant.  (A worker killed midway and Ctrl-C, with
the re-run that resumes them, are in ``test_hardening.py``: one grid injects both.)  Settings are the smallest that still run
every stage; one cache serves the module, so the base model is pretrained once.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_GRID
from mlflow.tracking import MlflowClient
from test_tracking import fast_dir, mlflow_server  # noqa: F401 (fixtures)

from harness import __version__
from harness.config import load_config
from harness.grid import run_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A cache (shared: the base is pretrained once) and one SQLite store for the module."""
    root = tmp_path_factory.mktemp("e2e")
    return {"root": root, "cache": root / "cache", "uri": f"sqlite:///{root / 'mlflow.db'}"}


def grid_file(folder: Path, name: str, overrides: list[str] = ()) -> tuple[Path, object]:
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(TINY_GRID).replace("NAME", name))
    return path, load_config(path, list(overrides))


def run(
    space, name: str, overrides: list[str] = (), *, uri: str | None = None, rerun: bool = False
):
    _, cfg = grid_file(space["root"], name, overrides)
    return run_grid(
        cfg,
        tracking_uri=uri or space["uri"],
        rerun=rerun,
        cache_dir=str(space["cache"]),
        progress=False,
        workdir=space["root"],
    )


def cell_runs(uri: str, experiment: str, cell_id: str | None = None) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    query = "tags.`kdbench.kind` = 'cell'"
    if cell_id:
        query += f" and tags.`kdbench.cell_id` = '{cell_id}'"
    return client.search_runs([exp.experiment_id], query, max_results=1000)


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    points = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    return sorted((p.step, p.value) for p in points)


# ---------------------------------------------------------------------- one cell


@pytest.fixture(scope="module")
def one_cell(space):
    result = run(space, "e2e-one")
    [run_] = cell_runs(space["uri"], result.experiment)
    return result, run_


def test_one_cell_grid_leaves_a_complete_run(space, one_cell):
    result, r = one_cell
    uri = space["uri"]
    [cell] = result.cells
    assert result.count("finished") == 1 and result.results[0]["run_id"] == r.info.run_id
    assert r.info.status == "FINISHED"
    p, tags, m = r.data.params, r.data.tags, r.data.metrics
    assert {
        k: p[k]
        for k in (
            "objective",
            "teacher",
            "student",
            "backbone",
            "process",
            "dataset",
            "image_size",
            "seed",
            "steps",
            "batch_size",
            "lr",
            "sample_steps",
            "num_samples",
        )
    } == {
        "objective": "place",
        "teacher": "prune0",
        "student": "prune0.5",
        "backbone": "unet",
        "process": "default",
        "dataset": "digits",
        "image_size": "16",
        "seed": "0",
        "steps": "10",
        "batch_size": "16",
        "lr": "0.001",
        "sample_steps": "3",
        "num_samples": "50",
    }
    assert json.loads(p["objective_spec"]) == [{"name": "place", "weight": 1.0}]
    assert int(p["teacher_params"]) > int(p["student_params"]) > 0
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    assert tags["kdbench.grid_id"] == result.grid_id
    assert tags["kdbench.cell_id"] == cell["cell_id"]
    assert tags["kdbench.status"] == "finished" and tags["kdbench.kind"] == "cell"
    assert tags["kdbench.git_commit"] == (git or "unknown")
    assert tags["kdbench.version"] == __version__
    assert json.loads(tags["kdbench.plugins"])["kdbench"] == __version__
    # Per-step loss terms: every log_every=2 steps and the last one; LIFT/PLACE's terms.
    loss = history(uri, r.info.run_id, "train/loss")
    assert [s for s, _ in loss] == [0, 2, 4, 6, 8, 9]
    for term in ("w", "coarse", "fine"):
        assert [s for s, _ in history(uri, r.info.run_id, f"train/place/{term}")] == [
            0,
            2,
            4,
            6,
            8,
            9,
        ], f"train/place/{term} missing: {sorted(m)}"
    w = [v for _, v in history(uri, r.info.run_id, "train/place/w")]
    assert all(0 <= v <= 1 for v in w)
    # Final metrics: quality and cost.
    for key in (
        "fid",
        "kid_mean",
        "isc_mean",
        "precision",
        "recall",
        "class_acc",
        "iter_per_s",
        "peak_mem_mb",
    ):
        assert key in m, f"{key} missing: {sorted(m)}"
    assert m["fid"] > 0 and m["isc_mean"] >= 1 and m["iter_per_s"] > 0 and m["peak_mem_mb"] > 0
    assert m["fid_boot_std"] > 0  # the run's evaluation noise, apart from seed noise
    import torch_fidelity

    assert tags["kdbench.torch_fidelity"] == torch_fidelity.__version__
    assert tags["kdbench.fid_reference"].startswith("digits training images (")
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["class_acc"] * 50 == pytest.approx(round(m["class_acc"] * 50))  # k of 50 samples
    # Artifacts: the sample grid (50 samples of 16x16, 10 a row, 1 px padding) and config.
    client = MlflowClient(tracking_uri=uri)
    assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == [
        "config.json",
        "samples.png",
    ]
    folder = Path(client.download_artifacts(r.info.run_id, "", str(space["root"] / "dl")))
    from PIL import Image

    assert Image.open(folder / "samples.png").size == (10 * 17 + 1, 5 * 17 + 1)
    _, cfg = grid_file(space["root"], "e2e-one")
    assert json.loads((folder / "config.json").read_text()) == cfg.model_dump(mode="json")


def test_rerun_skips_finished_cells_and_rerun_flag_repeats_them_identically(space, one_cell):
    first_result, first = one_cell
    again = run(space, "e2e-one")
    assert again.skipped == [first_result.cells[0]["cell_id"]] and again.results == []
    assert [r.info.run_id for r in cell_runs(space["uri"], again.experiment)] == [first.info.run_id]
    forced = run(space, "e2e-one", rerun=True)
    runs = cell_runs(space["uri"], forced.experiment)
    assert len(runs) == 2
    [second] = [r for r in runs if r.info.run_id != first.info.run_id]
    assert second.data.tags["kdbench.cell_id"] == first.data.tags["kdbench.cell_id"]
    # Determinism on CPU: the same cell twice gives the same numbers, bit for bit.
    for key in ("fid", "class_acc", "kid_mean", "precision", "recall"):
        assert second.data.metrics[key] == first.data.metrics[key], key
    assert history(space["uri"], second.info.run_id, "train/loss") == history(
        space["uri"], first.info.run_id, "train/loss"
    )


# ---------------------------------------------------------------------- divergence


def test_diverging_cell_is_recorded_and_the_grid_completes(space):
    # The learning rate ramps up by 0.1 a step: calm while the early losses set the
    # reference (20 logged losses), unstable after.
    result = run(
        space,
        "e2e-diverge",
        [
            "objectives=['none', 'outkd']",
            "train.steps=30",
            "train.log_every=1",
            "train.diverge_factor=1.01",
            "train.lr=30",
            "train.warmup_steps=300",
        ],
    )
    runs = {r.data.params["objective"]: r for r in cell_runs(space["uri"], result.experiment)}
    assert set(runs) == {"none", "outkd"}
    assert result.count("failed") == 0
    assert result.count("diverged") + result.count("finished") == 2
    diverged = [r for r in runs.values() if r.data.tags["kdbench.status"] == "diverged"]
    assert diverged, "a 1.01 x early-loss limit should stop at least one cell"
    for r in diverged:
        step = r.data.metrics["diverged_step"]
        assert 20 <= step < 30  # the limit applies once 20 losses set the reference
        assert "x early loss" in r.data.tags["kdbench.diverged_reason"]
        assert r.info.status == "FINISHED"  # a result, not a crash
        assert "fid" not in r.data.metrics
        losses = history(space["uri"], r.info.run_id, "train/loss")
        assert losses[-1][0] == step  # the diverging step's terms are recorded too
        reference = statistics.median(v for _, v in losses[:20])
        assert losses[-1][1] > 1.01 * reference
    # The second cell ran after the first stopped.
    assert runs["outkd"].info.start_time >= runs["none"].info.end_time


# ---------------------------------------------------------------------- TAKD, leaderboards


def test_takd_caches_its_assistant_and_leaderboard_equals_the_runs(space):
    from leaderboards import capacity_gap_table, load_runs

    grid = ["objectives=['none', 'takd']"]
    assistants = space["cache"] / "assistants"
    first = run(space, "e2e-takd", grid)
    files = sorted(assistants.glob("*.safetensors"))
    assert len(files) == 1
    [takd0] = cell_runs(
        space["uri"],
        first.experiment,
        next(c["cell_id"] for c in first.cells if c["objective_label"] == "takd"),
    )
    assert takd0.data.metrics["time_assistant_s"] > 0
    assistant = takd0.data.params["assistant"]
    assert assistant.startswith("prune0.")  # between teacher (prune 0) and student (0.5)
    assert int(takd0.data.params["assistant_params"]) > int(takd0.data.params["student_params"])
    mtime = files[0].stat().st_mtime_ns
    second = run(space, "e2e-takd", grid + ["grid.seeds=[0, 1]"])
    assert len(second.skipped) == 2 and len(second.results) == 2
    assert sorted(assistants.glob("*.safetensors")) == files  # reused, not trained again
    assert files[0].stat().st_mtime_ns == mtime
    takd1 = next(
        r
        for r in cell_runs(space["uri"], first.experiment)
        if r.data.params["objective"] == "takd" and r.data.params["seed"] == "1"
    )
    assert takd1.data.params["assistant"] == assistant
    assert takd1.data.metrics["time_assistant_s"] == takd0.data.metrics["time_assistant_s"]

    # The leaderboard's numbers are the mean and sample std of the runs' own values.
    runs = [
        r
        for r in cell_runs(space["uri"], first.experiment)
        if r.data.tags["kdbench.status"] == "finished"
    ]
    assert len(runs) == 4
    df = load_runs(space["uri"], [first.experiment])
    for metric in ("fid", "class_acc"):
        table = capacity_gap_table(df, metric=metric).data
        for objective in ("none", "takd"):
            values = [
                r.data.metrics[metric]
                for r in runs
                if r.data.params["objective"] == objective and r.data.params["teacher"] == "prune0"
            ]
            row = table.loc[(objective, "prune0")]
            assert int(row["n"]) == len(values) == 2
            assert row["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert row["std"] == pytest.approx(statistics.stdev(values), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------- a real server


@pytest.mark.slow
def test_cell_against_a_real_mlflow_server_over_http(space, mlflow_server):  # noqa: F811
    result = run(space, "e2e-http", ["objectives=['outkd']"], uri=mlflow_server)
    assert result.tracking_uri == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("kdbench-e2e-http")
    runs = client.search_runs([exp.experiment_id], "tags.`kdbench.kind` = 'cell'")
    [r] = runs
    assert r.info.run_id == result.results[0]["run_id"]
    assert r.data.tags["kdbench.status"] == "finished" and r.info.status == "FINISHED"
    assert r.data.params["objective"] == "outkd" and r.data.metrics["fid"] > 0
    assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 6
    assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == [
        "config.json",
        "samples.png",
    ]


# ---------------------------------------------------------------------- cluster executors


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_a_two_cell_grid_runs_through_submitit_and_ray(space, executor, tmp_path):
    """The real cell runner through submitit's local cluster and a local Ray instance."""
    options = {
        "slurm": f"{{cluster = 'local', folder = '{tmp_path}/jobs/%j', timeout_min = 10}}",
        "ray": "{num_cpus = 1, num_gpus = 0}",
    }[executor]
    result = run(
        space,
        f"e2e-{executor}",
        [
            "objectives=['outkd', 'lift']",
            f"executor.name='{executor}'",
            f"executor.options={options}",
        ],
    )
    assert [r["status"] for r in result.teacher_results] == ["finished"]
    assert [r["status"] for r in result.results] == ["finished", "finished"]
    runs = cell_runs(space["uri"], result.experiment)
    assert sorted(r.data.params["objective"] for r in runs) == ["lift", "outkd"]
    assert all(r.data.tags["kdbench.status"] == "finished" for r in runs)
    assert all(r.info.status == "FINISHED" and "fid" in r.data.metrics for r in runs)
