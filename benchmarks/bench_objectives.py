"""Cost of the built-in KD objectives; PLACE against a straightforward implementation.

Run ``python benchmarks/bench_objectives.py`` (``--quick`` for a short run).  Prints:

1. forward+backward time of every objective on [96,3,64,64], [8,4,64,64], [8,4,32,32]
   and its ratio to OutKD (FeatKD distils one tap shaped like the prediction into a
   teacher tap with twice the channels, through a 1x1 conv adapter);
2. PLACE (group_size 16) against the naive argsort -> gather -> reshape version written
   below with plain autograd (the same math; the script checks that both agree);
3. one full KD training step (teacher forward, student forward/backward, AdamW step) of
   a diffusers ``UNet2DModel`` pair at 64x64, batch 16 (teacher block_out_channels
   (64,128,128), student (32,64,64)): the median step time per objective and its ratio
   to the OutKD step.

Times are medians over repeats after warm-up, with the objectives interleaved in each
repeat so that load from other processes hits them alike; on CUDA every timing
synchronises the device.  ``--clock cpu`` measures this process's CPU time instead of
wall time (use it with ``--threads 1`` on a machine shared with other jobs, where wall
time mostly measures the other jobs).
"""

from __future__ import annotations

import statistics
import time

import _args
import torch
import torch.nn.functional as F

from harness import Outputs, get_objective

SHAPES = [(96, 3, 64, 64), (8, 4, 64, 64), (8, 4, 32, 32)]
OBJECTIVES = ["none", "outkd", "featkd", "dist", "takd", "lift", "place"]


