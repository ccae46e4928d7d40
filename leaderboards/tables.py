"""Leaderboard tables from the runs frame of ``load_runs``.

- ``capacity_gap_table``: objectives x teachers, "mean ± std (n)" over seeds (the layout of
  Table 6 in LIFT and PLACE, Han et al., CVPR 2026).  Only finished runs enter the means; the
  std is the sample std (ddof=1, blank for one seed).  Diverged runs are counted in the
  collapse column, with finished runs whose FID exceeds ``collapse_fid`` (those stay in the
  means: they are measured results).  A cell with more than one diverged seed is invalid
  (MLPerf's rule): shown as such, not averaged over its survivors.  The marked cells are the
  tie group of each teacher: the best mean and every objective a seed-paired test cannot
  separate from it (``leaderboards.stats.tie_groups``).
- ``overhead_table``: iter/s and peak memory per objective, relative to outkd (Table 9),
  and where a cell's time goes (start, teacher, train, sample, metrics, log).
- ``teacher_table``: each teacher's size and quality.
- ``compare``: one metric of two grids side by side with deltas, paired intervals over
  shared seeds (or Welch's when the grids cannot be paired) and tie marking.

Every function returns a ``Table``: a numeric frame for code and tests, a display frame of
strings, notes, and the display cells to highlight as best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.errors import KDBenchError
from harness.schema import DONE, PHASE_TIMES, Kind, Metric, Status
from leaderboards import stats

LOWER_IS_BETTER = {
    Metric.FID,
    Metric.KID_MEAN,
    Metric.KID_STD,
    Metric.PEAK_MEM_MB,
    Metric.TEACHER_SHARE,
    *PHASE_TIMES,
}
HIGHER_IS_BETTER = {
    Metric.ISC_MEAN,
    Metric.PRECISION,
    Metric.RECALL,
    Metric.CLASS_ACC,
    Metric.ITER_PER_S,
}
ROW_KEY = "objective_label"  # one value per objective specification (leaderboards.load)
OBJECTIVE_ORDER = ("none", "outkd", "featkd", "dist", "takd", "lift", "place")
DECIMALS = {
    "fid": 2,
    "isc_mean": 2,
    "kid_mean": 4,
    "kid_std": 4,
    "precision": 3,
    "recall": 3,
    "class_acc": 3,
    "iter_per_s": 2,
    "peak_mem_mb": 0,
    "teacher_share": 3,
}


@dataclass
class Table:
    """A leaderboard table: ``data`` is numeric, ``display`` holds the strings to print."""

    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    best: set[tuple[str, str]] = field(default_factory=set)  # (display row, display column)

    def __post_init__(self) -> None:
        # Rows are keyed by the objective's specification; readers see the column "objective".
        for frame in (self.data, self.display):
            frame.rename_axis(index={ROW_KEY: "objective"}, inplace=True)


def higher_is_better(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER


def format_params(n: float | None) -> str:
    """A parameter count as people write it: 950, 58.2k, 0.4M, 10.7M, 1.2B."""
    if n is None or (isinstance(n, float) and math.isnan(n)) or pd.isna(n):
        return "?"
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e5:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def format_value(x: float, metric: str) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    digits = DECIMALS.get(metric)
    if digits is None:
        return f"{x:.4g}"
    return f"{x:.{digits}f}"


def format_cell(mean: float, std: float, n: int, metric: str) -> str:
    """``mean ± std (n)``; ``mean (1)`` for one seed; ``– (0)`` when nothing finished."""
    if n == 0:
        return "– (0)"
    if n == 1 or not np.isfinite(std):
        return f"{format_value(mean, metric)} ({n})"
    return f"{format_value(mean, metric)} ± {format_value(std, metric)} ({n})"


def base_names(label: str) -> list[str]:
    """``place[weight=0.1]+featkd {x=1}`` -> ["place", "featkd"] (the objectives it sums)."""
    head = str(label).split(" ", 1)[0]
    return [part.split("[", 1)[0] for part in head.split("+")]


def row_key(df: pd.DataFrame) -> pd.Series:
    """The leaderboard's row key per run: ``objective_label``, else ``objective``."""
    if ROW_KEY not in df:
        return df["objective"]
    return df[ROW_KEY].where(df[ROW_KEY].notna(), df["objective"])


