"""Figures for a grid (matplotlib, Agg backend), sized for a paper column.

- ``plot_capacity_gap``: metric vs teacher parameters (log x), one line per objective with
  std error bars over seeds: Figure 1 of LIFT and PLACE (Han et al., CVPR 2026).  A teacher
  where every run of an objective diverged gets an ``x`` on the top edge.
- ``plot_curves``: the w, coarse and fine histories of lift/place runs (mean over seeds per
  objective and teacher); w rising from 0 to 1 is the paper's coarse-to-fine curriculum.
- ``plot_samples``: the ``samples.png`` artifacts, objectives as rows, teachers as columns.
- ``plot_forest``: each objective's seed-paired difference to the baseline with its
  interval, per teacher and pooled (filled = significant after Holm, hollow = tie).
- ``plot_slopes``: the capacity-gap slope per objective with its interval, and its
  difference to OutKD's slope (``leaderboards.stats.slopes``).

Each writes a PNG and returns its path, or returns None and writes nothing when the runs
hold no such data (no cell runs with a teacher size, no lift/place histories, no samples).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from harness.schema import Kind, Status  # noqa: E402
from harness.tracking import env_override  # noqa: E402
from leaderboards import stats as st  # noqa: E402
from leaderboards.tables import (  # noqa: E402
    ROW_KEY,
    base_names,
    cell_stats,
    format_params,
    higher_is_better,
    objective_order,
    row_key,
    teacher_order,
)

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "0.9",
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "savefig.dpi": 220,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "legend.frameon": False,
}
MARKERS = "osD^vP*Xh<>"
METRIC_LABELS = {
    "fid": "FID",
    "kid_mean": "KID",
    "isc_mean": "Inception score",
    "precision": "Precision",
    "recall": "Recall",
    "class_acc": "Class accuracy",
    "iter_per_s": "iter/s",
    "peak_mem_mb": "Peak memory (MB)",
}


def _client(client_or_uri):
    from harness.tracking import open_client, resolve_uri

    if isinstance(client_or_uri, str) or client_or_uri is None:
        return open_client(resolve_uri(client_or_uri))
    return client_or_uri


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _colors(labels: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def plot_capacity_gap(
    df: pd.DataFrame, path, metric: str = "fid", collapse_fid: float | None = None
) -> Path | None:
    """Metric vs teacher size, one line per objective, error bars = std over seeds."""
    stats = cell_stats(df, metric, collapse_fid).reset_index()
    params = stats["teacher_params"].to_numpy(dtype=float, na_value=np.nan)  # pd.NA: unknown
    stats = stats[np.isfinite(params)]
    objectives = objective_order(stats["objective"])
    colors = _colors(objectives)
    arrow = "↑" if higher_is_better(metric) else "↓"
    if stats.empty:
        return None
    any_lost = False
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 2.9))
        for i, objective in enumerate(objectives):
            rows = stats[stats["objective"] == objective].sort_values("teacher_params")
            # Dodge objectives sideways (a few % in log space, at most 0.12 decades in all)
            # so error bars do not overlap.
            step = min(0.012, 0.12 / max(len(objectives) - 1, 1))
            dodge = 10 ** (step * (i - (len(objectives) - 1) / 2))
            x = rows["teacher_params"].to_numpy(dtype=float) * dodge
            ok = (rows["n"] > 0).to_numpy()
            style = dict(color=colors[objective], marker=MARKERS[i % len(MARKERS)])
            if objective == "none":
                style.update(color="0.35", linestyle="--")
            ok = ok & rows["valid"].to_numpy(dtype=bool)
            ax.errorbar(
                x[ok],
                rows["mean"].to_numpy()[ok],
                yerr=rows["std"].fillna(0.0)[ok],
                capsize=2.5,
                elinewidth=0.9,
                capthick=0.9,
                label=objective,
                **style,
            )
            lost = ((rows["n"] == 0) & (rows["diverged"] > 0)).to_numpy()
            if lost.any():
                any_lost = True
                ax.plot(
                    x[lost],
                    [1.0] * int(lost.sum()),
                    "x",
                    color=style["color"],
                    markersize=6,
                    mew=1.5,
                    clip_on=False,
                    transform=ax.get_xaxis_transform(),
                )
        teachers = teacher_order(df[df["kind"] == Kind.CELL]).dropna(subset=["teacher_params"])
        ax.set_xscale("log")
        ticks = teachers["teacher_params"].to_numpy(dtype=float)
        if len(ticks):
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_params(x)))
            span = np.log10(ticks.max() / ticks.min()) if ticks.min() > 0 else 0
            pad = 10 ** max(0.08 * span, 0.08)
            ax.set_xlim(ticks.min() / pad, ticks.max() * pad)
        students = (
            pd.to_numeric(df.loc[df["kind"] == Kind.CELL, "student_params"], errors="coerce")
            .dropna()
            .unique()
        )
        if len(students) == 1:
            ax.set_title(
                f"student: {format_params(students[0])} parameters", loc="left", color="0.35"
            )
        ax.set_xlabel("Teacher parameters (log scale)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} {arrow}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, handlelength=2.2)
        if any_lost:
            ax.annotate(
                "× every seed diverged",
                xy=(1.01, 0.0),
                xycoords="axes fraction",
                fontsize=6.5,
                color="0.35",
                va="bottom",
            )
        return _save(fig, path)


def _term_keys(columns) -> dict[tuple[str, str], str]:
    """Metric columns ``train/<lift|place>/<w|coarse|fine>`` -> {(component, term): key}."""
    keys = {}
    for col in columns:
        m = re.fullmatch(r"train/(lift|place)/(w|coarse|fine)", str(col))
        if m:
            keys[(m.group(1), m.group(2))] = col
    return keys


def _history(client, run_id: str, key: str) -> pd.Series:
    points = client.get_metric_history(run_id, key)
    s = pd.Series({p.step: p.value for p in points}, dtype=float)
    return s.sort_index()


def plot_curves(client_or_uri, df: pd.DataFrame, path) -> Path | None:
    """w, coarse and fine vs step for lift/place runs (mean over seeds)."""
    keys = _term_keys(df.columns)
    cells = df[df["kind"] == Kind.CELL]
    if not keys or cells.empty:
        return None
    cells = cells.assign(_row=row_key(cells))
    client = _client(client_or_uri)
    teachers = teacher_order(cells)
    shade = {
        t: plt.get_cmap("viridis")(x)
        for t, x in zip(teachers["teacher"], np.linspace(0.1, 0.85, max(len(teachers), 1)))
    }
    tlabel = dict(zip(teachers["teacher"], teachers["label"]))
    curves: dict[tuple, dict[str, list[pd.Series]]] = {}
    for _, run in cells.iterrows():
        for (component, term), key in keys.items():
            if pd.isna(run.get(key)):
                continue
            group = (str(run["_row"]), component, run["teacher"])
            curves.setdefault(group, {}).setdefault(term, []).append(
                _history(client, run["run_id"], key)
            )
    if not curves:
        return None
    styles = ["-", "--", ":", "-."]
    names = sorted({(o, c) for o, c, _ in curves})
    line = {name: styles[i % len(styles)] for i, name in enumerate(names)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.3), sharex=True)
        rank = {t: i for i, t in enumerate(teachers["teacher"])}
        for (objective, component, teacher), terms in sorted(
            curves.items(), key=lambda kv: (kv[0][0], kv[0][1], rank.get(kv[0][2], -1))
        ):
            parts = base_names(objective)
            name = (
                objective if not {"lift", "place"} <= set(parts) else (f"{objective} [{component}]")
            )
            for ax, term in zip(axes, ("w", "coarse", "fine")):
                if term not in terms:
                    continue
                mean = pd.concat(terms[term], axis=1).mean(axis=1)
                ax.plot(
                    mean.index,
                    mean.to_numpy(),
                    line[(objective, component)],
                    color=shade.get(teacher, "0.3"),
                    linewidth=1.1,
                    label=f"{name}, {tlabel.get(teacher, teacher)}",
                )
        titles = {"w": "adaptive weight w", "coarse": "coarse loss", "fine": "fine loss"}
        for ax, term in zip(axes, ("w", "coarse", "fine")):
            ax.set_title(titles[term])
            ax.set_xlabel("step")
            drawn = ax.get_lines()
            if term != "w" and drawn and all((ln.get_ydata() > 0).all() for ln in drawn):
                ax.set_yscale("log")
        axes[0].set_ylim(-0.02, 1.02)
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
        fig.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels))
        )
        fig.tight_layout()
        return _save(fig, path)


def plot_samples(
    client_or_uri, df: pd.DataFrame, path, teacher: str | None = None, seed: int | None = None
) -> Path | None:
    """Sample grids side by side: objectives as rows, teachers (by size) as columns.

    Per cell, the run with the lowest seed (or ``seed``) that finished is shown; a cell whose
    runs all diverged shows "diverged".
    """
    from PIL import Image

    cells = df[df["kind"] == Kind.CELL]
    if teacher is not None:
        cells = cells[cells["teacher"] == teacher]
    if seed is not None:
        cells = cells[cells["seed"] == seed]
    if cells.empty:
        return None
    client = _client(client_or_uri)
    teachers = teacher_order(cells)
    cells = cells.assign(_row=row_key(cells))
    objectives = objective_order(cells["_row"])
    images: dict[tuple[str, str], object] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        env_override(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
    ):
        for objective in objectives:
            for t in teachers["teacher"]:
                runs = cells[(cells["_row"] == objective) & (cells["teacher"] == t)]
                done = runs[runs["status"] == Status.FINISHED].sort_values("seed")
                for _, run in done.iterrows():
                    names = {a.path for a in client.list_artifacts(run["run_id"])}
                    if "samples.png" in names:
                        local = client.download_artifacts(
                            run["run_id"], "samples.png", f"{tmp}/{run['run_id']}"
                        )
                        with Image.open(local) as im:
                            images[(objective, t)] = np.asarray(im.convert("RGB"))
                        break
                else:
                    if (runs["status"] == Status.DIVERGED).any():
                        images[(objective, t)] = "diverged"
    if not any(not isinstance(v, str) for v in images.values()):
        return None
    rows, cols = len(objectives), len(teachers)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(1.45 * cols + 0.6, 1.45 * rows + 0.2), squeeze=False
        )
        for i, objective in enumerate(objectives):
            for j, (t, label) in enumerate(zip(teachers["teacher"], teachers["label"])):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                item = images.get((objective, t))
                if isinstance(item, np.ndarray):
                    ax.imshow(item, interpolation="nearest")
                elif item == "diverged":
                    ax.text(
                        0.5,
                        0.5,
                        "diverged",
                        ha="center",
                        va="center",
                        color="firebrick",
                        transform=ax.transAxes,
                    )
                ax.grid(False)
                if i == 0:
                    ax.set_title(label)
                if j == 0:
                    ax.set_ylabel(objective, rotation=0, ha="right", va="center")
        fig.subplots_adjust(wspace=0.05, hspace=0.08)
        return _save(fig, path)


def _teacher_shades(teachers: pd.DataFrame) -> dict:
    return {
        t: plt.get_cmap("viridis")(x)
        for t, x in zip(teachers["teacher"], np.linspace(0.1, 0.8, max(len(teachers), 1)))
    }


def _keyed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cell runs with their leaderboard row key (the objective's full specification):
    variants of one objective are plotted apart, as the tables show them."""
    cells = df[df["kind"] == Kind.CELL]
    return cells.assign(**{ROW_KEY: row_key(cells)})


