"""Run a whole grid: create the store, build teachers, run the cells, report.

Stages: (1) the MLflow store and experiment are created in this process before any
worker starts (SQLite migrations race otherwise); (2) one job per distinct teacher
builds it once (cached) and records its sample quality; (3) the cells not yet finished
in MLflow run through the configured executor, a fresh process each.  A cell whose worker
died is marked failed in MLflow so that nothing stays RUNNING; re-running the grid
resumes it from its checkpoint.  All of it happens under the grid's own MLflow run
(``harness.gridrun``), which gets the leaderboard when the grid ends (``leaderboards.publish``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import GridConfig, expand, experiment_name, grid_id
from harness.executor import GridInterrupted
from harness.jobs import CellJob, GridContext, TeacherJob
from harness.schema import DONE, Kind, Status, Tag

log = logging.getLogger("kdbench")


@dataclass
class GridRun:
    grid_id: str
    experiment: str
    tracking_uri: str
    cells: list[dict[str, Any]]  # harness.config.expand's cells
    skipped: list[str] = field(default_factory=list)
    teacher_results: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    grid_run_id: str | None = None
    leaderboard: dict[str, str] = field(default_factory=dict)  # format -> document
    plot_dir: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.get("status") == status)

    @property
    def claimed(self) -> list[dict[str, Any]]:
        """Cells left to another live run of the grid (``claimed_by`` names it)."""
        return [r for r in self.results if r.get("claimed_by")]


def _jobs(
    context: GridContext, cells: list[dict[str, Any]]
) -> tuple[list[TeacherJob], list[CellJob]]:
    """One job per distinct teacher (first-seen order), one per cell.

    A teacher-independent cell names every teacher it stands for; each still gets its job
    (its quality is recorded even in a grid of baselines alone).
    """
    teachers: dict[str, TeacherJob] = {}
    for cell in cells:
        for member in cell.get("shared_teachers") or [cell]:
            if member["teacher_id"] not in teachers:
                teachers[member["teacher_id"]] = TeacherJob(
                    context=context,
                    teacher=member["teacher"],
                    teacher_id=member["teacher_id"],
                    teacher_name=member["teacher_name"],
                )
    return list(teachers.values()), [CellJob.from_cell(context, cell) for cell in cells]


def run_grid(
    cfg: GridConfig,
    *,
    tracking_uri: str | None = None,
    rerun: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
    workdir: str | Path = ".",
    debug: bool = False,
) -> GridRun:
    """Run every cell of a validated grid and record each in MLflow; the core's entry point.

    Checks the data set, metrics and objectives (``preflight``), opens (creating) the
    store at ``tracking_uri`` (else the grid's ``tracking.uri``; ``tracking.resolve_uri``
    resolves it against ``workdir``), builds each distinct teacher once, then hands the
    cells to the grid's executor.  Finished cells are skipped and interrupted ones resume
    from their checkpoints unless ``rerun``.  ``cache_dir``: teachers, checkpoints and
    teacher predictions (default ``~/.cache/kdbench``).  Returns the ``GridRun`` with one
    result per cell; on Ctrl-C the runs left open are closed as killed and the
    executor's ``GridInterrupted`` propagates.
    """
    from harness import gridrun
    from harness.capacity import default_cache_dir
    from harness.cell import git_commit
    from harness.factories import dataset_from_config, get_executor
    from harness.metrics import check_metric_available
    from harness.tracking import Tracker, mask_uri, resolve_uri

    ds = dataset_from_config(cfg.dataset)
    check_metric_available(ds.feature_extractor, cfg.eval.inception_weights)
    preflight(cfg, ds.channels)
    executor = get_executor(cfg.executor.name, **executor_options(cfg, debug=debug))
    uri = resolve_uri(tracking_uri or cfg.tracking.uri, workdir)
    cache = Path(cache_dir or cfg.cache.dir or default_cache_dir()).expanduser()
    check_locations(cache, uri)
    tracker = Tracker(uri, experiment_name(cfg))
    gid = grid_id(cfg)
    cells = expand(cfg)
    run = GridRun(gid, experiment_name(cfg), uri, cells)
    run.grid_run_id = gridrun.open_grid_run(tracker, cfg, gid, cells)
    if not rerun:
        done = set()
        for r in tracker.find_runs({Tag.KIND: Kind.CELL}):
            if r["status"] in DONE:
                done.add(r["tags"].get(Tag.CELL_ID))
        run.skipped = [c["cell_id"] for c in cells if c["cell_id"] in done]
        cells = [c for c in cells if c["cell_id"] not in done]
    config = cfg.model_dump(mode="json")
    if config["tracking"]["uri"]:  # workers get ``uri``; the logged config.json no password
        config["tracking"]["uri"] = mask_uri(config["tracking"]["uri"])
    context = GridContext(
        config=config,
        tracking_uri=uri,
        experiment_id=tracker.experiment_id,
        grid_id=gid,
        cache_dir=str(cache),
        rerun=rerun,
        progress=progress,
        git_commit=git_commit(),
        parent_run_id=run.grid_run_id,  # explicit: workers never read MLflow's env state
    )
    teacher_jobs, cell_jobs = _jobs(context, cells)
    with gridrun.closing(tracker, run.grid_run_id):
        _run_stages(tracker, executor, run, teacher_jobs, cell_jobs)
        run.plot_dir = Path(workdir).resolve() / "kdbench-out" / "plots" / cfg.grid.name
        run.leaderboard = gridrun.publish(
            tracker, run.grid_run_id, cfg, gid, run.cells, config, run.plot_dir
        )
        gridrun.close_grid_run(
            tracker, run.grid_run_id, run.results + run.teacher_results, Status.FINISHED
        )
    return run


def _run_stages(
    tracker: Any,
    executor: Any,
    run: GridRun,
    teacher_jobs: list[TeacherJob],
    cell_jobs: list[CellJob],
) -> None:
    from harness.cell import run_job

    for stage, jobs in ((Kind.TEACHER, teacher_jobs), (Kind.CELL, cell_jobs)):
        if not jobs:
            continue
        try:
            results = executor.run(jobs, run_job)
        except GridInterrupted as exc:
            _close_orphaned_runs(tracker, stage, jobs, exc.results)
            raise
        _close_orphaned_runs(tracker, stage, jobs, results)
        if stage == Kind.TEACHER:
            run.teacher_results = results
            failed = [
                r for r in results if r.get("status") not in (Status.FINISHED, Status.SKIPPED)
            ]
            if failed:
                log.warning("%d teacher job(s) failed; their cells will fail too", len(failed))
        else:
            run.results = results


CELL_TIMEOUT_BASE_S = 3600.0
CELL_TIMEOUT_PER_STEP_S = 2.0


def default_cell_timeout_s(cfg: GridConfig) -> float:
    """A generous wall-time limit for one job: 1 h plus 2 s per training step it may run.

    The steps counted are every kind a job can train (teacher pretraining and fine-tuning,
    an assistant, the student), so the bound holds for the slowest job of the grid at
    0.5 step/s after an hour of set-up, evaluation and logging: far above any healthy cell
    (the embedded default's cells train at about 20 steps/s), yet a hung cell costs hours,
    not days.
    """
    steps = (
        cfg.pretrain.steps
        + cfg.pretrain.finetune_steps
        + (cfg.train.assistant_steps or cfg.train.steps)
        + cfg.train.steps
    )
    return CELL_TIMEOUT_BASE_S + CELL_TIMEOUT_PER_STEP_S * steps


def executor_options(cfg: GridConfig, debug: bool = False) -> dict[str, Any]:
    """The executor's options, with the default cell time limit for executors that take one.

    Under ``--debug`` there is no default limit (a person is watching, perhaps in a
    debugger); a ``timeout_s`` set in the grid's ``[executor.options]`` is always kept.
    """
    import inspect

    from harness.registry import lookup

    options = dict(cfg.executor.options)
    cls = lookup("executor", cfg.executor.name)
    takes_timeout = "timeout_s" in inspect.signature(cls.__init__).parameters
    if takes_timeout and "timeout_s" not in options and not debug:
        options["timeout_s"] = default_cell_timeout_s(cfg)
    return options


def preflight(cfg: GridConfig, channels: int) -> None:
    """Catch what a worker would trip on, before the store is touched or anything trains.

    - Model files and local diffusers folders named as ``pretrained`` (teachers, students,
      ``model.base_pretrained``) are loaded once (verified; pickles only as weights) and
      must hold the grid's backbone at its image size and channels.  Hub ids are left to
      the workers.
    - Objective options that depend on the data's shape (e.g. PLACE's ``group_size`` above
      H*W): every objective that needs no features is called once on random predictions
      shaped like two of the grid's images.  Only ``KDBenchError`` counts: other failures
      stay cell-level results.
    """
    import torch

    from harness.capacity import check_fits, load_model_file
    from harness.config import variants
    from harness.errors import ConfigError, KDBenchError
    from harness.factories import build_combination, get_backbone
    from harness.modelio import load_pretrained
    from harness.objective import Outputs

    sources = [
        (f"{section}[{i}].pretrained", cap.pretrained)
        for section in ("teachers", "students")
        for i, cap in enumerate(getattr(cfg, section))
        if cap.pretrained is not None
    ]
    if cfg.model.base_pretrained is not None:
        sources.append(("model.base_pretrained", cfg.model.base_pretrained))
    for key, source in sources:
        folder = Path(source).expanduser()
        local = source.startswith(("/", ".", "~")) or source.count("/") > 1
        try:
            if source.endswith(".safetensors"):
                load_model_file(cfg, channels, source)
            elif folder.is_dir():
                with _quiet_diffusers():  # its fallback notes would break the one-line error
                    model = load_pretrained(folder, backbone=cfg.model.backbone)
                check_fits(cfg, channels, model, source)
            elif local:  # not a hub id either
                raise ConfigError(f"pretrained model folder not found: {source}")
        except KDBenchError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    size = cfg.dataset.image_size
    g = torch.Generator().manual_seed(0)
    s = Outputs(torch.randn(2, channels, size, size, generator=g))
    t = Outputs(torch.randn(2, channels, size, size, generator=g))
    warn_unofficial_sums(cfg)
    offered = getattr(get_backbone(cfg.model.backbone), "tap_sets", ("blocks",))
    for variant in variants(cfg):
        i = variant.index
        combination = build_combination(variant.spec)
        try:
            wanted = combination.tap_set if combination.needs_features else "blocks"
        except KDBenchError as exc:
            raise ConfigError(f"objectives[{i}]: {exc}") from exc
        if wanted not in offered:
            raise ConfigError(
                f"objectives[{i}]: backbone {cfg.model.backbone!r} has no tap set {wanted!r}; "
                f"its tap sets: {', '.join(offered)}"
            )
        for part in combination.parts:
            if part.needs_features:
                continue
            try:
                part.check_inputs(s, t)
                with torch.no_grad():
                    part.setup(s, t)
                    part(student=s, teacher=t, step=0, total_steps=cfg.train.steps)
            except KDBenchError as exc:
                raise ConfigError(f"objectives[{i}]: {exc}") from exc


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Prove that a file can be written in ``folder`` (or, while it does not exist yet, in
    its nearest existing parent), leaving nothing behind.

    Trying it is the only honest test: permission bits say nothing for root, on read-only
    mounts, or under ``/proc``.
    """
    import errno
    import tempfile

    from harness.errors import ConfigError

    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{probe} is not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kdbench-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        if probe != folder.absolute() and probe.is_dir():
            reason = f"cannot create it in {probe}: {reason}"
        raise ConfigError(f"{what} {folder} is not writable ({reason}); {fix}") from None


