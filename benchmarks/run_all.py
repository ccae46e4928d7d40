"""Run every benchmark script in this folder (``tox -e perf``) with the common flags.

Usage: ``python benchmarks/run_all.py [--quick] [--device DEV] [--threads N]``; these
flags (``_args.COMMON``) are the ones every script accepts and are passed to each.
``--help-scripts`` prints each script's own help instead of running it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import _args

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def forwarded(args) -> list[str]:
    out = ["--quick"] if args.quick else []
    if args.device:
        out += ["--device", args.device]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = _args.parser(__doc__)
    p.add_argument(
        "--help-scripts", action="store_true", help="print each script's --help and exit"
    )
    args = p.parse_args(argv)  # the device default is each script's own
    flags = forwarded(args) + (["--help"] if args.help_scripts else [])
    failed = []
    for script in scripts():
        print(f"\n=== {script.name} {' '.join(flags)}", flush=True)
        if subprocess.call([sys.executable, str(script), *flags]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
