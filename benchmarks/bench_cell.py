"""Where a bench cell's time goes: start, teacher, train, sample, metrics, log.

Runs two cells of configs/bench.toml (``none`` and ``outkd`` at the prune0.5 teacher,
seed 0) through ``kdbench``'s own grid runner and executor, in a fresh MLflow store and
cache (the shipped teachers are used), and prints each cell's logged phase times
(``time_start_s`` is the cell process's creation to the end of its set-up) next to its
MLflow wall time.  ``--quick`` trains 60 steps and draws 200 samples.
Run: ``python benchmarks/bench_cell.py [--quick] [--threads N]``.  Asserts nothing.
"""

from __future__ import annotations

import os
import tempfile
import time

import _args
from _student import CONFIG

PHASES = ("time_start_s", "time_teacher_s", "time_train_s", "time_sample_s", "time_metrics_s")


def main() -> None:
    args = _args.parse(_args.parser(__doc__))
    from mlflow.tracking import MlflowClient

    from harness.config import load_config
    from harness.grid import run_grid

    overrides = [
        "objectives=['none', 'outkd']",
        "teachers=[{prune = 0.5}]",
        "grid.seeds=[0]",
        "executor.options={workers = 1, threads = 1}",
    ]
    if args.quick:
        overrides += ["train.steps=60", "eval.num_samples=200", "eval.batch_size=200"]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    os.environ.setdefault("KDBENCH_DEVICE", args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIG, overrides)
        start = time.perf_counter()
        run = run_grid(
            cfg,
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            cache_dir=f"{tmp}/cache",
            progress=False,
            workdir=tmp,
        )
        wall = time.perf_counter() - start
        client = MlflowClient(run.tracking_uri)
        experiment = client.get_experiment_by_name(run.experiment).experiment_id
        runs = client.search_runs([experiment], "tags.`kdbench.kind` = 'cell'")
    print(f"grid of {len(run.cells)} cells (+ its teacher's evaluation) in {wall:.1f} s")
    head = "".join(f"{p.removeprefix('time_').removesuffix('_s'):>9s}" for p in PHASES)
    print(f"{'cell':40s}{head}{'log':>9s}{'sum':>9s}{'mlflow':>9s}")
    for r in sorted(runs, key=lambda r: r.info.run_name):
        m = r.data.metrics
        parts = [m.get(p, float("nan")) for p in (*PHASES, "time_log_s")]
        mlflow_wall = (r.info.end_time - r.info.start_time) / 1e3
        print(
            f"{r.info.run_name:40s}"
            + "".join(f"{x:9.2f}" for x in parts)
            + f"{sum(parts):9.2f}{mlflow_wall:9.2f}"
        )
    print("(start is before the MLflow run opens; mlflow = the run's own start to end)")


if __name__ == "__main__":
    main()
