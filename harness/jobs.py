"""The jobs a grid hands to its executor: frozen records that round-trip through JSON.

A grid runs in two stages (``harness.grid``): one :class:`TeacherJob` per distinct
teacher, then one :class:`CellJob` per cell not yet done.  Both carry the grid's shared
:class:`GridContext`; ``harness.cell.run_job`` runs either kind.  Executors read only
``cell_id`` and ``label`` (progress and results).

Choices:

- Frozen dataclasses of JSON values (str, int, bool, lists, dicts): they pickle as they
  are (the local, slurm and ray executors ship them so), and ``to_json`` /
  :func:`job_from_json` give an explicit text form for an executor that ships strings
  (``run_job`` accepts that text too).  ``kind`` is written into the JSON and checked on
  the way back.
- Nested values (the resolved config, capacities, the objective spec) stay plain dicts
  and lists, as ``GridConfig.model_dump(mode="json")`` and ``harness.config.expand``
  make them; treat them as read-only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import KDBenchError
from harness.schema import Kind


@dataclass(frozen=True)
class GridContext:
    """What every job of one grid shares.

    ``config`` is the resolved grid config as JSON (``GridConfig.model_dump(mode="json")``,
    its tracking password masked); ``tracking_uri`` is the real one, for the workers.
    """

    config: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    grid_id: str
    cache_dir: str
    rerun: bool = False
    progress: bool = True
    git_commit: str = "unknown"
    parent_run_id: str | None = None  # the grid's own run (harness.gridrun), explicitly


class _Record:
    """JSON round-tripping shared by the job records (``kind`` names the record type)."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        fields = dict(data)
        kind = fields.pop("kind", cls.kind)
        if kind != cls.kind:
            raise KDBenchError(f"expected a {cls.kind} job, got kind {kind!r}")
        try:
            context = GridContext(**fields.pop("context"))
            return cls(context=context, **fields)  # type: ignore[call-arg]
        except (KeyError, TypeError) as exc:
            raise KDBenchError(f"malformed {cls.kind} job: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(_loads(text))


@dataclass(frozen=True)
class TeacherJob(_Record):
    """Build (or load from the cache) one teacher and record its sample quality once."""

    kind: ClassVar[str] = Kind.TEACHER

    context: GridContext
    teacher: dict[str, Any]  # a ``harness.config.Capacity`` as JSON
    teacher_id: str
    teacher_name: str

    @property
    def cell_id(self) -> str:
        return f"teacher-{self.teacher_id}"

    @property
    def label(self) -> str:
        return f"teacher {self.teacher_name}"


CELL_FIELDS = (
    "cell_id",
    "label",
    "objective_label",
    "objective",
    "teacher",
    "teacher_name",
    "teacher_id",
    "student",
    "student_name",
    "seed",
    "shared_teachers",
)
"""The keys of a cell as ``harness.config.expand`` writes it, in the record's order."""


@dataclass(frozen=True)
class CellJob(_Record):
    """One teacher x student x objective x seed: KD training, evaluation, one MLflow run."""

    kind: ClassVar[str] = Kind.CELL

    context: GridContext
    cell_id: str
    label: str
    objective_label: str
    objective: list[dict[str, Any]]  # ``[{"name": ..., "weight": ..., **options}, ...]``
    teacher: dict[str, Any]
    teacher_name: str
    teacher_id: str
    student: dict[str, Any]
    student_name: str
    seed: int
    # A teacher-independent cell (the no-KD baseline) run once for these teachers, each
    # ``{"teacher": capacity, "teacher_name": ..., "teacher_id": ...}``; empty otherwise.
    shared_teachers: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def teacher_independent(self) -> bool:
        return bool(self.shared_teachers)

    @classmethod
    def from_cell(cls, context: GridContext, cell: Mapping[str, Any]) -> CellJob:
        """The job of one cell of ``harness.config.expand``."""
        return cls(context=context, **{key: cell[key] for key in CELL_FIELDS if key in cell})


Job = TeacherJob | CellJob
JOB_TYPES: dict[str, type[TeacherJob] | type[CellJob]] = {
    TeacherJob.kind: TeacherJob,
    CellJob.kind: CellJob,
}


def _loads(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KDBenchError(f"a job must be JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise KDBenchError(f"a job must be a JSON object, got {type(data).__name__}")
    return data


def job_from_json(text: str) -> Job:
    """A :class:`TeacherJob` or :class:`CellJob` from its ``to_json()`` text."""
    data = _loads(text)
    kind = data.get("kind")
    if kind not in JOB_TYPES:
        raise KDBenchError(f"unknown job kind {kind!r}; valid: {', '.join(JOB_TYPES)}")
    return JOB_TYPES[kind].from_dict(data)
