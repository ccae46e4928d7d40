"""The ``slurm`` executor: one SLURM job per cell through submitit.

Choices:

- The cells go out as one job array (``submitit.AutoExecutor.submit_array``), so
  ``array_parallelism`` caps how many run at once. ``cluster=None`` lets submitit pick
  (SLURM when ``srun`` is found, else its local executor); ``"local"`` runs the jobs as
  local processes (tests; all start at once and all see ``CUDA_VISIBLE_DEVICES=0``) and
  ``"debug"`` runs them in this process.
- Each job runs a :class:`RequeueableCell`, a ``submitit.helpers.Checkpointable``: when SLURM
  preempts the job or its time runs out, submitit calls ``checkpoint()``, which resubmits
  the same cell; the cell resumes from its own checkpoint because ``work`` is resumable.
  ``RequeueableCell`` is built on first use so that importing this plugin does not import
  submitit.
- ``timeout_min`` defaults to 240 minutes (submitit's own defaults are 5 on SLURM and 2 on
  its local executor); a timed-out job is requeued at most ``max_num_timeout`` times.
- A job that fails is reported ``failed`` with the last line of its error (the exception
  line of the traceback, or the job state when it left no result, e.g. ``OUT_OF_MEMORY``).
- Ctrl-C while waiting cancels the unfinished jobs, reports pending ones ``skipped`` and
  the others ``killed``, and raises
  :class:`harness.executor.GridInterrupted` with the results.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from harness import hookimpl
from harness.errors import KDBenchError, OptionError
from harness.executor import (
    Cell,
    Executor,
    InterruptCounter,
    Work,
    check_non_negative,
    check_positive,
    describe,
    failed,
    finalize,
    import_extra,
    one_line,
    outcome,
    progress_bar,
    tally,
)
from harness.schema import Status

log = logging.getLogger(__name__)

CLUSTERS = (None, "slurm", "local", "debug")
_TRACE_RULE = "-" * 22  # submitit frames a failed job's traceback with this line


def import_submitit():
    return import_extra("submitit", "slurm", "slurm")


_REQUEUEABLE_CELL: type | None = None


def _requeueable_cell_class() -> type:
    global _REQUEUEABLE_CELL
    if _REQUEUEABLE_CELL is None:
        helpers = import_submitit().helpers

        class RequeueableCell(helpers.Checkpointable):
            """One grid cell as a submitit job; ``checkpoint()`` requeues the same cell."""

            def __init__(self, work: Work, cell: Cell):
                self.work = work
                self.cell = cell

            def __call__(self) -> dict[str, Any]:
                return self.work(self.cell)

            def checkpoint(self) -> Any:
                # A fresh instance: nothing of this attempt's state travels, the cell's own
                # checkpoint on disk is what the next attempt resumes from.
                return helpers.DelayedSubmission(type(self)(self.work, self.cell))

        RequeueableCell.__module__ = __name__
        RequeueableCell.__qualname__ = "RequeueableCell"
        _REQUEUEABLE_CELL = RequeueableCell
    return _REQUEUEABLE_CELL


def __getattr__(name: str) -> Any:
    # PEP 562: ``plugins.executors.slurm.RequeueableCell`` exists on demand, also when a job
    # process unpickles it.
    if name == "RequeueableCell":
        return _requeueable_cell_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def job_error(job: Any, exc: BaseException) -> str:
    """One line for a job that did not return: the traceback's last line, or its state."""
    utils = import_submitit().core.utils
    if isinstance(exc, utils.FailedJobError):
        lines = str(exc).splitlines()
        rules = [i for i, line in enumerate(lines) if line.strip() == _TRACE_RULE]
        trace = "\n".join(lines[rules[0] + 1 : rules[1]]) if len(rules) >= 2 else ""
        if one_line(trace):
            return one_line(trace)
    elif isinstance(exc, utils.UncompletedJobError):
        try:
            state = job.state
        except Exception:
            state = "UNKNOWN"
        return f"job {job.job_id} ended without a result (state {state})"
    return describe(exc)


