"""Statistics for seed-paired leaderboards, with ``scipy.stats``.

kdbench cells at one seed see the same batches, noise, timesteps and evaluation noise, so
two objectives (or two grids with the same data and batch settings) are *paired by seed*.
Everything here works on a frame of cell runs shaped like ``load_runs``' output, over a
generic row-key column (``key``, default ``"objective"``), the ``teacher``, ``seed`` and
``status`` columns and one metric column.  Choices made:

- Validity (MLPerf's rule): a (row, teacher) cell with more than one diverged seed is
  *invalid*; its values are not averaged over the survivors and it enters no test.
- Paired difference to a baseline: mean of seed-matched differences, t interval
  (``ttest_rel(...).confidence_interval``) and p-value of the paired t test, plus the exact
  sign-flip p-value (``permutation_test(permutation_type="samples")`` over all 2^n sign
  patterns; it cannot go below 2/2^n, i.e. 0.25 for 3 pairs).  Verdicts (better / worse /
  tie) use the paired t test, the test that the printed interval inverts, Holm-corrected
  across the rows of a teacher column (Holm, 1979; scipy only ships Benjamini-Hochberg,
  so Holm's step-down is the few lines of ``holm``).
- Tie groups: per teacher, every row whose paired t test against the best mean is not
  significant after Holm is tied with it; rows with fewer than 2 pairs cannot be
  separated and are tied.  Rank intervals: percentile bootstrap over seeds
  (``scipy.stats.bootstrap``, seeds resampled jointly for every row).
- Capacity-gap slope: per seed, the least-squares slope of the metric against
  log10(teacher parameters) over the teachers (seeds stay paired across teachers; a seed
  missing at a teacher is fitted on the teachers it has); the slope is the mean of the
  per-seed slopes with a t interval over seeds, and the difference to a reference row's
  slope is the same over seed-matched slope differences.  The per-seed slopes are
  independent, so the t interval is exact for normal noise.  A percentile bootstrap over
  3 seeds (10 distinct resamples) is not used: on 400 simulated 3-seed slopes its 95%
  interval covered the true slope 75.5% of the time, the t interval 96.5%.
- Pooled verdicts (stratified by teacher): the mean over teachers of the per-teacher mean
  differences; exact sign flips per (teacher, seed) pair, t interval from the pooled
  within-teacher residual variance (df = pairs - teachers).  When the baseline's values
  are the same at every teacher (it does not use the teacher, e.g. ``none``), the pairs of
  one seed share its noise and are not independent: the seed is then the unit (the
  per-seed mean difference is flipped and the interval is over seeds).  On 200 simulated
  6-seed grids with such a baseline, flipping each pair rejected a true null 26% of the
  time at α = 0.05, the seed unit 2.5%.  Probability of
  improvement as rliable defines it (Agarwal et al., NeurIPS 2021): the mean over teachers
  of P(X better than Y) for a random run X of the row and Y of the baseline (the
  Mann-Whitney U statistic over n·m, ties counting half).
- Comparing two grids: paired over shared seeds when both have >= 2 and the same data and
  batch settings, else Welch's unpaired t interval (``ttest_ind(equal_var=False)``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from harness.schema import Status

KEY = "objective"  # the row-key column; a label/spec column can replace it
ALPHA = 0.05
EXACT_MAX_PAIRS = 16  # up to 2^16 sign patterns are enumerated; beyond, 20,000 random flips
BOOTSTRAP_RESAMPLES = 2000
RNG_SEED = 0  # bootstrap and random sign flips are reproducible


def better_sign(higher_is_better: bool) -> int:
    """+1 when a positive difference is an improvement, else -1."""
    return 1 if higher_is_better else -1


# ---------------------------------------------------------------------- cells -> seeds


def cell_validity(cells: pd.DataFrame, key: str = KEY) -> pd.DataFrame:
    """Per (key, teacher): finished, diverged counts and ``valid`` (<= 1 diverged seed)."""
    status = cells["status"].astype(object)
    frame = pd.DataFrame(
        {
            key: cells[key],
            "teacher": cells["teacher"],
            "finished": (status == Status.FINISHED).astype(int),
            "diverged": (status == Status.DIVERGED).astype(int),
        }
    )
    out = frame.groupby([key, "teacher"], dropna=True)[["finished", "diverged"]].sum()
    out["valid"] = out["diverged"] <= 1
    return out


def seed_values(cells: pd.DataFrame, metric: str, key: str = KEY) -> pd.DataFrame:
    """Finished runs' finite ``metric``: index (key, teacher), one column per seed.

    Invalid cells (more than one diverged seed) are dropped.  Repeated runs of one
    (key, teacher, seed), e.g. from pooled grids, are averaged.
    """
    finite = np.isfinite(pd.to_numeric(cells[metric], errors="coerce").to_numpy(dtype=float))
    ok = cells.loc[
        (cells["status"] == Status.FINISHED).to_numpy() & finite, [key, "teacher", "seed"]
    ]
    ok = ok.assign(value=cells[metric].astype(float)).dropna(subset=[key, "teacher", "seed"])
    if ok.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=[key, "teacher"]))
    table = ok.groupby([key, "teacher", "seed"], sort=True)["value"].mean().unstack("seed")
    diverged = cells.loc[cells["status"] == Status.DIVERGED, [key, "teacher"]]
    counts = diverged.groupby([key, "teacher"]).size()
    invalid = [i for i in counts.index[counts > 1] if i in table.index]
    return table.drop(index=invalid) if invalid else table


# ---------------------------------------------------------------------- tests


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def sign_flip_pvalue(d: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Two-sided sign-flip p-value of sum(w * d) (exact up to EXACT_MAX_PAIRS values)."""
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    w = np.full(d.size, 1.0 / d.size) if weights is None else np.asarray(weights, float)

    def statistic(x, axis=-1):
        return np.sum(w * x, axis=axis)

    exact = d.size <= EXACT_MAX_PAIRS
    res = stats.permutation_test(
        (d,),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else 20_000,
        rng=None if exact else RNG_SEED,
    )
    return float(res.pvalue)