def objective_order(labels) -> list[str]:
    """``none`` first, then the built-ins in the paper's order, then combinations."""

    def key(label: str):
        parts = base_names(label)
        first = (
            OBJECTIVE_ORDER.index(parts[0]) if parts[0] in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER)
        )
        return (label != "none", len(parts), first, str(label))

    return sorted({str(x) for x in labels if x is not None and not pd.isna(x)}, key=key)


def _check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns or not pd.api.types.is_numeric_dtype(df[metric]):
        numeric = sorted(
            c
            for c in df.columns
            if pd.api.types.is_float_dtype(df[c]) and c not in ("lr",) and "/" not in c
        )
        raise KDBenchError(f"unknown metric {metric!r}; valid: {', '.join(numeric)}")


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cell runs, with the row key (``ROW_KEY``) filled in for every run."""
    cells = df[df["kind"] == Kind.CELL].copy()
    cells[ROW_KEY] = row_key(cells)
    return cells


def _stats(values: pd.Series) -> tuple[float, float, int]:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def teacher_order(df: pd.DataFrame) -> pd.DataFrame:
    """Teachers (label, params, display label) sorted by parameter count ascending."""
    rows = []
    for teacher, group in df.groupby("teacher", dropna=True):
        params = pd.to_numeric(group["teacher_params"], errors="coerce").dropna()
        count = float(params.median()) if len(params) else math.nan
        rows.append(
            {
                "teacher": teacher,
                "teacher_params": count,
                "label": f"{teacher} ({format_params(count)})",
                "consistent": params.nunique() <= 1,
            }
        )
    out = pd.DataFrame(rows, columns=["teacher", "teacher_params", "label", "consistent"])
    return out.sort_values(["teacher_params", "teacher"], na_position="last").reset_index(drop=True)


def cell_stats(
    df: pd.DataFrame, metric: str = "fid", collapse_fid: float | None = None
) -> pd.DataFrame:
    """Per (objective variant, teacher): mean, std, n over finished seeds; diverged, collapsed.

    Rows are keyed by ``objective_label`` (one per objective specification), never by the
    bare name; the index level keeps the name ``objective``.

    ``collapsed`` = diverged runs + finished runs with ``fid > collapse_fid`` (when given).
    ``valid`` is False when more than one seed diverged; mean and std are then NaN.
    """
    _check_metric(df, metric)
    cells = _cells(df).assign(_row=lambda d: row_key(d))
    rows = []
    for (objective, teacher), group in cells.groupby(["_row", "teacher"], dropna=True):
        finished = group[group["status"] == Status.FINISHED]
        mean, std, n = _stats(finished[metric])
        diverged = int((group["status"] == Status.DIVERGED).sum())
        high = 0
        if collapse_fid is not None:
            high = int((finished["fid"].to_numpy(dtype=float) > collapse_fid).sum())
        params = pd.to_numeric(group["teacher_params"], errors="coerce").median()
        valid = diverged <= 1
        if not valid:
            mean = std = math.nan
        rows.append(
            {
                "objective": objective,
                "teacher": teacher,
                "teacher_params": params,
                "mean": mean,
                "std": std,
                "n": n,
                "diverged": diverged,
                "collapsed": diverged + high,
                "judged": n + diverged,
                "missing_metric": int(len(finished) - n),
                "valid": valid,
            }
        )
    cols = [
        "objective",
        "teacher",
        "teacher_params",
        "mean",
        "std",
        "n",
        "diverged",
        "collapsed",
        "judged",
        "missing_metric",
        "valid",
    ]
    return pd.DataFrame(rows, columns=cols).set_index(["objective", "teacher"])


def _best_rows(values: pd.Series, metric: str) -> list:
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    if finite.empty:
        return []
    target = finite.max() if higher_is_better(metric) else finite.min()
    return list(finite.index[np.isclose(finite.to_numpy(dtype=float), target, rtol=0, atol=1e-12)])


def _direction(metric: str) -> str:
    if metric in HIGHER_IS_BETTER:
        return "highest"
    if metric in LOWER_IS_BETTER:
        return "lowest"
    return "lowest (direction unknown for this metric)"


def capacity_gap_table(
    df: pd.DataFrame,
    metric: str = "fid",
    collapse_fid: float | None = None,
    alpha: float = stats.ALPHA,
) -> Table:
    """Objectives (rows, ``none`` first) x teachers (columns, by parameter count).

    The marked cells of a teacher are its tie group at level ``alpha``.
    """
    cell = cell_stats(df, metric, collapse_fid)
    teachers = teacher_order(_cells(df))
    objectives = objective_order(cell.index.get_level_values("objective"))
    labels = dict(zip(teachers["teacher"], teachers["label"]))
    data = cell.copy()
    ties = stats.tie_groups(_cells(df), metric, higher_is_better(metric), alpha, key=ROW_KEY)
    data["best"] = ties["best"].reindex(data.index).fillna(False).astype(bool)
    data["tied"] = ties["tied"].reindex(data.index).fillna(False).astype(bool)
    data["p_vs_best"] = ties["p_holm"].reindex(data.index)
    display = pd.DataFrame(
        index=pd.Index(objectives, name="objective"),
        columns=list(teachers["label"]) + ["collapse"],
        dtype=object,
    )
    best: set[tuple[str, str]] = set()
    for teacher in teachers["teacher"]:
        column = labels[teacher]
        for objective in objectives:
            key = (objective, teacher)
            if key not in cell.index:
                display.loc[objective, column] = ""
                continue
            s = cell.loc[key]
            if not s["valid"]:
                display.loc[objective, column] = (
                    f"invalid ({int(s['diverged'])}/{int(s['judged'])} diverged)"
                )
                continue
            display.loc[objective, column] = format_cell(s["mean"], s["std"], int(s["n"]), metric)
            if data.loc[key, "tied"]:
                best.add((objective, column))
    for objective in objectives:
        rows = cell.xs(objective, level="objective")
        display.loc[objective, "collapse"] = (
            f"{int(rows['collapsed'].sum())}/{int(rows['judged'].sum())}"
        )
    seeds = int(cell["n"].max()) if len(cell) else 0
    notes = [
        f"{metric}: mean ± std (n) over seeds of finished runs (sample std, ddof=1). "
        f"Marked per teacher: the best mean ({_direction(metric)}) and every objective a "
        f"paired t test against it cannot separate (Holm over the objectives, α = {alpha:g}, "
        f"n ≤ {seeds} seed pairs); fewer than 2 pairs cannot separate.",
        "Diverged runs are left out of the means and counted in 'collapse' "
        "(collapsed/judged runs); a cell with more than one diverged seed is invalid "
        "(MLPerf's rule) and not averaged over its survivors.",
    ]
    if collapse_fid is not None:
        notes.append(
            f"Finished runs with FID > {collapse_fid:g} also count as collapsed "
            "(they stay in the means)."
        )
    cells = _cells(df)
    grids = sorted({str(g) for g in cells["grid_id"].dropna()})
    if len(grids) > 1:
        notes.append(f"Pools {len(grids)} grids ({', '.join(grids)}); filter with --grid.")
    other = cells[~cells["status"].isin([str(s) for s in DONE])]
    if len(other):
        counts = ", ".join(f"{n} {s}" for s, n in other["status"].value_counts().items())
        notes.append(f"Left out (not a result): {counts}.")
    missing = int(cell["missing_metric"].sum())
    if missing:
        notes.append(f"{missing} finished runs have no finite {metric}; they are left out.")
    odd = teachers[~teachers["consistent"]]
    if len(odd):
        notes.append(
            "Teachers with differing parameter counts across runs (median shown): "
            + ", ".join(odd["teacher"])
            + "."
        )
    return Table(
        title=f"Capacity gap: {metric} by objective and teacher size",
        data=data,
        display=display,
        notes=notes,
        best=best,
    )


def _signed_pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:+.1f}%"


def _modes(group: pd.DataFrame) -> str:
    if "teacher_mode" not in group:
        return ""
    return "/".join(sorted({str(m) for m in group["teacher_mode"].dropna()}))


PHASES = {
    "time_start_s": "start s",
    "time_teacher_s": "teacher s",
    "time_train_s": "train s",
    "time_sample_s": "sample s",
    "time_metrics_s": "metrics s",
    "time_log_s": "log s",
}
"""A cell's phases in the order they run (metric -> overhead table column)."""


