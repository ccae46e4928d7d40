"""The grid's own MLflow run: the parent under which the UI nests its cell and teacher runs.

``kdbench run`` opens one run per grid (tag ``kdbench.kind=grid``, the grid's id), or
resumes the one an earlier invocation of the same grid left; every cell and teacher run
gets ``mlflow.parentRunId`` = its id (MLflow's own nesting tag), passed to the workers
explicitly in the job.  When the grid ends, ``leaderboards.publish`` logs the leaderboard,
plots and headline numbers to it.  The leaderboards never read this run: they are rebuilt
from the cell runs alone.

Descriptions the MLflow UI shows (``mlflow.note.content``): the experiment and the grid
run carry the grid's description (what it runs and where the answer is); each cell run a
one-line description.  The experiment is marked as model training
(``mlflow.experimentKind=custom_model_development``, read by the MLflow 3 UI), unless
someone chose another kind.  MLflow 3.x still opens an experiment in the mode of the UI's
GenAI / Model training switch (GenAI by default), so the addresses ``kdbench ui`` prints
select model training (``?workflowType=machine_learning``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.schema import Kind, MlflowTag, Status, Tag

log = logging.getLogger("kdbench")

KIND = Kind.GRID
PARENT_TAG = MlflowTag.PARENT_RUN_ID
NOTE_TAG = MlflowTag.NOTE
EXPERIMENT_KIND_TAG = MlflowTag.EXPERIMENT_KIND
MODEL_TRAINING = "custom_model_development"  # MLflow 3's "machine learning" experiments
# The MLflow 3 UI opens every experiment in the mode of its GenAI / Model training switch
# (GenAI unless changed); this query parameter of its addresses selects model training.
UI_MODE = "workflowType=machine_learning"


def run_name(cfg: Any) -> str:
    return f"grid {cfg.grid.name}"


def describe_grid(cfg: Any, gid: str, cells: list[dict[str, Any]]) -> str:
    """Markdown: what the grid runs, and where its answer is."""
    names = lambda caps: ", ".join(c.name for c in caps)  # noqa: E731
    lines = [f"**kdbench grid `{cfg.grid.name}`** (grid id `{gid}`)", ""]
    if cfg.grid.description:
        lines += [cfg.grid.description.strip(), ""]
    lines += [
        f"{len(cells)} cells: {len(cfg.teachers)} teacher(s) ({names(cfg.teachers)}) x "
        f"{len(cfg.students)} student(s) ({names(cfg.students)}) x "
        f"{len(cfg.objectives)} objective(s) x {len(cfg.grid.seeds)} seed(s); "
        f"{cfg.dataset.name} at {cfg.dataset.image_size} px, {cfg.model.backbone} "
        f"({cfg.model.process or 'default process'}), {cfg.train.steps} KD steps.",
        "",
        f"The run **{run_name(cfg)}** holds the leaderboard (`leaderboard.html`, "
        "`leaderboard.md`), the plots and the resolved config; the cell and teacher runs are "
        "nested under it. Rebuild the tables from the cell runs with "
        f"`kdbench leaderboard --grid {gid}`.",
    ]
    return "\n".join(lines)


def describe_cell(job: Any) -> str:
    """One line for a cell run (``job``: a ``harness.jobs.CellJob``)."""
    return (
        f"{job.objective_label}: KD from teacher {job.teacher_name} into student "
        f"{job.student_name}, seed {job.seed} (grid {job.context.config['grid']['name']})"
    )


def mark_experiment(client: Any, experiment_id: str, description: str | None = None) -> None:
    """Model-training kind (unless another kind is set) and, if given, the description."""
    tags = client.get_experiment(experiment_id).tags
    if not tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    if description is not None and tags.get(NOTE_TAG) != description:
        client.set_experiment_tag(experiment_id, NOTE_TAG, description)


def find_grid_run(tracker: Any, gid: str) -> dict[str, Any] | None:
    runs = tracker.find_runs({Tag.KIND: KIND, Tag.GRID_ID: gid})
    return runs[0] if runs else None


def open_grid_run(tracker: Any, cfg: Any, gid: str, cells: list[dict[str, Any]]) -> str:
    """Resume this grid's run or start it; adopt its earlier runs; describe the experiment."""
    description = describe_grid(cfg, gid, cells)
    tracker.call(
        "describe experiment", mark_experiment, tracker.client, tracker.experiment_id, description
    )
    found = find_grid_run(tracker, gid)
    if found is not None:
        run_id = found["run_id"]
        tracker.resume_run(run_id)
        tracker.set_tags(run_id, {NOTE_TAG: description})
    else:
        run_id = tracker.start_run(
            run_name(cfg),
            tags={
                Tag.KIND: KIND,
                Tag.GRID_ID: gid,
                Tag.GRID_NAME: cfg.grid.name,
                NOTE_TAG: description,
            },
            params={"cells": len(cells), "seeds": list(cfg.grid.seeds)},
        )
    for kind in (Kind.CELL, Kind.TEACHER):  # this grid's runs made before its grid run
        for r in tracker.find_runs({Tag.KIND: kind, Tag.GRID_ID: gid}):
            if not r["tags"].get(PARENT_TAG):
                tracker.set_tags(r["run_id"], {PARENT_TAG: run_id})
    return run_id


