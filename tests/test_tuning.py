"""Objective variants, sweeps and equal-budget tuning (``kdbench tune``).

Grids run through the real command line, store and leaderboard; only the cell's training
is replaced (``harness.cell.run_job``): a planted cell logs an FID that is a known
function of the objective's options, so the best trial is known without training.
"""

from __future__ import annotations

import math
import signal
import textwrap
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner
from conftest import TINY_GRID

from harness import cell as cell_module
from harness.cli import cli
from harness.config import config_from_dict, expand, load_config, variants
from harness.jobs import TeacherJob

TUNE = """
[tune]
budget = 4
seeds = [7, 8]
metric = "fid"
"""


@pytest.fixture(autouse=True)
def _default_sigint():
    """The CLI's Ctrl-C handling needs the default SIGINT disposition (background runs ignore it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def grid(name: str, objectives: str, extra: str = "") -> str:
    text = TINY_GRID.replace("NAME", name)
    text = text.replace('objectives = ["place"]', f"objectives = {objectives}")
    return text + textwrap.dedent(extra)


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------ variants and sweeps


def test_sweep_expands_into_labelled_cells():
    text = grid(
        "sw",
        '["none", "place", {name = "place", label = "place-l2", coarse = "l2"}, "place+featkd"]',
        """
        [objective.place]
        group_size = 8

        [objective.place.sweep]
        weight = [0.1, 1, 10]
        coarse = ["l1", "l2"]
        """,
    )
    cfg = config_from_dict(tomllib.loads(text))
    labels = [v.label for v in variants(cfg)]
    swept = [f"place[weight={w},coarse={c}]" for w in ("0.1", "1", "10") for c in ("l1", "l2")]
    assert labels == ["none", *swept, "place-l2", *[f"{s}+featkd" for s in swept]]
    cells = expand(cfg)
    assert len(cells) == len(labels) and len({c["cell_id"] for c in cells}) == len(cells)
    by_label = {c["objective_label"]: c["objective"] for c in cells}
    assert by_label["place[weight=10,coarse=l2]"] == [
        {"name": "place", "weight": 10, "group_size": 8, "coarse": "l2"}
    ]
    # A labelled entry is a fixed variant: the sweep leaves it alone.
    assert by_label["place-l2"] == [
        {"name": "place", "weight": 1.0, "group_size": 8, "coarse": "l2"}
    ]
    assert by_label["place[weight=0.1,coarse=l1]+featkd"][0]["weight"] == 0.1
    assert by_label["place[weight=0.1,coarse=l1]+featkd"][1] == {"name": "featkd", "weight": 1.0}


def test_plain_entries_keep_their_cell_ids_and_labels_enter_them():
    base = tomllib.loads(grid("ids", '["place"]'))
    plain = expand(config_from_dict(base))[0]
    labelled = dict(base, objectives=[{"name": "place", "label": "mine"}])
    other = expand(config_from_dict(labelled))[0]
    assert plain["objective_label"] == "place" and other["objective_label"] == "mine"
    assert plain["objective"] == other["objective"] and plain["cell_id"] != other["cell_id"]


def test_dry_run_lists_the_variants(tmp_path):
    path = write(
        tmp_path, grid("dry", '["lift"]', "[objective.lift.sweep]\ncoarse = ['l1', 'l2']\n")
    )
    result = invoke("run", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 cells" in result.output
    assert "lift[coarse=l1] | prune0 -> prune0.5 | s0" in result.output
    assert "lift[coarse=l2] | prune0 -> prune0.5 | s0" in result.output


BAD = {
    "duplicate label": (
        grid("bad", '["place", {name = "lift", label = "place"}]'),
        "run",
        "duplicate label 'place'",
    ),
    "unknown option in a sweep": (
        grid("bad", '["place"]', "[objective.place.sweep]\ngruop_size = [4, 8]\n"),
        "run",
        "objective.place.sweep: unknown option 'gruop_size' of objective 'place' "
        "(did you mean 'group_size'?)",
    ),
    "empty sweep": (
        grid("bad", '["place"]', "[objective.place.sweep]\nweight = []\n"),
        "run",
        "objective.place.sweep.weight: empty sweep",
    ),
    "sweep of an unused objective": (
        grid("bad", '["place"]', "[objective.lift.sweep]\nweight = [1, 2]\n"),
        "run",
        "no objectives entry uses 'lift'",
    ),
    "final seed among tuning seeds": (
        grid("bad", '["place"]', TUNE.replace("[7, 8]", "[7, 0]")),
        "tune",
        "tune.seeds: seed 0 is also a final seed",
    ),
    "range low > high": (
        grid("bad", '["place"]', TUNE + "[tune.space.place]\nweight = [10, 0.1]\n"),
        "tune",
        "tune.space.place.weight: log-uniform range [10, 0.1] has low > high",
    ),
    "undeclared search space": (
        grid("bad", '["place"]', TUNE + "[tune.space]\nplace = ['tau']\n"),
        "tune",
        "tune.space.place: objective 'place' declares no tunable 'tau'; "
        "it declares: weight, coarse, group_size",
    ),
    "nothing to tune declared": (
        grid("bad", '["none", "place"]', TUNE + "[tune.space]\nnone = ['weight']\n"),
        "tune",
        "objective 'none' declares no tunable 'weight'; it declares: nothing",
    ),
    "unknown tuning teacher": (
        grid("bad", '["place"]', TUNE + "teachers = ['huge']\n"),
        "tune",
        "tune.teachers: no teacher named 'huge'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_anything_runs(tmp_path, monkeypatch, case):
    text, command, message = BAD[case]
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    result = invoke(command, str(path))  # not a dry run: it must stop before the store
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "mlruns.db").exists() and not list(tmp_path.glob("*.db"))


def test_tune_refuses_a_grid_without_tune_section(tmp_path):
    path = write(tmp_path, grid("plain", '["place"]'))
    result = invoke("tune", str(path), "--dry-run")
    assert result.exit_code == 2
    assert "no [tune] section" in result.output


# ------------------------------------------------------------------------ planted tuning


def planted_fid(spec: list[dict], seed: int) -> float:
    """FID as a known function of the options: best at weight 0.3 and coarse = l2."""
    part = spec[0]
    if part["name"] == "none":
        return 50.0 + seed
    fid = 10 + (math.log10(part["weight"]) - math.log10(0.3)) ** 2
    if part.get("coarse", "l1") == "l1":
        fid += 0.5
    return fid + 0.01 * seed


@pytest.fixture
def planted(monkeypatch):
    """``run_job`` that logs the planted FID through the real run bookkeeping."""
    calls: list[dict] = []

    def run_job(job):
        if isinstance(job, TeacherJob):
            return {"status": "finished", "teacher_id": job.teacher_id}
        cfg, tracker, _ = cell_module._setup_worker(job)
        run_id, _ = cell_module._open_run(job, tracker, cfg, "planted")
        if run_id is None:
            return {"status": "finished", "cell_id": job.cell_id}
        calls.append(job)
        tracker.log_params(run_id, {"teacher_params": 1000, "student_params": 100})
        tracker.log_metrics(run_id, {"fid": planted_fid(job.objective, job.seed)})
        tracker.finish(run_id, "finished")
        return {"status": "finished", "cell_id": job.cell_id, "run_id": run_id}

    monkeypatch.setattr(cell_module, "run_job", run_job)
    return calls


def test_tune_picks_the_best_trial_and_writes_a_runnable_grid(tmp_path, monkeypatch, planted):
    monkeypatch.chdir(tmp_path)
    text = grid(
        "pl",
        '["none", "outkd", "lift"]',
        TUNE + "[tune.space]\noutkd = ['weight']\n",
    )
    path = write(tmp_path, text)
    out = tmp_path / "tuned.toml"
    result = invoke("tune", str(path), "-o", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    # Equal budget: 4 trials for each tunable objective, `none` once; tuning seeds only.
    labels = [job.objective_label for job in planted]
    assert {job.seed for job in planted} == {7, 8}
    assert labels.count("none") == 2
    trials = {}
    for job in planted:
        name = job.objective[0]["name"]
        trials.setdefault(name, {}).setdefault(job.objective_label, []).append(job)
    assert len(trials["outkd"]) == 4 and len(trials["lift"]) == 4
    # The best trial is the one whose planted FID (mean over tuning seeds) is lowest.
    tuned = load_config(out)
    chosen = {v.label: v.spec[0] for v in variants(tuned)}
    for name in ("outkd", "lift"):
        scores = {
            label: sum(planted_fid(j.objective, j.seed) for j in jobs) / len(jobs)
            for label, jobs in trials[name].items()
        }
        best = min(scores, key=scores.get)
        best_spec = trials[name][best][0].objective[0]
        assert chosen[name] == best_spec
        assert tuned.tuned.objectives[name]["score"] == pytest.approx(scores[best], abs=1e-6)
    assert "coarse" not in tuned.tuned.objectives["outkd"]["chosen"]  # space narrowed
    assert set(tuned.tuned.objectives["lift"]["space"]) == {"weight", "coarse"}
    assert "none" not in tuned.tuned.objectives and chosen["none"]["name"] == "none"
    assert tuned.grid.seeds == [0] and tuned.tune is None and tuned.tuned.budget == 4
    # Resumable: a second call runs nothing and writes the same choice.
    planted.clear()
    again = invoke("tune", str(path), "-o", str(tmp_path / "again.toml"), "--quiet")
    assert again.exit_code == 0 and planted == []
    assert {v.label: v.spec for v in variants(load_config(tmp_path / "again.toml"))} == {
        v.label: v.spec for v in variants(tuned)
    }
    # The final run of the tuned grid: labels as in the source, the leaderboard states
    # budget, search space and chosen values.
    final = invoke("run", str(out), "--quiet")
    assert final.exit_code == 0, final.output
    assert {job.seed for job in planted} == {0}
    assert {job.objective_label for job in planted} == {"none", "outkd", "lift"}
    assert "Tuning (kdbench tune)" in final.output
    assert "Equal budget: 4 trials per objective, sobol (scrambled, seed 0)" in final.output
    assert f"weight={chosen['lift']['weight']:g}" in final.output
    assert "log-uniform [0.1, 10]" in final.output


def test_rows_are_keyed_by_options_and_the_latest_grid_is_the_default(
    tmp_path, monkeypatch, planted
):
    monkeypatch.chdir(tmp_path)
    for coarse in ("l1", "l2"):  # two grids, one experiment, `lift` at L1 then at L2
        path = write(tmp_path, grid("same", '["lift"]', f"[objective.lift]\ncoarse = '{coarse}'\n"))
        assert invoke("run", str(path), "--quiet", "--no-leaderboard").exit_code == 0
    ids = {}
    for job in planted:
        ids[job.objective[0]["coarse"]] = job.context.grid_id
    board = invoke("leaderboard", "--format", "csv")
    assert board.exit_code == 0, board.output
    assert f"showing the most recent grid, {ids['l2']}" in board.output
    assert ids["l1"] in board.output and "--grid" in board.output
    assert "10.27" in board.output and "10.77" not in board.output  # L2 only
    both = invoke("leaderboard", "--grid", ids["l1"], "--grid", ids["l2"], "--format", "csv")
    assert both.exit_code == 0, both.output
    assert "lift {coarse=l1}" in both.output and "lift {coarse=l2}" in both.output


# ------------------------------------------------------------------------ search spaces


def test_search_space_specs_map_the_unit_interval():
    from harness.tunables import Choice, LogUniform, Uniform

    w = LogUniform(0.01, 100.0)
    assert w.value(0.0) == 0.01 and w.value(0.5) == 1.0 and w.value(0.75) == 10.0
    assert w.value(0.3) == float(f"{10 ** (-2 + 4 * 0.3):.3g}")  # 3 significant digits
    assert Uniform(2.0, 4.0).value(0.25) == 2.5
    c = Choice(["a", "b", "c"])
    assert [c.value(u) for u in (0.0, 0.33, 0.34, 0.67, 0.9999)] == ["a", "a", "b", "c", "c"]
    from harness.errors import OptionError

    with pytest.raises(OptionError, match="low > high"):
        Uniform(3.0, 1.0)
    with pytest.raises(OptionError, match="low > 0"):
        LogUniform(0.0, 1.0)
    with pytest.raises(OptionError, match="non-empty"):
        Choice([])


def test_every_builtin_objective_declares_a_valid_space():
    from harness.registry import lookup
    from harness.tunables import LogUniform

    for name in ("outkd", "featkd", "dist", "takd", "lift", "place"):
        space = lookup("objective", name).tunable_options()
        assert isinstance(space["weight"], LogUniform), name  # the KD weight, log-uniform
    assert lookup("objective", "none").tunable_options() == {}
    assert set(lookup("objective", "place").tunable_options()) == {"weight", "coarse", "group_size"}


def test_trials_are_quasi_random_and_the_same_for_every_objective():
    from scipy.stats import qmc

    from harness.tuning import plan

    text = grid("qr", '["outkd", "dist"]', TUNE.replace("budget = 4", "budget = 8"))
    p = plan(config_from_dict(tomllib.loads(text)))
    expected = qmc.Sobol(d=1, scramble=True, seed=0).random(8)[:, 0]
    for name in ("outkd", "dist"):
        weights = [t.values["weight"] for t in p.trials[name]]
        assert weights == [float(f"{10 ** (-1 + 2 * u):.3g}") for u in expected]
    assert p.config.grid.seeds == [7, 8] and p.config.tracking.experiment == "kdbench-qr-tune"


def test_diverged_and_failed_trials_are_never_chosen():
    import pandas as pd

    from harness.tuning import best, plan, score

    text = grid("dv", '["outkd"]', TUNE.replace("budget = 4", "budget = 3"))
    p = plan(config_from_dict(tomllib.loads(text)))
    a, b, c = p.trials["outkd"]
    rows = []
    for t, statuses, fid in (
        (a, ["finished", "diverged"], 1.0),  # the lowest FID, but one seed diverged
        (b, ["finished", "finished"], 5.0),
        (c, ["finished", "failed"], 2.0),  # a crash: not a result
    ):
        for seed, status in zip((7, 8), statuses):
            rows.append(
                {
                    "kind": "cell",
                    "cell_id": f"{t.label}-{seed}",
                    "start_time": pd.Timestamp("2026-01-01", tz="UTC"),
                    "objective_label": t.label,
                    "status": status,
                    "fid": fid if status == "finished" else float("nan"),
                }
            )
    score(p, pd.DataFrame(rows), "fid")
    assert (a.state, b.state, c.state) == ("diverged", "scored", "incomplete")
    assert a.score == math.inf and b.score == 5.0
    assert best(p.trials["outkd"], "fid") is b
    assert best([a, c], "fid") is None  # neither a diverged nor a crashed trial is chosen


def test_row_keys_split_only_runs_whose_options_differ():
    import json

    import pandas as pd

    from leaderboards.load import key_objectives

    def run(label, spec, kind="cell"):
        return {
            "kind": kind,
            "objective": label,
            "objective_label": label,
            "objective_spec": json.dumps(spec),
        }

    df = pd.DataFrame(
        [
            run("lift", [{"name": "lift", "weight": 1.0}]),
            run("lift", [{"name": "lift", "weight": 1, "coarse": "l1", "eps": 1e-6}]),  # defaults
            run("lift", [{"name": "lift", "weight": 1.0, "coarse": "l2"}]),
            run(
                "outkd+featkd",
                [{"name": "outkd", "weight": 1.0}, {"name": "featkd", "weight": 0.1}],
            ),
            run(
                "outkd+featkd",
                [{"name": "outkd", "weight": 1.0}, {"name": "featkd", "weight": 1e-5}],
            ),
            run("place", [{"name": "place", "weight": 1.0}]),
        ]
    )
    keys = list(key_objectives(df)["objective_label"])
    assert keys == [
        "lift {coarse=l1}",
        "lift {coarse=l1}",
        "lift {coarse=l2}",
        "outkd+featkd {featkd.weight=0.1}",
        "outkd+featkd {featkd.weight=1e-05}",
        "place",
    ]
