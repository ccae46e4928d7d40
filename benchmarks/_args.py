"""The flags every benchmark script accepts, so ``run_all.py`` can pass them to each.

``--quick`` (fewer steps and repeats), ``--device`` (default: cuda when available) and
``--threads`` (torch CPU threads; 0 keeps torch's default).  A script adds its own flags
to the parser this returns; ``run_all.py`` forwards only these common ones.
"""

from __future__ import annotations

import argparse

COMMON = ("--quick", "--device", "--threads")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the common flags, described by the script's docstring."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
    )
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, fill the device and apply the thread count."""
    args = p.parse_args(argv)
    if args.device is None:
        args.device = default_device()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args
