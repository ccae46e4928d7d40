"""Students as diffusers model folders: loaded with diffusers and drawn with its schedulers.

``harness.modelio.save_pretrained`` writes ``config.json`` + safetensors (the wrapped
diffusers model's ``save_pretrained``), ``scheduler/`` and ``kdbench.json``.  Each test
draws from the reloaded model through diffusers alone (``DDIMPipeline``, or the
flow-matching scheduler in a loop) and checks that it draws exactly what kdbench's own
sampler draws from the trained model with the same noise: the folder *is* the student.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ddim_draw
from diffusers import (
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)

from harness.errors import CheckpointError
from harness.modelio import load_pretrained, save_pretrained
from harness.process import get_process
from harness.pruning import prune
from harness.registry import lookup


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unet(num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = lookup("backbone", "unet")().build(
        "xxs", image_size=16, channels=1, num_classes=num_classes
    )
    # Untrained weights draw near-constant images; perturb them so samples differ per pixel.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def kdbench_samples(model, process, n, steps, seed, cond=None):
    g = torch.Generator().manual_seed(seed)
    x = process.sample(lambda x, t, c: model(x, t, c), (n, 1, 16, 16), cond, steps, g, "cpu")
    return (x / 2 + 0.5).clamp(0, 1)  # the pipelines' image range


def test_pruned_ddpm_student_draws_the_same_digits_through_ddim_pipeline(tmp_path):
    process = get_process("ddpm")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(8, 1, 16, 16, generator=g) * 2 - 1, None)]
    student = prune(unet(0), 0.5, batches, process, timesteps=2).eval()
    folder = save_pretrained(student, tmp_path / "student", process)
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "kdbench.json",
        "scheduler",
    }
    meta = json.loads((folder / "kdbench.json").read_text())
    assert meta["process"]["name"] == "ddpm" and meta["prediction"] == "epsilon"
    # A pruned U-Net's widths are no diffusers config: its config.json is the base's, so the
    # plain class refuses the weights, and kdbench rebuilds the widths first.
    with pytest.raises((RuntimeError, ValueError)):
        UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False)
    loaded = load_pretrained(folder)
    assert isinstance(loaded.inner, UNet2DModel) and loaded.spec == student.spec
    assert loaded.num_parameters() == student.num_parameters()

    scheduler = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.clip_sample
    drawn = ddim_draw(folder, loaded.inner, n=4, steps=5, seed=7)
    assert drawn.shape == (4, 16, 16, 1)
    expected = kdbench_samples(student, process, 4, 5, seed=7)
    assert expected.std() > 0.01  # not a constant image
    got = torch.from_numpy(drawn).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_flow_student_loads_with_unet2dmodel_and_draws_with_flow_match_euler(tmp_path):
    process = get_process("flow", shift=3.0)
    student = unet(10, seed=2)
    folder = save_pretrained(student, tmp_path / "student", process)
    inner = UNet2DModel.from_pretrained(str(folder)).eval()  # plain diffusers
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    assert scheduler.config.shift == 3.0
    labels = torch.tensor([0, 3, 7, 9])
    scheduler.set_timesteps(6)
    x = torch.randn((4, 1, 16, 16), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = inner(x, t.expand(4), class_labels=labels).sample
            x = scheduler.step(v, t, x).prev_sample
    got = (x.clamp(-1, 1) / 2 + 0.5).clamp(0, 1)
    expected = kdbench_samples(student, process, 4, 6, seed=11, cond=labels)
    assert expected.std() > 0.01
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # kdbench's own loader gives the same model back, and refuses another backbone.
    again = load_pretrained(folder, backbone="unet")
    assert again.num_parameters() == student.num_parameters()
    with pytest.raises(CheckpointError, match="holds a unet model, expected dit"):
        load_pretrained(folder, backbone="dit")
