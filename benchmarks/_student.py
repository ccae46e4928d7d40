"""The bench's student and its batches (configs/bench.toml), for the step benchmarks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from harness.capacity import Context
from harness.config import Capacity, load_config
from harness.trainer import BatchMaker

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench.toml"


def bench_student(device: str | torch.device, seed: int = 0):
    """``(student, batches, cfg)``: the bench student (the base pruned at 0.8, 38k
    parameters) as a cell initialises it at ``seed``, and the ``BatchMaker`` of that seed."""
    device = torch.device(device)
    cfg = load_config(CONFIG)
    ctx = Context.create(cfg, device, tempfile.mkdtemp(), progress=False)
    student = ctx.student_init(Capacity.model_validate({"prune": 0.8}), seed).to(device)
    batches = BatchMaker(ctx.images, ctx.labels, ctx.process, cfg.train.batch_size, seed, device)
    return student, batches, cfg