def _seconds(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.1f}"


def overhead_table(df: pd.DataFrame, teacher: str | None = None) -> Table:
    """Training cost per objective over finished cells: iter/s, peak memory, vs outkd in %,
    and the mean seconds of each phase of a cell (``PHASES``).

    The relative columns are ``100 * (x / x_outkd - 1)``.  With ``teacher=None`` every
    teacher and seed is pooled, which is fair when every objective ran on the same cells.
    """
    cells = _cells(df)
    cells = cells[cells["status"] == Status.FINISHED]
    if teacher is not None:
        cells = cells[cells["teacher"] == teacher]
    elif "run_id" in cells:  # a teacher-independent run counts once, not once per teacher
        cells = cells.drop_duplicates("run_id")
    rows = []
    keys = row_key(cells)
    for objective in objective_order(keys):
        group = cells[keys == objective]
        row = {
            "objective": objective,
            "iter_per_s": _stats(group["iter_per_s"])[0],
            "peak_mem_mb": _stats(group["peak_mem_mb"])[0],
            "teacher_share": _stats(group["teacher_share"])[0],
            "teacher_mode": _modes(group),
            "n": len(group),
        }
        for metric in PHASES:
            row[metric] = _stats(group[metric])[0] if metric in group else math.nan
        rows.append(row)
    data = pd.DataFrame(
        rows,
        columns=[
            "objective",
            "iter_per_s",
            "peak_mem_mb",
            "teacher_share",
            "teacher_mode",
            "n",
            *PHASES,
        ],
    ).set_index("objective")
    notes = [
        "Means over finished cells; relative columns are 100·(x / x_outkd − 1); "
        "fastest / leanest distilling objective marked."
    ]
    if "outkd" in data.index:
        ref = data.loc["outkd"]
        data["iter_per_s_vs_outkd_pct"] = 100 * (data["iter_per_s"] / ref["iter_per_s"] - 1)
        data["peak_mem_vs_outkd_pct"] = 100 * (data["peak_mem_mb"] / ref["peak_mem_mb"] - 1)
    else:
        data["iter_per_s_vs_outkd_pct"] = math.nan
        data["peak_mem_vs_outkd_pct"] = math.nan
        notes.append("No finished outkd runs: relative columns are empty.")
    notes.append(
        f"Teacher: {teacher}."
        if teacher
        else "All teachers and seeds pooled; compare within one grid."
    )
    display = pd.DataFrame(index=data.index, dtype=object)
    display["iter/s"] = [format_value(x, "iter_per_s") for x in data["iter_per_s"]]
    display["vs outkd"] = [_signed_pct(x) for x in data["iter_per_s_vs_outkd_pct"]]
    display["peak mem (MB)"] = [format_value(x, "peak_mem_mb") for x in data["peak_mem_mb"]]
    display["mem vs outkd"] = [_signed_pct(x) for x in data["peak_mem_vs_outkd_pct"]]
    if data["teacher_share"].notna().any():
        display["teacher share"] = [format_value(x, "teacher_share") for x in data["teacher_share"]]
    if data["teacher_mode"].astype(bool).any():
        display["teacher"] = list(data["teacher_mode"])
        notes.append(
            "teacher: 'cached' cells read the teacher's predictions computed once per "
            "(teacher, seed); 'live' cells (feature KD) run the teacher at every step."
        )
    shown = [metric for metric in PHASES if data[metric].notna().any()]
    for metric in shown:
        display[PHASES[metric]] = [_seconds(x) for x in data[metric]]
    if shown:
        data["time_cell_s"] = data[shown].sum(axis=1, min_count=1)
        display["cell s"] = [_seconds(x) for x in data["time_cell_s"]]
        notes.append(
            "Phases, mean seconds per cell: start = process creation to the end of set-up "
            "(imports, store, data); teacher = loading it and its cached predictions; "
            "train = the training loop (with step logging); sample; metrics; log = the "
            "artifacts; cell = their sum (TAKD's assistant is built once and not counted)."
        )
    display["n"] = [str(int(n)) for n in data["n"]]
    kd = data.drop(index="none", errors="ignore")  # no distillation is trivially cheapest
    best = {(o, "iter/s") for o in _best_rows(kd["iter_per_s"], "iter_per_s")}
    best |= {(o, "peak mem (MB)") for o in _best_rows(kd["peak_mem_mb"], "peak_mem_mb")}
    title = "Training overhead per objective" + (f" (teacher {teacher})" if teacher else "")
    return Table(title=title, data=data, display=display, notes=notes, best=best)


