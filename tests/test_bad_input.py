"""Bad input through the real command line: one line, exit code 2, no traceback, no run left.

Each case of the catalogue writes a tiny grid (digits 16x16, U-Net "xxs"), applies its
mistake, runs ``kdbench run`` and checks: exit code 2; exactly one line of output, starting
``kdbench: error:`` and naming the problem; no "Traceback"; and no MLflow run left RUNNING
in the store when the case got as far as creating one.  A few cases run as real processes.
Mistakes that only show while training (an objective that returns NaN or no ``loss``) are
cell-level results, not input errors: what the store records is asserted instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_GRID, free_port, run_kdbench
from mlflow.tracking import MlflowClient

from harness.cli import cli

TINY = TINY_GRID.replace("NAME", "bad")


NAN_PLUGIN = """
from harness import hookimpl
from harness.objective import Objective


class NaNAfterThree(Objective):
    \"\"\"Output MSE that turns NaN at step 3 (a collapsing objective).\"\"\"

    name = "nan_after_three"

    def forward(self, student, teacher, step=0, total_steps=1):
        loss = ((student.pred - teacher.pred) ** 2).mean()
        return {"loss": loss * float("nan") if step >= 3 else loss}


class NoLoss(Objective):
    \"\"\"Returns its terms but forgets ``loss``.\"\"\"

    name = "no_loss"

    def forward(self, student, teacher, step=0, total_steps=1):
        return {"mse": ((student.pred - teacher.pred) ** 2).mean()}


@hookimpl
def register_objectives(register):
    register(NaNAfterThree)
    register(NoLoss)
