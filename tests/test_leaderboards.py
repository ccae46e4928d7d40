"""Leaderboards over a SQLite store filled here with MlflowClient, following the run schema."""

from __future__ import annotations

import html
import io
import json
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import tmpfs_folder
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image

import leaderboards as lb
from harness.errors import KDBenchError, TrackingError

TEACHERS = {"base": 2_200_000, "prune0.5": 900_000, "prune0.7": 400_000}  # not sorted by name
OBJECTIVES = ["place", "outkd", "none", "place+featkd"]  # "none" not first on purpose
SEEDS = [0, 1, 2]
DIVERGED = {("outkd", "base", 2), ("place+featkd", "base", 0)}
FAILED = {("outkd", "prune0.7", 1)}  # a crash: neither in means nor in collapse
SPEED = {"none": 30.0, "outkd": 20.0, "place": 19.5, "place+featkd": 17.0}
MEMORY = {"none": 100.0, "outkd": 150.0, "place": 151.0, "place+featkd": 170.0}
COLORS = {
    "none": (200, 60, 60),
    "outkd": (60, 160, 60),
    "place": (60, 60, 200),
    "place+featkd": (200, 160, 40),
}
HISTORY_STEPS = 40


def _fid(rng, objective, teacher):
    base = {"none": 60.0, "outkd": 45.0, "place": 30.0, "place+featkd": 28.0}[objective]
    size = np.log10(TEACHERS[teacher] / 4e5)
    trend = {"none": 0.0, "outkd": 25.0, "place": -6.0, "place+featkd": -7.0}[objective]
    return float(base + trend * size + rng.normal(0, 3.0))


def _log(client, eid, tags, params, metrics, status, history=None, image=None):
    run = client.create_run(eid, run_name=tags.get("kdbench.cell_id", "teacher"), tags=tags)
    rid = run.info.run_id
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for key, values in (history or {}).items():
        entries += [Metric(key, float(v), now, step) for step, v in enumerate(values)]
    client.log_batch(
        rid,
        metrics=entries,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("kdbench.status", status)],
    )
    if image is not None:
        client.log_image(rid, image, artifact_file="samples.png")
    client.set_terminated(
        rid,
        {"finished": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}.get(status, "RUNNING"),
    )
    return rid


def _common(grid):
    return {
        "kdbench.grid_id": grid,
        "kdbench.grid_name": f"name-{grid}",
        "kdbench.git_commit": "abc1234",
        "kdbench.version": "0.1.0",
        "kdbench.fid_features": "digit classifier (111k params), 64-d penultimate",
        "kdbench.torch_fidelity": "0.4.0",
        "kdbench.fid_reference": "digits training images (1437 at 16 px)",
    }


