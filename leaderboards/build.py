"""One call for the command line: load runs, build every table, render, write the plots."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from harness.errors import KDBenchError, TrackingError
from harness.schema import Kind, Status
from harness.tracking import mask_uri, resolve_uri
from leaderboards import stats
from leaderboards.load import load_runs, run_metadata
from leaderboards.plots import (
    plot_capacity_gap,
    plot_curves,
    plot_forest,
    plot_samples,
    plot_slopes,
)
from leaderboards.render import render
from leaderboards.tables import capacity_gap_table, compare, overhead_table, teacher_table
from leaderboards.tuning import tuning_table
from leaderboards.verdicts import (
    baseline_table,
    check_baseline,
    noise_table,
    pooled_table,
    rank_table,
    slope_table,
)

DEFAULT_BASELINE = "none"
SLOPE_REFERENCE = "outkd"


def _select(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Runs of grid ``name``, else of experiment ``name``."""
    by_grid = df[df["grid_id"] == name]
    if len(by_grid):
        return by_grid
    by_experiment = df[df["experiment"] == name]
    if len(by_experiment):
        return by_experiment
    grids = ", ".join(sorted({str(g) for g in df["grid_id"].dropna()})) or "none"
    raise TrackingError(f"no runs for grid or experiment {name!r}; grid ids there: {grids}")