"""


def _model_file(tmp: Path, name: str, backbone: str, preset: str, image_size: int) -> Path:
    from harness.factories import get_backbone
    from harness.modelio import save_model

    torch.manual_seed(0)
    model = get_backbone(backbone).build(preset, image_size=image_size, channels=1, num_classes=10)
    path = tmp / name
    save_model(model, path)
    return path


# ------------------------------------------------------------------ the file-based mistakes


def _image_folder(kind: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        root = tmp / "images"
        if kind != "missing":
            root.mkdir()
        if kind == "junk":
            (root / "notes.txt").write_text("not an image")
            (root / "broken.png").write_bytes(b"\x89PNG not really")
        if kind == "one-image":
            from PIL import Image

            Image.new("RGB", (20, 20), (200, 10, 10)).save(root / "red.png")
        return ["dataset.name='imagefolder'", f"dataset.root='{root}'"]

    return setup


def _dit_checkpoint(tmp: Path) -> list[str]:
    path = _model_file(tmp, "dit.safetensors", "dit", "xxs", 16)
    return [f"teachers=[{{pretrained='{path}'}}]"]


def _other_size_checkpoint(tmp: Path) -> list[str]:
    path = _model_file(tmp, "unet8.safetensors", "unet", "xxs", 8)
    return [f"teachers=[{{pretrained='{path}'}}]"]


def _corrupt_checkpoint(tmp: Path) -> list[str]:
    path = _model_file(tmp, "unet.safetensors", "unet", "xxs", 16)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return [f"teachers=[{{pretrained='{path}'}}]"]


def _unverified_checkpoint(tmp: Path) -> list[str]:
    path = _model_file(tmp, "unet.safetensors", "unet", "xxs", 16)
    Path(f"{path}.sha256").unlink()
    return [f"students=[{{pretrained='{path}'}}]"]


def _foreign_safetensors(tmp: Path) -> list[str]:
    from harness.storage import save_tensors

    path = tmp / "weights.safetensors"
    save_tensors(path, {"w": torch.zeros(3)})
    return [f"teachers=[{{pretrained='{path}'}}]"]


def _garbage_safetensors(tmp: Path) -> list[str]:
    from harness.storage import atomic_write_bytes, sha256_file

    path = tmp / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    atomic_write_bytes(f"{path}.sha256", sha256_file(path).encode())
    return [f"teachers=[{{pretrained='{path}'}}]"]


def _unreachable_server(tmp: Path) -> list[str]:
    return [f"tracking.uri='http://alice:s3cret@127.0.0.1:{free_port()}'"]


def _deleted_experiment(tmp: Path) -> list[str]:
    from harness.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}", "kdbench-bad")
    MlflowClient(tracking_uri=tracker.uri).delete_experiment(tracker.experiment_id)
    return []


# ------------------------------------------------------------------ the catalogue


@dataclass
class Case:
    id: str
    expect: list[str]  # substrings of the one error line
    overrides: list[str] = field(default_factory=list)
    text: Callable[[str], str] | None = None  # rewrites the grid file
    setup: Callable[[Path], list[str]] | None = None  # makes files; returns overrides
    plugin: dict[str, Any] | None = None  # a fake installed distribution (fake_dist)
    raw: bytes | None = None  # the grid file's bytes instead of text


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


BROKEN_IMPORT = {
    "name": "broken-plugin",
    "entry_points": {"boomplug": "fakeplug_boom"},
    "modules": {"fakeplug_boom": "raise RuntimeError('boom at import')\n"},
}
WRONG_TYPE = {
    "name": "wrong-type",
    "entry_points": {"wrongplug": "fakeplug_wrong"},
    "modules": {
        "fakeplug_wrong": """
                  from harness import hookimpl

                  @hookimpl
                  def register_objectives(register):
                      register(42)
              """
    },
}

CASES = [
    # the grid file
    Case("toml-syntax", ["TOML syntax error"], text=lambda t: t + "\n[train\n"),
    Case("not-text", ["not a text file"], raw=b"\xff\xfe\x00\x81 binary"),
    Case(
        "unknown-key",
        ["teacherz", "unknown key", "did you mean 'teachers'"],
        text=lambda t: "teacherz = []\n" + t,
    ),
    Case("unknown-section-key", ["train.stpes", "did you mean 'steps'"], ["train.stpes=5"]),
    Case("wrong-type", ["train.steps", "integer"], ["train.steps='many'"]),
    Case("wrong-type-list", ["grid.seeds", "list"], ["grid.seeds=3"]),
    Case("empty-objectives", ["objectives", "at least 1"], ["objectives=[]"]),
    Case("empty-teachers", ["teachers", "at least 1"], ["teachers=[]"]),
    Case("empty-seeds", ["grid.seeds", "at least 1"], ["grid.seeds=[]"]),
    Case("override-syntax", ["expected KEY=VALUE"], ["train.steps"]),
    Case("duplicate-cell", ["same cell twice"], ["teachers=[{prune=0.0}, {prune=0.0}]"]),
    # plugin names
    Case(
        "unknown-objective",
        ["unknown objective 'plaec'", "did you mean 'place'"],
        ["objectives=['plaec']"],
    ),
    Case("unknown-backbone", ["model.backbone", "did you mean 'unet'"], ["model.backbone='unte'"]),
    Case("unknown-dataset", ["dataset.name", "did you mean 'digits'"], ["dataset.name='digit'"]),
    Case("unknown-executor", ["executor.name", "did you mean 'local'"], ["executor.name='locl'"]),
    Case("unknown-process", ["model.process", "ddpn"], ["model.process='ddpn'"]),
    Case("unknown-preset", ["teachers[0].preset", "huge"], ["teachers=[{preset='huge'}]"]),
    # options
    Case(
        "unknown-objective-option",
        ["group_sise", "did you mean 'group_size'"],
        ["objective.place.group_sise=4"],
    ),
    Case("negative-weight", ["weight must be >= 0", "-1"], ["objective.place.weight=-1"]),
    Case("group-size-zero", ["group_size", ">= 2"], ["objective.place.group_size=0"]),
    Case("group-size-above-hw", ["group_size = 1000", "256"], ["objective.place.group_size=1000"]),
    Case("bad-choice", ["coarse", "'l3'"], ["objective.place.coarse='l3'"]),
    Case(
        "objective-table-without-name", ["needs a string 'name'"], ["objectives=[{group_size=4}]"]
    ),
    Case(
        "options-for-absent-part",
        ["featkd", "not parts of it"],
        ["objectives=[{name='place', featkd={weight=1.0}}]"],
    ),
    Case(
        "prune-ratio-one", ["students", "prune ratio must be in [0, 1)"], ["students=[{prune=1.0}]"]
    ),
    Case(
        "prune-ratio-negative",
        ["teachers", "prune ratio must be in [0, 1)"],
        ["teachers=[{prune=-0.1}]"],
    ),
    Case(
        "two-capacity-kinds",
        ["exactly one of preset, prune, pretrained"],
        ["teachers=[{prune=0.5, preset='xs'}]"],
    ),
    Case(
        "pruning-without-base",
        ["model.base", "pruning ratios need a base model"],
        text=_replace('base = "xxs"\n', ""),
    ),
    Case("image-size-backbone", ["image_size 15", "divisible by 2"], ["dataset.image_size=15"]),
    Case(
        "image-size-too-small",
        ["dataset.image_size", "greater than or equal to 4"],
        ["dataset.image_size=2"],
    ),
    Case("unknown-metric", ["eval.metrics", "fud"], ["eval.metrics=['fud']"]),
    Case(
        "diverge-factor", ["train.diverge_factor", "greater than 1"], ["train.diverge_factor=0.5"]
    ),
    Case(
        "unknown-dataset-option",
        ["dataset 'digits' has no option 'colour'"],
        ["dataset.options.colour=1"],
    ),
    Case(
        "unknown-executor-option",
        ["executor 'local' has no option 'wrkers'", "did you mean 'workers'"],
        ["executor.options.wrkers=2"],
    ),
    Case("executor-workers-zero", ["workers"], ["executor.options.workers=0"]),
    # data
    Case(
        "missing-dataset-folder", ["imagefolder: folder not found"], setup=_image_folder("missing")
    ),
    Case("empty-image-folder", ["no readable image"], setup=_image_folder("empty")),
    Case(
        "non-image-files",
        ["no readable image", "2 other file(s) skipped"],
        setup=_image_folder("junk"),
    ),
    Case(
        "missing-inception-weights",
        ["feature extractor weights not found"],
        ["eval.inception_weights='/nonexistent/pt_inception.pth'"],
        setup=_image_folder("one-image"),
    ),
    # model files
    Case(
        "checkpoint-other-architecture",
        ["teachers[0].pretrained", "a dit model", "backbone is unet"],
        setup=_dit_checkpoint,
    ),
    Case("checkpoint-other-image-size", ["8x8 images", "16x16"], setup=_other_size_checkpoint),
    Case(
        "checkpoint-corrupt",
        ["teachers[0].pretrained", "corrupt (sha256"],
        setup=_corrupt_checkpoint,
    ),
    Case(
        "checkpoint-unverified",
        ["students[0].pretrained", "no .sha256"],
        setup=_unverified_checkpoint,
    ),
    Case("checkpoint-not-a-model", ["not a kdbench model file"], setup=_foreign_safetensors),
    Case("checkpoint-garbage", ["unreadable safetensors file"], setup=_garbage_safetensors),
    Case(
        "checkpoint-missing",
        ["teachers[0].pretrained", "file not found"],
        ["teachers=[{pretrained='/nonexistent/t.safetensors'}]"],
    ),
    Case(
        "pretrained-folder-missing",
        ["pretrained model folder not found"],
        ["model.base_pretrained='./no/such/folder'"],
    ),
    # tracking
    Case(
        "tracking-unreachable",
        ["cannot reach tracking server", "alice:***@127.0.0.1"],
        setup=_unreachable_server,
    ),
    Case(
        "tracking-deleted-experiment",
        ["experiment 'kdbench-bad' is deleted"],
        setup=_deleted_experiment,
    ),
    # plugins
    Case(
        "plugin-raises-on-import",
        ["unknown objective 'boom'", "failed to load: boomplug"],
        ["objectives=['boom']"],
        plugin=BROKEN_IMPORT,
    ),
    Case(
        "plugin-registers-wrong-type",
        ["unknown objective 'wrong'", "failed to load: wrongplug"],
        ["objectives=['wrong']"],
        plugin=WRONG_TYPE,
    ),
]


def _runs_left_running(db: Path) -> list[str]:
    if not db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments(view_type=3)]  # ALL
    return [
        r.info.run_id
        for r in client.search_runs(ids, run_view_type=3)
        if r.info.status == "RUNNING"
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2(case, tmp_path, fake_dist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if case.plugin:
        p = case.plugin
        fake_dist(p["name"], "1.0", p["entry_points"], p["modules"])
    text = textwrap.dedent(TINY)
    grid = tmp_path / "grid.toml"
    if case.text is not None:
        text = case.text(text)
    if case.raw is not None:
        grid.write_bytes(case.raw)
    else:
        grid.write_text(text)
    overrides = list(case.overrides) + (case.setup(tmp_path) if case.setup else [])
    db = tmp_path / "mlflow.db"
    args = [
        "run",
        str(grid),
        "--tracking-uri",
        f"sqlite:///{db}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--no-leaderboard",
    ]
    if any(o.startswith("tracking.uri=") for o in overrides):
        args[2:4] = []
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(cli, args)
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("kdbench: error: "), output
    for word in case.expect:
        assert word in lines[0], lines[0]
    assert "Traceback" not in output and "s3cret" not in output
    assert not (tmp_path / "cache" / "checkpoints").exists()  # nothing trained
    assert _runs_left_running(db) == []


def test_catalogue_has_at_least_thirty_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 30


# ------------------------------------------------------------------ real processes


@pytest.mark.parametrize(
    "mistake, expect",
    [
        (["--set", "objective.place.group_size=1000"], "group_size <= 256"),
        (["--set", "objectives=['plaec']"], "did you mean 'place'"),
    ],
)
def test_real_process_one_line_exit_2(tmp_path, mistake, expect):
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(TINY))
    out = run_kdbench(
        grid, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache", *mistake, timeout=180
    )
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), out.stderr
    assert expect in lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # failed before the store was made


# ------------------------------------------------------------------ cell-level results


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the training cases: the base model is pretrained once."""
    return tmp_path_factory.mktemp("bad-input-cache")


