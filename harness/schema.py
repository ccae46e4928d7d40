"""The names a grid's record is written and read under: statuses, kinds, tags, metrics, params.

One vocabulary for the writers (``harness.cell``, ``harness.grid``, ``harness.tracking``,
the executors) and the readers (``leaderboards``), as lm-evaluation-harness keeps its
result schema in one place.  The members are ``StrEnum``s: each equals its plain string
(``Status.FINISHED == "finished"``), so what is stored in MLflow, JSON and pandas stays
the plain text it always was.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What happened to a run or a job.

    A run's status lives in the tag ``kdbench.status``; ``skipped`` is never a run's:
    an executor reports it for a job never started, ``run_job`` for a cell already done
    or claimed by another live run of the grid (then its result has ``claimed_by``).
    """

    FINISHED = "finished"
    DIVERGED = "diverged"  # a result: the student collapsed (FID missing)
    FAILED = "failed"
    KILLED = "killed"  # interrupted; its checkpoint is kept
    RUNNING = "running"
    SKIPPED = "skipped"


DONE = (Status.FINISHED, Status.DIVERGED)
"""A cell with a result: a re-run of the grid does not run it again."""
UNFINISHED = (Status.RUNNING, Status.FAILED, Status.KILLED)
"""A cell run that a re-run resumes from its checkpoint."""
RUN_STATUSES = (Status.FINISHED, Status.DIVERGED, Status.FAILED, Status.KILLED, Status.RUNNING)
"""What ``kdbench.status`` may say."""
END_STATUSES = (Status.FINISHED, Status.DIVERGED, Status.FAILED, Status.KILLED)
"""How a run may end (``Tracker.finish``)."""
WORK_STATUSES = (Status.FINISHED, Status.DIVERGED, Status.FAILED, Status.KILLED, Status.SKIPPED)
"""What a job's result may say (``harness.executor.finalize`` checks it)."""


class Kind(StrEnum):
    """The kinds of MLflow run (tag ``kdbench.kind``); teacher and cell are also job kinds.

    ``grid`` is the grid's own run (``harness.gridrun``), the parent of its teacher and
    cell runs; the leaderboards never read it as a result.
    """

    TEACHER = "teacher"
    CELL = "cell"
    GRID = "grid"


TAG_PREFIX = "kdbench."


class Tag(StrEnum):
    """The tags kdbench writes on its MLflow runs; ``Tag.X.column`` is the leaderboard column."""

    KIND = "kdbench.kind"
    STATUS = "kdbench.status"
    ERROR = "kdbench.error"
    GRID_ID = "kdbench.grid_id"
    GRID_NAME = "kdbench.grid_name"
    CELL_ID = "kdbench.cell_id"
    TEACHER_ID = "kdbench.teacher_id"
    LABEL = "kdbench.label"
    GIT_COMMIT = "kdbench.git_commit"
    VERSION = "kdbench.version"
    PLUGINS = "kdbench.plugins"
    FID_FEATURES = "kdbench.fid_features"
    TORCH_FIDELITY = "kdbench.torch_fidelity"  # the metric library's version
    FID_REFERENCE = "kdbench.fid_reference"  # the reference set the metrics compare against
    TORCH = "kdbench.torch"
    HOST = "kdbench.host"
    TEACHER_MODE = "kdbench.teacher_mode"
    DIVERGED_REASON = "kdbench.diverged_reason"
    SHARED_TEACHERS = "kdbench.shared_teachers"  # JSON [{"teacher": name, "teacher_id": id}]
    OBJECTIVE_LABEL = "kdbench.objective_label"  # the variant's label (the row key)
    TUNING = "kdbench.tuning"  # a tuned grid's budget, sampler, seeds, trials (JSON)
    TUNED = "kdbench.tuned"  # this objective's search space and chosen values (JSON)
    # On the grid run (leaderboards.publish): the headline, and why publishing failed.
    HEADLINE = "kdbench.headline"
    BEST_OBJECTIVE = "kdbench.best_objective"  # + "/<teacher>"
    PUBLISH_ERROR = "kdbench.publish_error"

    @property
    def column(self) -> str:
        """The name without its ``kdbench.`` prefix (the leaderboard's column)."""
        return self.value.removeprefix(TAG_PREFIX)


