"""The GPU check: one command that exercises kdbench on a CUDA machine within 8 minutes.

Stages (each in its own process, with its own time limit, skipped when the 8-minute budget
cannot hold it):

1. ``gpu-tests``: ``pytest -m gpu`` (the tests that need a CUDA device).
2. ``paper-cell``: a few hundred KD steps of a paper-scale cell (the 78.7M CelebA U-Net
   as teacher, a narrower U-Net student, 64x64, ``place+featkd`` with the Diff-Pruning
   options: 41 sub-module taps, sums over C*H*W, model-only clipping) on random data (or
   ``--data``, a ``.pt`` tensor of images in [-1, 1]) under bf16 autocast; it reports
   iter/s, the CUDA peak memory (``torch.cuda.max_memory_allocated``), the teacher's
   share of a step and the autocast dtype it saw.
3. ``perf``: the speed benchmarks on CUDA (what ``tox -e perf`` runs, ``--quick``),
   through tox when ``--tox`` is given (tox must be able to build its env offline).

``--dry-run`` runs the same logic on the CPU at toy scale: pytest only collects the GPU
tests, the cell trains a tiny U-Net for 3 steps in fp32, perf is printed, not run.  The
report (a table, and ``--json PATH``) is printed either way.

Run: ``benchmarks/gpu_check.sh [--dry-run] [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
LIMITS_S = {"gpu-tests": 120, "paper-cell": 180, "perf": 150}
CELL_MARK = "GPU_CHECK_CELL "


@dataclass
class Stage:
    name: str
    command: list[str]
    limit_s: int
    run: bool = True
    status: str = "pending"
    seconds: float = 0.0
    summary: str = ""
    details: dict = field(default_factory=dict)


def plan(args: argparse.Namespace) -> list[Stage]:
    """The stages and their commands (CPU stand-ins under ``--dry-run``)."""
    py = sys.executable
    tests = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", args.tests]
    if args.dry_run:
        tests.append("--collect-only")
    cell = [py, str(Path(__file__).resolve()), "--cell", "--steps", str(args.steps)]
    if args.dry_run:
        cell.append("--tiny")
    if args.data:
        cell += ["--data", args.data]
    perf = (
        ["tox", "-e", "perf", "--", "--quick"]
        if args.tox
        else [
            py,
            str(ROOT / "benchmarks" / "run_all.py"),
            "--quick",
        ]
    )
    return [
        Stage("gpu-tests", tests, LIMITS_S["gpu-tests"]),
        Stage("paper-cell", cell, LIMITS_S["paper-cell"]),
        Stage("perf", perf, LIMITS_S["perf"], run=not args.dry_run),
    ]


def summarise(stage: Stage, output: str, returncode: int | None) -> None:
    """Fill a stage's status, summary and details from its output and exit code."""
    if returncode is None:
        stage.status = "timeout"
    elif stage.name == "gpu-tests" and returncode == 5:
        stage.status = "no tests"  # pytest: nothing collected
    else:
        stage.status = "ok" if returncode == 0 else f"failed ({returncode})"
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if stage.name == "gpu-tests":
        counts = re.findall(
            r"(\d+) (passed|failed|skipped|error|errors|deselected|tests? collected)", output
        )
        stage.details = {kind: int(n) for n, kind in counts}
        stage.summary = lines[-1] if lines else ""
    elif stage.name == "paper-cell":
        found = [ln[len(CELL_MARK) :] for ln in lines if ln.startswith(CELL_MARK)]
        if found:
            stage.details = json.loads(found[-1])
            d = stage.details
            stage.summary = (
                f"{d['steps']} steps of {d['teacher_params'] / 1e6:.1f}M -> "
                f"{d['student_params'] / 1e6:.2f}M at {d['size']}x{d['size']}, batch "
                f"{d['batch']}: {d['iter_per_s']:.2f} it/s, peak {d['peak_mem_mb']:.0f} MiB, "
                f"teacher {100 * d['teacher_share']:.0f}% of a step, autocast {d['autocast']}"
            )
            if returncode == 0 and not d["finite"]:
                stage.status = "failed (loss not finite)"
        else:
            stage.summary = lines[-1] if lines else "no output"
    else:
        stage.summary = " | ".join(lines[-3:])