def _run_grid(tmp_path: Path, cache: Path, overrides: list[str]):
    from harness.config import load_config
    from harness.grid import run_grid

    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(TINY))
    cfg = load_config(grid, overrides)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_grid(cfg, tracking_uri=uri, cache_dir=str(cache), progress=False, workdir=tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`kdbench.kind` = 'cell'")
    return result, client, runs


def test_objective_returning_nan_is_recorded_as_diverged(tmp_path, shared_cache, fake_dist):
    fake_dist("nan-plugin", "1.0", {"nanplug": "fakeplug_nan"}, {"fakeplug_nan": NAN_PLUGIN})
    result, client, runs = _run_grid(
        tmp_path, shared_cache, ["objectives=['nan_after_three', 'none']", "train.log_every=5"]
    )
    by_objective = {r.data.params["objective"]: r for r in runs}
    assert set(by_objective) == {"nan_after_three", "none"}
    nan_run = by_objective["nan_after_three"]
    assert nan_run.data.tags["kdbench.status"] == "diverged"
    assert nan_run.info.status == "FINISHED"
    assert nan_run.data.metrics["diverged_step"] == 3  # caught at once, not at a log step
    assert "loss is nan" in nan_run.data.tags["kdbench.diverged_reason"]
    assert "fid" not in nan_run.data.metrics
    assert by_objective["none"].data.tags["kdbench.status"] == "finished"  # the grid went on
    assert result.count("diverged") == 1 and result.count("finished") == 1


def test_objective_without_loss_fails_its_cell_with_that_message(tmp_path, shared_cache, fake_dist):
    fake_dist("nan-plugin", "1.0", {"nanplug": "fakeplug_nan"}, {"fakeplug_nan": NAN_PLUGIN})
    result, client, runs = _run_grid(tmp_path, shared_cache, ["objectives=['no_loss']"])
    [run] = runs
    assert run.info.status == "FAILED" and run.data.tags["kdbench.status"] == "failed"
    assert run.data.tags["kdbench.error"] == (
        "OptionError: objective 'no_loss' returned no 'loss' term"
    )
    assert result.results[0]["status"] == "failed"
    assert "returned no 'loss' term" in result.results[0]["error"]


def test_teacher_smaller_than_student_runs_with_a_warning(tmp_path, shared_cache):
    overrides = ["teachers=[{prune=0.5}]", "students=[{prune=0.0}]", "objectives=['outkd']"]
    with pytest.warns(UserWarning, match="is not larger than student 'prune0'"):
        result, client, runs = _run_grid(tmp_path, shared_cache, overrides)
    [run] = runs
    assert run.data.tags["kdbench.status"] == "finished"
    assert int(run.data.params["teacher_params"]) < int(run.data.params["student_params"])
    # What a user sees: a warning line, and the grid is valid.
    grid = tmp_path / "grid.toml"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(grid), "--dry-run"]
    for o in overrides:
        cmd += ["--set", o]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert (
        "kdbench: warning: teacher 'prune0.5' is not larger than student 'prune0': "
        "that cell measures no capacity gap"
    ) in out.stderr
    assert "1 cells" in out.stdout