def check_locations(cache: Path, uri: str) -> None:
    """The cache, a SQLite store's folder and its artifact folder must take files."""
    from harness.tracking import sqlite_path

    check_writable(cache, "cache folder", "choose another with --cache-dir or cache.dir")
    db = sqlite_path(uri)
    if db is not None:
        fix = "choose another with --tracking-uri or tracking.uri"
        check_writable(db.parent, "tracking store folder", fix)
        check_writable(db.parent / "mlartifacts", "artifact folder", fix)


# Sums of objectives that no paper or official code trains, and why a user may not want one.
UNOFFICIAL_SUMS = {
    frozenset({"lift", "place"}): (
        "the paper's LIFT+PLACE (Tables 6 and 8) is kdbench's `place` alone; "
        "no official code adds a LIFT term to it"
    ),
}


def warn_unofficial_sums(cfg: GridConfig) -> None:
    """A warning (not an error) for each ``objectives`` entry that sums objectives the
    paper never combined, e.g. ``lift+place``."""
    from harness.config import objective_spec, spec_label

    for i, entry in enumerate(cfg.objectives):
        spec = objective_spec(entry, cfg.objective)
        names = {part["name"] for part in spec}
        for combo, why in UNOFFICIAL_SUMS.items():
            if combo <= names:
                warnings.warn(
                    f"objectives[{i}] {spec_label(spec)!r} sums {' and '.join(sorted(combo))}: "
                    f"{why} (kept as asked)",
                    stacklevel=2,
                )


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(dlog.CRITICAL)
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _close_orphaned_runs(
    tracker: Any,
    stage: str,
    jobs: list[TeacherJob] | list[CellJob],
    results: list[dict[str, Any]],
) -> None:
    """A worker killed by a signal, OOM or Ctrl-C can leave its run RUNNING: close it.

    Dead workers' runs become ``failed``, interrupted ones ``killed``; their checkpoints
    stay, so a re-run resumes them.  A cell that another live run of the grid has claimed
    (its worker here died before claiming it) is that run's to close, not ours.
    """
    from harness.claims import ClaimHeld, claim

    id_tag = Tag.CELL_ID if stage == Kind.CELL else Tag.TEACHER_ID
    for job, result in zip(jobs, results):
        status = result.get("status")
        if status not in (Status.FAILED, Status.KILLED):
            continue
        key = job.cell_id if isinstance(job, CellJob) else job.teacher_id
        try:
            with claim(job.context.cache_dir, job.cell_id):
                for r in tracker.find_runs({id_tag: key, Tag.KIND: stage}):
                    if r["status"] == Status.RUNNING:
                        error = (
                            result.get("error", "worker died") if status == Status.FAILED else None
                        )
                        tracker.finish(r["run_id"], status, error=error)
        except ClaimHeld:
            continue
