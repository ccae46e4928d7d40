"""Harness overhead and the grid-level teacher-prediction cache.

1. One KD training step through ``harness.trainer.train`` against a bare PyTorch loop
   doing the same math on the same models (no hooks, no logging, no EMA bookkeeping
   beyond the same AveragedModel update): target at most 3% slower.
2. A grid of K objectives sharing one teacher: K live-teacher trainings against one
   cache build plus K cached-teacher trainings (the speedup a grid gets).

Run: ``python benchmarks/bench_harness.py [--quick]``.  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import _args
import torch

from harness import build_combination, get_backbone
from harness.process import get_process
from harness.teacher_cache import CachedTeacher, TeacherPredictionCache
from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, make_ema, train


def models(student_preset: str, teacher_preset: str, size: int):
    backbone = get_backbone("unet")
    torch.manual_seed(0)
    student = backbone.build(student_preset, image_size=size, channels=1, num_classes=10)
    torch.manual_seed(1)
    teacher = backbone.build(teacher_preset, image_size=size, channels=1, num_classes=10)
    return student, teacher.eval().requires_grad_(False)


def data(size: int, n: int = 512):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1, torch.randint(
        0, 10, (n,), generator=g
    )


def batches_of(images: torch.Tensor, labels: torch.Tensor, batch: int) -> BatchMaker:
    """The same DDPM batches (seed 0, CPU) for every loop measured."""
    return BatchMaker(images, labels, get_process("ddpm"), batch, 0, torch.device("cpu"))


def bare_loop(student, teacher, batches: BatchMaker, steps: int, lr: float) -> float:
    """The same math with nothing around it: seconds per step after 3 warm-up steps."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    ema = make_ema(student, 0.99)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        b = batches(step)
        pred = student(b.x_t, b.t, b.cond)
        with torch.no_grad():
            t_pred = teacher(b.x_t, b.t, b.cond)
        loss = torch.mean((pred - b.target) ** 2) + torch.mean((pred - t_pred) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema.update_parameters(student)
        if step >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def harness_loop(student, teacher, batches: BatchMaker, steps: int, lr: float) -> float:
    settings = LoopSettings(
        steps=steps, batch_size=batches.rand.b, lr=lr, log_every=25, checkpoint_every=10**9
    )
    logged = []
    result = train(
        student,
        batches=batches,
        settings=settings,
        objective=build_combination([{"name": "outkd"}]),
        teacher=LiveTeacher(teacher),
        log=lambda s, m: logged.append(m),
    )
    return 1.0 / result.iter_per_s


def overhead(args) -> None:
    size, batch = 16, 64
    images, labels = data(size)
    print(
        f"\n## Harness step vs bare PyTorch loop (U-Net {args.student} <- {args.teacher}, "
        f"{size}x{size}, batch {batch}, {args.steps} steps, median of {args.repeats})"
    )
    bare, ours = [], []
    for _ in range(args.repeats):
        for loop, times in ((bare_loop, bare), (harness_loop, ours)):
            s, t = models(args.student, args.teacher, size)
            times.append(loop(s, t, batches_of(images, labels, batch), args.steps, 1e-3))
    b, h = statistics.median(bare), statistics.median(ours)
    print(f"bare loop      {1000 * b:8.1f} ms/step")
    print(f"kdbench train  {1000 * h:8.1f} ms/step   ({100 * (h / b - 1):+.1f}% vs bare)")


def cache_speedup(args) -> None:
    size, batch, k = 16, 64, args.objectives
    images, labels = data(size)
    objectives = ["outkd", "lift", "place", "dist", "none", "outkd"][:k]
    print(
        f"\n## Grid of {k} objectives sharing one teacher ({args.teacher} -> {args.student}, "
        f"{args.steps} steps each)"
    )

    settings = LoopSettings(
        steps=args.steps, batch_size=batch, log_every=25, checkpoint_every=10**9
    )

    def train_each(teacher_source) -> None:
        """One training per objective; ``teacher_source(teacher)`` is what it distils from."""
        for name in objectives:
            s, t = models(args.student, args.teacher, size)
            train(
                s,
                batches=batches_of(images, labels, batch),
                settings=settings,
                objective=build_combination([{"name": name}]),
                teacher=teacher_source(t),
            )

    start = time.perf_counter()
    train_each(LiveTeacher)
    live = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, t = models(args.student, args.teacher, size)
        cache = TeacherPredictionCache(Path(tmp) / "preds", args.steps)
        cache.build(LiveTeacher(t), batches_of(images, labels, batch))
        train_each(lambda _: CachedTeacher(cache))
        cached = time.perf_counter() - start
    print(f"live teacher in every cell  {live:7.1f} s")
    print(f"teacher once, then cached   {cached:7.1f} s   (speedup x{live / cached:.2f})")


def main() -> None:
    p = _args.parser(__doc__)
    p.add_argument("--student", default="xxs")
    p.add_argument("--teacher", default="s")
    args = _args.parse(p)
    args.steps = 20 if args.quick else 60
    args.repeats = 1 if args.quick else 3
    args.objectives = 3 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    overhead(args)
    cache_speedup(args)


if __name__ == "__main__":
    main()