def _t_from_moments(mean: float, se: float, df: float, alpha: float) -> tuple[float, float, float]:
    """(low, high, p) of a t interval/test for ``mean`` with standard error ``se``."""
    if not (np.isfinite(se) and df >= 1):
        return math.nan, math.nan, math.nan
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return mean, mean, p
    q = stats.t.ppf(1 - alpha / 2, df)
    p = float(2 * stats.t.sf(abs(mean / se), df))
    return mean - q * se, mean + q * se, p


def paired_difference(x, y, alpha: float = ALPHA, exact: bool = True) -> dict:
    """Seed-matched ``x - y``: n, mean, t interval, paired-t p and exact sign-flip p.

    ``x`` and ``y`` are aligned by position (seed); pairs with a missing value on either
    side are left out.  n = 1 gives the difference without interval or p-values.
    ``exact=False`` skips the sign-flip p-value (NaN).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    d = x - y
    n = int(d.size)
    out = {"n": n, "diff": math.nan, "low": math.nan, "high": math.nan}
    out.update(p_t=math.nan, p_exact=math.nan)
    if n == 0:
        return out
    out["diff"] = float(d.mean())
    if n == 1:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0:  # every pair differs by the same amount: the interval is that point
        out.update(low=out["diff"], high=out["diff"], p_t=1.0 if out["diff"] == 0 else 0.0)
    else:
        res = stats.ttest_rel(x, y)
        ci = res.confidence_interval(confidence_level=1 - alpha)
        out.update(low=float(ci.low), high=float(ci.high), p_t=float(res.pvalue))
    out["p_exact"] = sign_flip_pvalue(d) if exact else math.nan
    return out


def unpaired_difference(x, y, alpha: float = ALPHA) -> dict:
    """Welch's ``mean(x) - mean(y)``: t interval and p (both need >= 2 values)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    out = {"n": int(min(x.size, y.size)), "diff": math.nan, "low": math.nan, "high": math.nan}
    out.update(p_t=math.nan, p_exact=math.nan)
    if x.size == 0 or y.size == 0:
        return out
    out["diff"] = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return out
    if x.var(ddof=1) + y.var(ddof=1) == 0:
        out.update(low=out["diff"], high=out["diff"], p_t=1.0 if out["diff"] == 0 else 0.0)
        return out
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(confidence_level=1 - alpha)
    out.update(low=float(ci.low), high=float(ci.high), p_t=float(res.pvalue))
    return out


