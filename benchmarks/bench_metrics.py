"""Seconds for FID+KID+PR+IS on 1,000 vs 1,000 digits with the kdbench-digits extractor.

Generated = the first 1,000 digits, reference = the last 1,000 (203 shared); both 16x16.
Prints the median of ``--repeats`` runs for each metric alone, all four together, and all
four with a warm reference cache (``cache_dir``).  Usage:
``python benchmarks/bench_metrics.py [--quick] [--repeats 3] [--device cpu] [--threads N]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import _args
import torch

from harness.metrics import compute_metrics
from plugins.datasets.digits import load_digits_tensors


def timed(fn, repeats: int) -> tuple[float, dict]:
    times, out = [], {}
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = _args.parser(__doc__)
    p.add_argument("--repeats", type=int, default=None, help="default 3, 1 with --quick")
    args = _args.parse(p)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3

    images, _ = load_digits_tensors(16, "all")
    gen, ref = images[:1000], images[-1000:]
    run = dict(feature_extractor="kdbench-digits", device=args.device)
    compute_metrics(gen[:50], ref[:50], metrics=("fid",), **run)  # warm-up (imports, weights)

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for metrics in (("fid",), ("kid",), ("prc",), ("isc",), ("fid", "kid", "prc", "isc")):
        sec, out = timed(
            lambda m=metrics: compute_metrics(gen, ref, metrics=m, **run), args.repeats
        )
        values = ", ".join(f"{k}={v:.4g}" for k, v in out.items())
        print(f"{'+'.join(metrics):>16}: {sec:6.2f} s   ({values})")
    with tempfile.TemporaryDirectory() as cache:
        compute_metrics(gen, ref, cache_dir=cache, **run)  # fill the reference cache
        sec, _ = timed(lambda: compute_metrics(gen, ref, cache_dir=cache, **run), args.repeats)
    print(f"{'all, ref cached':>16}: {sec:6.2f} s")


if __name__ == "__main__":
    main()
