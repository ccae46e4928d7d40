"""Where a training step of the bench's student goes (configs/bench.toml: 38k params, 8x8).

Times forward, backward, gradient clipping, the AdamW update and the EMA update for the
per-tensor AdamW loop (PyTorch's CPU default), ``foreach`` (what ``harness.trainer``
uses), ``fused`` and channels_last, interleaved round by round so that a busy machine
hurts them alike; says whether each gives the same parameters, bit for bit, as the
default after the same steps; and counts the operators one step dispatches
(``torch.profiler``).  Run: ``python benchmarks/bench_step.py [--quick] [--threads N]``.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import copy
import statistics
import time

import _args
import torch
from _student import bench_student

from harness.trainer import make_ema

PHASES = ("forward", "backward", "clip", "adamw", "ema")
VARIANTS = {
    "per-tensor loop (CPU default)": {},
    "foreach (kdbench)": {"opt": {"foreach": True}, "clip": {"foreach": True}},
    "fused AdamW": {"opt": {"fused": True}, "clip": {"foreach": True}},
    "foreach + channels_last": {
        "opt": {"foreach": True},
        "clip": {"foreach": True},
        "channels_last": True,
    },
}


class Run:
    """One student trained step by step under one variant, with per-phase times."""

    def __init__(self, base, batches, device, opt=None, clip=None, channels_last=False):
        self.model = copy.deepcopy(base).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=2e-3, **(opt or {}))
        self.clip, self.cl = clip or {}, channels_last
        self.ema = make_ema(self.model, 0.99)
        self.batches, self.step, self.device = batches, 0, device
        self.times = {k: [] for k in PHASES}

    def _tick(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(self, steps: int, record: bool) -> None:
        for _ in range(steps):
            b = self.batches(self.step)
            x = b.x_t.contiguous(memory_format=torch.channels_last) if self.cl else b.x_t
            t = [self._tick()]
            loss = torch.mean((self.model(x, b.t, b.cond).float() - b.target.float()) ** 2)
            t.append(self._tick())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(self._tick())
            torch.nn.utils.clip_grad_norm_(self.params, 1.0, **self.clip)
            t.append(self._tick())
            self.opt.step()
            t.append(self._tick())
            self.ema.update_parameters(self.model)
            t.append(self._tick())
            self.step += 1
            if record:
                for k, a, z in zip(PHASES, t, t[1:]):
                    self.times[k].append(z - a)


def main() -> None:
    args = _args.parse(_args.parser(__doc__))
    device = torch.device(args.device)
    rounds, per_round = (3, 5) if args.quick else (6, 10)
    base, batches, cfg = bench_student(device)
    n = sum(p.numel() for p in base.parameters())
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; "
        f"student {n:,} params in {len(list(base.parameters()))} tensors, batch "
        f"{cfg.train.batch_size}, {cfg.dataset.image_size}x{cfg.dataset.image_size}"
    )
    runs = {name: Run(base, batches, device, **kw) for name, kw in VARIANTS.items()}
    for run in runs.values():
        run.run(3, record=False)  # warm-up
    for _ in range(rounds):
        for run in runs.values():
            run.run(per_round, record=True)
    ref = runs[next(iter(runs))].params
    print(f"\nmedian ms per step over {rounds}x{per_round} interleaved steps")
    print(f"{'variant':32s} {'total':>7s} " + " ".join(f"{k:>8s}" for k in PHASES) + "  same bits")
    for name, run in runs.items():
        med = {k: 1e3 * statistics.median(v) for k, v in run.times.items()}
        same = all(torch.equal(a, b) for a, b in zip(ref, run.params))
        print(
            f"{name:32s} {sum(med.values()):7.1f} "
            + " ".join(f"{med[k]:8.1f}" for k in PHASES)
            + f"  {'yes' if same else 'no'}"
        )
    from torch.profiler import ProfilerActivity, profile

    run = runs["foreach (kdbench)"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.run(3, record=False)
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / 3
    self_ms = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 3e3
    print(f"\naten operators per step (foreach): {ops:.0f}, their self CPU time {self_ms:.1f} ms")
    print(events.table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
