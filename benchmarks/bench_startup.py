"""Cell start-up: from the executor starting a cell's process to its first training step.

Real cells of the embedded default (``configs/bench.toml``: digits 8x8, its 38k-parameter
student, shipped teachers), run one at a time through the ``local`` executor with each
start method:

- ``forkserver`` (the default): cells are forked from a server that imported torch,
  diffusers, MLflow and the cell's modules once; its first cell also pays for starting
  the server (shown apart, once per grid);
- ``spawn``: every cell a fresh interpreter that imports everything again.

For every cell it prints the time to the first training step (the target is <= 1 s with
the forkserver) and the per-phase split of the cell: start (executor -> the cell's code
runs), set-up (store, data, run), teacher, train, sample, metrics, logging (the rest:
artifacts, closing the run, the reply).  Short training and evaluation keep it quick; the
start-up does not depend on them.

Run: ``python benchmarks/bench_startup.py [--quick]``.  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("start", "set-up", "teacher", "train", "sample", "metrics", "logging")


def timed_job(job: Any) -> dict[str, Any]:
    """``harness.cell.run_job`` with the wall clock read at entry, first step and return."""
    entered = time.time()
    import harness.cell as cell

    first: list[float] = []
    make_logger = cell._step_logger

    def step_logger(tracker, run_id, settings):
        log = make_logger(tracker, run_id, settings)

        def timed(step: int, metrics: dict[str, float]) -> None:
            if not first:
                first.append(time.time())
            log(step, metrics)

        return timed

    cell._step_logger = step_logger
    result = cell.run_job(job)
    result["clock"] = {"entered": entered, "first_step": first[0], "returned": time.time()}
    return result


def phases(result: dict[str, Any], submitted: float, ended: float) -> dict[str, float]:
    """Seconds per phase of one cell (see the module docstring)."""
    clock, metrics = result["clock"], result["metrics"]
    teacher = metrics.get("time_teacher_s", 0.0) + metrics.get("time_assistant_s", 0.0)
    train, sample = metrics["time_train_s"], metrics["time_sample_s"]
    measured = metrics["time_metrics_s"]
    start = clock["entered"] - submitted
    before_train = clock["first_step"] - clock["entered"]
    out = {
        "start": start,
        "set-up": max(0.0, before_train - teacher),
        "teacher": teacher,
        "train": train,
        "sample": sample,
        "metrics": measured,
    }
    out["logging"] = max(0.0, (ended - submitted) - sum(out.values()))
    out["to first step"] = clock["first_step"] - submitted
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cells per method, not 5")
    args = parser.parse_args(argv)
    count, steps = (3, 20) if args.quick else (5, 50)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        cache, store = Path(tmp) / "cache", Path(tmp)
        cell_jobs = jobs(cache, store, count, steps)
        print(f"{count} cells of configs/bench.toml ({steps} steps), one worker, one thread")
        header = f"{'method':<11}{'cell':<5}" + "".join(f"{p:>9}" for p in ("to 1st", *PHASES))
        print(header + "   (seconds)")
        summary = {}
        for method in ("forkserver", "spawn"):
            rows = measure(method, cell_jobs)
            for i, row in enumerate(rows):
                cells = "".join(f"{row[p]:9.2f}" for p in ("to first step", *PHASES))
                print(f"{method:<11}{i:<5}{cells}")
            later = [r["to first step"] for r in rows[1:]]
            summary[method] = (rows[0]["to first step"], statistics.median(later))
        for method, (first, median) in summary.items():
            print(
                f"{method}: start -> first training step {median:.2f} s (median of cells "
                f"2..{count}); first cell {first:.2f} s"
                + (" (includes starting the forkserver)" if method == "forkserver" else "")
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