def close_grid_run(tracker: Any, run_id: str, results: list[dict[str, Any]], status: str) -> None:
    """End the grid run with ``status``; failed jobs of this invocation are named in a tag."""
    failed = sum(1 for r in results if r.get("status") == Status.FAILED)
    error = f"{failed} job(s) failed in the last invocation" if failed else None
    tracker.finish(run_id, status, error=error)


@contextlib.contextmanager
def closing(tracker: Any, run_id: str) -> Iterator[None]:
    """End the grid run as killed (Ctrl-C) or failed when the block raises, then re-raise."""
    try:
        yield
    except BaseException as exc:
        status = Status.KILLED if isinstance(exc, KeyboardInterrupt) else Status.FAILED
        with contextlib.suppress(Exception):  # the original error matters more
            tracker.finish(run_id, status, error=None if status == Status.KILLED else repr(exc))
        raise


def publish(
    tracker: Any,
    run_id: str,
    cfg: Any,
    gid: str,
    cells: list[dict[str, Any]],
    config: dict[str, Any],
    plot_dir: Path,
) -> dict[str, str]:
    """``leaderboards.publish.publish_grid``; a failure is a warning and a tag, not a crash."""
    from leaderboards.publish import publish_grid

    try:
        return publish_grid(
            tracker,
            run_id,
            grid_id=gid,
            config=config,
            description=describe_grid(cfg, gid, cells),
            plot_dir=plot_dir,
        )
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        log.warning("the leaderboard could not be logged to the grid run: %s", reason)
        with contextlib.suppress(Exception):
            tracker.set_tags(run_id, {Tag.PUBLISH_ERROR: reason})
        return {}


def ui_addresses(client: Any, base_url: str) -> list[str]:
    """Where the MLflow UI at ``base_url`` shows each grid: its runs table and its grid run.

    Newest grid first.  The addresses select the UI's model-training mode (``UI_MODE``):
    without it MLflow 3.x opens on the GenAI overview, whatever the experiment's kind.
    Experiments holding grid runs are marked as model training on the way (stores
    written before kdbench set the kind).
    """
    from mlflow.entities import ViewType

    base = base_url.rstrip("/")
    experiments = {e.experiment_id: e for e in client.search_experiments(ViewType.ACTIVE_ONLY)}
    if not experiments:
        return []
    grids, token = [], None
    while True:
        page = client.search_runs(
            list(experiments),
            filter_string=f"tags.`{Tag.KIND}` = '{KIND}'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        grids.extend(page)
        token = page.token
        if not token:
            break
    lines, marked = [], set()
    for run in grids:
        eid = run.info.experiment_id
        if eid not in marked:
            mark_experiment(client, eid)
            marked.add(eid)
        tags = run.data.tags
        lines += [
            f"{run.info.run_name} ({tags.get(Tag.GRID_ID)}, "
            f"{tags.get(Tag.STATUS, run.info.status.lower())}) in experiment "
            f"{experiments[eid].name}:",
            f"  runs table: {base}/#/experiments/{eid}/runs?{UI_MODE}",
            f"  grid run:   {base}/#/experiments/{eid}/runs/{run.info.run_id}?{UI_MODE}",
        ]
    return lines
