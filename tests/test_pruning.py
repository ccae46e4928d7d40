"""Diff-Pruning-style structured pruning of the U-Net, and pruned model files."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

from harness.backbone import pair_taps
from harness.errors import OptionError
from harness.features import FeatureRecorder
from harness.modelio import build_from_spec, export_diffusers, load_model, save_model
from harness.process import get_process
from harness.pruning import prune
from harness.registry import lookup

pytestmark = pytest.mark.usefixtures("one_thread")


def base(preset="xxs"):
    torch.manual_seed(0)
    return lookup("backbone", "unet")().build(preset, image_size=16, channels=1, num_classes=10)


def batches(n=2, b=8):
    g = torch.Generator().manual_seed(3)
    return [
        (torch.rand(b, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (b,), generator=g))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def pair():
    model = base("xs")
    return model, prune(model, 0.5, batches(), get_process("ddpm"), timesteps=4)


def inputs(b=3):
    g = torch.Generator().manual_seed(5)
    return (
        torch.randn(b, 1, 16, 16, generator=g),
        torch.rand(b, generator=g) * 1000,
        torch.randint(0, 10, (b,), generator=g),
    )


def test_half_pruned_unet_has_the_size_of_a_half_width_unet(pair):
    model, pruned = pair
    # Golden: diffusers' U-Net with every width halved, the time embedding halved, and
    # head count kept (head width halved).  Only the sinusoidal time projection keeps its
    # width (it has no weights), so time_embedding.linear_1 keeps c0 inputs.
    cfg = dict(model.spec["config"])
    c0 = cfg["block_out_channels"][0]
    cfg["block_out_channels"] = [c // 2 for c in cfg["block_out_channels"]]
    cfg["attention_head_dim"] //= 2
    ref = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        num_class_embeds=10,
        time_embedding_dim=2 * c0,
        **cfg,
    )
    expect = sum(p.numel() for p in ref.parameters()) + (c0 - c0 // 2) * 2 * c0
    assert pruned.num_parameters() == expect
    assert abs(pruned.num_parameters() / model.num_parameters() - 0.25) < 0.02
    assert model.num_parameters() == base("xs").num_parameters()  # input untouched


def test_pruned_unet_keeps_norm_groups_heads_and_runs(pair):
    model, pruned = pair
    for module in pruned.modules():
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0
    heads = [m.heads for m in model.modules() if isinstance(m, Attention)]
    assert heads == [m.heads for m in pruned.modules() if isinstance(m, Attention)]
    x, t, c = inputs()
    assert pruned(x, t, c).shape == x.shape
    assert pruned.inner.conv_out.out_channels == 1 and pruned.inner.conv_in.in_channels == 1


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of the original rows that the pruned rows equal (exactly), in order."""
    kept = []
    for row in pruned:
        hits = [i for i in range(original.shape[0]) if torch.equal(original[i], row)]
        assert len(hits) == 1, "a pruned row is not a row of the original weight"
        kept.append(hits[0])
    return kept


def test_pruning_keeps_the_surviving_weights(pair):
    model, pruned = pair
    w0, p0 = model.inner.conv_in.weight, pruned.inner.conv_in.weight
    kept_in = _kept_rows(w0, p0)
    assert kept_in == sorted(kept_in) and len(kept_in) == w0.shape[0] // 2
    assert torch.equal(pruned.inner.conv_in.bias, model.inner.conv_in.bias[kept_in])
    # The next conv: its kept output rows, restricted to the kept input channels.
    w1 = model.inner.down_blocks[0].resnets[0].conv1.weight
    p1 = pruned.inner.down_blocks[0].resnets[0].conv1.weight
    kept_out = _kept_rows(w1[:, kept_in], p1)
    assert torch.equal(p1, w1[kept_out][:, kept_in])


def test_pruning_is_deterministic_and_uses_the_gradients(pair):
    model, pruned = pair
    again = prune(model, 0.5, batches(), get_process("ddpm"), timesteps=4)
    assert again.spec == pruned.spec
    sa, sb = again.state_dict(), pruned.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Taylor importance depends on the data: other images choose other channels.
    other = prune(
        model,
        0.5,
        [(torch.zeros(8, 1, 16, 16), torch.zeros(8, dtype=torch.long))],
        get_process("ddpm"),
        timesteps=4,
    )
    assert any(not torch.equal(other.state_dict()[k], sb[k]) for k in sb)


def test_ratio_zero_copies_and_bad_ratios_fail():
    model = base()
    copy = prune(model, 0, batches(1), get_process("ddpm"))
    assert copy is not model and copy.spec == model.spec
    assert copy.inner.conv_in.weight.data_ptr() != model.inner.conv_in.weight.data_ptr()
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(copy(x, t, c), model(x, t, c))
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(OptionError, match=r"ratio must be in \[0, 1\)"):
            prune(model, ratio, batches(1), get_process("ddpm"))
    dit = lookup("backbone", "dit")().build("xxs", image_size=16, channels=1)
    with pytest.raises(OptionError, match="pruning is supported for unet; use presets for dit"):
        prune(dit, 0.5, batches(1), get_process("ddpm"))


def test_pruned_model_spec_and_taps_pair_with_the_teacher(pair):
    model, pruned = pair
    assert pruned.spec["pruned_from"] == model.spec and pruned.spec["ratio"] == 0.5
    pairs = pair_taps(pruned.taps, model.taps)
    assert pairs == {t: t for t in model.taps}
    x, t, c = inputs()
    with FeatureRecorder(pruned, pruned.taps) as s, FeatureRecorder(model, model.taps) as te:
        pruned(x, t, c)
        with torch.no_grad():
            model(x, t, c)
    for tap in model.taps:
        fs, ft = s.features[tap], te.features[tap]
        assert fs.shape[2:] == ft.shape[2:] and fs.shape[1] * 2 == ft.shape[1]


def test_pruned_model_trains_one_step(pair):
    _, pruned = pair
    pruned = build_from_spec(pruned.spec)  # a fresh copy of the architecture
    x, t, c = inputs()
    loss = pruned(x, t, c).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pruned.parameters())


def test_pruned_save_load_round_trip(pair, tmp_path):
    _, pruned = pair
    path = tmp_path / "pruned.safetensors"
    save_model(pruned, path)
    again = load_model(path)
    assert again.spec == pruned.spec and again.num_parameters() == pruned.num_parameters()
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(again.eval()(x, t, c), pruned.eval()(x, t, c))
    with pytest.raises(OptionError, match="unpruned"):
        export_diffusers(pruned, tmp_path / "export")


def test_flow_process_prunes_too():
    model = base()
    pruned = prune(model, 0.25, batches(1), get_process("flow"), timesteps=2)
    assert pruned.num_parameters() < model.num_parameters()