def verdict(diff: float, p_adjusted: float, alpha: float, higher_is_better: bool) -> str:
    """'better' / 'worse' when significant after correction, 'tie' otherwise, '' without a test."""
    if not np.isfinite(p_adjusted):
        return ""
    if p_adjusted >= alpha or diff == 0:
        return "tie"
    return "better" if diff * better_sign(higher_is_better) > 0 else "worse"


# ---------------------------------------------------------------------- baseline table

DIFF_COLUMNS = ["n", "diff", "low", "high", "p_t", "p_exact", "p_holm", "verdict", "note"]


def baseline_differences(
    cells: pd.DataFrame,
    metric: str,
    baseline: str,
    higher_is_better: bool,
    alpha: float = ALPHA,
    key: str = KEY,
    exact: bool = True,
) -> pd.DataFrame:
    """Per (row, teacher), row != baseline: seed-paired difference row − baseline.

    Holm's correction runs over the rows of each teacher.  ``note`` says why a cell has no
    test (invalid, n = 1, no baseline).
    """
    values = seed_values(cells, metric, key)
    validity = cell_validity(cells, key)
    rows = []
    for (row, teacher), v in validity.iterrows():
        if row == baseline:
            continue
        entry = {key: row, "teacher": teacher}
        base_key = (baseline, teacher)
        if not v["valid"]:
            entry.update(n=0, note=f"invalid: {int(v['diverged'])} seeds diverged")
        elif base_key in validity.index and not validity.loc[base_key, "valid"]:
            entry.update(n=0, note="baseline invalid")
        elif base_key not in values.index:
            entry.update(n=0, note="no baseline runs")
        elif (row, teacher) not in values.index:
            entry.update(n=0, note="no finished runs")
        else:
            res = paired_difference(values.loc[(row, teacher)], values.loc[base_key], alpha, exact)
            entry.update(res)
            entry["note"] = {0: "no shared seeds", 1: "n=1: no interval"}.get(res["n"], "")
        rows.append(entry)
    out = pd.DataFrame(rows, columns=[key, "teacher", *DIFF_COLUMNS[:-3], "note"])
    out["p_holm"] = math.nan
    for _, idx in out.groupby("teacher").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_t"])
    out["verdict"] = [
        verdict(d, p, alpha, higher_is_better) for d, p in zip(out["diff"], out["p_holm"])
    ]
    out["n"] = out["n"].fillna(0).astype(int)
    return out.set_index([key, "teacher"])[DIFF_COLUMNS]


# ---------------------------------------------------------------------- tie groups, ranks