def _fill(client, experiment, grid, seed, objectives, teachers, images=True):
    """Log one grid; returns {(objective, teacher, seed): (status, fid)}."""
    rng = np.random.default_rng(seed)
    eid = client.create_experiment(experiment)
    truth = {}
    for teacher in teachers:
        _log(
            client,
            eid,
            {**_common(grid), "kdbench.kind": "teacher"},
            {"teacher": teacher, "teacher_params": TEACHERS[teacher]},
            {"fid": 5.0 + TEACHERS[teacher] / 1e6, "class_acc": 0.9},
            "finished",
        )
    for objective in objectives:
        for teacher in teachers:
            for s in SEEDS:
                status = (
                    "diverged"
                    if (objective, teacher, s) in DIVERGED
                    else "failed"
                    if (objective, teacher, s) in FAILED
                    else "finished"
                )
                fid = _fid(rng, objective, teacher)
                metrics = {
                    "iter_per_s": SPEED[objective] * (1 + 0.01 * s),
                    "peak_mem_mb": MEMORY[objective] + s,
                    "kid_mean": fid / 1000,
                    "kid_std": 0.0005,
                    "fid_boot_std": 1.0 + 0.5 * s,  # evaluation noise, known per seed
                    "class_acc": 1 - fid / 200,
                }
                if status == "finished":
                    metrics["fid"] = fid
                elif status == "diverged":
                    metrics = {"diverged_step": 17}
                history = None
                if objective.startswith("place"):
                    steps = np.arange(HISTORY_STEPS)
                    scale = (1 + 0.1 * s) * (1 + np.log10(TEACHERS[teacher] / 4e5))
                    history = {
                        "train/place/w": 1 - np.exp(-steps / (8 * scale)),
                        "train/place/coarse": scale * np.exp(-steps / 10) + 1e-3,
                        "train/place/fine": 0.5 * scale * np.exp(-steps / 25) + 1e-3,
                    }
                image = None
                if images and status == "finished":
                    image = np.zeros((24, 24, 3), np.uint8) + np.array(COLORS[objective], np.uint8)
                    image[::4] = 255
                params = {
                    "objective": objective,
                    "objective_spec": json.dumps([objective]),
                    "teacher": teacher,
                    "teacher_params": TEACHERS[teacher],
                    "student": "prune0.9",
                    "student_params": 120_000,
                    "backbone": "unet",
                    "process": "ddpm",
                    "dataset": "digits",
                    "image_size": 16,
                    "seed": s,
                    "steps": 100,
                    "batch_size": 64,
                    "lr": 2e-4,
                    "num_samples": 500,
                }
                tags = {
                    **_common(grid),
                    "kdbench.kind": "cell",
                    "kdbench.cell_id": f"{grid}-{objective}-{teacher}-{s}",
                }
                _log(client, eid, tags, params, metrics, status, history, image)
                truth[(objective, teacher, s)] = (status, fid)
    return truth


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tmpfs_folder("kdbench-board-", tmp_path_factory.mktemp("board")) as root:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        truth_a = _fill(client, "grid-a", "g1", 0, OBJECTIVES, list(TEACHERS))
        truth_b = _fill(
            client,
            "grid-b",
            "g2",
            1,
            ["none", "outkd", "place"],
            ["prune0.7", "base"],
            images=False,
        )
        yield {"uri": uri, "a": truth_a, "b": truth_b, "root": root}


@pytest.fixture(scope="module")
def runs_a(store):
    return lb.load_runs(store["uri"], ["grid-a"])


def _expected(truth, objective, teacher):
    """(mean, std, n, diverged) recomputed straight from the logged numbers."""
    fids = [
        fid
        for (o, t, _), (st, fid) in truth.items()
        if (o, t) == (objective, teacher) and st == "finished"
    ]
    diverged = sum(
        1
        for (o, t, _), (st, _f) in truth.items()
        if (o, t) == (objective, teacher) and st == "diverged"
    )
    v = np.array(fids)
    return v.mean(), (v.std(ddof=1) if len(v) > 1 else np.nan), len(v), diverged


def _tie_group(truth, teacher, alpha=0.05):
    """The best-mean objective and those a Holm-corrected paired t test cannot separate."""
    by_seed = {
        o: {
            s: fid
            for (oo, t, s), (st, fid) in truth.items()
            if (oo, t) == (o, teacher) and st == "finished"
        }
        for o in OBJECTIVES
    }
    means = {o: np.mean(list(v.values())) for o, v in by_seed.items() if v}
    best = min(means, key=means.get)
    others, pvalues = [], []
    for o in means:
        if o == best:
            continue
        shared = sorted(set(by_seed[o]) & set(by_seed[best]))
        others.append(o)
        pvalues.append(
            scipy.stats.ttest_rel(
                [by_seed[o][s] for s in shared], [by_seed[best][s] for s in shared]
            ).pvalue
            if len(shared) >= 2
            else np.nan
        )
    tied = {best} | {o for o, p in zip(others, pvalues) if np.isnan(p)}  # no test: tied
    tested = sorted((p, o) for o, p in zip(others, pvalues) if not np.isnan(p))
    running = 0.0
    for rank, (p, o) in enumerate(tested):  # Holm's step-down over the tests made
        running = max(running, (len(tested) - rank) * p)
        if running >= alpha:
            tied.add(o)
    return tied


