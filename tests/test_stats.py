"""Seed-paired leaderboard statistics on simulated grids with planted effects.

The frames have the columns ``load_runs`` gives (kind, status, objective, teacher,
teacher_params, seed, fid).  Many simulated grids go into one frame with teacher labels
unique per grid: every statistic works per teacher, so the grids stay separate and one
call covers them all.  Effects, slopes and noise are known, so intervals can be checked
for coverage, tests for their false-positive rate, and verdicts for finding what was
planted.  The random generator is seeded: the numbers are the same on every run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leaderboards import stats
from leaderboards.tables import capacity_gap_table
from leaderboards.verdicts import baseline_table, pooled_table, slope_table

ALPHA = 0.05
SIZES = (1e5, 1e6, 1e7)  # two decades of teacher parameters


def simulate(
    n_grids: int,
    effects: dict[str, float],
    *,
    slopes: dict[str, float] | None = None,
    seeds: int = 3,
    sizes=SIZES,
    noise: float = 3.0,
    seed_noise: float = 5.0,
    rng: int = 0,
) -> pd.DataFrame:
    """Cells of ``n_grids`` grids: fid = 50 + effect + slope·log10(size/1e6) + seed + noise.

    The seed term is shared by every objective and teacher of a grid at that seed (as
    kdbench's shared batches and noise would make it); the last term is independent.
    """
    gen = np.random.default_rng(rng)
    objectives = list(effects)
    g, t, o, s = np.meshgrid(
        np.arange(n_grids),
        np.arange(len(sizes)),
        np.arange(len(objectives)),
        np.arange(seeds),
        indexing="ij",
    )
    g, t, o, s = g.ravel(), t.ravel(), o.ravel(), s.ravel()
    size = np.asarray(sizes, dtype=float)[t]
    effect = np.array([effects[x] for x in objectives])[o]
    slope = np.array([(slopes or {}).get(x, 0.0) for x in objectives])[o]
    seed_term = gen.normal(0, seed_noise, (n_grids, seeds))[g, s]
    fid = 50 + effect + slope * np.log10(size / 1e6) + seed_term + gen.normal(0, noise, g.size)
    return pd.DataFrame(
        {
            "kind": "cell",
            "status": "finished",
            "objective": np.array(objectives, dtype=object)[o],
            "teacher": [f"g{a}-t{b}" for a, b in zip(g, t)],
            "teacher_params": size,
            "seed": s,
            "grid": g,
            "grid_id": [f"sim{a}" for a in g],
            "fid": fid,
        }
    )


def _truth(index, effects):
    return np.array([effects[o] for o in index.get_level_values(0)])


# ---------------------------------------------------------------------- hand-computed


def test_holm_matches_hand_computed():
    adjusted = stats.holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])
    assert stats.holm([0.6, 0.9]).tolist() == [1.0, 1.0]  # capped at 1


def test_sign_flip_is_exact():
    assert stats.sign_flip_pvalue(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)
    # Signed sums of ±1 ±2 ±0.5 at least |2.5|: 3.5, 2.5, -2.5, -3.5 -> 4 of 8.
    assert stats.sign_flip_pvalue(np.array([1.0, 2.0, -0.5])) == pytest.approx(4 / 8)
    assert stats.sign_flip_pvalue(np.zeros(4)) == 1.0


def test_paired_difference_hand_computed():
    x, y = np.array([10.0, 12.0, 11.0, np.nan]), np.array([8.0, 9.0, 9.0, 1.0])
    res = stats.paired_difference(x, y)
    d = np.array([2.0, 3.0, 2.0])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert res["n"] == 3 and res["diff"] == pytest.approx(d.mean())
    assert (res["low"], res["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert res["p_exact"] == pytest.approx(0.25)


def test_probability_of_improvement_hand_computed():
    x, y = [1.0, 2.0, 3.0], [2.0, 2.0, 4.0]
    # Lower is better: P(x < y) with ties half = (3 + 2 + 1) / 9.
    assert stats.probability_of_improvement(x, y, False) == pytest.approx(6 / 9)
    assert stats.probability_of_improvement(x, y, True) == pytest.approx(3 / 9)


# ---------------------------------------------------------------------- simulations


def test_intervals_cover_and_tests_hold_alpha():
    effects = {"none": 0.0, "a": 0.0, "b": -4.0, "c": 0.0}
    df = simulate(200, effects, rng=1)
    res = stats.baseline_differences(df, "fid", "none", False, ALPHA, exact=False)
    assert len(res) == 200 * 3 * 3 and (res["n"] == 3).all()
    truth = _truth(res.index, effects)
    covered = ((res["low"] <= truth) & (truth <= res["high"])).mean()
    null = res[truth == 0]
    fpr = (null["p_t"] < ALPHA).mean()
    fpr_holm = (null["verdict"] != "tie").mean()
    print(
        f"\npaired t interval coverage {covered:.3f} over {len(res)} intervals; "
        f"null false-positive rate {fpr:.3f} unadjusted, {fpr_holm:.3f} with Holm"
    )
    assert 0.90 <= covered <= 0.99
    assert fpr <= ALPHA + 0.02 and fpr_holm <= ALPHA + 0.02
    # With 3 pairs the exact sign-flip test cannot go below 0.25.
    exact = stats.baseline_differences(df[df["grid"] < 10], "fid", "none", False, ALPHA)
    assert exact["p_exact"].min() == pytest.approx(0.25)


def test_pooled_verdicts_hold_alpha_and_find_effects():
    effects = {"none": 0.0, "null": 0.0, "big": -6.0}
    df = simulate(200, effects, rng=2)
    df["teacher"] = df["teacher"].str.replace("g", "x")  # pooled works over every teacher
    pooled = []
    for _, grid in df.groupby("grid"):
        pooled.append(stats.pooled(grid, "fid", "none", False, ALPHA))
    pooled = pd.concat(pooled)
    null, big = pooled.loc["null"], pooled.loc["big"]
    assert (pooled["unit"] == "pair").all() and (pooled["n"] == 9).all()
    fpr = (null["verdict"] != "tie").mean()
    power = (big["verdict"] == "better").mean()
    covered = ((null["low"] <= 0) & (0 <= null["high"])).mean()
    covered_big = ((big["low"] <= -6) & (-6 <= big["high"])).mean()
    print(
        f"\npooled (9 pairs): false-positive rate {fpr:.3f}, planted -6 found {power:.3f}, "
        f"coverage {covered:.3f} (null) {covered_big:.3f} (effect)"
    )
    assert fpr <= ALPHA + 0.02
    assert power >= 0.9
    assert 0.90 <= covered <= 0.99 and 0.90 <= covered_big <= 0.99
    assert (big["poi"] > 0.5).mean() > 0.95


def test_shared_baseline_makes_the_seed_the_unit():
    """A baseline that ignores the teacher (``none``) has one value per seed at every
    teacher; its noise is shared by the pairs of a seed, so the seed must be the unit."""
    df = simulate(200, {"none": 0.0, "null": 0.0}, seeds=6, noise=1.0, seed_noise=0.0, rng=3)
    base_noise = np.random.default_rng(3).normal(0, 5.0, (200, 6))  # the same at every teacher
    is_base = (df["objective"] == "none").to_numpy()
    df.loc[is_base, "fid"] = 50 + base_noise[df["grid"][is_base], df["seed"][is_base]]
    df["teacher"] = df["teacher"].str.replace("g", "x")
    pooled = pd.concat(
        stats.pooled(grid, "fid", "none", False, ALPHA) for _, grid in df.groupby("grid")
    )
    assert (pooled["unit"] == "seed").all() and (pooled["n"] == 6).all()
    fpr = (pooled["verdict"] != "tie").mean()
    covered = ((pooled["low"] <= 0) & (0 <= pooled["high"])).mean()
    print(f"\nshared baseline, seed unit: false-positive rate {fpr:.3f}, coverage {covered:.3f}")
    assert fpr <= ALPHA + 0.02 and 0.90 <= covered <= 0.99


def test_slope_sign_recovered_and_covered():
    slopes = {"none": 0.0, "outkd": 0.0, "worse": 6.0, "better": -6.0}
    df = simulate(200, dict.fromkeys(slopes, 0.0), slopes=slopes, rng=4)
    # One call for all grids: the row key is (objective, grid), teachers are the sizes.
    df["row"] = df["objective"] + "@" + df["grid"].astype(str)
    df["teacher"] = df["teacher"].str.split("-").str[1]
    res = stats.slopes(df, "fid", False, None, ALPHA, key="row")
    assert len(res) == 800 and (res["n"] == 3).all()
    objective = res.index.str.split("@").str[0]
    truth = np.array([slopes[o] for o in objective])
    covered = ((res["low"] <= truth) & (truth <= res["high"])).mean()
    sign = np.sign(res["slope"])[truth != 0] == np.sign(truth[truth != 0])
    trend = res["trend"][objective == "worse"]
    flat = (res["trend"][objective == "none"] == "flat").mean()
    assert trend.isin(["worse as the teacher grows", "flat"]).all()
    # The difference to outkd's slope, seed-paired, per grid (60 grids).
    covered_diff = []
    for g in range(60):
        one = stats.slopes(df[df["grid"] == g], "fid", False, "outkd", ALPHA)
        d = one.drop(index="outkd")
        d_truth = np.array([slopes[o] - slopes["outkd"] for o in d.index])
        covered_diff += list((d["diff_low"] <= d_truth) & (d_truth <= d["diff_high"]))
    print(
        f"\nslope sign recovered {sign.mean():.3f}; slope coverage {covered:.3f} "
        f"({len(res)} intervals), slope-difference coverage {np.mean(covered_diff):.3f} "
        f"({len(covered_diff)}); flat slope called flat {flat:.3f}"
    )
    assert sign.mean() >= 0.95
    assert 0.90 <= covered <= 0.99 and 0.90 <= np.mean(covered_diff) <= 0.99
    assert flat >= 0.9


def test_tie_group_contains_the_truly_best_and_excludes_far_worse():
    effects = {"none": 0.0, "best": -15.0, "close": -14.5, "far": 10.0}
    df = simulate(200, effects, noise=1.0, rng=5)
    ties = stats.tie_groups(df, "fid", False, ALPHA)
    best_tied = ties.xs("best", level=0)["tied"].mean()
    far_tied = ties.xs("far", level=0)["tied"].mean()
    assert best_tied >= 0.95  # the truly best is (almost) never ruled out
    assert far_tied <= 0.05
    ranks = stats.rank_intervals(df[df["grid"] < 20], "fid", False, ALPHA)
    assert (ranks.xs("far", level=0)["rank_low"] >= 3).all()
    assert (ranks["rank_low"] <= ranks["rank"]).all() and (
        ranks["rank"] <= ranks["rank_high"]
    ).all()


# ---------------------------------------------------------------------- edge cases


def test_one_seed_gives_no_interval_and_says_so():
    df = simulate(1, {"none": 0.0, "a": -3.0}, seeds=1)
    res = stats.baseline_differences(df, "fid", "none", False)
    assert (res["n"] == 1).all() and res["low"].isna().all() and res["p_t"].isna().all()
    assert (res["note"] == "n=1: no interval").all()
    assert (res["verdict"] == "").all()
    table = baseline_table(df, "fid", "none")
    cell = table.display.iloc[0, 0]
    assert "[" not in cell and cell.startswith("-") or cell.startswith("+")
    slopes = stats.slopes(df, "fid", False, None)
    assert slopes["low"].isna().all() and (slopes["n"] == 1).all()
    assert stats.rank_intervals(df, "fid", False)["rank_low"].isna().all()


def test_missing_seed_pairs_only_where_both_exist():
    df = simulate(1, {"none": 0.0, "a": -3.0}, seeds=4, rng=6)
    drop = (df["objective"] == "a") & (df["seed"] == 2)
    res = stats.baseline_differences(df[~drop], "fid", "none", False)
    assert (res["n"] == 3).all()
    for (_, teacher), r in res.iterrows():
        cells = df[(df["teacher"] == teacher) & (df["seed"] != 2)]
        a = cells[cells["objective"] == "a"].sort_values("seed")["fid"].to_numpy()
        b = cells[cells["objective"] == "none"].sort_values("seed")["fid"].to_numpy()
        assert r["diff"] == pytest.approx((a - b).mean())
    # A shorter row says its n in the table.
    partial = df[~(drop & (df["teacher"] == df["teacher"].iloc[0]))]
    shown = baseline_table(partial, "fid", "none").display
    assert shown.iloc[0, 0].endswith("(n=3)") and "(n=" not in shown.iloc[0, 1]


def test_diverged_runs_and_invalid_cells():
    df = simulate(1, {"none": 0.0, "a": -3.0, "b": -2.0}, seeds=3, rng=7)
    teacher = df["teacher"].iloc[0]
    # a: two of three seeds diverged at the first teacher -> invalid, not averaged.
    two = (df["objective"] == "a") & (df["teacher"] == teacher) & (df["seed"] < 2)
    # b: one diverged seed -> valid, two pairs.
    one = (df["objective"] == "b") & (df["teacher"] == teacher) & (df["seed"] == 0)
    df.loc[two | one, "status"] = "diverged"
    df.loc[two | one, "fid"] = np.nan
    res = stats.baseline_differences(df, "fid", "none", False)
    assert res.loc[("a", teacher), "note"] == "invalid: 2 seeds diverged"
    assert np.isnan(res.loc[("a", teacher), "diff"])
    assert res.loc[("b", teacher), "n"] == 2
    gap = capacity_gap_table(df)
    label = gap.display.columns[0]
    assert gap.display.loc["a", label] == "invalid (2/3 diverged)"
    assert np.isnan(gap.data.loc[("a", teacher), "mean"])
    assert not gap.data.loc[("a", teacher), "tied"]
    assert ("a", teacher) not in stats.tie_groups(df, "fid", False).index
    assert baseline_table(df, "fid", "none").display.loc["a", label] == "invalid: 2 seeds diverged"


def test_one_teacher_has_no_slope():
    df = simulate(1, {"none": 0.0, "outkd": -3.0}, sizes=(1e6,))
    res = stats.slopes(df, "fid", False, "outkd")
    assert res["slope"].isna().all()
    assert (res["note"] == "one teacher size: no slope").all()
    table = slope_table(df, "fid")
    assert (table.display.iloc[:, 0] == "one teacher size: no slope").all()
    pooled = pooled_table(df, "fid", "none")
    assert pooled.data.loc["outkd", "teachers"] == 1


def test_plots_keep_variants_of_one_objective_apart(tmp_path, monkeypatch):
    """The forest and slope plots show one row per objective specification, as the tables
    do: two weights of LIFT are two rows, not one pooled 'lift'."""
    from leaderboards import plots

    df = simulate(1, {"none": 0.0, "a": -20.0, "b": 15.0}, slopes={"b": 10.0}, rng=3)
    df["objective_label"] = df["objective"].map(
        {"none": "none", "a": "lift[weight=10]", "b": "lift[weight=0.1]"}
    )
    df["objective"] = df["objective"].replace({"a": "lift", "b": "lift"})
    shown: dict[str, list[str]] = {}

    def keep_labels(fig, path):
        shown[path.name] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        plots.plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep_labels)
    plots.plot_forest(df, tmp_path / "forest.png", "fid", "none")
    plots.plot_slopes(df, tmp_path / "slopes.png", "fid")
    assert shown["forest.png"] == ["lift[weight=0.1]", "lift[weight=10]"]
    assert set(shown["slopes.png"]) == {"none", "lift[weight=0.1]", "lift[weight=10]"}
