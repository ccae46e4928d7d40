"""Cell start-up: from the executor starting a cell's process to its first training step.

Real cells of the embedded default (``configs/bench.toml``: digits 8x8, its 38k-parameter
student, shipped teachers), run one at a time through the ``local`` executor with each
start method:

- ``forkserver`` (the default): cells are forked from a server that imported torch,
  diffusers, MLflow and the cell's modules once; its first cell also pays for starting
  the server (shown apart, once per grid);
- ``spawn``: every cell a fresh interpreter that imports everything again.

For every cell it prints the time from starting its process to its first training step,
and the part of it that is overhead rather than the teacher's work (loading the teacher,
predicting its batches once per teacher and seed for the grid): the target is <= 1 s
with the forkserver.  Then the per-phase split of the cell: start (executor -> the cell's
code runs), store (MLflow: attach, find or open the run), set-up (config, data, models,
batches), teacher, train, sample, metrics, logging (the rest: final metrics and
artifacts, closing the run, the reply).  Short training and evaluation keep it quick; the
start-up does not depend on them.

Run: ``python benchmarks/bench_startup.py [--quick]``.  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _args

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("start", "store", "set-up", "teacher", "train", "sample", "metrics", "logging")
TIMED = {"store": ("_setup_worker", "_open_run"), "teacher preds": ("_teacher_source",)}
"""Functions of ``harness.cell`` whose time the benchmark adds up, by phase."""


def timed_job(job: Any) -> dict[str, Any]:
    """``harness.cell.run_job`` with the wall clock read at entry, first step and return,
    and the time spent in the store (MLflow) and the teacher's predictions."""
    entered = time.time()
    import harness.cell as cell

    first: list[float] = []
    spent = dict.fromkeys(TIMED, 0.0)
    make_logger = cell._step_logger

    def step_logger(*args: Any, **kwargs: Any):
        log = make_logger(*args, **kwargs)

        def timed(step: int, metrics: dict[str, float]) -> None:
            if not first:
                first.append(time.time())
            log(step, metrics)

        return timed

    def timer(phase: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start

        return timed

    cell._step_logger = step_logger
    for phase, names in TIMED.items():
        for name in names:
            setattr(cell, name, timer(phase, getattr(cell, name)))
    result = cell.run_job(job)
    if not first:  # failed or skipped before training: report it as it is
        return result
    result["clock"] = {"entered": entered, "first_step": first[0], "returned": time.time()}
    result["spent"] = spent
    return result


def phases(result: dict[str, Any], submitted: float, ended: float) -> dict[str, float]:
    """Seconds per phase of one cell (see the module docstring)."""
    clock, metrics, spent = result["clock"], result["metrics"], result["spent"]
    teacher = (
        metrics.get("time_teacher_s", 0.0)
        + metrics.get("time_assistant_s", 0.0)
        + spent["teacher preds"]
    )
    before_train = clock["first_step"] - clock["entered"]
    out = {
        "start": clock["entered"] - submitted,
        "store": spent["store"],
        "set-up": max(0.0, before_train - teacher - spent["store"]),
        "teacher": teacher,
        "train": metrics["time_train_s"],
        "sample": metrics["time_sample_s"],
        "metrics": metrics["time_metrics_s"],
    }
    out["logging"] = max(0.0, (ended - submitted) - sum(out.values()))
    out["to first step"] = clock["first_step"] - submitted
    # What a cell pays before training that is not the teacher's work (loading it, or
    # predicting its batches, once per teacher and seed for the whole grid).
    out["overhead"] = out["to first step"] - teacher
    return out


def jobs(cache: Path, store: Path, count: int, steps: int) -> list[Any]:
    """``count`` cells of the embedded default at seed 0 (distinct objectives), prepared
    as ``run_grid`` prepares them; the teacher they share is built (or copied) first."""
    from harness.cell import git_commit, run_job
    from harness.config import expand, experiment_name, grid_id, load_config
    from harness.grid import _jobs
    from harness.jobs import GridContext
    from harness.tracking import Tracker

    objectives = ["none", "outkd", "dist", "place", "lift", "outkd+featkd"][:count]
    cfg = load_config(
        ROOT / "configs" / "bench.toml",
        [
            "teachers=[{prune = 0.0}]",
            f"objectives={objectives!r}",
            "grid.seeds=[0]",
            f"train.steps={steps}",
            "eval.num_samples=200",
            "eval.sample_steps=5",
            "eval.batch_size=200",
        ],
    )
    uri = f"sqlite:///{store / 'mlflow.db'}"
    tracker = Tracker(uri, experiment_name(cfg))
    context = GridContext(
        config=cfg.model_dump(mode="json"),
        tracking_uri=uri,
        experiment_id=tracker.experiment_id,
        grid_id=grid_id(cfg),
        cache_dir=str(cache),
        rerun=True,
        progress=False,
        git_commit=git_commit(),
    )
    teacher_jobs, cell_jobs = _jobs(context, expand(cfg))
    for job in teacher_jobs:
        run_job(job)
    return cell_jobs


def measure(method: str, cell_jobs: list[Any]) -> list[dict[str, float]]:
    from plugins.executors.local import LocalExecutor

    executor = LocalExecutor(workers=1, threads=1, start_method=method, progress=False)
    rows = []
    for job in cell_jobs:
        submitted = time.time()
        [result] = executor.run([job], timed_job)
        ended = time.time()
        if result.get("status") != "finished":
            raise SystemExit(f"{method}: cell {job.label} {result.get('status')}: {result}")
        rows.append(phases(result, submitted, ended))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _args.parse(_args.parser(__doc__), argv)  # --quick: 3 cells per method, not 5
    count, steps = (3, 20) if args.quick else (5, 50)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as `kdbench` sets it
    columns = ("to first step", "overhead", *PHASES)
    with tempfile.TemporaryDirectory() as tmp:
        cache, store = Path(tmp) / "cache", Path(tmp)
        cell_jobs = jobs(cache, store, count, steps)
        print(f"{count} cells of configs/bench.toml ({steps} steps), one worker, one thread")
        header = "".join(f"{p:>9}" for p in ("to 1st", "overhead", *PHASES))
        print(f"{'method':<11}{'cell':<5}{header}   (seconds)")
        summary = {}
        for method in ("forkserver", "spawn"):
            rows = measure(method, cell_jobs)
            for i, row in enumerate(rows):
                print(f"{method:<11}{i:<5}" + "".join(f"{row[p]:9.2f}" for p in columns))
            summary[method] = (
                rows[0]["overhead"],
                statistics.median(r["overhead"] for r in rows[1:]),
                statistics.median(r["to first step"] for r in rows[1:]),
            )
        for method, (first, overhead, to_first) in summary.items():
            print(
                f"{method}: cell start -> first training step {to_first:.2f} s, of which "
                f"{overhead:.2f} s is not the teacher's work (medians of cells 2..{count}); "
                f"the first cell's overhead {first:.2f} s"
                + (" (includes starting the forkserver)" if method == "forkserver" else "")
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
