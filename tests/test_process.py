"""Diffusion processes: noising golden values, training signal and samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit
from scipy.stats import norm

from harness.errors import OptionError, ShapeError
from harness.process import DDPMProcess, FlowProcess, get_process
from harness.registry import lookup

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 1, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(b, 1, 16, 16, generator=g)
    u = torch.rand(b, generator=g)
    return x0, noise, u


def test_get_process_validates_names_and_options():
    assert isinstance(get_process("ddpm"), DDPMProcess)
    assert isinstance(get_process("flow", shift=3.0), FlowProcess)
    with pytest.raises(OptionError, match="did you mean 'flow'.*valid: ddpm, flow"):
        get_process("flwo")
    with pytest.raises(OptionError, match="no option 'shfit'.*did you mean 'shift'"):
        get_process("flow", shfit=2)
    with pytest.raises(OptionError, match="timestep_sampling"):
        get_process("flow", timestep_sampling="cosine")
    assert get_process("ddpm").prediction == "epsilon"
    assert get_process("flow").prediction == "velocity"


def test_ddpm_example_matches_closed_form():
    x0, noise, u = batch()
    u[0], u[1] = 0.0, 0.99999
    x_t, t, target = get_process("ddpm").training_example(x0, noise, u)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    steps = np.minimum(np.floor(u.numpy().astype(np.float64) * 1000), 999).astype(int)
    assert t.dtype == x0.dtype and t.shape == (6,)
    assert t.tolist() == steps.astype(float).tolist()
    assert t[0] == 0 and t[1] == 999
    a = torch.tensor(np.sqrt(abar[steps]), dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor(np.sqrt(1 - abar[steps]), dtype=torch.float32).view(-1, 1, 1, 1)
    assert torch.allclose(x_t, a * x0 + s * noise, atol=1e-5)
    assert torch.equal(target, noise)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_example_matches_closed_form(shift):
    x0, noise, u = batch()
    x_t, t, target = get_process("flow", shift=shift).training_example(x0, noise, u)
    un = u.numpy().astype(np.float64)
    sigma = shift * un / (1 + (shift - 1) * un)
    assert np.allclose(t.numpy(), sigma * 1000, atol=1e-3)
    s = torch.tensor(sigma, dtype=torch.float32).view(-1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - s) * x0 + s * noise, atol=1e-6)
    assert torch.equal(target, noise - x0)


def test_flow_logit_normal_sampling_matches_scipy():
    u = torch.tensor([0.0, 0.1, 0.5, 0.9])
    proc = get_process("flow", timestep_sampling="logit_normal", logit_mean=0.5, logit_std=1.5)
    expect = expit(0.5 + 1.5 * norm.ppf(u.numpy().astype(np.float64)))
    assert np.allclose(proc.sigma_of(u).numpy(), expect)


def test_examples_are_deterministic_and_shape_checked():
    x0, noise, u = batch()
    for name in ("ddpm", "flow"):
        proc = get_process(name)
        a, b = proc.training_example(x0, noise, u), proc.training_example(x0, noise, u)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        with pytest.raises(ShapeError, match="u must have shape"):
            proc.training_example(x0, noise, u[:2])
        with pytest.raises(ShapeError, match="noise shape"):
            proc.training_example(x0, noise[:, :, :8], u)


@pytest.mark.parametrize("name,backbone", [("ddpm", "unet"), ("flow", "mmdit")])
def test_training_reduces_the_loss_on_a_fixed_batch(name, backbone):
    torch.manual_seed(0)
    model = lookup("backbone", backbone)().build("xxs", image_size=16, channels=1)
    proc = get_process(name)
    x0, noise, u = batch(8)
    x_t, t, target = proc.training_example(x0, noise, u)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.mse_loss(model(x_t, t, None), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def _point_mass_oracles(c: float):
    """Exact epsilon / velocity for data that is the constant image ``c``."""
    abar = get_process("ddpm").scheduler.alphas_cumprod

    def eps(x, t, cond):
        a = abar[t.long()].view(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    def velocity(x, t, cond):
        s = (t / 1000).view(-1, 1, 1, 1)
        return (x - c) / s

    return eps, velocity


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_samplers_recover_a_point_mass_with_the_exact_model(name):
    eps, velocity = _point_mass_oracles(0.3)
    fn = eps if name == "ddpm" else velocity
    out = get_process(name).sample(
        fn, (3, 1, 4, 4), None, 7, torch.Generator().manual_seed(0), "cpu"
    )
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_sampling_is_deterministic_in_range_and_seeded(name):
    torch.manual_seed(0)
    model = lookup("backbone", "unet")().build("xxs", image_size=16, channels=1, num_classes=10)
    model.eval()
    proc = get_process(name)
    cond = torch.tensor([0, 1, 2])

    def draw(seed):
        return proc.sample(
            model, (3, 1, 16, 16), cond, 4, torch.Generator().manual_seed(seed), torch.device("cpu")
        )

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (3, 1, 16, 16)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_uses_the_requested_number_of_model_calls():
    calls = []

    def fn(x, t, cond):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    get_process("ddpm").sample(fn, (1, 1, 2, 2), None, 5, torch.Generator(), "cpu")
    # Trailing spacing starts from pure noise at t = T - 1.
    assert len(calls) == 5 and calls[0] == 999.0 and calls == sorted(calls, reverse=True)
    with pytest.raises(OptionError, match="steps"):
        get_process("flow").sample(fn, (1, 1, 2, 2), None, 0, torch.Generator(), "cpu")