class MlflowTag(StrEnum):
    """MLflow's own tags that kdbench sets, which the MLflow UI reads."""

    PARENT_RUN_ID = "mlflow.parentRunId"  # nests a cell or teacher run under the grid run
    NOTE = "mlflow.note.content"  # the description of a run or an experiment (Markdown)
    EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3: GenAI or model training


TABLE_TAGS = (
    Tag.KIND,
    Tag.GRID_ID,
    Tag.GRID_NAME,
    Tag.CELL_ID,
    Tag.STATUS,
    Tag.GIT_COMMIT,
    Tag.VERSION,
    Tag.FID_FEATURES,
    Tag.TEACHER_MODE,
    Tag.SHARED_TEACHERS,
    Tag.TORCH_FIDELITY,
    Tag.FID_REFERENCE,
    Tag.TEACHER_ID,
    Tag.TUNING,
    Tag.TUNED,
)
"""The tags a leaderboard reads into columns (named by ``Tag.column``)."""


class Metric(StrEnum):
    """The final metrics of a run (logged once, at the end)."""

    FID = "fid"
    KID_MEAN = "kid_mean"
    KID_STD = "kid_std"
    FID_BOOT_STD = "fid_boot_std"  # FID's sampling noise: bootstrap over generated samples
    ISC_MEAN = "isc_mean"
    ISC_STD = "isc_std"
    PRECISION = "precision"
    RECALL = "recall"
    CLASS_ACC = "class_acc"
    ITER_PER_S = "iter_per_s"
    PEAK_MEM_MB = "peak_mem_mb"
    TEACHER_SHARE = "teacher_share"
    TIME_TRAIN_S = "time_train_s"
    TIME_SAMPLE_S = "time_sample_s"
    TIME_METRICS_S = "time_metrics_s"
    TIME_TEACHER_S = "time_teacher_s"
    TIME_ASSISTANT_S = "time_assistant_s"
    TIME_BUILD_S = "time_build_s"
    TIME_START_S = "time_start_s"  # process creation to the end of set-up
    TIME_LOG_S = "time_log_s"  # writing the artifacts at the end
    DIVERGED_STEP = "diverged_step"


PHASE_TIMES = (
    Metric.TIME_TRAIN_S,
    Metric.TIME_SAMPLE_S,
    Metric.TIME_METRICS_S,
    Metric.TIME_TEACHER_S,
    Metric.TIME_ASSISTANT_S,
    Metric.TIME_START_S,
    Metric.TIME_LOG_S,
)
"""The seconds a cell spends in each of its phases, as the leaderboard columns them."""

TABLE_METRICS = (
    Metric.FID,
    Metric.KID_MEAN,
    Metric.KID_STD,
    Metric.FID_BOOT_STD,
    Metric.ISC_MEAN,
    Metric.PRECISION,
    Metric.RECALL,
    Metric.CLASS_ACC,
    Metric.ITER_PER_S,
    Metric.PEAK_MEM_MB,
    Metric.TEACHER_SHARE,
    *PHASE_TIMES,
    Metric.DIVERGED_STEP,
)
"""The metrics a leaderboard always has a (float) column for, in column order."""

TRAIN_PREFIX = "train/"
"""Per-step loss terms are logged as ``train/<term>`` (e.g. ``train/loss``)."""

STR_PARAMS = (
    "objective",
    "objective_label",
    "objective_spec",
    "teacher",
    "student",
    "backbone",
    "process",
    "dataset",
)
INT_PARAMS = (
    "teacher_params",
    "student_params",
    "image_size",
    "seed",
    "steps",
    "batch_size",
    "num_samples",
)
FLOAT_PARAMS = ("lr",)
"""Params a leaderboard types (nullable Int64, float); the rest are read as strings."""