# ---------------------------------------------------------------------------- load_runs


def test_load_runs_types_and_filters(store, runs_a):
    df = runs_a
    assert len(df) == len(TEACHERS) + len(OBJECTIVES) * len(TEACHERS) * len(SEEDS)
    assert set(df["experiment"]) == {"grid-a"}
    assert str(df["seed"].dtype) == "Int64" and str(df["teacher_params"].dtype) == "Int64"
    assert df["fid"].dtype == float and df["lr"].dtype == float
    assert (df.loc[df["kind"] == "cell", "lr"] == 2e-4).all()
    assert set(df["status"]) == {"finished", "diverged", "failed"}
    assert pd.api.types.is_datetime64_any_dtype(df["start_time"])
    both = lb.load_runs(store["uri"])
    assert set(both["grid_id"]) == {"g1", "g2"}
    only_b = lb.load_runs(store["uri"], grid_ids=["g2"])
    assert set(only_b["grid_id"]) == {"g2"} and len(only_b) == 2 + 3 * 2 * 3
    assert lb.load_runs(store["uri"], grid_ids=["nope"]).empty


def test_load_runs_errors(store, tmp_path):
    with pytest.raises(TrackingError, match=r"no experiment named 'zzz'.*grid-a, grid-b"):
        lb.load_runs(store["uri"], ["zzz"])
    missing = tmp_path / "none.db"
    with pytest.raises(TrackingError, match="no tracking store at"):
        lb.load_runs(f"sqlite:///{missing}")
    assert not missing.exists()  # a reader never creates an empty store


# ---------------------------------------------------------------------------- capacity gap


def test_capacity_gap_numbers_match_runs(store, runs_a):
    table = lb.capacity_gap_table(runs_a)
    for objective in OBJECTIVES:
        for teacher in TEACHERS:
            mean, std, n, diverged = _expected(store["a"], objective, teacher)
            row = table.data.loc[(objective, teacher)]
            assert row["n"] == n and row["diverged"] == diverged
            assert row["mean"] == pytest.approx(mean, rel=1e-12)
            if n > 1:
                assert row["std"] == pytest.approx(std, rel=1e-12)
    # outkd/base: one seed diverged, so two values enter the mean; the failed run is gone.
    assert table.data.loc[("outkd", "base"), "n"] == 2
    assert table.data.loc[("outkd", "prune0.7"), "n"] == 2
    assert table.data.loc[("outkd", "prune0.7"), "collapsed"] == 0
    assert any("1 failed" in note for note in table.notes)


def test_capacity_gap_layout_and_best(store, runs_a):
    table = lb.capacity_gap_table(runs_a)
    assert list(table.display.columns) == [
        "prune0.7 (0.4M)",
        "prune0.5 (0.9M)",
        "base (2.2M)",
        "collapse",
    ]
    assert table.display.index[0] == "none"
    assert table.display.index.tolist() == ["none", "outkd", "place", "place+featkd"]
    mean, std, n, _ = _expected(store["a"], "place", "prune0.7")
    assert table.display.loc["place", "prune0.7 (0.4M)"] == f"{mean:.2f} ± {std:.2f} ({n})"
    for teacher, column in zip(TEACHERS, ["base (2.2M)", "prune0.5 (0.9M)", "prune0.7 (0.4M)"]):
        means = {o: _expected(store["a"], o, teacher)[0] for o in OBJECTIVES}
        winner = min(means, key=means.get)
        assert (winner, column) in table.best
        assert {o for (o, c) in table.best if c == column} == _tie_group(store["a"], teacher)
        assert bool(table.data.loc[(winner, teacher), "best"])
        assert table.data.xs(teacher, level="teacher")["best"].sum() == 1
    # Higher is better for class accuracy: the winner is the argmax instead.
    acc = lb.capacity_gap_table(runs_a, metric="class_acc")
    means = {
        o: np.mean(
            [
                1 - fid / 200
                for (oo, t, _), (st, fid) in store["a"].items()
                if oo == o and t == "base" and st == "finished"
            ]
        )
        for o in OBJECTIVES
    }
    assert (max(means, key=means.get), "base (2.2M)") in acc.best