def _repeat_cell(mean: float, std: float, n: int, metric: str) -> str:
    """A single evaluation prints as its value; repeated ones as mean ± std (n)."""
    return format_value(mean, metric) if n <= 1 else format_cell(mean, std, n, metric)


def teacher_table(df: pd.DataFrame) -> Table:
    """Teachers by size: parameters, FID and class accuracy of their own samples."""
    runs = df[(df["kind"] == Kind.TEACHER) & (df["status"] == Status.FINISHED)]
    order = teacher_order(runs)
    rows = []
    for _, t in order.iterrows():
        group = runs[runs["teacher"] == t["teacher"]]
        fid, fid_std, n = _stats(group["fid"])
        acc, acc_std, _ = _stats(group["class_acc"])
        rows.append(
            {
                "teacher": t["teacher"],
                "teacher_params": t["teacher_params"],
                "fid": fid,
                "fid_std": fid_std,
                "class_acc": acc,
                "class_acc_std": acc_std,
                "n": n,
            }
        )
    data = pd.DataFrame(
        rows,
        columns=["teacher", "teacher_params", "fid", "fid_std", "class_acc", "class_acc_std", "n"],
    ).set_index("teacher")
    display = pd.DataFrame(index=data.index, dtype=object)
    display["params"] = [format_params(x) for x in data["teacher_params"]]
    display["fid"] = [
        _repeat_cell(m, s, int(n), "fid")
        for m, s, n in zip(data["fid"], data["fid_std"], data["n"])
    ]
    display["class acc"] = [
        _repeat_cell(m, s, int(n), "class_acc")
        for m, s, n in zip(data["class_acc"], data["class_acc_std"], data["n"])
    ]
    notes = [
        "Teachers' own samples, finished evaluation runs; mean ± std (n) when evaluated "
        "more than once."
    ]
    return Table(title="Teachers", data=data, display=display, notes=notes)