def plot_forest(
    df: pd.DataFrame, path, metric: str, baseline: str, alpha: float = st.ALPHA
) -> Path | None:
    """Difference to ``baseline`` with its interval, per objective: one line per teacher
    (smallest on top) and the pooled estimate (black diamond)."""
    cells = _keyed_cells(df)
    hib = higher_is_better(metric)
    diffs = st.baseline_differences(cells, metric, baseline, hib, alpha, key=ROW_KEY)
    diffs = diffs[np.isfinite(diffs["diff"].to_numpy(dtype=float))]
    if diffs.empty:
        return None
    pooled = st.pooled(cells, metric, baseline, hib, alpha, key=ROW_KEY)
    teachers = teacher_order(cells)
    shade = _teacher_shades(teachers)
    labels = dict(zip(teachers["teacher"], teachers["label"]))
    objectives = [o for o in objective_order(diffs.index.get_level_values(0)) if o != baseline]
    lines = []  # (y, objective, teacher or None, row)
    y = 0.0
    ticks, names = [], []
    for objective in objectives:
        start = y
        for teacher in teachers["teacher"]:
            if (objective, teacher) in diffs.index:
                lines.append((y, teacher, diffs.loc[(objective, teacher)]))
                y += 1
        if objective in pooled.index and np.isfinite(pooled.loc[objective, "diff"]):
            lines.append((y, None, pooled.loc[objective]))
            y += 1
        ticks.append((start + y - 1) / 2)
        names.append(objective)
        y += 0.8
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 0.22 * y + 0.9))
        ax.axvline(0, color="0.3", linewidth=0.8)
        for yy, teacher, r in lines:
            color = "black" if teacher is None else shade[teacher]
            marker = "D" if teacher is None else "o"
            significant = r["verdict"] in ("better", "worse")
            lo, hi = r["low"], r["high"]
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [yy, yy], color=color, linewidth=1.2, solid_capstyle="butt")
            ax.plot(
                r["diff"],
                yy,
                marker,
                color=color,
                markerfacecolor=color if significant else "white",
                markeredgewidth=1.1,
            )
        handles = [
            plt.Line2D([], [], color=shade[t], marker="o", linestyle="-", label=labels[t])
            for t in teachers["teacher"]
        ]
        handles.append(plt.Line2D([], [], color="black", marker="D", label="pooled"))
        handles.append(
            plt.Line2D(
                [], [], color="0.4", marker="o", markerfacecolor="white", linestyle="", label="tie"
            )
        )
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_yticks(ticks, names)
        ax.tick_params(axis="y", length=0)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        arrow = "→ better" if hib else "← better"
        ax.set_xlabel(
            f"{METRIC_LABELS.get(metric, metric)} − {baseline} ({100 * (1 - alpha):g}% CI; {arrow})"
        )
        return _save(fig, path)


