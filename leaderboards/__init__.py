"""Leaderboards: MLflow runs -> pandas tables -> text/Markdown/CSV/HTML, plus figures."""

from leaderboards.build import compare_report, report
from leaderboards.load import load_runs, run_metadata
from leaderboards.plots import (
    plot_capacity_gap,
    plot_curves,
    plot_forest,
    plot_samples,
    plot_slopes,
)
from leaderboards.render import read_csv_tables, render
from leaderboards.tables import (
    Table,
    capacity_gap_table,
    cell_stats,
    compare,
    overhead_table,
    teacher_table,
)
from leaderboards.verdicts import (
    baseline_table,
    noise_table,
    pooled_table,
    rank_table,
    slope_table,
)

__all__ = [
    "Table",
    "load_runs",
    "run_metadata",
    "capacity_gap_table",
    "cell_stats",
    "overhead_table",
    "teacher_table",
    "compare",
    "render",
    "read_csv_tables",
    "plot_capacity_gap",
    "plot_curves",
    "plot_samples",
    "plot_forest",
    "plot_slopes",
    "baseline_table",
    "pooled_table",
    "slope_table",
    "rank_table",
    "noise_table",
    "report",
    "compare_report",
]
