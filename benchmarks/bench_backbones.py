"""Training-step cost of every CPU-sized backbone preset, and parameter counts of all presets.

Run ``python benchmarks/bench_backbones.py`` (``--quick``: 16x16 only, the three smallest
presets, fewer steps).  Prints:

1. parameter counts of every preset of unet, dit and mmdit (paper-scale ones included,
   counted on the meta device without allocating weights);
2. for each CPU-sized preset at 16x16 and 32x32 (1 channel, 10 classes, batch 64): the
   median time of one training step (forward, MSE backward, AdamW step) as iter/s, and the
   peak memory: ``torch.cuda.max_memory_allocated`` on GPU, the peak RSS of a fresh
   process on CPU (``resource.getrusage``), so every measurement runs in its own process.

``--device cuda`` measures on a GPU; ``--threads N`` sets torch's CPU threads (default:
torch's own choice).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import _args
import torch

BACKBONES = ("unet", "dit", "mmdit")


def measure(
    backbone: str, preset: str, size: int, batch: int, steps: int, warmup: int, device: str
) -> dict:
    """One training-step measurement (run inside a fresh process)."""
    from harness.registry import lookup

    dev = torch.device(device)
    torch.manual_seed(0)
    model = (
        lookup("backbone", backbone)()
        .build(preset, image_size=size, channels=1, num_classes=10)
        .to(dev)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=dev)
    t = torch.rand(batch, device=dev) * 1000
    c = torch.randint(0, 10, (batch,), device=dev)
    target = torch.randn_like(x)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(x, t, c), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "backbone": backbone,
        "preset": preset,
        "size": size,
        "params": model.num_parameters(),
        "iter_per_s": 1 / statistics.median(times),
        "peak_mb": peak_mb,
    }


def run_isolated(args: argparse.Namespace, backbone: str, preset: str, size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--single",
        backbone,
        preset,
        str(size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = _args.parser(__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", default=None, help="comma-separated image sizes")
    parser.add_argument("--presets", default=None, help="comma-separated preset names")
    parser.add_argument("--single", nargs=3, metavar=("BACKBONE", "PRESET", "SIZE"))
    args = _args.parse(parser)
    if args.steps is None:
        args.steps = 3 if args.quick else 8

    if args.single:
        backbone, preset, size = args.single
        row = measure(backbone, preset, int(size), args.batch, args.steps, args.warmup, args.device)
        print(json.dumps(row))
        return

    from tabulate import tabulate

    from harness.models import preset_table
    from harness.registry import lookup

    print("Parameters per preset (16x16, 1 channel, 10 classes; meta-device count)")
    for name in BACKBONES:
        rows = preset_table(name, 16, channels=1, num_classes=10)
        print(f"\n{name}:")
        print(
            tabulate(
                [[r["name"], f"{r['params']:,}"] for r in rows], headers=["preset", "parameters"]
            )
        )

    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([16] if args.quick else [16, 32])
    )
    device_note = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {args.threads or torch.get_num_threads()} thread(s)"
    )
    print(
        f"\nOne training step (fwd + bwd + AdamW), batch {args.batch}, {device_note}; "
        f"median of {args.steps} after {args.warmup} warm-up"
    )
    table = []
    for name in BACKBONES:
        presets = list(lookup("backbone", name).cpu_presets)
        if args.presets:
            presets = [p for p in presets if p in args.presets.split(",")]
        elif args.quick:
            presets = presets[:3]
        for size in sizes:
            for preset in presets:
                row = run_isolated(args, name, preset, size)
                table.append(
                    [
                        name,
                        preset,
                        f"{size}x{size}",
                        f"{row['params']:,}",
                        f"{row['iter_per_s']:.2f}",
                        f"{row['peak_mb']:.0f}",
                    ]
                )
                print("  ", *table[-1], flush=True)
    peak = "peak MB (CUDA allocated)" if args.device.startswith("cuda") else "peak RSS MB"
    print()
    print(tabulate(table, headers=["backbone", "preset", "image", "parameters", "iter/s", peak]))


if __name__ == "__main__":
    main()
