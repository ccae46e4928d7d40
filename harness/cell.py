"""One job of a grid, run inside an executor's worker process.

``run_job(job)`` is the picklable entry point.  ``job`` is a ``harness.jobs.TeacherJob``
(build a teacher once and record its sample quality) or a ``CellJob`` (one teacher x
student x objective x seed: KD training, evaluation, and one MLflow run), or either one's
``to_json()`` text.

A cell is resumable: it checkpoints every ``train.checkpoint_every`` steps under the
cache folder; a re-run finds the cell's unfinished MLflow run by cell id and continues
the same run from the checkpoint.  Divergence is a result (status ``diverged``); any
other exception marks the run ``failed`` and the grid goes on; Ctrl-C marks it
``killed`` and keeps the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness import __version__
from harness.config import Capacity, GridConfig, spec_label
from harness.executor import describe, one_line
from harness.jobs import CellJob, Job, TeacherJob, job_from_json
from harness.schema import DONE, TRAIN_PREFIX, UNFINISHED, Kind, Metric, MlflowTag, Status, Tag

log = logging.getLogger("kdbench")


def pick_device() -> torch.device:
    requested = os.environ.get("KDBENCH_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plugin_versions() -> dict[str, str]:
    from harness import registry

    out = {}
    for kind in registry.KINDS:
        for entry in registry.entries(kind).values():
            prov = entry.provenance
            out[prov.distribution or prov.plugin] = prov.version or "?"
    return out


def process_age() -> float | None:
    """Seconds since this process was created (Linux ``/proc``; None elsewhere).

    A cell's ``time_start_s``: its process's creation (fork or spawn) to the end of its
    set-up (imports, tracking store, data), before the teacher is loaded.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _setup_worker(job: Job) -> tuple[GridConfig, Any, torch.device]:
    from harness.threads import limit_threads
    from harness.tracking import Tracker

    cfg = GridConfig.model_validate(job.context.config)
    if cfg.train.threads:
        limit_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(False)
    tracker = Tracker.attach(job.context.tracking_uri, job.context.experiment_id)
    return cfg, tracker, pick_device()


def _common_tags(job: Job, kind: str, cfg: GridConfig, fid_features: str) -> dict[str, str]:
    tags = {
        Tag.KIND: kind,
        Tag.GRID_ID: job.context.grid_id,
        Tag.GRID_NAME: cfg.grid.name,
        Tag.GIT_COMMIT: job.context.git_commit or git_commit(),
        Tag.VERSION: __version__,
        Tag.PLUGINS: json.dumps(plugin_versions(), sort_keys=True),
        Tag.FID_FEATURES: fid_features,
        Tag.TORCH_FIDELITY: _torch_fidelity_version(),
        Tag.TORCH: torch.__version__,
        Tag.HOST: platform.node(),
    }
    if job.context.parent_run_id:  # the grid's run (harness.gridrun): MLflow nests under it
        tags[MlflowTag.PARENT_RUN_ID] = job.context.parent_run_id
    return tags


def _torch_fidelity_version() -> str:
    import torch_fidelity

    return str(torch_fidelity.__version__)


def _reference_tag(cfg: GridConfig, ctx: Any) -> dict[str, str]:
    """What the metrics compare against (leaderboard provenance): the training images."""
    return {
        Tag.FID_REFERENCE: f"{cfg.dataset.name} training images "
        f"({len(ctx.images)} at {cfg.dataset.image_size} px)"
    }