def _grid_label(df: pd.DataFrame, fallback: str) -> str:
    ids = sorted({str(g) for g in df["grid_id"].dropna()})
    return "+".join(ids) if ids else fallback


PAIRING_PARAMS = ("dataset", "image_size", "batch_size")


def pairable(df_a: pd.DataFrame, df_b: pd.DataFrame) -> tuple[bool, str]:
    """Whether two grids' cells at one seed saw the same batches and noise, and why not."""
    for col in PAIRING_PARAMS:
        if col not in df_a or col not in df_b:
            return False, f"no {col} recorded"
        va = {str(v) for v in _cells(df_a)[col].dropna()}
        vb = {str(v) for v in _cells(df_b)[col].dropna()}
        if va != vb or len(va) != 1:
            return False, f"{col} differs ({', '.join(sorted(va))} vs {', '.join(sorted(vb))})"
    return True, ""


def format_interval(diff: float, low: float, high: float, metric: str, signed=True) -> str:
    """``-11.60 [-19.03, -4.21]``; the difference alone without an interval."""
    if not np.isfinite(diff):
        return "–"
    fmt = (lambda x: ("+" if x > 0 else "") + format_value(x, metric)) if signed else None
    fmt = fmt or (lambda x: format_value(x, metric))
    if not (np.isfinite(low) and np.isfinite(high)):
        return fmt(diff)
    return f"{fmt(diff)} [{fmt(low)}, {fmt(high)}]"


