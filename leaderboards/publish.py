"""A grid's answer inside MLflow: its leaderboard, figures and headline numbers on its run.

``publish_grid`` rebuilds the leaderboard from the grid's cell runs (the same tables as
``kdbench leaderboard --grid ID``) and logs to the grid's own run (``harness.gridrun``):

- ``leaderboard.html`` (self-contained, figures embedded), ``leaderboard.md``,
  ``leaderboard.csv``; the figures under ``plots/``; the resolved config as ``config.json``;
- metrics ``best_<metric>/<teacher>`` (the best objective's mean over finished seeds) and
  ``cells_<status>`` counts; tags ``kdbench.best_objective/<teacher>`` and
  ``kdbench.headline`` (one line per teacher), also appended to the run's description.

It runs when a grid ends and again whenever the grid is resumed, so the grid run always
shows the latest state.  Nothing here is read back by the leaderboards.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.schema import Kind, MlflowTag, Status, Tag
from leaderboards.build import collect
from leaderboards.load import load_runs
from leaderboards.render import render
from leaderboards.tables import cell_stats, higher_is_better, teacher_order

FORMATS = {"html": "leaderboard.html", "md": "leaderboard.md", "csv": "leaderboard.csv"}


def _key(text: str) -> str:
    """A label as an MLflow metric/tag key component (letters, digits, _-. / kept)."""
    return re.sub(r"[^\w\-. /]", "_", str(text)) or "_"


def headline(df: pd.DataFrame, metric: str = "fid") -> list[dict[str, Any]]:
    """Per teacher (smallest first): the objective with the best mean ``metric``."""
    cells = df[df["kind"] == "cell"]
    if cells.empty or metric not in cells or not cells[metric].notna().any():
        return []
    stats = cell_stats(df, metric)
    stats = stats.reset_index() if "objective" not in stats.columns else stats
    stats = stats[(stats["n"] > 0) & stats["mean"].notna()]
    out = []
    for teacher in teacher_order(cells)["teacher"]:
        rows = stats[stats["teacher"] == teacher]
        if rows.empty:
            continue
        best = rows.loc[
            rows["mean"].idxmax() if higher_is_better(metric) else rows["mean"].idxmin()
        ]
        out.append(
            {
                "teacher": str(teacher),
                "objective": str(best["objective"]),
                "mean": float(best["mean"]),
                "n": int(best["n"]),
            }
        )
    return out


def publish_grid(
    tracker: Any,
    run_id: str,
    *,
    grid_id: str,
    config: dict[str, Any],
    description: str = "",
    plot_dir: str | Path | None = None,
    metric: str = "fid",
) -> dict[str, str]:
    """Log the grid's leaderboard to its run; return the documents by format (+ ``text``)."""
    experiment = tracker.experiment
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(plot_dir) if plot_dir is not None else Path(tmp) / "plots"
        tables, metadata, plots = collect(tracker.uri, [experiment], [grid_id], folder, metric)
        metadata["plots"] = ", ".join(f"plots/{p.name}" for p in plots) or "none"  # as logged
        docs = {fmt: render(tables, fmt, metadata, plots=plots) for fmt in ("text", *FORMATS)}
        for fmt, name in FORMATS.items():
            path = Path(tmp) / name
            path.write_text(docs[fmt], encoding="utf-8")
            tracker.log_artifact(run_id, path)
        for plot in plots:
            tracker.log_artifact(run_id, plot, "plots")
    tracker.log_json(run_id, config, "config.json")
    df = load_runs(tracker.uri, [experiment], [grid_id])
    best = headline(df, metric)
    cells = df[df["kind"] == Kind.CELL]
    counts = cells["status"].value_counts()
    metrics = {
        f"cells_{status}": float(counts.get(status, 0))
        for status in (Status.FINISHED, Status.DIVERGED, Status.FAILED, Status.KILLED)
    }
    metrics.update({f"best_{metric}/{_key(b['teacher'])}": b["mean"] for b in best})
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if math.isfinite(v)})
    tracker.flush(run_id)
    lines = [
        f"teacher {b['teacher']}: {b['objective']} ({metric} {b['mean']:.4g}, {b['n']} seed(s))"
        for b in best
    ]
    tags = {f"{Tag.BEST_OBJECTIVE}/{_key(b['teacher'])}": b["objective"] for b in best}
    tags[Tag.HEADLINE] = "; ".join(lines) or "no finished cells"
    if description:
        summary = "\n".join(f"- {line}" for line in lines) or "- no finished cells yet"
        tags[MlflowTag.NOTE] = (
            f"{description}\n\n**Best objective per teacher ({metric})**\n\n{summary}"
        )
    tracker.set_tags(run_id, tags)
    return docs