LEAKY_PLUGIN = """
import kdbench


class Leaky(kdbench.Objective):
    \"\"\"Fails with a message that quotes the tracking URI, password included.\"\"\"

    name = "leaky"

    def forward(self, student, teacher, step=0, total_steps=1):
        if step >= 2:  # past the grid's preflight call, inside the cell's training
            raise RuntimeError("lost postgresql://kd:s3cret@db.example/kd mid-step")
        return {"loss": ((student.pred - teacher.pred) ** 2).mean()}


@kdbench.hookimpl
def register_objectives(register):
    register(Leaky)
"""


def test_failed_cell_error_tag_hides_the_tracking_password(
    tmp_path, shared_cache, fake_dist, monkeypatch
):
    from harness import cell

    # The cell's tracker writes to the test's SQLite store but believes its URI carries a
    # password, as a PostgreSQL store's does; the error tag must not repeat it.
    setup = cell._setup_worker

    def with_password(job):
        cfg, tracker, device = setup(job)
        tracker.uri = "postgresql://kd:s3cret@db.example/kd"
        return cfg, tracker, device

    monkeypatch.setattr(cell, "_setup_worker", with_password)
    fake_dist("leaky-plugin", "1.0", {"leaky": "fakeplug_leaky"}, {"fakeplug_leaky": LEAKY_PLUGIN})
    result, client, runs = _run_grid(tmp_path, shared_cache, ["objectives=['leaky']"])
    [run] = runs
    assert run.data.tags["kdbench.status"] == "failed"
    assert run.data.tags["kdbench.error"] == (
        "RuntimeError: lost postgresql://kd:***@db.example/kd mid-step"
    )