def run_job(job: Job | str) -> dict[str, Any]:
    """Run one job of a grid (a record of ``harness.jobs`` or its JSON) under its claim.

    A job whose cell another live run holds is ``skipped`` with ``claimed_by`` naming the
    owner (see ``harness.claims``).  A tracking store that cannot be used fails the job
    with one line (when the server stays away past its retry bound nothing more can be
    recorded there: the run stays RUNNING with its checkpoint, and the next run of the
    grid resumes it).
    """
    from harness.claims import ClaimHeld, claim
    from harness.errors import TrackingError

    if isinstance(job, str):
        job = job_from_json(job)
    try:
        with claim(job.context.cache_dir, job.cell_id):
            if isinstance(job, TeacherJob):
                return run_teacher(job)
            return run_cell(job)
    except ClaimHeld as held:
        return {"cell_id": job.cell_id, "status": Status.SKIPPED, "claimed_by": held.owner}
    except TrackingError as exc:
        return {"cell_id": job.cell_id, "status": Status.FAILED, "error": one_line(describe(exc))}


# ---------------------------------------------------------------------- teachers


def run_teacher(job: TeacherJob) -> dict[str, Any]:
    """Build (or load from cache) one teacher and record its sample quality once."""
    from harness.capacity import Context
    from harness.evaluate import evaluate, save_grid
    from harness.metrics import describe_extractor

    cfg, tracker, device = _setup_worker(job)
    cap = Capacity.model_validate(job.teacher)
    existing = [
        r
        for r in tracker.find_runs({Tag.TEACHER_ID: job.teacher_id, Tag.KIND: Kind.TEACHER})
        if r["status"] == Status.FINISHED
    ]
    ctx = Context.create(cfg, device, job.context.cache_dir, progress=job.context.progress)
    start = time.perf_counter()
    teacher = ctx.teacher(cap)
    built = time.perf_counter() - start
    if existing:
        return {
            "status": Status.FINISHED,
            "teacher_id": job.teacher_id,
            "run_id": existing[0]["run_id"],
            "reused": True,
        }
    ds = _dataset(cfg)
    run_id = tracker.start_run(
        f"teacher {cap.name}",
        tags={
            **_common_tags(job, Kind.TEACHER, cfg, describe_extractor(ds.feature_extractor)),
            Tag.TEACHER_ID: job.teacher_id,
        },
        params={
            "teacher": cap.name,
            "teacher_params": teacher.num_parameters(),
            "teacher_spec": cap.model_dump(),
            "backbone": cfg.model.backbone,
            "dataset": cfg.dataset.name,
            "image_size": cfg.dataset.image_size,
        },
    )
    try:
        tracker.set_tags(run_id, _reference_tag(cfg, ctx))
        metrics, images = evaluate(
            teacher,
            ctx.process,
            ctx.images,
            eval_cfg=cfg.eval,
            num_classes=ctx.num_classes,
            seed=0,
            device=device,
            feature_extractor=ds.feature_extractor,
            classifier=_classifier(ds),
            progress=False,
            cache_dir=str(ctx.cache_dir / "metrics"),
        )
        metrics[Metric.TIME_BUILD_S] = built
        tracker.log_metrics(run_id, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(run_id, str(save_grid(images, Path(tmp) / "samples.png")))
        tracker.finish(run_id, Status.FINISHED)
    except KeyboardInterrupt:
        tracker.finish(run_id, Status.KILLED)
        raise
    except Exception as exc:
        error = one_line(describe(exc))
        tracker.finish(run_id, Status.FAILED, error=error)
        return {"status": Status.FAILED, "teacher_id": job.teacher_id, "error": error}
    return {
        "status": Status.FINISHED,
        "teacher_id": job.teacher_id,
        "run_id": run_id,
        "metrics": metrics,
    }


# ---------------------------------------------------------------------- cells


def _dataset(cfg: GridConfig):
    from harness.factories import dataset_from_config

    return dataset_from_config(cfg.dataset)


def _classifier(ds: Any):
    return ds.classifier()


def checkpoint_path(job: CellJob) -> Path:
    return Path(job.context.cache_dir) / "checkpoints" / f"{job.cell_id}.safetensors"


def tuning_tags(cfg: GridConfig, label: str) -> dict[str, str]:
    """How a tuned grid chose this objective's values (its ``[tuned]`` record), as tags."""
    if cfg.tuned is None or label not in cfg.tuned.objectives:
        return {}
    common = cfg.tuned.model_dump(exclude={"objectives"})
    return {
        Tag.TUNING: json.dumps(common, sort_keys=True),
        Tag.TUNED: json.dumps(cfg.tuned.objectives[label]),  # keeps the space's order
    }


def _open_run(
    job: CellJob, tracker: Any, cfg: GridConfig, fid_features: str
) -> tuple[str | None, bool]:
    """(run_id, resumed); run_id None means the cell is already done."""
    from harness.gridrun import describe_cell

    ckpt = checkpoint_path(job)
    runs = tracker.find_runs({Tag.CELL_ID: job.cell_id, Tag.KIND: Kind.CELL})
    if not job.context.rerun:
        if any(r["status"] in DONE for r in runs):
            return None, False
        unfinished = [r for r in runs if r["status"] in UNFINISHED]
        if unfinished and ckpt.exists():
            run_id = unfinished[0]["run_id"]
            tracker.resume_run(run_id)
            return run_id, True
    ckpt.unlink(missing_ok=True)
    for r in runs:  # we hold the cell's claim: a RUNNING run of it has lost its process
        if r["status"] == Status.RUNNING:
            tracker.set_tags(r["run_id"], {Tag.ERROR: "its process ended without closing it"})
            tracker.finish(r["run_id"], Status.FAILED)
    spec = job.objective
    names = [m["teacher_name"] for m in job.shared_teachers]
    params = {
        "objective": spec_label(spec),  # the objectives it sums, e.g. place+featkd
        "objective_label": job.objective_label,
        "objective_spec": spec,
        "teacher": ", ".join(names) if names else job.teacher_name,
        "student": job.student_name,
        "teacher_spec": job.teacher,
        "student_spec": job.student,
        "backbone": cfg.model.backbone,
        "process": cfg.model.process or "default",
        "dataset": cfg.dataset.name,
        "image_size": cfg.dataset.image_size,
        "seed": job.seed,
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "lambda_diff": cfg.train.lambda_diff,
        "ema_decay": cfg.train.ema_decay,
        "sample_steps": cfg.eval.sample_steps,
        "num_samples": cfg.eval.num_samples,
    }
    tags = {
        **_common_tags(job, Kind.CELL, cfg, fid_features),
        Tag.CELL_ID: job.cell_id,
        Tag.LABEL: job.label,
        Tag.OBJECTIVE_LABEL: job.objective_label,
        **tuning_tags(cfg, job.objective_label),
        MlflowTag.NOTE: describe_cell(job),
    }
    if job.teacher_independent:  # the leaderboards show it at each of these teachers
        tags[Tag.SHARED_TEACHERS] = json.dumps(
            [
                {"teacher": m["teacher_name"], "teacher_id": m["teacher_id"]}
                for m in job.shared_teachers
            ]
        )
    else:
        tags[Tag.TEACHER_ID] = job.teacher_id
    run_id = tracker.start_run(job.label, tags=tags, params=params)
    return run_id, False


def _teacher_source(
    ctx: Any,
    job: CellJob,
    source_model: torch.nn.Module,
    source_key: str,
    objective: Any,
    batches: Any,
    pairs: Any,
) -> tuple[Any, str]:
    """Cached teacher predictions when possible, else the live teacher."""
    from harness.teacher_cache import CachedTeacher, TeacherPredictionCache, cache_size_mb
    from harness.trainer import LiveTeacher, autocast_for

    cfg = ctx.cfg
    autocast = autocast_for(ctx.device, cfg.train.precision)
    live = LiveTeacher(source_model, pairs, autocast)
    size = cache_size_mb(cfg.train.steps, cfg.train.batch_size, tuple(ctx.images.shape[1:]))
    if objective.needs_features or size > cfg.train.teacher_cache_mb:
        return live, "live"
    key = json.dumps(
        {
            "source": source_key,
            "seed": job.seed,
            "train": {k: getattr(cfg.train, k) for k in ("steps", "batch_size", "precision")},
            "process": cfg.model.process,
            "device": ctx.device.type,
        },
        sort_keys=True,
    )
    import hashlib

    folder = ctx.cache_dir / "teacher-preds" / hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = TeacherPredictionCache(folder, cfg.train.steps)
    if not cache.complete():
        cache.build(live, batches, progress="teacher predictions" if ctx.progress else None)
    return CachedTeacher(cache, ctx.device), "cached"


def _step_logger(tracker: Any, run_id: str, settings: Any, logged_through: int = -1):
    """Log a step's terms (buffered); flush at the last log before each checkpoint.

    A killed worker loses its buffer: flushing before every checkpoint keeps the history
    of every step before the checkpoint it resumes from.  A resumed run re-does the steps
    between its checkpoint and the fault; those already in the history
    (``step <= logged_through``) are not logged twice.
    """
    every, ckpt = settings.log_every, settings.checkpoint_every

    def log(step: int, metrics: dict[str, float]) -> None:
        if step <= logged_through:
            return
        tracker.log_metrics(run_id, metrics, step=step)
        if (step // every + 1) * every >= (step // ckpt + 1) * ckpt:
            tracker.flush(run_id)

    return log


def run_cell(job: CellJob) -> dict[str, Any]:
    """Train and evaluate one grid cell (teacher, student, objective, seed) in this process.

    Opens (or resumes) the cell's MLflow run, builds the teacher and the student from
    the cache, distils with the cell's objective, evaluates, and ends the run as
    finished, diverged or failed; a failure is recorded, not raised.  Returns the result
    dict (``status``, ``cell_id``, ``run_id``, metrics or ``error``) the executor reports.
    """
    from harness import capacity
    from harness.capacity import Context
    from harness.errors import DivergedError
    from harness.evaluate import evaluate, save_grid
    from harness.factories import build_combination
    from harness.metrics import describe_extractor
    from harness.modelio import save_pretrained
    from harness.trainer import BatchMaker, LoopSettings, train

    cfg, tracker, device = _setup_worker(job)
    ds = _dataset(cfg)
    run_id, resumed = _open_run(job, tracker, cfg, describe_extractor(ds.feature_extractor))
    if run_id is None:
        return {"cell_id": job.cell_id, "status": Status.SKIPPED}
    result: dict[str, Any] = {"cell_id": job.cell_id, "run_id": run_id, "resumed": resumed}
    try:
        ctx = Context.create(cfg, device, job.context.cache_dir, progress=job.context.progress)
        tracker.set_tags(run_id, _reference_tag(cfg, ctx))
        started = process_age()
        t0 = time.perf_counter()
        teacher_cap = Capacity.model_validate(job.teacher)
        student_cap = Capacity.model_validate(job.student)
        # A teacher-independent cell never loads one (its result stands for every teacher).
        teacher = None if job.teacher_independent else ctx.teacher(teacher_cap)
        time_teacher = time.perf_counter() - t0
        objective = build_combination(job.objective)
        student = ctx.student_init(student_cap, job.seed)
        metrics: dict[str, float] = {Metric.TIME_TEACHER_S: time_teacher}
        if started is not None:
            metrics[Metric.TIME_START_S] = started
        source, source_key = teacher, job.teacher_id
        if objective.needs_assistant:
            source, info = capacity.assistant(ctx, teacher_cap, student_cap, job.objective, teacher)
            source_key = f"assistant:{job.teacher_id}:{info.get('capacity')}"
            metrics[Metric.TIME_ASSISTANT_S] = float(info.get("build_seconds", 0.0))
            tracker.log_params(
                run_id,
                {"assistant": info.get("capacity"), "assistant_params": source.num_parameters()},
            )
        if not resumed:
            sizes = {"student_params": student.num_parameters()}
            if teacher is not None:
                sizes["teacher_params"] = teacher.num_parameters()
            tracker.log_params(run_id, sizes)
        settings = LoopSettings.from_section(cfg.train)
        batches = BatchMaker(
            ctx.images, ctx.labels, ctx.process, cfg.train.batch_size, job.seed, device
        )
        pairs = (
            ctx.backbone.pair_taps(student, source, objective.tap_set)
            if objective.needs_features
            else None
        )
        if objective.needs_teacher:
            t0 = time.perf_counter()
            teacher_source, mode = _teacher_source(
                ctx, job, source, source_key, objective, batches, pairs
            )
            metrics[Metric.TIME_TEACHER_S] += time.perf_counter() - t0
        else:  # the no-KD baseline trains on the denoising loss alone
            teacher_source, mode = None, "none"
        tracker.set_tags(run_id, {Tag.TEACHER_MODE: mode})
        trained = train(
            student,
            batches=batches,
            settings=settings,
            objective=objective,
            teacher=teacher_source,
            pairs=pairs,
            checkpoint=checkpoint_path(job),
            log=_step_logger(
                tracker,
                run_id,
                settings,
                tracker.last_step(run_id, "train/loss") if resumed else -1,
            ),
            device=device,
            progress=job.label if job.context.progress else None,
        )
        tracker.flush()
        metrics.update(
            {
                Metric.ITER_PER_S: trained.iter_per_s,
                Metric.PEAK_MEM_MB: trained.peak_mem_mb,
                Metric.TIME_TRAIN_S: trained.time_train_s,
                Metric.TEACHER_SHARE: trained.teacher_share,
            }
        )
        scores, images = evaluate(
            trained.ema,
            ctx.process,
            ctx.images,
            eval_cfg=cfg.eval,
            num_classes=ctx.num_classes,
            seed=job.seed,
            device=device,
            feature_extractor=ds.feature_extractor,
            classifier=_classifier(ds),
            cache_dir=str(ctx.cache_dir / "metrics"),
        )
        metrics.update(scores)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(run_id, str(save_grid(images, Path(tmp) / "samples.png")))
            tracker.log_json(run_id, job.context.config, "config.json")
            if cfg.eval.save_student:  # a diffusers model folder (see harness.modelio)
                folder = save_pretrained(trained.ema.cpu(), Path(tmp) / "student", ctx.process)
                tracker.log_artifacts(run_id, folder, "student")
        # The artifacts' time; the final metrics' own write cannot time itself.
        metrics[Metric.TIME_LOG_S] = time.perf_counter() - t0
        tracker.log_metrics(run_id, metrics)
        tracker.finish(run_id, Status.FINISHED)
        checkpoint_path(job).unlink(missing_ok=True)
        result.update(status=Status.FINISHED, metrics=metrics)
    except DivergedError as exc:
        # The last terms (the step that diverged) join the history; NaN/inf log as NaN.
        terms = {f"{TRAIN_PREFIX}{k}": v for k, v in exc.terms.items()}
        tracker.log_metrics(run_id, terms, step=exc.step)
        tracker.log_metrics(run_id, {Metric.DIVERGED_STEP: exc.step})
        tracker.set_tags(run_id, {Tag.DIVERGED_REASON: exc.reason[:250]})
        tracker.finish(run_id, Status.DIVERGED)
        checkpoint_path(job).unlink(missing_ok=True)
        result.update(status=Status.DIVERGED, step=exc.step, reason=exc.reason)
    except KeyboardInterrupt:
        tracker.flush()
        tracker.finish(run_id, Status.KILLED)
        raise
    except Exception as exc:
        log.debug("cell %s failed:\n%s", job.cell_id, traceback.format_exc())
        error = one_line(describe(exc))
        if not tracker.down:  # else nothing reaches the store; the run resumes next time
            tracker.finish(run_id, Status.FAILED, error=error)
        result.update(status=Status.FAILED, error=error)
    return result
