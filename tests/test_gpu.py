"""Tests that need a CUDA device (``pytest -m gpu``; ``benchmarks/gpu_check.sh`` runs them).

They check what the CPU suite cannot: PLACE's device-side ordering (``torch.argsort``) and
the Diff-Pruning FeatKD options give the CPU's values and gradients, and a KD step under
bf16 autocast reports the CUDA peak memory and trains.
"""

from __future__ import annotations

import pytest
import torch

from harness.factories import build_combination, get_objective
from harness.objective import Outputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls and convolutions would round differently from the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _grad(obj, s, t, fs=None, ft=None):
    s = s.clone().requires_grad_()
    fs = {k: v.clone().requires_grad_() for k, v in (fs or {}).items()}
    terms = obj(student=Outputs(s, fs), teacher=Outputs(t, ft or {}))
    terms["loss"].backward()
    return terms, s.grad, {k: v.grad for k, v in fs.items()}


@pytest.mark.parametrize("group_size", [16, 17])
def test_place_on_cuda_matches_the_cpu(group_size):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    obj = get_objective("place", group_size=group_size, eps=1e-7)
    cpu, g_cpu, _ = _grad(obj, s, t)
    gpu, g_gpu, _ = _grad(obj.cuda(), s.cuda(), t.cuda())
    for key in ("coarse", "fine", "w", "loss"):
        assert gpu[key].item() == pytest.approx(cpu[key].item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-4, atol=1e-9)


def test_featkd_sum_reduction_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(1)
    fs = {"a": torch.randn(4, 8, 16, 16, generator=g), "b": torch.randn(4, 16, 8, 8, generator=g)}
    ft = {"a": torch.randn(4, 16, 16, 16, generator=g), "b": torch.randn(4, 32, 8, 8, generator=g)}
    s, t = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    obj = get_objective("featkd", reduction="sum")
    obj.setup(Outputs(s, fs), Outputs(t, ft))
    cpu, _, gf_cpu = _grad(obj, s, t, fs, ft)
    cuda = {k: v.cuda() for k, v in fs.items()}, {k: v.cuda() for k, v in ft.items()}
    gpu, _, gf_gpu = _grad(obj.cuda(), s.cuda(), t.cuda(), *cuda)
    assert gpu["loss"].item() == pytest.approx(cpu["loss"].item(), rel=1e-5)
    for k in fs:
        torch.testing.assert_close(gf_gpu[k].cpu(), gf_cpu[k], rtol=1e-4, atol=1e-6)


def test_bf16_kd_training_on_cuda_reports_peak_memory_and_trains():
    from harness.factories import get_backbone
    from harness.process import get_process
    from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, autocast_for, train

    device = torch.device("cuda")
    unet = get_backbone("unet")
    torch.manual_seed(0)
    teacher = unet.build("xxs", image_size=16, channels=3, config={"block_out_channels": [16, 32]})
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = unet.build("xxs", image_size=16, channels=3)
    before = [p.detach().clone() for p in student.parameters()]
    objective = build_combination(
        [
            {"name": "place", "weight": 1.0, "group_size": 16},
            {"name": "featkd", "weight": 1e-6, "taps": "submodules", "reduction": "sum"},
        ]
    )
    pairs = unet.pair_taps(student, teacher, objective.tap_set)
    dtypes = []

    def record(module, inputs, output) -> None:
        dtypes.append(output.dtype)

    hook = student.inner.conv_out.register_forward_hook(record)
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    torch.cuda.reset_peak_memory_stats(device)
    result = train(
        student,
        batches=BatchMaker(images, None, get_process("ddpm"), 16, 0, device),
        settings=LoopSettings(
            steps=8, batch_size=16, precision="bf16", loss_reduction="sum", grad_clip_scope="model"
        ),
        objective=objective,
        teacher=LiveTeacher(teacher, pairs, autocast_for(device, "bf16")),
        pairs=pairs,
        device=device,
    )
    hook.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert result.peak_mem_mb == pytest.approx(torch.cuda.max_memory_allocated(device) / 2**20)
    assert result.peak_mem_mb > 0
    assert all(v == v for v in result.last_terms.values())
    moved = max(
        (p.detach().cpu() - b).abs().max().item() for p, b in zip(student.parameters(), before)
    )
    assert moved > 0
