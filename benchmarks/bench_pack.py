"""Students side by side: K bench students trained in turn against K packed with ``vmap``.

Every cell at a seed trains the same student architecture on the same batches, so K
students could share one process with their parameters stacked
(``torch.func.stack_module_state`` + ``vmap`` over ``functional_call``).  This measures
what that would buy for the bench's student (configs/bench.toml: 38k params, 8x8,
batch 64): the median time of one training step of all K students (forward, denoising
loss, backward, per-student gradient clipping, AdamW, EMA) done one after another, as
``harness.trainer`` does in K processes, against the packed step; then how far the packed
predictions are from the sequential ones (float tolerance, not the same bits: a
convolution with stacked weights is one grouped convolution, which sums in another
order) and how far the parameters part after the same steps.  The packed forward runs
``scaled_dot_product_attention`` on its math backend: ``vmap`` has no batching rule for
the CPU flash kernel and would loop over the students (diffusers' older
``AttnProcessor`` batches too, but its predictions differ from SDPA's by 6e-3 here).
Run: ``python benchmarks/bench_pack.py [--quick] [--students 5] [--threads N]``.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import copy
import statistics
import time

import _args
import torch
from _student import bench_student
from torch import Tensor, nn

from harness.trainer import make_ema


def clip_each(grads: list[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each student's slice of the stacked gradients."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)  # one norm per student
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [coef.view(-1, *[1] * (g.dim() - 1)) for g in grads])


class Sequential:
    """K students, each with its own AdamW and EMA, stepped one after another."""

    def __init__(self, base: nn.Module, k: int, lr: float):
        self.models = [copy.deepcopy(base).train() for _ in range(k)]
        self.opts = [torch.optim.AdamW(m.parameters(), lr=lr, foreach=True) for m in self.models]
        self.emas = [make_ema(m, 0.99) for m in self.models]

    def step(self, batch) -> None:
        for model, opt, ema in zip(self.models, self.opts, self.emas):
            pred = model(batch.x_t, batch.t, batch.cond).float()
            loss = torch.mean((pred - batch.target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            ema.update_parameters(model)

    def parameters(self, name: str) -> Tensor:
        return torch.stack([dict(m.named_parameters())[name].detach() for m in self.models])


class Packed:
    """The same K students as stacked tensors: one vmapped forward and backward, one
    AdamW over the stacks (elementwise, so per student), one EMA lerp."""

    def __init__(self, base: nn.Module, k: int, lr: float):
        from torch.func import functional_call, stack_module_state, vmap
        from torch.nn.attention import SDPBackend, sdpa_kernel

        params, self.buffers = stack_module_state([copy.deepcopy(base) for _ in range(k)])
        self.params = {n: p.detach().requires_grad_() for n, p in params.items()}
        skeleton = copy.deepcopy(base).to("meta")
        batched = vmap(
            lambda p, b, x_t, t, cond: functional_call(skeleton, (p, b), (x_t, t, cond)),
            in_dims=(0, 0, None, None, None),
        )

        def forward(*args):
            with sdpa_kernel(SDPBackend.MATH):
                return batched(*args)

        self.forward = forward
        self.k = k
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=lr, foreach=True)
        self.ema = [p.detach().clone() for p in self.params.values()]

    def step(self, batch) -> None:
        pred = self.forward(self.params, self.buffers, batch.x_t, batch.t, batch.cond).float()
        # The students' parameters are disjoint: the sum's gradient is each one's own.
        loss = torch.mean((pred - batch.target) ** 2, dim=(1, 2, 3, 4)).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_each([p.grad for p in self.params.values()], 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, list(self.params.values()), 0.01)

    def parameters(self, name: str) -> Tensor:
        return self.params[name].detach()


@torch.no_grad()
def prediction_gap(seq: Sequential, packed: Packed, batch) -> float:
    """The largest absolute difference between the two runs' predictions for ``batch``."""
    one = torch.stack([m(batch.x_t, batch.t, batch.cond) for m in seq.models])
    both = packed.forward(packed.params, packed.buffers, batch.x_t, batch.t, batch.cond)
    return (one - both).abs().max().item()


def drift(seq: Sequential, packed: Packed) -> float:
    """The largest absolute difference between the two runs' parameters."""
    return max((seq.parameters(n) - packed.parameters(n)).abs().max().item() for n in packed.params)


def main() -> None:
    p = _args.parser(__doc__)
    p.add_argument("--students", type=int, default=5, help="students per pack (default 5)")
    args = _args.parse(p)
    rounds, per_round = (3, 4) if args.quick else (5, 10)
    base, batches, cfg = bench_student(args.device)
    k = args.students
    runs = {
        "one after another": Sequential(base, k, cfg.train.lr),
        "packed (vmap)": Packed(base, k, cfg.train.lr),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    step = 0
    gap = prediction_gap(*runs.values(), batches(0))
    for run in runs.values():
        run.step(batches(0))  # warm-up, same first step for both
    first = drift(*runs.values())
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for s in range(step, step + per_round):
                run.step(batches(1 + s))
            if torch.cuda.is_available() and str(args.device).startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / per_round)
        step += per_round
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}; "
        f"{k} students of {sum(q.numel() for q in base.parameters()):,} params, batch "
        f"{cfg.train.batch_size}, {cfg.dataset.image_size}x{cfg.dataset.image_size}"
    )
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:20s} {ms:8.1f} ms per step of all {k} ({ms / k:.1f} per student)")
    speedup = medians["one after another"] / medians["packed (vmap)"]
    print(f"packed / one after another: x{speedup:.2f}")
    print(f"largest difference of the first step's predictions: {gap:.1e} (float tolerance)")
    print(
        f"largest parameter difference: {first:.1e} after 1 step, "
        f"{drift(*runs.values()):.1e} after {1 + step}: Adam's first step moves each "
        "parameter by lr times its gradient's sign, so a near-zero gradient whose last bits "
        "differ can part the runs by up to 2 lr at once"
    )


if __name__ == "__main__":
    main()
