"""The MLflow tracking layer: SQLite round trip, URIs, HTTP server, concurrent writers."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import pickle
import time

import numpy as np
import pytest
from conftest import free_port, running_mlflow_server, tmpfs_folder
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from harness.errors import TrackingError
from harness.tracking import Tracker, mask_uri, resolve_uri


@pytest.fixture
def fast_dir(tmp_path):
    """A folder on tmpfs when there is one: SQLite fsyncs every commit."""
    with tmpfs_folder("kdbench-track-", tmp_path) as folder:
        yield folder


# ---------------------------------------------------------------------------- URIs


def test_resolve_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri(None, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/kdbench-out/mlflow.db"
    assert uri.startswith("sqlite:////") and (tmp_path / "kdbench-out").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_uri(None, tmp_path) == "http://tracking:5000"
    assert resolve_uri("postgresql://u:p@db/kd", tmp_path) == "postgresql://u:p@db/kd"
    rel = resolve_uri("sqlite:///runs/m.db?timeout=30", tmp_path)
    assert rel == f"sqlite:///{tmp_path.resolve()}/runs/m.db?timeout=30"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"


@pytest.mark.parametrize(
    "uri,masked",
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg://kd:p%40ss@db.lan:5432/mlflow?sslmode=require",
            "postgresql+psycopg://kd:***@db.lan:5432/mlflow?sslmode=require",
        ),
        ("https://user:tok@mlflow.example.org/", "https://user:***@mlflow.example.org/"),
        ("https://mlflow.example.org/?token=abc&x=1", "https://mlflow.example.org/?token=***&x=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////abs/kdbench-out/mlflow.db", "sqlite:////abs/kdbench-out/mlflow.db"),
    ],
)
def test_mask_uri(uri, masked):
    assert mask_uri(uri) == masked


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_round_trip(fast_dir, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri(None, fast_dir)
    tracker = Tracker(uri, "round trip")
    out = fast_dir / "kdbench-out"
    assert (out / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "round trip"
    assert experiment.artifact_location == (out / "mlartifacts" / "round_trip").as_uri()
    assert Tracker(uri, "round trip").experiment_id == tracker.experiment_id

    spec = [{"name": "place", "weight": 1.0, "group_size": 16}]
    rid = tracker.start_run(
        "c1",
        tags={"kdbench.cell_id": "c1", "kdbench.kind": "cell"},
        params={
            "objective_spec": spec,
            "seed": 3,
            "lr": 2e-4,
            "long": "x" * (MAX_PARAM_VAL_LENGTH + 100),
        },
    )
    run = client.get_run(rid)
    assert run.info.status == "RUNNING" and run.info.experiment_id == tracker.experiment_id
    assert run.data.tags["kdbench.status"] == "running" and run.info.run_name == "c1"
    assert json.loads(run.data.params["objective_spec"]) == spec
    assert run.data.params["seed"] == "3" and float(run.data.params["lr"]) == 2e-4
    long = run.data.params["long"]
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith("...[truncated]")

    # Buffered: 98 values stay local, the 100th triggers one batch.
    for step in range(49):
        tracker.log_metrics(
            rid, {"train/loss": 1.0 / (step + 1), "train/place/w": step / 49}, step=step
        )
    assert client.get_metric_history(rid, "train/loss") == []
    tracker.log_metrics(rid, {"train/loss": float("nan"), "train/place/w": float("inf")}, step=49)
    loss = sorted(client.get_metric_history(rid, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == list(range(50))
    assert [m.value for m in loss[:49]] == pytest.approx([1.0 / (s + 1) for s in range(49)])
    assert math.isnan(loss[49].value)
    w = {m.step: m.value for m in client.get_metric_history(rid, "train/place/w")}
    assert math.isnan(w[49]) and w[10] == pytest.approx(10 / 49)  # inf is logged as NaN
    tracker.log_metrics(rid, {"fid": 12.5, "iter_per_s": 3.25})
    assert "fid" not in client.get_run(rid).data.metrics
    tracker.flush()
    assert client.get_run(rid).data.metrics["fid"] == 12.5

    tracker.log_json(rid, {"train": {"steps": 10}}, "config.json")
    tracker.log_image(rid, np.full((8, 8, 3), 200, np.uint8), "samples.png")
    fig = plt.figure(figsize=(1, 1))
    tracker.log_figure(rid, fig, "figure.png")
    plt.close(fig)
    note = fast_dir / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(rid, note, "extra")
    names = {a.path for a in client.list_artifacts(rid)}
    assert {"config.json", "samples.png", "figure.png", "extra"} <= names
    stored = out / "mlartifacts" / "round_trip" / rid / "artifacts"
    assert json.loads((stored / "config.json").read_text()) == {"train": {"steps": 10}}
    assert (stored / "extra" / "note.txt").read_text() == "hello"

    for status, mlflow_status in [
        ("diverged", "FINISHED"),
        ("failed", "FAILED"),
        ("killed", "KILLED"),
        ("finished", "FINISHED"),
    ]:
        tracker.resume_run(rid)
        run = client.get_run(rid)
        assert (run.info.status, run.data.tags["kdbench.status"]) == ("RUNNING", "running")
        tracker.finish(rid, status)
        run = client.get_run(rid)
        assert (run.info.status, run.data.tags["kdbench.status"]) == (mlflow_status, status)
    with pytest.raises(ValueError, match="unknown run status 'done'; valid: finished, diverged"):
        tracker.finish(rid, "done")
    with pytest.raises(TrackingError, match=r"resume run 0+ failed on sqlite:////"):
        tracker.resume_run("0" * 32)

    other = tracker.start_run("c2", tags={"kdbench.cell_id": "it's c2"})
    tracker.finish(other, "failed", error="CUDA out of memory")
    time.sleep(0.01)
    again = tracker.start_run("c1 again", tags={"kdbench.cell_id": "c1"})
    found = tracker.find_runs({"kdbench.cell_id": "c1"})
    assert [r["run_id"] for r in found] == [again, rid]
    assert found[1]["status"] == "finished" and found[1]["metrics"]["fid"] == 12.5
    assert found[1]["params"]["seed"] == "3" and found[0]["status"] == "running"
    assert tracker.latest_run_for_cell("c1")["run_id"] == again
    assert tracker.latest_run_for_cell("nope") is None
    quoted = tracker.find_runs({"kdbench.cell_id": "it's c2"})
    assert [r["run_id"] for r in quoted] == [other]
    assert quoted[0]["tags"]["kdbench.error"] == "CUDA out of memory"

    clone = pickle.loads(pickle.dumps(tracker))
    assert clone.__getstate__() == {"uri": uri, "experiment_id": tracker.experiment_id}
    assert clone.experiment == "round trip"
    attached = Tracker.attach(uri, tracker.experiment_id)
    assert attached.latest_run_for_cell("c1")["run_id"] == again
    missing = fast_dir / "elsewhere.db"
    with pytest.raises(TrackingError, match="no tracking store at .*elsewhere.db"):
        Tracker.attach(f"sqlite:///{missing}", "1")
    assert not missing.exists()


# ---------------------------------------------------------------------------- HTTP


def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    port = free_port()  # bound then closed: nothing listens there
    start = time.perf_counter()
    with pytest.raises(TrackingError) as info:
        Tracker(f"http://alice:s3cret@127.0.0.1:{port}", "kd")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert message.startswith(f"cannot reach tracking server http://alice:***@127.0.0.1:{port}")
    assert "s3cret" not in message and "\n" not in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # only for the check


@pytest.fixture
def mlflow_server(tmp_path, fast_dir):
    """A real ``mlflow server`` on a free localhost port (SQLite backend, no job runner)."""
    with running_mlflow_server(f"sqlite:///{fast_dir / 'server.db'}", tmp_path) as url:
        yield url


@pytest.mark.slow
def test_tracker_over_http(mlflow_server):
    tracker = Tracker(mlflow_server, "over-http")
    rid = tracker.start_run(
        "h1",
        tags={"kdbench.cell_id": "h1", "kdbench.kind": "cell"},
        params={"objective": "place", "seed": 0},
    )
    for step in range(5):
        tracker.log_metrics(rid, {"train/loss": 1.0 / (step + 1)}, step=step)
    tracker.log_metrics(rid, {"fid": 7.5})
    tracker.log_image(rid, np.zeros((8, 8, 3), np.uint8), "samples.png")
    tracker.finish(rid, "finished")

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([tracker.experiment_id], "tags.`kdbench.cell_id` = 'h1'")
    assert [r.info.run_id for r in runs] == [rid]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["kdbench.status"] == "finished"
    assert run.data.params == {"objective": "place", "seed": "0"}
    assert run.data.metrics["fid"] == 7.5
    history = sorted(client.get_metric_history(rid, "train/loss"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([1.0 / (s + 1) for s in range(5)])
    assert [a.path for a in client.list_artifacts(rid)] == ["samples.png"]
    assert tracker.latest_run_for_cell("h1")["run_id"] == rid


# ---------------------------------------------------------------------------- processes


def _log_cell(args):
    """Worker: rebuild the Tracker from its pickle, log one cell, finish it."""
    tracker, index = args
    try:
        rid = tracker.start_run(
            f"cell-{index}", tags={"kdbench.cell_id": f"cell-{index}"}, params={"seed": index}
        )
        for step in range(30):
            tracker.log_metrics(rid, {"train/loss": index + step / 30}, step=step)
        tracker.log_metrics(rid, {"fid": float(index)})
        tracker.finish(rid, "finished")
        return rid, None
    except Exception as exc:  # reported to the parent, asserted there
        return None, f"{type(exc).__name__}: {exc}"


@pytest.mark.slow
def test_eight_processes_one_fresh_store(fast_dir):
    uri = f"sqlite:///{fast_dir / 'fresh' / 'mlflow.db'}"
    tracker = Tracker(uri, "parallel")  # creates the store once, in the parent
    with mp.get_context("spawn").Pool(8) as pool:
        results = pool.map(_log_cell, [(tracker, i) for i in range(8)])
    errors = [e for _, e in results if e]
    assert not errors, errors
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([tracker.experiment_id], max_results=100)
    assert len(runs) == 8
    cells = sorted(r.data.tags["kdbench.cell_id"] for r in runs)
    assert cells == sorted(f"cell-{i}" for i in range(8))
    assert {r.info.run_id for r in runs} == {rid for rid, _ in results}
    for r in runs:
        i = int(r.data.params["seed"])
        assert r.data.metrics["fid"] == i and r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 30