def test_collapse_counts_diverged_and_threshold(store, runs_a):
    table = lb.capacity_gap_table(runs_a)
    assert table.display.loc["outkd", "collapse"] == "1/8"  # 9 cells - 1 failed; 1 diverged
    assert table.display.loc["place+featkd", "collapse"] == "1/9"
    assert table.display.loc["place", "collapse"] == "0/9"
    threshold = 50.0
    high = lb.capacity_gap_table(runs_a, collapse_fid=threshold)
    for objective in OBJECTIVES:
        above = sum(
            1
            for (o, _, _), (st, fid) in store["a"].items()
            if o == objective and st == "finished" and fid > threshold
        )
        diverged = sum(
            1 for (o, _, _), (st, _f) in store["a"].items() if o == objective and st == "diverged"
        )
        assert high.data.xs(objective, level="objective")["collapsed"].sum() == above + diverged
    # Above-threshold runs still enter the means.
    assert high.data["mean"].equals(table.data["mean"])


def test_unknown_metric_and_format(runs_a):
    with pytest.raises(KDBenchError, match=r"unknown metric 'fdi'; valid: .*fid"):
        lb.capacity_gap_table(runs_a, metric="fdi")
    with pytest.raises(KDBenchError, match=r"unknown format 'pdf'; valid: text, md, csv, html"):
        lb.render([], "pdf", {})


# ---------------------------------------------------------------------------- other tables


def test_overhead_relative_to_outkd(store, runs_a):
    table = lb.overhead_table(runs_a)
    finished = [(o, t, s) for (o, t, s), (st, _) in store["a"].items() if st == "finished"]

    def mean(objective, fn):
        return np.mean([fn(o, s) for o, _, s in finished if o == objective])

    ref_speed = mean("outkd", lambda o, s: SPEED[o] * (1 + 0.01 * s))
    ref_mem = mean("outkd", lambda o, s: MEMORY[o] + s)
    for objective in OBJECTIVES:
        speed = mean(objective, lambda o, s: SPEED[o] * (1 + 0.01 * s))
        mem = mean(objective, lambda o, s: MEMORY[o] + s)
        row = table.data.loc[objective]
        assert row["iter_per_s"] == pytest.approx(speed)
        assert row["iter_per_s_vs_outkd_pct"] == pytest.approx(100 * (speed / ref_speed - 1))
        assert row["peak_mem_vs_outkd_pct"] == pytest.approx(100 * (mem / ref_mem - 1))
    assert table.display.loc["outkd", "vs outkd"] == "+0.0%"
    # "none" distils nothing, so the marks go to the fastest / leanest KD objective.
    kd = [o for o in OBJECTIVES if o != "none"]
    fastest = max(kd, key=lambda o: mean(o, lambda oo, s: SPEED[oo] * (1 + 0.01 * s)))
    leanest = min(kd, key=lambda o: mean(o, lambda oo, s: MEMORY[oo] + s))
    assert table.best == {(fastest, "iter/s"), (leanest, "peak mem (MB)")}
    no_ref = lb.overhead_table(runs_a[runs_a["objective"] != "outkd"])
    assert no_ref.data["iter_per_s_vs_outkd_pct"].isna().all()
    assert any("No finished outkd" in n for n in no_ref.notes)


def test_teacher_table(runs_a):
    table = lb.teacher_table(runs_a)
    assert table.data.index.tolist() == ["prune0.7", "prune0.5", "base"]
    assert table.data.loc["base", "fid"] == pytest.approx(5.0 + 2.2)
    assert table.display.loc["prune0.7", "params"] == "0.4M"