def compare(
    df_a: pd.DataFrame, df_b: pd.DataFrame, metric: str = "fid", alpha: float = stats.ALPHA
) -> Table:
    """``metric`` of two grids per (objective, teacher): delta = B − A with an interval.

    Paired over the seeds both grids ran when they share >= 2 seeds and the same data and
    batch settings (their batches and noise are then the same); Welch's unpaired interval
    otherwise.  The test column says which.  Verdicts are Holm-corrected over the rows.
    """
    a = cell_stats(df_a, metric)
    b = cell_stats(df_b, metric)
    label_a, label_b = _grid_label(df_a, "A"), _grid_label(df_b, "B")
    if label_a == label_b:
        label_a, label_b = f"A: {label_a}", f"B: {label_b}"
    data = (
        a[["mean", "std", "n"]]
        .add_prefix("a_")
        .join(b[["mean", "std", "n"]].add_prefix("b_"), how="outer")
    )
    for col in ("a_n", "b_n"):
        data[col] = data[col].fillna(0).astype(int)
    data["delta"] = data["b_mean"] - data["a_mean"]
    data["delta_pct"] = 100 * data["delta"] / data["a_mean"]
    params = pd.concat([a["teacher_params"], b["teacher_params"]]).groupby(level=[0, 1]).median()
    data["teacher_params"] = params.reindex(data.index)
    objectives = objective_order(data.index.get_level_values("objective"))
    data = data.reset_index()
    data["_o"] = data["objective"].map({o: i for i, o in enumerate(objectives)})
    data = data.sort_values(["_o", "teacher_params", "teacher"]).drop(columns="_o")
    data = data.set_index(["objective", "teacher"])

    can_pair, why_not = pairable(df_a, df_b)
    values_a = stats.seed_values(_cells(df_a), metric, key=ROW_KEY)
    values_b = stats.seed_values(_cells(df_b), metric, key=ROW_KEY)
    results = []
    for key in data.index:
        va = values_a.loc[key] if key in values_a.index else pd.Series(dtype=float)
        vb = values_b.loc[key] if key in values_b.index else pd.Series(dtype=float)
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        shared = va.index.intersection(vb.index)
        if can_pair and len(shared) >= 2:
            res = stats.paired_difference(vb[shared], va[shared], alpha)
            res["test"] = f"paired, n={res['n']}"
        else:
            res = stats.unpaired_difference(vb, va, alpha)
            res["test"] = f"Welch, n={len(va)}+{len(vb)}" if len(va) and len(vb) else "–"
        results.append(res)
    for col in ("low", "high", "p_t"):
        data[col] = [r[col] for r in results]
    data["test"] = [r["test"] for r in results]
    data["p_holm"] = stats.holm(data["p_t"].to_numpy(dtype=float))
    data["verdict"] = [
        stats.verdict(d, p, alpha, higher_is_better(metric))
        for d, p in zip(data["delta"], data["p_holm"])
    ]
    rows = []
    for (objective, teacher), r in data.iterrows():
        rows.append(
            {
                "objective": objective,
                "teacher": f"{teacher} ({format_params(r['teacher_params'])})",
                label_a: format_cell(r["a_mean"], r["a_std"], int(r["a_n"]), metric)
                if r["a_n"] or np.isfinite(r["a_mean"])
                else "",
                label_b: format_cell(r["b_mean"], r["b_std"], int(r["b_n"]), metric)
                if r["b_n"] or np.isfinite(r["b_mean"])
                else "",
                "Δ (B − A)": format_value(r["delta"], metric) if np.isfinite(r["delta"]) else "–",
                "Δ %": _signed_pct(r["delta_pct"]),
                f"{100 * (1 - alpha):g}% CI": format_interval(
                    r["delta"], r["low"], r["high"], metric
                )
                if np.isfinite(r["low"])
                else "–",
                "test": r["test"],
                "verdict": {"better": "B better", "worse": "A better"}.get(
                    r["verdict"], r["verdict"]
                ),
            }
        )
    ci = f"{100 * (1 - alpha):g}% CI"
    columns = ["objective", "teacher", label_a, label_b, "Δ (B − A)", "Δ %", ci, "test", "verdict"]
    display = pd.DataFrame(rows, columns=columns)
    display.index = [f"{o} / {t}" for o, t in zip(display["objective"], display["teacher"])]
    display = display.drop(columns=["objective", "teacher"])
    display.index.name = "objective / teacher"
    best = set()
    for key, (_, r) in zip(display.index, data.iterrows()):
        if r["verdict"] == "tie":
            best |= {(key, label_a), (key, label_b)}
        elif r["verdict"] in ("better", "worse"):
            better_b = r["verdict"] == "better"
            best.add((key, label_b if better_b else label_a))
    pairing = (
        "paired over the seeds both grids ran (same data and batch settings: same batches "
        "and noise)"
        if can_pair
        else f"unpaired (Welch): the grids cannot be paired, {why_not}"
    )
    notes = [
        f"{metric}: mean ± std (n) over seeds of finished runs; Δ = B − A of the means, "
        f"{pairing}; rows with fewer than 2 shared seeds fall back to Welch.",
        f"Marked: the better grid when the t test is significant after Holm over the rows "
        f"(α = {alpha:g}, {_direction(metric)} is better), both grids when they tie, "
        "neither without a test (fewer than 2 runs).",
    ]
    return Table(
        title=f"Compare {metric}: {label_a} vs {label_b}",
        data=data,
        display=display,
        notes=notes,
        best=best,
    )