def naive_place(s, t, group_size: int = 16, eps: float = 1e-6):
    """PLACE as the paper's description reads: argsort, gather sorted copies, reshape."""
    b, c, h, w = s.shape
    rows, n = b * c, h * w
    s2, t2 = s.reshape(rows, n), t.reshape(rows, n)
    order = (t2 - s2).detach().square().argsort(dim=-1, stable=True)
    ss = s2.gather(1, order).reshape(rows, n // group_size, group_size)
    tt = t2.gather(1, order).reshape(rows, n // group_size, group_size)
    ms, mt = ss.mean(-1, keepdim=True), tt.mean(-1, keepdim=True)
    ds, dt = ss - ms, tt - mt
    beta1 = (ds * dt).mean(-1, keepdim=True) / ((ds * ds).mean(-1, keepdim=True) + eps)
    beta0 = mt - beta1 * ms
    coarse = ((beta1 - 1).abs() + beta0.abs()).mean()
    fine = (beta1.detach() * ss + beta0.detach() - tt).square().mean()
    with torch.no_grad():
        w = 1 - ((beta1 - 1).abs().mean() + beta0.abs().mean()).clamp(max=1)
    return coarse + w * fine


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter


def interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each callable, run in rotating order within every repeat."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = CLOCK()
            fns[name]()
            sync(device)
            times[name].append(CLOCK() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def objective_step(obj, s, t, fs, ft):
    def step():
        s.grad = None
        fs["tap"].grad = None
        loss = obj(student=Outputs(s, fs), teacher=Outputs(t, ft))["loss"]
        if loss.requires_grad:
            loss.backward()

    return step


def bench_objectives(device, repeats: int) -> None:
    print("\n## forward+backward of each objective (ms, median; ratio to outkd)\n")
    header = f"{'shape':>16} " + " ".join(f"{n:>14}" for n in OBJECTIVES)
    print(header)
    for shape in SHAPES:
        gen = torch.Generator(device=device).manual_seed(0)
        s = torch.randn(shape, generator=gen, device=device).requires_grad_()
        t = torch.randn(shape, generator=gen, device=device)
        b, c, h, w = shape
        fs = {"tap": torch.randn(shape, generator=gen, device=device).requires_grad_()}
        ft = {"tap": torch.randn((b, 2 * c, h, w), generator=gen, device=device)}
        fns = {}
        for name in OBJECTIVES:
            obj = get_objective(name).to(device)
            obj.setup(Outputs(s, fs), Outputs(t, ft))
            fns[name] = objective_step(obj, s, t, fs, ft)
        med = interleaved(fns, repeats, warmup=2, device=device)
        cells = " ".join(
            f"{1e3 * med[n]:>7.2f} ({med[n] / med['outkd']:>4.1f}x)".rjust(14) for n in OBJECTIVES
        )
        print(f"{str(list(shape)):>16} {cells}")


def bench_place_vs_naive(device, repeats: int) -> None:
    print("\n## PLACE (group 16) vs naive argsort -> gather -> reshape (fwd+bwd, ms, median)\n")
    print(f"{'shape':>16} {'naive':>9} {'place':>9} {'speedup':>8} {'|dloss|':>9} {'|dgrad|':>9}")
    place = get_objective("place", group_size=16)
    for shape in SHAPES:
        gen = torch.Generator(device=device).manual_seed(1)
        s = torch.randn(shape, generator=gen, device=device).requires_grad_()
        t = 0.8 * s.detach() + 0.5 * torch.randn(shape, generator=gen, device=device)
        ref = naive_place(s, t)
        got = place(student=Outputs(s), teacher=Outputs(t))["loss"]
        g_ref = torch.autograd.grad(ref, s)[0]
        g_got = torch.autograd.grad(got, s)[0]
        d_loss = (ref - got).abs().item()
        d_grad = ((g_ref - g_got).abs().max() / g_ref.abs().max()).item()

        def run_naive(s=s, t=t):
            s.grad = None
            naive_place(s, t).backward()

        def run_place(s=s, t=t):
            s.grad = None
            place(student=Outputs(s), teacher=Outputs(t))["loss"].backward()

        med = interleaved({"naive": run_naive, "place": run_place}, repeats, 2, device)
        print(
            f"{str(list(shape)):>16} {1e3 * med['naive']:>9.2f} {1e3 * med['place']:>9.2f} "
            f"{med['naive'] / med['place']:>7.2f}x {d_loss:>9.1e} {d_grad:>9.1e}"
        )


def unet(channels: tuple[int, int, int]):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    )


def bench_training_step(device, repeats: int, batch: int = 16) -> None:
    from diffusers import DDPMScheduler

    print(f"\n## full KD step, UNet2DModel 64x64, batch {batch} (ms, median of {repeats})\n")
    torch.manual_seed(0)
    teacher = unet((64, 128, 128)).to(device).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.randn(batch, 3, 64, 64, device=device)
    noise = torch.randn_like(x0)
    steps = torch.randint(0, 1000, (batch,), device=device)
    x_t = scheduler.add_noise(x0, noise, steps)
    names = ["none", "outkd", "lift", "place"]
    runs = {}
    for name in names:
        torch.manual_seed(1)
        student = unet((32, 64, 64)).to(device)
        obj = get_objective(name).to(device)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step(student=student, obj=obj, opt=opt):
            with torch.no_grad():
                t_pred = teacher(x_t, steps).sample
            s_pred = student(x_t, steps).sample
            kd = obj(student=Outputs(s_pred), teacher=Outputs(t_pred))["loss"]
            loss = F.mse_loss(s_pred, noise) + kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        runs[name] = step
    params_t = sum(p.numel() for p in teacher.parameters())
    params_s = sum(p.numel() for p in unet((32, 64, 64)).parameters())
    print(f"teacher {params_t / 1e6:.2f}M params, student {params_s / 1e6:.2f}M params")
    med = interleaved(runs, repeats, warmup=1, device=device)
    for name in names:
        print(f"{name:>8}: {1e3 * med[name]:9.1f} ms  ({med[name] / med['outkd']:.4f}x outkd)")
    # The isolated objective cost on the same tensors resolves the overhead below step noise.
    gen = torch.Generator(device=device).manual_seed(2)
    s = torch.randn(batch, 3, 64, 64, generator=gen, device=device).requires_grad_()
    t = torch.randn(batch, 3, 64, 64, generator=gen, device=device)
    fs = {"tap": s.detach().clone().requires_grad_()}
    iso = interleaved(
        {n: objective_step(get_objective(n), s, t, fs, fs) for n in ("outkd", "place")},
        max(10, 4 * repeats),
        2,
        device,
    )
    extra = iso["place"] - iso["outkd"]
    print(
        f"isolated fwd+bwd on [{batch},3,64,64]: outkd {1e3 * iso['outkd']:.2f} ms, "
        f"place {1e3 * iso['place']:.2f} ms -> place adds {1e3 * extra:.2f} ms = "
        f"{100 * extra / med['outkd']:.2f}% of the outkd step"
    )


def main() -> None:
    parser = _args.parser(__doc__)
    parser.add_argument("--skip-step", action="store_true", help="skip the training-step part")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall time or process CPU time"
    )
    args = _args.parse(parser)
    device = torch.device(args.device)
    global CLOCK
    if args.clock == "cpu" and device.type == "cpu":
        CLOCK = time.process_time
    clock = "process CPU time" if CLOCK is time.process_time else "wall time"
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"clock: {clock}"
    )
    bench_objectives(device, repeats=5 if args.quick else 20)
    bench_place_vs_naive(device, repeats=5 if args.quick else 20)
    if not args.skip_step:
        bench_training_step(device, repeats=3 if args.quick else 10)


if __name__ == "__main__":
    main()
