"""The grid's job records: built from expanded cells, JSON round trips, executor helpers."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError

import pytest
from conftest import TINY_GRID

from harness.config import expand, load_config
from harness.errors import KDBenchError
from harness.executor import failed, finalize, identify, outcome
from harness.jobs import CELL_FIELDS, CellJob, GridContext, TeacherJob, job_from_json


@pytest.fixture
def context() -> GridContext:
    return GridContext(
        config={"grid": {"name": "t"}, "train": {"steps": 3}},
        tracking_uri="sqlite:///mlflow.db",
        experiment_id="7",
        grid_id="g1",
        cache_dir="/tmp/cache",
        rerun=True,
        progress=False,
        git_commit="abc123",
    )


@pytest.fixture
def cell() -> dict:
    return {
        "cell_id": "c0ffee",
        "label": "outkd | prune0 -> prune0.5 | s0",
        "objective_label": "outkd",
        "objective": [{"name": "outkd", "weight": 1.0}],
        "teacher": {"preset": None, "prune": 0.0, "pretrained": None, "label": None},
        "teacher_name": "prune0",
        "teacher_id": "t1",
        "student": {"preset": None, "prune": 0.5, "pretrained": None, "label": None},
        "student_name": "prune0.5",
        "seed": 0,
    }


def test_cell_job_from_an_expanded_cell_keeps_every_field(tmp_path, context):
    path = tmp_path / "grid.toml"
    path.write_text(TINY_GRID)
    cells = expand(load_config(path))
    jobs = [CellJob.from_cell(context, c) for c in cells]
    for c, job in zip(cells, jobs):
        assert set(c) == set(CELL_FIELDS)
        assert {key: getattr(job, key) for key in CELL_FIELDS} == c
        assert job.context is context and job.kind == "cell"


def test_json_round_trip_is_exact(context, cell):
    job = CellJob.from_cell(context, cell)
    text = job.to_json()
    data = json.loads(text)
    assert data["kind"] == "cell" and data["context"]["grid_id"] == "g1"
    assert CellJob.from_json(text) == job
    assert job_from_json(text) == job
    teacher = TeacherJob(context, cell["teacher"], "t1", "prune0")
    back = job_from_json(teacher.to_json())
    assert isinstance(back, TeacherJob) and back == teacher
    assert (back.cell_id, back.label) == ("teacher-t1", "teacher prune0")
    assert pickle.loads(pickle.dumps(job)) == job


def test_records_are_frozen(context, cell):
    job = CellJob.from_cell(context, cell)
    with pytest.raises(FrozenInstanceError):
        job.seed = 1
    with pytest.raises(FrozenInstanceError):
        job.context.rerun = False


def test_bad_json_is_a_one_line_error(context, cell):
    job = CellJob.from_cell(context, cell)
    with pytest.raises(KDBenchError, match="a job must be JSON"):
        job_from_json("{not json")
    with pytest.raises(KDBenchError, match="must be a JSON object, got list"):
        job_from_json("[]")
    with pytest.raises(KDBenchError, match=r"unknown job kind 'ta'; valid: teacher, cell"):
        job_from_json(json.dumps({**job.to_dict(), "kind": "ta"}))
    with pytest.raises(KDBenchError, match="expected a teacher job, got kind 'cell'"):
        TeacherJob.from_json(job.to_json())
    missing = job.to_dict()
    del missing["seed"]
    with pytest.raises(KDBenchError, match="malformed cell job: .*seed"):
        job_from_json(json.dumps(missing))
    extra = {**job.to_dict(), "colour": "red"}
    with pytest.raises(KDBenchError, match="malformed cell job: .*colour"):
        job_from_json(json.dumps(extra))


def test_executor_helpers_read_records_and_mappings(context, cell):
    job = CellJob.from_cell(context, cell)
    assert identify(job) == ("c0ffee", cell["label"])
    assert identify({"cell_id": "x"}) == ("x", None)
    assert outcome(job, "killed", error="interrupted") == {
        "cell_id": "c0ffee",
        "label": cell["label"],
        "status": "killed",
        "error": "interrupted",
    }
    assert failed(job, "Traceback...\nValueError: boom")["error"] == "ValueError: boom"
    assert finalize(job, {"status": "finished", "cell_id": "other", "value": 4}) == {
        "label": cell["label"],
        "status": "finished",
        "cell_id": "c0ffee",
        "value": 4,
    }