def test_compare_deltas(store):
    df = lb.load_runs(store["uri"])
    a, b = df[df["grid_id"] == "g1"], df[df["grid_id"] == "g2"]
    table = lb.compare(a, b)
    for objective in ["none", "outkd", "place"]:
        for teacher in ["prune0.7", "base"]:
            ma = _expected(store["a"], objective, teacher)[0]
            mb = _expected(store["b"], objective, teacher)[0]
            row = table.data.loc[(objective, teacher)]
            assert row["delta"] == pytest.approx(mb - ma)
            assert row["delta_pct"] == pytest.approx(100 * (mb - ma) / ma)
    # Cells only grid A has keep A's value and no delta.
    assert np.isnan(table.data.loc[("place+featkd", "prune0.5"), "delta"])
    assert table.data.loc[("place+featkd", "prune0.5"), "b_n"] == 0
    assert list(table.display.columns) == [
        "g1",
        "g2",
        "Δ (B − A)",
        "Δ %",
        "95% CI",
        "test",
        "verdict",
    ]
    # Same data and batch settings: paired over the seeds both grids finished.
    for objective, teacher in [("place", "base"), ("outkd", "base"), ("none", "prune0.7")]:
        seeds = [
            s
            for s in SEEDS
            if store["a"][(objective, teacher, s)][0] == "finished"
            and store["b"][(objective, teacher, s)][0] == "finished"
        ]
        fa = [store["a"][(objective, teacher, s)][1] for s in seeds]
        fb = [store["b"][(objective, teacher, s)][1] for s in seeds]
        ci = scipy.stats.ttest_rel(fb, fa).confidence_interval(0.95)
        row = table.data.loc[(objective, teacher)]
        assert row["test"] == f"paired, n={len(seeds)}"
        assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # Different batch settings: Welch's unpaired interval over all finished seeds.
    b_other = b.copy()
    b_other["batch_size"] = 128
    welch = lb.compare(a, b_other)
    fa = [f for (o, t, _), (st, f) in store["a"].items() if (o, t) == ("place", "base")]
    fb = [f for (o, t, _), (st, f) in store["b"].items() if (o, t) == ("place", "base")]
    ci = scipy.stats.ttest_ind(fb, fa, equal_var=False).confidence_interval(0.95)
    row = welch.data.loc[("place", "base")]
    assert row["test"] == "Welch, n=3+3"
    assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert any("unpaired (Welch)" in n and "batch_size differs" in n for n in welch.notes)
    assert table.display.index[0] == "none / prune0.7 (0.4M)"
    ma = _expected(store["a"], "outkd", "base")[0]
    mb = _expected(store["b"], "outkd", "base")[0]
    assert ("outkd / base (2.2M)", "g2" if mb < ma else "g1") in table.best


def _finished_by_seed(truth, objective, teacher):
    return {
        s: fid
        for (o, t, s), (st, fid) in truth.items()
        if (o, t) == (objective, teacher) and st == "finished"
    }


def test_baseline_differences_on_a_store_match_scipy(store, runs_a):
    table = lb.baseline_table(runs_a, "fid", "none")
    assert table.display.index.tolist() == ["outkd", "place", "place+featkd"]
    pvalues = {}
    for objective in ["outkd", "place", "place+featkd"]:
        for teacher in TEACHERS:
            x = _finished_by_seed(store["a"], objective, teacher)
            y = _finished_by_seed(store["a"], "none", teacher)
            seeds = sorted(set(x) & set(y))
            res = scipy.stats.ttest_rel([x[s] for s in seeds], [y[s] for s in seeds])
            ci = res.confidence_interval(0.95)
            row = table.data.loc[(objective, teacher)]
            assert row["n"] == len(seeds)
            assert row["diff"] == pytest.approx(np.mean([x[s] - y[s] for s in seeds]))
            assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
            assert row["p_t"] == pytest.approx(res.pvalue, rel=1e-9)
            pvalues[(objective, teacher)] = res.pvalue
    # Holm over the objectives of each teacher, and the verdicts that follow.
    for teacher in TEACHERS:
        keys = sorted((k for k in pvalues if k[1] == teacher), key=pvalues.get)
        running = 0.0
        for rank, key in enumerate(keys):
            running = max(running, (len(keys) - rank) * pvalues[key])
            row = table.data.loc[key]
            assert row["p_holm"] == pytest.approx(min(running, 1.0))
            expected = "tie" if running >= 0.05 else ("better" if row["diff"] < 0 else "worse")
            assert row["verdict"] == expected
    # outkd/base lost seed 2 (diverged): two pairs, and the cell says so.
    assert table.display.loc["outkd", "base (2.2M)"].endswith("(n=2)")
    with pytest.raises(KDBenchError, match=r"unknown baseline 'nope'.*valid: none, outkd"):
        lb.report(store["uri"], experiments=["grid-a"], baseline="nope")
    with pytest.raises(KDBenchError, match="alpha must be between 0 and 1"):
        lb.report(store["uri"], experiments=["grid-a"], alpha=1.5)


