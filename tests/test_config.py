"""Grid files: validation errors name file and key; overrides; expansion and cell ids."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from harness.config import apply_override, expand, grid_id, load_config, objective_spec
from harness.errors import ConfigError

SMALL = """
teachers = [{prune = 0.0}, {prune = 0.5}]
students = [{prune = 0.9}]
objectives = ["none", "outkd", "place+featkd"]

[grid]
name = "small"
seeds = [0, 1]

[dataset]
name = "digits"
image_size = 16

[model]
backbone = "unet"
base = "xs"

[objective.featkd]
weight = 1e-6

[objective.place]
group_size = 16
"""


def write(tmp_path, text, name="grid.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_small_grid_expands_into_teachers_x_students_x_objectives_x_seeds(tmp_path):
    cfg = load_config(write(tmp_path, SMALL))
    cells = expand(cfg)
    # the no-KD baseline does not depend on the teacher: one cell per seed, not per teacher
    assert len(cells) == 2 * 1 * 2 * 2 + 1 * 2
    assert len({c["cell_id"] for c in cells}) == len(cells)
    baseline = [c for c in cells if c["objective_label"] == "none"]
    teachers = sorted({c["teacher_name"] for c in cells if c["objective_label"] == "outkd"})
    assert [c["seed"] for c in baseline] == [0, 1]
    for c in baseline:
        assert sorted(m["teacher_name"] for m in c["shared_teachers"]) == teachers
        assert "all teachers" in c["label"]
    assert all(c["shared_teachers"] == [] for c in cells if c["objective_label"] != "none")
    labels = {c["objective_label"] for c in cells}
    assert labels == {"none", "outkd", "place+featkd"}
    place = next(c for c in cells if c["objective_label"] == "place+featkd")
    assert place["objective"] == [
        {"name": "place", "weight": 1.0, "group_size": 16},
        {"name": "featkd", "weight": 1e-6},
    ]


def test_cell_ids_are_stable_and_change_with_settings(tmp_path):
    path = write(tmp_path, SMALL)
    a = {c["label"]: c["cell_id"] for c in expand(load_config(path))}
    b = {c["label"]: c["cell_id"] for c in expand(load_config(path))}
    assert a == b
    c = {c["label"]: c["cell_id"] for c in expand(load_config(path, ["train.steps=7"]))}
    assert set(a.values()).isdisjoint(c.values())
    # Tracking and executor settings do not change what a cell computes.
    d = {
        c["label"]: c["cell_id"]
        for c in expand(load_config(path, ["tracking.experiment='x'", "executor.name='local'"]))
    }
    assert a == d
    assert grid_id(load_config(path)) != grid_id(load_config(path, ["train.steps=7"]))


def test_override_parses_toml_values_and_creates_tables():
    data = {}
    apply_override(data, "train.steps=100")
    apply_override(data, "grid.seeds=[1, 2]")
    apply_override(data, "objective.place.group_size=8")
    apply_override(data, "tracking.experiment=plain-string")
    assert data == {
        "train": {"steps": 100},
        "grid": {"seeds": [1, 2]},
        "objective": {"place": {"group_size": 8}},
        "tracking": {"experiment": "plain-string"},
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override(data, "train.steps")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", r"grid.toml: train.stepz: unknown key \(did you mean 'steps'\?\)"),
        ("train.steps='many'", r"grid.toml: train.steps: Input should be a valid integer"),
        ("train.steps=0", r"grid.toml: train.steps: Input should be greater than or equal to 1"),
        ("grid.seeds=[]", r"grid.toml: grid.seeds: List should have at least 1 item"),
        (
            "dataset.name='digitz'",
            r"dataset.name: unknown dataset 'digitz' \(did you mean 'digits'\?\)",
        ),
        (
            "model.backbone='unnet'",
            r"model.backbone: unknown backbone 'unnet' \(did you mean 'unet'\?\)",
        ),
        (
            "objectives=['plaec']",
            r"objectives\[0\]: unknown objective 'plaec' \(did you mean 'place'\?\)",
        ),
        ("objective.place.group_size=0", r"objectives\[2\]: .*group_size"),
        ("objective.featkd.weight=-1", r"objectives\[2\]: .*weight must be >= 0"),
        ("objective.place.bogus=1", r"objectives\[2\]: objective 'place' has no option 'bogus'"),
        ("students=[{prune = 1.0}]", r"students.0: .*prune ratio must be in \[0, 1\)"),
        (
            "students=[{prune = 0.5, preset = 'xs'}]",
            r"give exactly one of preset, prune, pretrained",
        ),
        ("students=[{preset = 'huge-nonexistent'}]", r"students\[0\].preset: unknown preset"),
        ("executor.name='slurmm'", r"executor.name: unknown executor 'slurmm'"),
        ("eval.metrics=['fid', 'lpips']", r"eval.metrics.1: Input should be"),
        ("surprise=1", r"grid.toml: surprise: unknown key; valid keys: grid, dataset"),
    ],
)
def test_bad_input_gives_one_line_naming_file_and_key(tmp_path, override, message):
    path = write(tmp_path, SMALL)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, [override])
    assert "\n" not in str(err.value)


def test_toml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.toml: TOML syntax error"):
        load_config(write(tmp_path, "teachers = [\n", "bad.toml"))
    with pytest.raises(ConfigError, match=r"nope.toml: grid file not found"):
        load_config(tmp_path / "nope.toml")


def test_empty_grid_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"teachers: Field required"):
        load_config(write(tmp_path, "[grid]\nname='empty'\n"))


def test_pruning_without_a_base_is_an_error(tmp_path):
    text = SMALL.replace('base = "xs"', "")
    with pytest.raises(ConfigError, match=r"model.base: pruning ratios need a base model"):
        load_config(write(tmp_path, text))


def test_teacher_smaller_than_student_warns(tmp_path):
    with pytest.warns(UserWarning, match="not larger than student"):
        load_config(write(tmp_path, SMALL), ["teachers=[{prune = 0.95}]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(write(tmp_path, SMALL))


def test_objective_table_entries_override_per_part():
    spec = objective_spec(
        {"name": "place+featkd", "featkd": {"weight": 0.5}},
        {"featkd": {"weight": 1e-6}, "place": {"group_size": 4}},
    )
    assert spec == [
        {"name": "place", "weight": 1.0, "group_size": 4},
        {"name": "featkd", "weight": 0.5},
    ]
    with pytest.raises(ConfigError, match="not parts of it"):
        objective_spec({"name": "place", "lift": {}}, {})


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.toml"))
    assert {"bench.toml", "paper-celeba-unet.toml"} <= {f.name for f in files}
    for path in files:
        cells = expand(load_config(path))
        assert cells, path