def latest_grid(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """When the runs hold several grids: the most recent one (and its teachers), and a note.

    A store often holds several grids (a tuning grid, a re-run with other settings); pooling
    them would mix settings, so the default view is the grid whose latest cell started last.
    """
    cells = df[(df["kind"] == Kind.CELL) & df["grid_id"].notna()]
    if cells["grid_id"].nunique() <= 1:
        return df, None
    last = cells.groupby("grid_id")["start_time"].max().sort_values()
    chosen = last.index[-1]
    names = cells.drop_duplicates("grid_id").set_index("grid_id")["grid_name"]
    keep = df["grid_id"] == chosen
    mine = cells[cells["grid_id"] == chosen]
    # Teachers are evaluated once per experiment, under the grid that built them first:
    # take the grid's teachers, from its own experiment where they were evaluated there.
    teachers = df[(df["kind"] == Kind.TEACHER) & df["teacher_id"].isin(set(mine["teacher_id"]))]
    home = teachers["experiment_id"].isin(set(mine["experiment_id"]))
    local = set(teachers.loc[home, "teacher_id"])
    picked = teachers[home | ~teachers["teacher_id"].isin(local)]
    keep |= df.index.isin(picked.index)
    others = ", ".join(f"{g} ({names.get(g)})" for g in reversed(last.index[:-1]))
    note = (
        f"showing the most recent grid, {chosen} ({names.get(chosen)}); the store also holds "
        f"{others}: pick one with --grid ID (repeat --grid to put grids side by side; rows "
        "stay keyed by each objective's options)"
    )
    return df[keep], note


def report(
    uri: str | None,
    experiments: list[str] | None = None,
    grid_ids: list[str] | None = None,
    fmt: str = "text",
    plot_dir=None,
    metric: str = "fid",
    compare_ids: tuple[str, str] | None = None,
    collapse_fid: float | None = None,
    baseline: str | None = None,
    alpha: float = stats.ALPHA,
) -> str:
    """The whole leaderboard as one document; with ``plot_dir``, also the figures.

    ``baseline`` (default ``none`` when it ran) is what the paired differences and pooled
    verdicts compare against; ``alpha`` the level of every test and interval.
    ``compare_ids=(A, B)`` adds a table comparing grid (or experiment) A with B.  Plots
    without data (e.g. no lift/place runs, no sample artifacts) are skipped, and the
    metadata says so.  The HTML page embeds every figure written, so without ``plot_dir``
    they are drawn in a temporary folder for it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        embedded_only = fmt == "html" and plot_dir is None
        tables, metadata, plots = collect(
            uri,
            experiments,
            grid_ids,
            Path(tmp) if embedded_only else plot_dir,
            metric,
            compare_ids,
            collapse_fid,
            baseline,
            alpha,
        )
        if embedded_only:
            metadata["plots"] = ", ".join(p.name for p in plots) or "none"
        return render(tables, fmt, metadata, plots=plots)


def collect(
    uri: str | None,
    experiments: list[str] | None = None,
    grid_ids: list[str] | None = None,
    plot_dir=None,
    metric: str = "fid",
    compare_ids: tuple[str, str] | None = None,
    collapse_fid: float | None = None,
    baseline: str | None = None,
    alpha: float = stats.ALPHA,
) -> tuple[list, dict, list[Path]]:
    """``(tables, metadata, plot paths)`` of a leaderboard, ready for ``render`` (see ``report``)."""
    check_alpha(alpha)
    uri = resolve_uri(uri)
    ids = list(grid_ids or [])
    if compare_ids and ids:
        ids += [c for c in compare_ids if c not in ids]
    df = load_runs(uri, experiments, ids or None)
    if df.empty:
        scope = []
        if experiments:
            scope.append(f"experiments {', '.join(experiments)}")
        if grid_ids:
            scope.append(f"grids {', '.join(grid_ids)}")
        raise TrackingError(
            f"no kdbench runs in {mask_uri(uri)}" + (f" for {'; '.join(scope)}" if scope else "")
        )
    main = df
    if compare_ids and grid_ids:
        main = df[df["grid_id"].isin(grid_ids)]
    view_note = None
    if not grid_ids and not compare_ids:
        main, view_note = latest_grid(df)
    _require_results(main, uri, experiments, grid_ids)
    cells = main[main["kind"] == Kind.CELL] if "kind" in main else main
    if baseline is not None:
        check_baseline(main, baseline)
    elif (cells[stats.KEY] == DEFAULT_BASELINE).any():
        baseline = DEFAULT_BASELINE
    tables = [capacity_gap_table(main, metric, collapse_fid, alpha)]
    if baseline is not None:
        tables += [baseline_table(main, metric, baseline, alpha)]
        tables += [pooled_table(main, metric, baseline, alpha)]
    tables += [slope_table(main, metric, SLOPE_REFERENCE, alpha), rank_table(main, metric, alpha)]
    if metric != "class_acc" and "class_acc" in cells and cells["class_acc"].notna().any():
        # Class-conditional grids: does the student draw the digit it was asked for?
        tables.append(capacity_gap_table(main, "class_acc", alpha=alpha))
    noise = noise_table(main, metric)
    if noise is not None:
        tables.append(noise)
    tuned = tuning_table(main)
    tables += [overhead_table(main), teacher_table(main)] + ([tuned] if tuned else [])
    if compare_ids:
        a, b = compare_ids
        tables.append(compare(_select(df, a), _select(df, b), metric, alpha))
    metadata = run_metadata(main)
    if view_note:
        metadata["other grids"] = view_note
    if baseline is None:
        metadata["baseline"] = (
            f"none: no {DEFAULT_BASELINE!r} runs; pass --baseline NAME for paired differences"
        )
    plots: list[Path] = []
    if plot_dir is not None:
        folder = Path(plot_dir)
        written = [
            plot_capacity_gap(main, folder / f"capacity_gap_{metric}.png", metric, collapse_fid),
            plot_curves(uri, main, folder / "curves.png"),
            plot_samples(uri, main, folder / "samples.png"),
            plot_forest(main, folder / f"forest_{metric}.png", metric, baseline, alpha)
            if baseline is not None
            else None,
            plot_slopes(main, folder / f"slopes_{metric}.png", metric, alpha),
        ]
        reasons = (
            "capacity gap (no cell runs with a teacher size)",
            "curves (no lift/place term histories)",
            "samples (no samples.png artifacts)",
            "forest (no seed-paired differences to a baseline)",
            "slopes (fewer than two teacher sizes)",
        )
        skipped = [why for why, p in zip(reasons, written) if p is None]
        plots = [Path(p) for p in written if p is not None]
        metadata["plots"] = ", ".join(str(p) for p in plots) or "none"
        if skipped:
            metadata["plots skipped"] = "; ".join(skipped)
    return tables, metadata, plots


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise KDBenchError(f"alpha must be between 0 and 1 (exclusive), got {alpha:g}")


def _require_results(df: pd.DataFrame, uri: str, experiments, grid_ids) -> None:
    """A selection whose cells all failed (or never ran) has nothing to rank: say so."""
    cells = df[df["kind"] == Kind.CELL] if "kind" in df else df.iloc[0:0]
    if cells["status"].isin([Status.FINISHED, Status.DIVERGED]).any():
        return
    scope = ", ".join(list(grid_ids or []) + list(experiments or [])) or mask_uri(uri)
    counts = ", ".join(f"{n} {s}" for s, n in cells["status"].value_counts().items())
    raise TrackingError(
        f"no finished cell in {scope} ({counts or 'no cell runs'}): nothing to rank "
        "yet; see each run's kdbench.error tag, fix the cause and re-run the grid"
    )


def compare_report(
    uri: str | None,
    a: str,
    b: str,
    fmt: str = "text",
    metric: str = "fid",
    experiments: list[str] | None = None,
    alpha: float = stats.ALPHA,
) -> str:
    """Grid (or experiment) ``a`` vs ``b`` on ``metric``: one table with deltas, rendered."""
    check_alpha(alpha)
    uri = resolve_uri(uri)
    df = load_runs(uri, experiments)
    df_a, df_b = _select(df, a), _select(df, b)
    metadata = run_metadata(pd.concat([df_a, df_b]))
    metadata["tracking store"] = mask_uri(uri)
    return render([compare(df_a, df_b, metric, alpha)], fmt, metadata)