def tie_groups(
    cells: pd.DataFrame,
    metric: str,
    higher_is_better: bool,
    alpha: float = ALPHA,
    key: str = KEY,
) -> pd.DataFrame:
    """Per (row, teacher): mean, whether it is the best, in the best's tie group, p vs best.

    Only valid cells take part.  The best is the best mean; every other row is tested
    against it (paired t over shared seeds) with Holm across the rows of the teacher.
    """
    values = seed_values(cells, metric, key)
    sign = better_sign(higher_is_better)
    rows = []
    for teacher in values.index.get_level_values("teacher").unique():
        block = values.xs(teacher, level="teacher")
        means = block.mean(axis=1, skipna=True)
        means = means[np.isfinite(means)]
        if means.empty:
            continue
        best = (means * sign).idxmax()
        others = [r for r in means.index if r != best]
        results = [
            paired_difference(block.loc[r], block.loc[best], alpha, exact=False) for r in others
        ]
        adjusted = holm([r["p_t"] for r in results])
        rows.append(
            {key: best, "teacher": teacher, "mean": means[best], "best": True, "tied": True}
            | {"p_vs_best": math.nan, "p_holm": math.nan, "n_vs_best": len(block.columns)}
        )
        for r, res, p in zip(others, results, adjusted):
            tied = not (np.isfinite(p) and p < alpha)
            rows.append(
                {key: r, "teacher": teacher, "mean": means[r], "best": False, "tied": tied}
                | {"p_vs_best": res["p_t"], "p_holm": p, "n_vs_best": res["n"]}
            )
    cols = [key, "teacher", "mean", "best", "tied", "p_vs_best", "p_holm", "n_vs_best"]
    return pd.DataFrame(rows, columns=cols).set_index([key, "teacher"])