def test_noise_table_and_provenance(runs_a):
    table = lb.noise_table(runs_a, "fid")
    finished = runs_a[(runs_a["kind"] == "cell") & (runs_a["status"] == "finished")]
    for objective in OBJECTIVES:
        group = finished[finished["objective"] == objective]
        boot = 1.0 + 0.5 * group["seed"].astype(float)
        assert table.data.loc[objective, "eval_std"] == pytest.approx(np.sqrt((boot**2).mean()))
        seed_var = group.groupby("teacher")["fid"].var(ddof=1).mean()
        assert table.data.loc[objective, "seed_std"] == pytest.approx(np.sqrt(seed_var))
    assert table.display.loc["place", "KID (mean ± std)"].endswith("± 0.0005")
    assert lb.noise_table(runs_a.drop(columns=["fid_boot_std"]), "fid") is None
    meta = lb.run_metadata(runs_a)
    assert meta["metric provenance"] == (
        "torch-fidelity 0.4.0; 500 generated samples per run; "
        "reference: digits training images (1437 at 16 px)"
    )


# ---------------------------------------------------------------------------- rendering


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.cells, self.bold, self._in_b = 0, [], [], False

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self._in_b = self._in_b or tag == "b"

    def handle_endtag(self, tag):
        if tag == "b":
            self._in_b = False

    def handle_data(self, data):
        self.cells.append(data)
        if self._in_b:
            self.bold.append(data)