def plot_slopes(df: pd.DataFrame, path, metric: str, alpha: float = st.ALPHA) -> Path | None:
    """Slope per decade of teacher parameters with its interval (left) and its difference
    to OutKD's slope (right, when OutKD ran)."""
    cells = _keyed_cells(df)
    hib = higher_is_better(metric)
    slopes = st.slopes(cells, metric, hib, "outkd", alpha, key=ROW_KEY)
    slopes = slopes[np.isfinite(slopes["slope"].to_numpy(dtype=float))]
    if slopes.empty:
        return None
    objectives = objective_order(slopes.index)
    slopes = slopes.reindex(objectives)
    has_ref = slopes["diff_vs_ref"].notna().any()
    colors = _colors(objectives)
    panels = [("slope", "low", "high", "slope per 10x teacher")]
    if has_ref:
        panels.append(("diff_vs_ref", "diff_low", "diff_high", "slope − outkd's slope"))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(2.6 * len(panels) + 1.0, 0.28 * len(objectives) + 1.0),
            sharey=True,
            squeeze=False,
        )
        ys = np.arange(len(objectives))
        for ax, (col, lo, hi, title) in zip(axes[0], panels):
            ax.axvline(0, color="0.3", linewidth=0.8)
            for yy, objective in zip(ys, objectives):
                r = slopes.loc[objective]
                if not np.isfinite(r[col]):
                    continue
                color = "0.35" if objective == "none" else colors[objective]
                if np.isfinite(r[lo]) and np.isfinite(r[hi]):
                    ax.plot([r[lo], r[hi]], [yy, yy], color=color, linewidth=1.3)
                ax.plot(r[col], yy, "o", color=color)
            ax.set_title(title)
            ax.grid(axis="y", visible=False)
        axes[0][0].set_yticks(ys, objectives)
        axes[0][0].invert_yaxis()
        arrow = "↑" if hib else "↓"
        fig.supxlabel(
            f"{METRIC_LABELS.get(metric, metric)} {arrow} change per 10x teacher parameters "
            f"({100 * (1 - alpha):g}% CI over seeds)",
            fontsize=7,
        )
        fig.tight_layout()
        return _save(fig, path)
