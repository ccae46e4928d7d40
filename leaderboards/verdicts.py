"""Leaderboard tables that carry statistical verdicts (numbers from ``leaderboards.stats``).

- ``baseline_table``: per objective and teacher, the seed-paired difference to a baseline
  with its t interval and a better / worse / tie verdict (Holm per teacher).
- ``pooled_table``: the same difference pooled over teachers, exact sign-flip p-value,
  verdict (Holm over objectives) and rliable's probability of improvement.
- ``slope_table``: the capacity-gap slope per decade of teacher parameters with its
  interval and trend, and its difference to OutKD's slope (LIFT/PLACE's Table 6 claim).
- ``rank_table``: each objective's rank per teacher with a bootstrap interval over seeds.
- ``noise_table``: per-run evaluation noise (bootstrap over generated samples) next to the
  between-seed spread, and KID mean ± std, so a reader sees whether more samples or more
  seeds are needed.

Each returns a ``leaderboards.tables.Table``; ``data`` holds the numbers (CSV), ``display``
the strings.  Rows are keyed by ``tables.ROW_KEY`` (one per objective specification).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from harness.errors import KDBenchError
from harness.schema import Metric, Status
from leaderboards import stats
from leaderboards.tables import (
    ROW_KEY,
    Table,
    _cells,
    _check_metric,
    format_interval,
    format_value,
    higher_is_better,
    objective_order,
    teacher_order,
)

KEY = ROW_KEY  # one row per objective specification (leaderboards.load)


def check_baseline(df: pd.DataFrame, baseline: str) -> None:
    """One-line error when ``baseline`` names no row of the runs."""
    rows = objective_order(_cells(df)[KEY])
    if baseline not in rows:
        raise KDBenchError(
            f"unknown baseline {baseline!r}: no runs of it; valid: {', '.join(rows) or 'none'}"
        )


def _ci(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _pct(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _by_teacher(
    data: pd.DataFrame,
    rows: list[str],
    teachers: pd.DataFrame,
    cell: Callable[[pd.Series], tuple[str, bool]],
) -> tuple[pd.DataFrame, set[tuple[str, str]]]:
    """The rows x teachers display of ``data`` (indexed by row and teacher) and its marks.

    ``cell`` turns one ``data`` row into its text and whether it is marked; a pair with no
    ``data`` row is left empty.
    """
    display = pd.DataFrame(
        index=pd.Index(rows, name=KEY), columns=list(teachers["label"]), dtype=object
    )
    best = set()
    for teacher, label in zip(teachers["teacher"], teachers["label"]):
        for row in rows:
            if (row, teacher) not in data.index:
                display.loc[row, label] = ""
                continue
            text, marked = cell(data.loc[(row, teacher)])
            display.loc[row, label] = text
            if marked:
                best.add((row, label))
    return display, best


def baseline_table(
    df: pd.DataFrame, metric: str, baseline: str, alpha: float = stats.ALPHA
) -> Table:
    """Objectives x teachers: ``diff [low, high] verdict`` against ``baseline``."""
    _check_metric(df, metric)
    cells = _cells(df)
    hib = higher_is_better(metric)
    data = stats.baseline_differences(cells, metric, baseline, hib, alpha, key=KEY)
    objectives = [o for o in objective_order(cells[KEY]) if o != baseline]
    full = int(data["n"].max()) if len(data) else 0

    def cell(r: pd.Series) -> tuple[str, bool]:
        if r["note"] and not np.isfinite(r["diff"]):
            return r["note"], False
        text = format_interval(r["diff"], r["low"], r["high"], metric)
        if r["verdict"]:
            text += f" {r['verdict']}"
        if r["n"] < full:
            text += f" (n={int(r['n'])})"
        return text, r["verdict"] == "better"

    display, best = _by_teacher(data, objectives, teacher_order(cells), cell)
    direction = "higher" if hib else "lower"
    notes = [
        f"{metric}: mean of seed-matched differences objective − {baseline} with a "
        f"{_ci(alpha)} t interval over the seed pairs (n = {full} unless shown); "
        f"{direction} is better.",
        f"better / worse: paired t test significant after Holm's correction over the "
        f"objectives of each teacher (α = {alpha:g}); tie: not separable; marked: better.",
        "The CSV also gives the exact sign-flip p-value (p_exact; with n pairs it cannot "
        "go below 2/2^n, 0.25 for 3 seeds). Cells with more than one diverged seed are "
        "invalid and enter no test.",
    ]
    return Table(
        title=f"Difference to {baseline}: {metric} (seed-paired, {_ci(alpha)} CI)",
        data=data,
        display=display,
        notes=notes,
        best=best,
    )


def pooled_table(df: pd.DataFrame, metric: str, baseline: str, alpha: float = stats.ALPHA) -> Table:
    """Per objective: difference to ``baseline`` pooled over teachers, with verdict and PoI."""
    _check_metric(df, metric)
    cells = _cells(df)
    hib = higher_is_better(metric)
    data = stats.pooled(cells, metric, baseline, hib, alpha, key=KEY)
    order = [o for o in objective_order(cells[KEY]) if o in data.index]
    data = data.reindex(order)
    display = pd.DataFrame(index=pd.Index(order, name=KEY), dtype=object)
    ci = _ci(alpha)
    display[f"Δ vs {baseline} [{ci} CI]"] = [
        format_interval(d, lo, hi, metric)
        for d, lo, hi in zip(data["diff"], data["low"], data["high"])
    ]
    display["p exact (Holm)"] = [
        f"{_pct(p)} ({_pct(q)})" if np.isfinite(p) else "–"
        for p, q in zip(data["p_exact"], data["p_holm"])
    ]
    display["verdict"] = list(data["verdict"].fillna(""))
    display["P(improve)"] = [f"{p:.2f}" if np.isfinite(p) else "–" for p in data["poi"]]
    display["n"] = [
        f"{int(n)} {'seeds' if u == 'seed' else 'pairs'} / {int(t)} teachers"
        for n, u, t in zip(data["n"], data["unit"], data["teachers"].fillna(0))
    ]
    best = {(o, "verdict") for o in order if data.loc[o, "verdict"] == "better"}
    notes = [
        f"Δ: mean over teachers of each teacher's mean seed-paired difference "
        f"(objective − {baseline}, stratified by teacher), {ci} t interval; "
        f"p: exact sign-flip test, Holm over the objectives (α = {alpha:g}) gives the verdict.",
        "P(improve): probability that a random run of the objective beats a random run of "
        f"{baseline} at the same teacher, averaged over teachers (rliable; 0.5 = no effect).",
    ]
    if (data["unit"] == "pair").any():
        notes.append(
            "Each (teacher, seed) pair is flipped on its own: this assumes the pairs of one "
            "seed at different teachers are independent."
        )
    if (data["unit"] == "seed").any():
        notes.append(
            f"{baseline}'s runs are the same at every teacher, so the pairs of one seed share "
            "its noise: the seed is the unit (one pooled difference per seed)."
        )
    return Table(
        title=f"Pooled over teachers: {metric} vs {baseline}",
        data=data,
        display=display,
        notes=notes,
        best=best,
    )


def slope_table(
    df: pd.DataFrame, metric: str, reference: str | None = "outkd", alpha: float = stats.ALPHA
) -> Table:
    """Per objective: slope of ``metric`` per 10x teacher parameters, trend, vs ``reference``."""
    _check_metric(df, metric)
    cells = _cells(df)
    hib = higher_is_better(metric)
    rows = objective_order(cells[KEY])
    if reference not in rows:
        reference = None
    data = stats.slopes(cells, metric, hib, reference, alpha, key=KEY).reindex(rows)
    ci = _ci(alpha)
    display = pd.DataFrame(index=pd.Index(rows, name=KEY), dtype=object)
    display[f"slope per 10x teacher [{ci} CI]"] = [
        format_interval(s, lo, hi, metric) if np.isfinite(s) else (note or "–")
        for s, lo, hi, note in zip(data["slope"], data["low"], data["high"], data["note"])
    ]
    display["trend"] = list(data["trend"].fillna(""))
    if reference is not None:
        display[f"vs {reference} [{ci} CI]"] = [
            format_interval(d, lo, hi, metric) if np.isfinite(d) else ""
            for d, lo, hi in zip(data["diff_vs_ref"], data["diff_low"], data["diff_high"])
        ]
    display["n"] = [str(int(n)) for n in data["n"].fillna(0)]
    notes = [
        f"Slope: least-squares {metric} per decade of teacher parameters, fitted per seed "
        f"over the teachers (seeds stay paired across teachers), mean over seeds with a "
        f"{ci} t interval (n = seeds); 'flat' when the interval contains 0.",
    ]
    if reference is not None:
        notes.append(
            f"vs {reference}: seed-paired difference of the slopes; positive means the "
            f"{metric} rises faster with the teacher than {reference}'s."
        )
    if data["note"].fillna("").str.len().gt(0).any():
        notes += [f"{o}: {n}." for o, n in data["note"].fillna("").items() if n]
    return Table(
        title=f"Capacity-gap slope: {metric} vs log10(teacher parameters)",
        data=data,
        display=display,
        notes=notes,
    )


def rank_table(df: pd.DataFrame, metric: str, alpha: float = stats.ALPHA) -> Table:
    """Objectives x teachers: ``rank [low, high]`` (1 = best), bootstrap over seeds."""
    _check_metric(df, metric)
    cells = _cells(df)
    data = stats.rank_intervals(cells, metric, higher_is_better(metric), alpha, key=KEY)

    def cell(r: pd.Series) -> tuple[str, bool]:
        text = f"{int(r['rank'])}"
        if np.isfinite(r["rank_low"]):
            text += f" [{int(r['rank_low'])}, {int(r['rank_high'])}]"
        return text, r["rank"] == 1

    display, best = _by_teacher(data, objective_order(cells[KEY]), teacher_order(cells), cell)
    notes = [
        f"Rank of the mean {metric} (1 = best) with a {_ci(alpha)} percentile bootstrap "
        f"interval ({stats.BOOTSTRAP_RESAMPLES} resamples of the seeds, shared by all "
        "objectives of a teacher); with few seeds the interval is coarse."
    ]
    return Table(
        title=f"Ranks: {metric} (bootstrap over seeds)",
        data=data,
        display=display,
        notes=notes,
        best=best,
    )


NOISE_METRICS = {Metric.FID: Metric.FID_BOOT_STD}


def noise_table(df: pd.DataFrame, metric: str = "fid") -> Table | None:
    """Per objective: between-seed std of ``metric`` vs its per-run evaluation noise.

    Returns None when the runs carry no evaluation-noise metric (``fid_boot_std``).
    """
    noise_col = NOISE_METRICS.get(metric)
    cells = _cells(df)
    if noise_col is None or noise_col not in cells or not cells[noise_col].notna().any():
        return None
    finished = cells[cells["status"] == Status.FINISHED]
    rows = []
    for row in objective_order(finished[KEY]):
        group = finished[finished[KEY] == row]
        per_cell = group.groupby("teacher")[metric].var(ddof=1).dropna()
        seed_var = float(per_cell.mean()) if len(per_cell) else math.nan
        boot = group[noise_col].to_numpy(dtype=float)
        boot = boot[np.isfinite(boot)]
        eval_var = float(np.mean(boot**2)) if boot.size else math.nan
        entry = {
            KEY: row,
            "seed_std": math.sqrt(seed_var) if np.isfinite(seed_var) else math.nan,
            "eval_std": math.sqrt(eval_var) if np.isfinite(eval_var) else math.nan,
            "runs": int(boot.size),
        }
        for col in ("kid_mean", "kid_std"):
            v = group[col].to_numpy(dtype=float) if col in group else np.array([])
            v = v[np.isfinite(v)]
            entry[col] = float(v.mean()) if v.size else math.nan
        rows.append(entry)
    data = pd.DataFrame(rows).set_index(KEY)
    share = data["eval_std"] ** 2 / data["seed_std"] ** 2
    data["eval_share"] = share
    data["advice"] = [
        "" if not np.isfinite(s) else ("more samples" if s > 0.5 else "more seeds") for s in share
    ]
    display = pd.DataFrame(index=data.index, dtype=object)
    display[f"{metric} seed std"] = [format_value(x, metric) for x in data["seed_std"]]
    display[f"{metric} eval std"] = [format_value(x, metric) for x in data["eval_std"]]
    display["eval share"] = [f"{x:.0%}" if np.isfinite(x) else "–" for x in share]
    display["needs"] = list(data["advice"])
    display["KID (mean ± std)"] = [
        f"{m:.4g} ± {s:.2g}" if np.isfinite(m) and np.isfinite(s) else "–"
        for m, s in zip(data["kid_mean"], data["kid_std"])
    ]
    notes = [
        f"seed std: spread of {metric} between seeds within a teacher (pooled over teachers); "
        f"eval std: each run's {metric} bootstrapped over its generated samples against the "
        "fixed reference features (root-mean-square over runs).",
        "eval share = eval var / seed var: above 50% the metric's sampling noise dominates "
        "(more samples per run help most), below it training varies between seeds (more "
        "seeds help most); both are estimates from few values, so a share above 100% "
        "only says the sampling noise is large.",
        "KID: mean over runs of torch-fidelity's KID and of its std over subsets; unbiased, "
        "so it stays usable at small sample counts where FID is biased.",
    ]
    return Table(
        title=f"Evaluation noise: {metric} sampling noise vs seed spread",
        data=data,
        display=display,
        notes=notes,
    )
