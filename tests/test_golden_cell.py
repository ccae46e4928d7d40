"""A fixed tiny grid's metrics, bit for bit on CPU, against values recorded before.

The values were recorded (``float.hex``) by running this grid with the code before the
throughput work: the no-KD baseline then ran once per teacher, now once for both, and
nothing that speeds a cell up may change a number.  Single thread, CPU, float32; a
different CPU family or torch build may round differently: re-record there with the
previous release rather than loosening the comparison.
"""

from __future__ import annotations

import textwrap

import pytest
from conftest import TINY_GRID
from mlflow.tracking import MlflowClient

from harness.config import load_config
from harness.grid import run_grid

METRICS = ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall", "class_acc")
# The no-KD baseline as recorded once per teacher (prune0, prune0.3): both records were the
# same to the bit, as the baseline does not see the teacher.
NO_KD = {
    "class_acc": "0x1.999999999999ap-4",
    "fid": "0x1.1ae46e9e58534p+7",
    "isc_mean": "0x1.0cef6edff8bdbp+0",
    "isc_std": "0x1.b6e9fc2edf41ap-7",
    "kid_mean": "0x1.f21a5bc28f5c3p+4",
    "kid_std": "0x1.894c34759745fp+1",
    "precision": "0x0.0p+0",
    "recall": "0x0.0p+0",
    "train/loss": [
        "0x1.21b2c00000000p+0",
        "0x1.0a2d860000000p+0",
        "0x1.f16cc40000000p-1",
        "0x1.c755260000000p-1",
        "0x1.966aae0000000p-1",
        "0x1.a4d75a0000000p-1",
    ],
}
GOLDEN = {
    "none | prune0 -> prune0.5 | s0": NO_KD,
    "none | prune0.3 -> prune0.5 | s0": NO_KD,
    "outkd | prune0 -> prune0.5 | s0": {
        "class_acc": "0x1.999999999999ap-4",
        "fid": "0x1.1e5b9b62a667ep+7",
        "isc_mean": "0x1.0c811cb5ad162p+0",
        "isc_std": "0x1.b1a9373c4b203p-7",
        "kid_mean": "0x1.f2d20f3333333p+4",
        "kid_std": "0x1.88f6ea4f901d5p+1",
        "precision": "0x0.0p+0",
        "recall": "0x0.0p+0",
        "train/loss": [
            "0x1.3efa220000000p+0",
            "0x1.26122c0000000p+0",
            "0x1.16c0300000000p+0",
            "0x1.060f220000000p+0",
            "0x1.e3bae00000000p-1",
            "0x1.f2c7fc0000000p-1",
        ],
    },
    "outkd | prune0.3 -> prune0.5 | s0": {
        "class_acc": "0x1.999999999999ap-4",
        "fid": "0x1.196f85d522019p+7",
        "isc_mean": "0x1.0d60ab580bbefp+0",
        "isc_std": "0x1.1fa674bc38e52p-6",
        "kid_mean": "0x1.eeed0bd70a3d7p+4",
        "kid_std": "0x1.8947521f03df2p+1",
        "precision": "0x0.0p+0",
        "recall": "0x0.0p+0",
        "train/loss": [
            "0x1.2246b00000000p+0",
            "0x1.0cb0000000000p+0",
            "0x1.fa62760000000p-1",
            "0x1.da71a20000000p-1",
            "0x1.b576740000000p-1",
            "0x1.c560f80000000p-1",
        ],
    },
}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    text = textwrap.dedent(TINY_GRID).replace("NAME", "golden")
    text = text.replace("teachers = [{prune = 0.0}]", "teachers = [{prune = 0.0}, {prune = 0.3}]")
    text = text.replace('objectives = ["place"]', 'objectives = ["none", "outkd"]')
    (root / "g.toml").write_text(text)
    uri = f"sqlite:///{root}/mlflow.db"
    run = run_grid(
        load_config(root / "g.toml"),
        tracking_uri=uri,
        cache_dir=str(root / "cache"),
        progress=False,
        workdir=root,
    )
    assert run.count("finished") == 3  # the baseline once, outkd per teacher
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(run.experiment).experiment_id
    out, phases = {}, {}
    for r in client.search_runs([experiment], "tags.`kdbench.kind` = 'cell'"):
        history = client.get_metric_history(r.info.run_id, "train/loss")
        phases[r.data.tags["kdbench.label"]] = {
            k: v for k, v in r.data.metrics.items() if k.startswith("time_")
        }
        out[r.data.tags["kdbench.label"]] = {
            **{k: r.data.metrics[k] for k in METRICS},
            "train/loss": [h.value for h in sorted(history, key=lambda h: h.step)],
        }
    out["phases"] = phases
    out["uri"] = uri
    return out


def _hex(values: dict) -> dict:
    return {k: [x.hex() for x in v] if isinstance(v, list) else v.hex() for k, v in values.items()}


@pytest.mark.parametrize("teacher", ["prune0", "prune0.3"])
def test_distilling_cells_are_unchanged(cells, teacher):
    label = f"outkd | {teacher} -> prune0.5 | s0"
    assert _hex(cells[label]) == GOLDEN[label]


@pytest.mark.parametrize("teacher", ["prune0", "prune0.3"])
def test_the_shared_baseline_equals_each_teachers_former_cell(cells, teacher):
    assert (
        _hex(cells["none | all teachers -> prune0.5 | s0"])
        == GOLDEN[f"none | {teacher} -> prune0.5 | s0"]
    )


def test_each_cell_logs_its_phases_and_the_overhead_table_shows_them(cells):
    from leaderboards import load_runs, overhead_table

    for label, phases in cells["phases"].items():
        for key in ("start", "teacher", "train", "sample", "metrics", "log"):
            assert phases[f"time_{key}_s"] >= 0, (label, key)
    baseline = cells["phases"]["none | all teachers -> prune0.5 | s0"]
    outkd = cells["phases"]["outkd | prune0 -> prune0.5 | s0"]
    assert baseline["time_teacher_s"] < outkd["time_teacher_s"]  # it loads no teacher
    table = overhead_table(load_runs(cells["uri"]))
    for column in ("start s", "teacher s", "train s", "sample s", "metrics s", "log s", "cell s"):
        assert column in table.display.columns
    row = table.data.loc["outkd"]
    assert row["time_cell_s"] == pytest.approx(
        sum(
            row[k]
            for k in (
                "time_start_s",
                "time_teacher_s",
                "time_train_s",
                "time_sample_s",
                "time_metrics_s",
                "time_log_s",
            )
        )
    )
    assert row["time_train_s"] == pytest.approx(
        (
            cells["phases"]["outkd | prune0 -> prune0.5 | s0"]["time_train_s"]
            + cells["phases"]["outkd | prune0.3 -> prune0.5 | s0"]["time_train_s"]
        )
        / 2
    )