class SlurmExecutor(Executor):
    """Run each cell as a SLURM job (submitit job array); preempted jobs are requeued.

    Options: ``folder`` (logs and pickles, ``%j`` is the job id), ``partition``,
    ``account``, ``gpus_per_node``, ``cpus_per_task``, ``timeout_min``, ``mem_gb``,
    ``array_parallelism``, ``cluster`` (None = auto, "slurm", "local", "debug"),
    ``max_num_timeout``, ``poll_s`` (seconds between status checks), ``progress``.
    """

    name = "slurm"

    def __init__(
        self,
        folder: str = "kdbench-jobs/%j",
        partition: str | None = None,
        account: str | None = None,
        gpus_per_node: int | None = None,
        cpus_per_task: int | None = None,
        timeout_min: int = 240,
        mem_gb: float | None = None,
        array_parallelism: int | None = None,
        cluster: str | None = None,
        max_num_timeout: int = 3,
        poll_s: float = 5.0,
        progress: bool | None = None,
    ):
        for option, value in (
            ("cpus_per_task", cpus_per_task),
            ("timeout_min", timeout_min),
            ("array_parallelism", array_parallelism),
        ):
            check_positive(self.name, option, value)
        check_positive(self.name, "mem_gb", mem_gb, kind=float)
        check_positive(self.name, "poll_s", poll_s, kind=float, allow_none=False)
        check_non_negative(self.name, "gpus_per_node", gpus_per_node)
        check_non_negative(self.name, "max_num_timeout", max_num_timeout)
        if cluster not in CLUSTERS:
            raise OptionError(
                f"executor 'slurm': unknown cluster {cluster!r}; valid: "
                "slurm, local, debug (or unset to detect)"
            )
        super().__init__(
            folder=folder,
            partition=partition,
            account=account,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            timeout_min=timeout_min,
            mem_gb=mem_gb,
            array_parallelism=array_parallelism,
            cluster=cluster,
            max_num_timeout=max_num_timeout,
            poll_s=poll_s,
            progress=progress,
        )
        self.folder = str(folder)
        self.cluster = cluster
        self.max_num_timeout = max_num_timeout
        self.poll_s = float(poll_s)
        self.progress = progress

    def submitit_parameters(self) -> dict[str, Any]:
        """The ``AutoExecutor.update_parameters`` keywords for the options that are set."""
        o = self.options
        params = {
            "name": "kdbench",
            "timeout_min": o["timeout_min"],
            "gpus_per_node": o["gpus_per_node"],
            "cpus_per_task": o["cpus_per_task"],
            "mem_gb": o["mem_gb"],
            "slurm_partition": o["partition"],
            "slurm_account": o["account"],
            "slurm_array_parallelism": o["array_parallelism"],
        }
        return {key: value for key, value in params.items() if value is not None}

    def make_submitit_executor(self) -> Any:
        """A configured ``submitit.AutoExecutor`` for this executor's options."""
        submitit = import_submitit()
        try:
            executor = submitit.AutoExecutor(
                folder=self.folder,
                cluster=self.cluster,
                slurm_max_num_timeout=self.max_num_timeout,
                local_max_num_timeout=self.max_num_timeout,
            )
        except (RuntimeError, ValueError) as exc:
            raise KDBenchError(f"executor 'slurm': {one_line(str(exc))}") from exc
        if self.cluster is None and executor.cluster != "slurm":
            log.warning(
                "no SLURM found (srun is missing): running the cells with submitit's %s executor",
                executor.cluster,
            )
        executor.update_parameters(**self.submitit_parameters())
        return executor

    def submit(self, cells: list[Cell], work: Work, executor: Any = None) -> list[Any]:
        """Submit one job per cell (a job array) and return the submitit jobs, in order."""
        executor = executor if executor is not None else self.make_submitit_executor()
        requeueable = _requeueable_cell_class()
        return executor.submit_array([requeueable(work, cell) for cell in cells])

    def run(self, cells: list[Cell], work: Work) -> list[dict[str, Any]]:
        self.results = None
        if not cells:
            self.results = []
            return []
        return self.wait(self.submit(cells, work), cells)

    def wait(self, jobs: list[Any], cells: list[Cell]) -> list[dict[str, Any]]:
        """Wait for the jobs with a progress bar; one result dict per cell, in order."""
        results: list[dict[str, Any] | None] = [None] * len(cells)
        pending = list(range(len(cells)))
        with (
            InterruptCounter() as interrupts,
            progress_bar(len(cells), self.progress, "jobs") as bar,
        ):
            while pending and not interrupts.count:
                for i in list(pending):
                    if not self._done(jobs[i]):
                        continue
                    results[i] = self._collect(jobs[i], cells[i])
                    pending.remove(i)
                    bar.update(1)
                    tally(bar, results)
                if pending and not interrupts.count:
                    time.sleep(self.poll_s)
            if pending:
                for i in pending:
                    results[i] = self._interrupted(jobs[i], cells[i])
        final = [r for r in results if r is not None]  # every cell has one by now
        return self.conclude(final, interrupts)

    @staticmethod
    def _done(job: Any) -> bool:
        try:
            return bool(job.done())
        except Exception:  # the debug cluster runs the job inside done() and may raise
            return True

    @staticmethod
    def _collect(job: Any, cell: Cell) -> dict[str, Any]:
        try:
            raw = job.result()
        except Exception as exc:
            return failed(cell, job_error(job, exc))
        return finalize(cell, raw)

    @staticmethod
    def _interrupted(job: Any, cell: Cell) -> dict[str, Any]:
        """Cancel an unfinished job after Ctrl-C: ``skipped`` if it was pending, else ``killed``."""
        try:
            state = str(job.state)
        except Exception:
            state = "UNKNOWN"
        try:
            job.cancel(check=False)
        except Exception as exc:
            log.warning("could not cancel job %s: %s", job.job_id, describe(exc))
        if state.upper().startswith("PENDING"):
            return outcome(cell, Status.SKIPPED)
        return outcome(cell, Status.KILLED, error=f"interrupted; job {job.job_id} cancelled")


@hookimpl
def register_executors(register):
    register(SlurmExecutor)