def test_render_formats(store, runs_a):
    table = lb.capacity_gap_table(runs_a)
    meta = lb.run_metadata(runs_a)
    assert meta["grid"] == "g1 (name-g1)" and meta["git commit"] == "abc1234"
    assert "digit classifier" in meta["FID computed with"]
    assert meta["dataset"] == "digits at 16 px"
    best_row, best_col = next(iter(sorted(table.best)))
    best_text = table.display.loc[best_row, best_col]

    text = lb.render([table], "text", meta)
    assert f"{best_text}*" in text and "git commit: abc1234" in text

    md = lb.render([table], "md", meta)
    assert f"**{best_text}**" in md
    header = next(line for line in md.splitlines() if line.lstrip("| ").startswith("objective"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "objective",
        *table.display.columns,
    ]

    page = lb.render([table], "html", meta)
    parser = _Cells()
    parser.feed(page)
    assert parser.tables == 2  # metadata + table
    assert best_text in parser.bold and "prune0.7 (0.4M)" in parser.cells

    csv = lb.render([table, lb.overhead_table(runs_a)], "csv", meta)
    parsed = lb.read_csv_tables(csv)
    assert list(parsed) == [table.title, "Training overhead per objective"]
    # The statistical tables render in every format; CSV keeps their numbers.
    stat_tables = [
        lb.baseline_table(runs_a, "fid", "none"),
        lb.pooled_table(runs_a, "fid", "none"),
        lb.slope_table(runs_a, "fid"),
        lb.rank_table(runs_a, "fid"),
        lb.noise_table(runs_a, "fid"),
    ]
    for fmt in ("text", "md", "html"):
        out = lb.render(stat_tables, fmt, meta)
        for t in stat_tables:
            assert t.title in out or html.escape(t.title) in out
            cell = str(t.display.iloc[0, 0])
            assert cell in out or html.escape(cell) in out
    back = lb.read_csv_tables(lb.render(stat_tables, "csv", meta))
    diffs = back[stat_tables[0].title].set_index(["objective", "teacher"])
    pd.testing.assert_series_equal(
        diffs["p_exact"], stat_tables[0].data["p_exact"], check_names=False
    )
    slopes = back[stat_tables[2].title].set_index("objective")
    np.testing.assert_allclose(slopes["slope"], stat_tables[2].data["slope"])
    back = parsed[table.title].set_index(["objective", "teacher"])
    pd.testing.assert_series_equal(back["mean"], table.data["mean"], check_names=False)
    assert back["n"].tolist() == table.data["n"].tolist()
    single = pd.read_csv(io.StringIO(lb.render([table], "csv", meta)), comment="#")
    assert len(single) == len(table.data)


# ---------------------------------------------------------------------------- plots, report


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plots_write_pngs(store, runs_a, tmp_path):
    p = lb.plot_capacity_gap(runs_a, tmp_path / "gap.png")
    assert p.stat().st_size > 5_000 and _png_size(p)[0] > 500
    c = lb.plot_curves(store["uri"], runs_a, tmp_path / "curves.png")
    assert c is not None and c.stat().st_size > 5_000
    s = lb.plot_samples(store["uri"], runs_a, tmp_path / "samples.png")
    assert s is not None and s.stat().st_size > 2_000
    with Image.open(s) as im:  # each objective's colour made it into the figure
        pixels = {tuple(px) for px in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    assert all(color in pixels for color in COLORS.values())
    no_place = runs_a[~runs_a["objective"].fillna("").str.startswith("place")]
    no_place = no_place.drop(columns=[c for c in no_place if c.startswith("train/")])
    assert lb.plot_curves(store["uri"], no_place, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert lb.plot_capacity_gap(runs_a.iloc[0:0], tmp_path / "empty.png") is None


def test_report_end_to_end(store, tmp_path):
    text = lb.report(store["uri"], experiments=["grid-a"], fmt="md", plot_dir=tmp_path)
    for title in [
        "Capacity gap: fid",
        "Difference to none: fid (seed-paired, 95% CI)",
        "Pooled over teachers: fid vs none",
        "Capacity-gap slope: fid",
        "Ranks: fid",
        "Training overhead",
        "Teachers",
    ]:
        assert title in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "capacity_gap_fid.png",
        "curves.png",
        "forest_fid.png",
        "samples.png",
        "slopes_fid.png",
    ]
    both = lb.report(store["uri"], fmt="text", compare_ids=("g1", "g2"))
    assert "Compare fid: g1 vs g2" in both
    assert "Pools 2 grids (g1, g2)" in both  # no --grid given: the main table says it pools
    cmp = lb.compare_report(store["uri"], "grid-a", "g2", fmt="csv")
    assert "# table: Compare fid" in cmp
    with pytest.raises(TrackingError, match="no kdbench runs .* grids nope"):
        lb.report(store["uri"], grid_ids=["nope"])


def test_cli_baseline_alpha_and_bad_baseline(store):
    from click.testing import CliRunner

    from harness.cli import cli

    args = ["leaderboard", "--tracking-uri", store["uri"], "--experiment", "grid-a"]
    ok = CliRunner().invoke(cli, [*args, "--baseline", "outkd", "--alpha", "0.1"])
    assert ok.exit_code == 0, ok.output
    assert "Difference to outkd: fid (seed-paired, 90% CI)" in ok.output
    assert "Pooled over teachers: fid vs outkd" in ok.output
    bad = CliRunner().invoke(cli, [*args, "--baseline", "nope"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith("kdbench: error: unknown baseline 'nope'")
    assert "Traceback" not in bad.output