def rank_intervals(
    cells: pd.DataFrame,
    metric: str,
    higher_is_better: bool,
    alpha: float = ALPHA,
    key: str = KEY,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> pd.DataFrame:
    """Per (row, teacher): rank of the mean (1 = best) and its percentile bootstrap interval.

    Seeds are resampled jointly for every row of a teacher (they stay paired); a row's
    missing seeds are skipped in its resampled mean.  Fewer than 2 seeds: no interval.
    """
    values = seed_values(cells, metric, key)
    sign = better_sign(higher_is_better)
    rows = []

    def ranks(y, axis=-1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            score = -sign * np.nanmean(y, axis=axis)  # lower score = better
        score = np.where(np.isfinite(score), score, np.inf)
        return stats.rankdata(score, axis=0, method="min").astype(float)

    for teacher in values.index.get_level_values("teacher").unique():
        block = values.xs(teacher, level="teacher")
        block = block[block.notna().any(axis=1)]
        if block.empty:
            continue
        y = block.to_numpy(dtype=float)
        point = ranks(y, axis=-1)
        low = high = np.full(len(block), np.nan)
        if y.shape[1] >= 2 and len(block) >= 2:
            res = stats.bootstrap(
                (y,),
                ranks,
                axis=-1,
                vectorized=True,
                method="percentile",
                n_resamples=n_resamples,
                confidence_level=1 - alpha,
                rng=RNG_SEED,
            )
            low, high = res.confidence_interval.low, res.confidence_interval.high
        elif len(block) == 1:
            low = high = np.ones(1)
        for row, r, lo, hi in zip(block.index, point, low, high):
            rows.append({key: row, "teacher": teacher, "rank": r, "rank_low": lo, "rank_high": hi})
    cols = [key, "teacher", "rank", "rank_low", "rank_high"]
    return pd.DataFrame(rows, columns=cols).set_index([key, "teacher"])


# ---------------------------------------------------------------------- slopes


def _per_seed_slopes(block: pd.DataFrame, log_params: pd.Series) -> tuple[pd.Series, int]:
    """OLS slope of each seed (column) over the teachers (rows) with a value at that seed.

    Seeds with fewer than two distinct teacher sizes give no slope.  Returns the slopes and
    how many of them were fitted on fewer teachers than the row has.
    """
    x_all = log_params.reindex(block.index).to_numpy(dtype=float)
    slopes, partial = {}, 0
    for seed in block.columns:
        y = block[seed].to_numpy(dtype=float)
        ok = np.isfinite(y)
        x = x_all[ok]
        if np.unique(x).size < 2:
            continue
        xc = x - x.mean()
        slopes[seed] = float(xc @ (y[ok] - y[ok].mean()) / (xc @ xc))
        partial += int(ok.sum() < len(y))
    return pd.Series(slopes, dtype=float), partial


def _mean_interval(values: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """(mean, low, high, p) of a one-sample t interval/test; no interval below 2 values."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan, math.nan
    low, high, p = _t_from_moments(
        mean, float(v.std(ddof=1)) / math.sqrt(v.size), v.size - 1, alpha
    )
    return mean, low, high, p


def slope_trend(low: float, high: float, higher_is_better: bool) -> str:
    """'better/worse as the teacher grows' when the interval excludes 0, else 'flat'."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    if low > 0 or high < 0:
        improving = (low > 0) == higher_is_better
        return "better as the teacher grows" if improving else "worse as the teacher grows"
    return "flat"


SLOPE_COLUMNS = [
    "teachers",
    "n",
    "slope",
    "low",
    "high",
    "trend",
    "n_vs_ref",
    "diff_vs_ref",
    "diff_low",
    "diff_high",
    "note",
]


def slopes(
    cells: pd.DataFrame,
    metric: str,
    higher_is_better: bool,
    reference: str | None = "outkd",
    alpha: float = ALPHA,
    key: str = KEY,
) -> pd.DataFrame:
    """Per row: slope of ``metric`` per decade of teacher parameters, its interval, its trend,
    and its seed-paired difference to ``reference``'s slope.

    Uses the valid teachers with a known parameter count; a seed missing at some teachers
    is fitted on the others (at least two sizes), and the note says so.
    """
    values = seed_values(cells, metric, key)
    params = pd.to_numeric(cells["teacher_params"], errors="coerce")
    sizes = params.groupby(cells["teacher"]).median()
    sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
    log_params = np.log10(sizes.astype(float))
    per_seed: dict[str, pd.Series] = {}
    rows = []
    for row in values.index.get_level_values(0).unique():
        block = values.xs(row, level=0)
        block = block[block.index.isin(log_params.index) & block.notna().any(axis=1)]
        entry = {key: row, "teachers": len(block), "n": 0, "note": ""}
        if len(block) < 2 or log_params.reindex(block.index).nunique() < 2:
            entry["note"] = "one teacher size: no slope"
            rows.append(entry)
            continue
        s, partial = _per_seed_slopes(block, log_params)
        per_seed[row] = s
        mean, low, high, _ = _mean_interval(s.to_numpy(), alpha)
        entry.update(n=len(s), slope=mean, low=low, high=high)
        entry["trend"] = slope_trend(low, high, higher_is_better)
        notes = []
        if partial:
            notes.append(f"{partial} of {len(s)} seed slopes fitted on fewer teachers")
        if len(s) == 1:
            notes.append("n=1: no interval")
        entry["note"] = "; ".join(notes)
        rows.append(entry)
    out = pd.DataFrame(rows, columns=[key, *SLOPE_COLUMNS]).set_index(key)
    if reference is not None and reference in per_seed:
        ref = per_seed[reference]
        for row, s in per_seed.items():
            if row == reference:
                continue
            common = s.index.intersection(ref.index)
            d = (s[common] - ref[common]).to_numpy()
            mean, low, high, _ = _mean_interval(d, alpha)
            out.loc[row, ["n_vs_ref", "diff_vs_ref", "diff_low", "diff_high"]] = [
                len(d),
                mean,
                low,
                high,
            ]
    out["n"] = out["n"].fillna(0).astype(int)
    return out


# ---------------------------------------------------------------------- pooled


def probability_of_improvement(x, y, higher_is_better: bool) -> float:
    """P(a random x is better than a random y), ties half: the Mann-Whitney U / (n m),
    counted over all n·m pairs."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return math.nan
    if not higher_is_better:
        x, y = -x, -y
    wins = (x[:, None] > y[None, :]).sum() + 0.5 * (x[:, None] == y[None, :]).sum()
    return float(wins / (x.size * y.size))


def _shared_baseline(base: pd.DataFrame) -> bool:
    """True when the baseline's value at each seed is the same at every teacher."""
    if len(base) < 2:
        return False
    spread = base.max(axis=0, skipna=True) - base.min(axis=0, skipna=True)
    scale = base.abs().max(axis=0, skipna=True).replace(0, 1)
    counts = base.notna().sum(axis=0)
    spread = spread[counts >= 2]
    return bool(len(spread)) and bool((spread <= 1e-9 * scale[spread.index]).all())


POOLED_COLUMNS = [
    "teachers",
    "n",
    "unit",
    "diff",
    "low",
    "high",
    "p_exact",
    "p_holm",
    "verdict",
    "poi",
]


def pooled(
    cells: pd.DataFrame,
    metric: str,
    baseline: str,
    higher_is_better: bool,
    alpha: float = ALPHA,
    key: str = KEY,
) -> pd.DataFrame:
    """Per row: difference to ``baseline`` pooled over teachers (stratified by teacher).

    ``diff`` is the mean over teachers of the per-teacher mean seed-paired difference;
    ``unit`` says what was sign-flipped ("pair" or "seed", see the module docstring);
    the verdict comes from the exact sign-flip p-value, Holm-corrected across rows;
    ``poi`` is rliable's probability of improvement over the baseline.
    """
    values = seed_values(cells, metric, key)
    rows = []
    if baseline not in values.index.get_level_values(0):
        return pd.DataFrame(columns=[key, *POOLED_COLUMNS]).set_index(key)
    base = values.xs(baseline, level=0)
    shared = _shared_baseline(base)
    for row in values.index.get_level_values(0).unique():
        if row == baseline:
            continue
        block = values.xs(row, level=0)
        teachers = block.index.intersection(base.index)
        x = block.loc[teachers].to_numpy(dtype=float)  # teachers x seeds
        y = base.loc[teachers].to_numpy(dtype=float)
        paired = np.isfinite(x) & np.isfinite(y)
        keep = paired.any(axis=1)
        x, y, paired = x[keep], y[keep], paired[keep]
        entry = {key: row, "teachers": int(keep.sum()), "unit": "seed" if shared else "pair"}
        pois = [probability_of_improvement(a, b, higher_is_better) for a, b in zip(x, y)]
        entry["poi"] = float(np.mean(pois)) if pois else math.nan
        entry["n"] = 0
        if keep.any() and shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                d = np.nanmean(np.where(paired, x - y, np.nan), axis=0)  # one per seed
            d = d[np.isfinite(d)]
            entry["n"] = int(d.size)
            entry["diff"], entry["low"], entry["high"], _ = _mean_interval(d, alpha)
            entry["p_exact"] = sign_flip_pvalue(d) if d.size >= 2 else math.nan
        elif keep.any():
            k = len(x)
            counts = paired.sum(axis=1)
            d = (x - y)[paired]  # row-major: grouped by teacher
            w = np.repeat(1.0 / (k * counts), counts)
            means = np.array([row_d[ok].mean() for row_d, ok in zip(x - y, paired)])
            resid = d - np.repeat(means, counts)
            entry["n"] = int(d.size)
            entry["diff"] = float(np.sum(w * d))
            df = d.size - k
            if df >= 1:
                se = math.sqrt(float(resid @ resid) / df * float(np.sum(1.0 / counts))) / k
                entry["low"], entry["high"], _ = _t_from_moments(entry["diff"], se, df, alpha)
            entry["p_exact"] = sign_flip_pvalue(d, w) if d.size >= 2 else math.nan
        rows.append(entry)
    out = pd.DataFrame(rows, columns=[key, *POOLED_COLUMNS])
    out["p_holm"] = holm(out["p_exact"].to_numpy(dtype=float))
    out["verdict"] = [
        verdict(d, p, alpha, higher_is_better) for d, p in zip(out["diff"], out["p_holm"])
    ]
    out["n"] = out["n"].fillna(0).astype(int)
    return out.set_index(key)