def run_stage(stage: Stage, remaining_s: float) -> None:
    if not stage.run:
        stage.status = "dry-run"
        stage.summary = "would run: " + " ".join(stage.command)
        return
    if remaining_s < stage.limit_s:
        stage.status = "skipped"
        stage.summary = (
            f"{remaining_s:.0f} s left of the budget, the stage may take {stage.limit_s} s"
        )
        return
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    try:
        out = subprocess.run(
            stage.command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=stage.limit_s,
        )
        output, code = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as exc:
        output = (
            (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        )
        code = None
    except FileNotFoundError as exc:
        output, code = str(exc), 127
    stage.seconds = time.perf_counter() - start
    summarise(stage, output, code)
    if code not in (0, 5):
        sys.stderr.write(f"--- {stage.name} output (last lines)\n{output[-3000:]}\n")


def report(stages: list[Stage], device: str, total_s: float) -> str:
    rows = [f"GPU check on {device}: {total_s:.0f} s of the {BUDGET_S} s budget"]
    width = max(len(s.name) for s in stages)
    for s in stages:
        rows.append(f"  {s.name:<{width}}  {s.status:<12} {s.seconds:6.1f} s  {s.summary}")
    return "\n".join(rows)


def device_name(dry_run: bool) -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu (dry run)" if dry_run else "cpu"


# ------------------------------------------------------------------ the paper-scale cell


def paper_cell(steps: int, tiny: bool, data: str | None) -> dict:
    """Train a CelebA-scale KD cell with the Diff-Pruning options; return its measurements."""
    import torch

    from harness import build_combination, get_backbone
    from harness.process import get_process
    from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, autocast_for, train

    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    unet = get_backbone("unet")
    size, batch = (8, 4) if tiny else (64, 64)
    torch.manual_seed(0)
    if tiny:
        teacher = unet.build(
            "xxs", image_size=size, channels=3, config={"block_out_channels": [16, 32]}
        )
        student = unet.build("xxs", image_size=size, channels=3)
    else:
        teacher = unet.build("celeba", image_size=size, channels=3)
        student = unet.build(
            "celeba",
            image_size=size,
            channels=3,
            config={"block_out_channels": [32, 64, 64, 64, 128], "norm_num_groups": 8},
        )
    teacher = teacher.to(device).eval().requires_grad_(False)
    if data:
        images = torch.load(data, map_location="cpu", weights_only=True).float()
        images = torch.nn.functional.interpolate(images[:, :3], size=(size, size), mode="area")
    else:
        images = (
            torch.rand(
                max(8 * batch, 64), 3, size, size, generator=torch.Generator().manual_seed(0)
            )
            * 2
            - 1
        )
    objective = build_combination(
        [
            {"name": "place", "weight": 1.0, "group_size": 16, "eps": 1e-7},
            {"name": "featkd", "weight": 1e-6, "taps": "submodules", "reduction": "sum"},
        ]
    )
    pairs = unet.pair_taps(student, teacher, objective.tap_set)
    seen: dict[str, str] = {}

    def record_dtype(module, inputs, output) -> None:  # returns None: the output is kept
        seen.setdefault("dtype", str(output.dtype).replace("torch.", ""))

    hook = student.inner.conv_out.register_forward_hook(record_dtype)
    precision = "fp32" if tiny else "bf16"
    settings = LoopSettings(
        steps=steps,
        batch_size=batch,
        lr=2e-4,
        ema_decay=0.9999,
        grad_clip=1.0,
        grad_clip_scope="model",
        loss_reduction="sum",
        precision=precision,
        log_every=max(1, steps // 4),
        checkpoint_every=10**9,
    )
    autocast = autocast_for(device, precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = train(
        student,
        batches=BatchMaker(images, None, get_process("ddpm"), batch, 0, device),
        settings=settings,
        objective=objective,
        teacher=LiveTeacher(teacher, pairs, autocast),
        pairs=pairs,
        device=device,
    )
    hook.remove()
    finite = all(v == v and abs(v) != float("inf") for v in result.last_terms.values())
    return {
        "device": device.type,
        "steps": steps,
        "size": size,
        "batch": batch,
        "taps": len(pairs),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "iter_per_s": result.iter_per_s,
        "peak_mem_mb": result.peak_mem_mb,
        "teacher_share": result.teacher_share,
        "autocast": seen.get("dtype", "none"),
        "loss": result.last_terms.get("loss", float("nan")),
        "finite": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="run the logic on the CPU at toy scale"
    )
    parser.add_argument("--steps", type=int, default=None, help="paper-cell steps (300; dry run 3)")
    parser.add_argument(
        "--data", default=None, help="a .pt tensor of images [N, C, H, W] in [-1, 1]"
    )
    parser.add_argument("--tox", action="store_true", help="run perf as `tox -e perf -- --quick`")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    parser.add_argument("--tests", default="tests", help="where pytest looks for the GPU tests")
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if (args.dry_run or args.tiny) else 300
    if args.cell:
        print(CELL_MARK + json.dumps(paper_cell(args.steps, args.tiny, args.data)), flush=True)
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; use --dry-run to check the logic on the CPU",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    stages = plan(args)
    for stage in stages:
        run_stage(stage, BUDGET_S - (time.perf_counter() - start))
    total = time.perf_counter() - start
    text = report(stages, device_name(args.dry_run), total)
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device_name(args.dry_run),
                    "seconds": total,
                    "stages": [asdict(s) for s in stages],
                },
                indent=2,
            )
        )
    bad = [s for s in stages if s.status not in ("ok", "dry-run", "no tests")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
