"""The ``ray`` executor: one Ray task per cell, on a local Ray instance or a cluster.

Choices:

- ``@ray.remote(max_calls=1)``: every task gets a fresh worker process, as the other
  executors give every cell a fresh process (Ray reuses workers otherwise).
- ``num_gpus`` per cell defaults to 1 when the cluster has GPUs, else 0. A task asking for
  more GPUs (or CPUs) than any live node has would stay pending forever, so that is checked
  before submitting and raised as a ``KDBenchError``.
- ``max_retries`` defaults to 0: a cell whose worker dies is reported ``failed`` (as with
  the local executor) instead of being run again; raise it for clusters that lose nodes
  (``work`` is resumable, a retry resumes from the cell's checkpoint).
- ``address=None`` starts a local Ray instance (stopped again after the grid); when Ray is
  already initialised in this process that instance is used as it is.
- Ctrl-C while waiting: ``ray.cancel`` on every unfinished task (a running one sees
  ``KeyboardInterrupt``, delivered between Python bytecodes, so a long blocking call delays
  it), a wait of ``grace_s``, then forced cancellation. A cell that returns its own result
  keeps it; the others are reported ``killed`` (Ray cannot tell queued tasks from running
  ones here); then :class:`harness.executor.GridInterrupted` is raised.
"""

from __future__ import annotations

import time
from typing import Any

from harness import hookimpl
from harness.errors import KDBenchError
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

_POLL_S = 0.5


def import_ray():
    return import_extra("ray", "ray", "ray")


def check_fits(nodes: list[dict[str, float]], num_cpus: float, num_gpus: float) -> None:
    """Raise KDBenchError unless one node offers ``num_cpus`` CPUs and ``num_gpus`` GPUs.

    ``nodes`` are the resource dicts of the live nodes (``ray.nodes()[i]["Resources"]``).
    """
    if not nodes:
        raise KDBenchError("the ray cluster has no live nodes")
    most_gpus = max(node.get("GPU", 0.0) for node in nodes)
    most_cpus = max(node.get("CPU", 0.0) for node in nodes)
    if num_gpus > 0 and most_gpus == 0:
        raise KDBenchError(
            f"executor 'ray': num_gpus={num_gpus:g} per cell, but the ray "
            "cluster has no GPUs; set num_gpus = 0 or use a cluster with GPUs"
        )
    if num_gpus > most_gpus:
        raise KDBenchError(
            f"executor 'ray': num_gpus={num_gpus:g} per cell, but no node has "
            f"more than {most_gpus:g} GPUs"
        )
    if num_cpus > most_cpus:
        raise KDBenchError(
            f"executor 'ray': num_cpus={num_cpus:g} per cell, but no node has "
            f"more than {most_cpus:g} CPUs"
        )


def run_cell(work: Work, cell: Cell) -> Any:
    """The body of a cell's Ray task."""
    return work(cell)


def task_error(ray: Any, exc: BaseException) -> str:
    """One line for a task that raised or whose worker died."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return describe(cause)
        return one_line(str(exc))
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return "worker died while running the cell (crash, OOM kill or signal)"
    return describe(exc)


class RayExecutor(Executor):
    """Run each cell as a Ray task with a fresh worker, locally or on a Ray cluster.

    Options: ``address`` (None starts a local instance; "auto" or "ray://host:port"),
    ``num_gpus`` and ``num_cpus`` per cell, ``max_retries``, ``grace_s``, ``progress``.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_gpus: float | None = None,
        num_cpus: float = 1,
        max_retries: int = 0,
        grace_s: float = 30.0,
        progress: bool | None = None,
    ):
        check_positive(self.name, "num_cpus", num_cpus, kind=float, allow_none=False)
        check_non_negative(self.name, "num_gpus", num_gpus, kind=float)
        check_non_negative(self.name, "grace_s", grace_s, kind=float, allow_none=False)
        check_non_negative(self.name, "max_retries", max_retries, allow_none=False)
        super().__init__(
            address=address,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            max_retries=max_retries,
            grace_s=grace_s,
            progress=progress,
        )
        self.address = address
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.grace_s = float(grace_s)
        self.progress = progress

    def resolve_gpus(self, ray: Any) -> float:
        """GPUs per cell on the connected cluster, checked to fit on some live node."""
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        num_gpus = self.num_gpus
        if num_gpus is None:
            num_gpus = 1 if any(node.get("GPU", 0) > 0 for node in nodes) else 0
        check_fits(nodes, self.num_cpus, num_gpus)
        return num_gpus

    def run(self, cells: list[Cell], work: Work) -> list[dict[str, Any]]:
        self.results = None
        if not cells:
            self.results = []
            return []
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            kwargs = {"include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, **kwargs)
        try:
            task = ray.remote(
                max_calls=1,
                num_cpus=self.num_cpus,
                num_gpus=self.resolve_gpus(ray),
                max_retries=self.max_retries,
            )(run_cell)
            work_ref = ray.put(work)
            refs = [task.remote(work_ref, cell) for cell in cells]
            return self._wait(ray, refs, cells)
        finally:
            if started:
                ray.shutdown()

    def _wait(self, ray: Any, refs: list[Any], cells: list[Cell]) -> list[dict[str, Any]]:
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict[str, Any] | None] = [None] * len(cells)
        pending = list(refs)
        with (
            InterruptCounter() as interrupts,
            progress_bar(len(cells), self.progress, "tasks") as bar,
        ):

            def settle(done: list[Any], cancelled: bool = False) -> None:
                for ref in done:
                    i = index[ref]
                    results[i] = self._collect(ray, ref, cells[i], cancelled)
                    bar.update(1)
                if done:
                    tally(bar, results)

            while pending and not interrupts.count:
                done, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
                settle(done)
            if pending:  # interrupted
                for ref in pending:
                    ray.cancel(ref)
                seen = interrupts.count
                deadline = time.monotonic() + self.grace_s
                while pending and time.monotonic() < deadline and interrupts.count == seen:
                    done, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
                    settle(done, cancelled=True)
                for ref in pending:
                    ray.cancel(ref, force=True)
                    i = index[ref]
                    results[i] = outcome(
                        cells[i],
                        Status.KILLED,
                        error=f"interrupted; did not stop within "
                        f"{self.grace_s:g} s, force-cancelled",
                    )
        final = [r for r in results if r is not None]  # every cell has one by now
        return self.conclude(final, interrupts)

    @staticmethod
    def _collect(ray: Any, ref: Any, cell: Cell, cancelled: bool) -> dict[str, Any]:
        try:
            raw = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return outcome(cell, Status.KILLED, error="interrupted; task cancelled")
        except ray.exceptions.RayError as exc:
            if cancelled:
                return outcome(cell, Status.KILLED, error=f"interrupted; {task_error(ray, exc)}")
            return failed(cell, task_error(ray, exc))
        return finalize(cell, raw)


@hookimpl
def register_executors(register):
    register(RayExecutor)
