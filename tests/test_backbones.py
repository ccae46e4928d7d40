"""Backbones (unet, dit, mmdit), feature taps, presets and model files."""

from __future__ import annotations

import pytest
import torch

from harness.backbone import pair_taps
from harness.errors import CheckpointError, OptionError, ShapeError
from harness.features import FeatureRecorder
from harness.modelio import export_diffusers, load_model, save_model
from harness.models import count_preset, preset_table
from harness.registry import lookup
from harness.storage import save_tensors

BACKBONES = ["unet", "dit", "mmdit"]


pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(name):
    return lookup("backbone", name)()


def tiny(name, num_classes=10, preset="xxs", **kw):
    torch.manual_seed(0)
    return backbone(name).build(preset, image_size=16, channels=1, num_classes=num_classes, **kw)


def inputs(b=4, num_classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 16, 16, generator=g)
    t = torch.rand(b, generator=g) * 1000
    c = torch.randint(0, num_classes, (b,), generator=g) if num_classes else None
    return x, t, c


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_forward_shape_and_one_step(name, num_classes):
    model = tiny(name, num_classes)
    x, t, c = inputs(num_classes=num_classes)
    y = model(x, t, c)
    assert y.shape == x.shape and torch.isfinite(y).all()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.mse_loss(y, torch.randn_like(y))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    changed = sum(not torch.equal(before[k], v) for k, v in model.named_parameters())
    assert changed > 0.9 * len(before)


@pytest.mark.parametrize("name", BACKBONES)
def test_conditioning_changes_the_output(name):
    model = tiny(name).eval()
    x, t, _ = inputs(2)
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 2]))
        b = model(x, t, torch.tensor([3, 4]))
    assert not torch.allclose(a, b)
    with pytest.raises(ShapeError, match="class-conditional"):
        model(x, t, None)
    with pytest.raises(ShapeError, match="labels of shape"):
        model(x, t, torch.tensor([1]))


def test_unconditional_models_ignore_labels():
    for name in BACKBONES:
        model = tiny(name, 0).eval()
        x, t, _ = inputs(2)
        with torch.no_grad():
            assert torch.equal(model(x, t, None), model(x, t, torch.tensor([0, 5])))


def test_scalar_timestep_broadcasts():
    model = tiny("unet").eval()
    x, _, c = inputs(3)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor(250.0), c), model(x, torch.full((3,), 250.0), c))


def test_dit_class_dropout_is_zero():
    model = tiny("dit")
    rates = [b.norm1.emb.class_embedder.dropout_prob for b in model.inner.transformer_blocks]
    assert rates == [0.0] * len(model.inner.transformer_blocks)
    # With no label dropout a training-mode forward is deterministic and equals eval mode.
    x, t, c = inputs(8)
    with torch.no_grad():
        train = [model.train()(x, t, c) for _ in range(3)]
        evald = model.eval()(x, t, c)
    assert all(torch.equal(train[0], y) for y in train[1:]) and torch.equal(train[0], evald)


def test_mmdit_accepts_real_condition_tensors():
    model = tiny("mmdit").eval()
    x, t, c = inputs(2)
    tokens = model.cond_embed(c).view(2, model.cond_tokens, -1)
    pooled = model.pooled_embed(c)
    with torch.no_grad():
        by_label = model(x, t, c)
        by_dict = model(x, t, {"encoder_hidden_states": tokens, "pooled_projections": pooled})
        other = model(
            x,
            t,
            {
                "encoder_hidden_states": torch.randn(2, 7, tokens.shape[-1]),
                "pooled_projections": pooled,
            },
        )
    assert torch.equal(by_label, by_dict)
    assert other.shape == x.shape and not torch.allclose(other, by_label)
    with pytest.raises(ShapeError, match="pooled_projections"):
        model(x, t, {"encoder_hidden_states": tokens})


@pytest.mark.parametrize("name", BACKBONES)
def test_taps_fire_in_depth_order_with_gradients(name):
    model = tiny(name)
    x, t, c = inputs()
    with FeatureRecorder(model, model.taps) as rec:
        y = model(x, t, c)
    assert list(rec.features) == model.taps
    for module in model.tap_modules().values():
        assert not module._forward_hooks  # removed on exit
    feats = list(rec.features.values())
    assert all(f.requires_grad and f.shape[0] == 4 for f in feats)
    if name == "unet":
        inner = model.inner
        expect = [inner.config.block_out_channels[i] for i in range(len(inner.down_blocks))]
        assert [f.shape[1] for f in feats[: len(expect)]] == expect
        assert all(f.dim() == 4 for f in feats)
    else:
        tokens = (16 // 2) ** 2  # image tokens only (MMDiT's context tokens are not tapped)
        assert all(f.shape[1:] == (tokens, model.inner.inner_dim) for f in feats)
    # The last tap of a transformer is what the output head reads: gradients reach it.
    grad = torch.autograd.grad(y.sum(), feats[-1])[0]
    assert grad.abs().sum() > 0


def test_unet_tap_is_hidden_states_of_the_down_block():
    model = tiny("unet")
    x, t, c = inputs()
    with FeatureRecorder(model, ["inner.down_blocks.0"]) as rec:
        model(x, t, c)
    # Golden: run the block by hand on conv_in's output.
    inner = model.inner
    emb = inner.time_embedding(inner.time_proj(t)) + inner.class_embedding(c)
    hidden, _ = inner.down_blocks[0](hidden_states=inner.conv_in(x), temb=emb)
    assert torch.allclose(rec.features["inner.down_blocks.0"], hidden, atol=1e-6)


def test_feature_recorder_empty_and_unknown_taps():
    model = tiny("dit")
    x, t, c = inputs()
    blocks = model.inner.transformer_blocks
    with FeatureRecorder(model, []) as rec:
        assert all(not b._forward_hooks for b in blocks)
        model(x, t, c)
    assert rec.features == {}
    with pytest.raises(OptionError, match="no module 'inner.nope'"):
        FeatureRecorder(model, ["inner.nope"])


def test_taps_pair_between_deep_teacher_and_shallow_student():
    teacher, student = tiny("dit", preset="xs"), tiny("dit", preset="xxs")
    pairs = pair_taps(student.taps, teacher.taps)
    # TinyFusion pairing: student block i <- teacher block 2i+1 (teacher twice as deep).
    assert pairs == {
        "inner.transformer_blocks.0": "inner.transformer_blocks.1",
        "inner.transformer_blocks.1": "inner.transformer_blocks.3",
    }
    x, t, c = inputs()
    with (
        FeatureRecorder(student, list(pairs)) as s,
        FeatureRecorder(teacher, list(pairs.values())) as te,
    ):
        student(x, t, c)
        with torch.no_grad():
            teacher(x, t, c)
    for sk, tk in pairs.items():
        assert s.features[sk].shape[:2] == te.features[tk].shape[:2]


def test_build_errors_are_clear():
    unet = backbone("unet")
    with pytest.raises(OptionError, match="did you mean 'xxs'"):
        unet.build("xxz", image_size=16, channels=1)
    with pytest.raises(OptionError, match="no config key 'layers_per_blok'.*layers_per_block"):
        unet.build("xxs", image_size=16, channels=1, config={"layers_per_blok": 2})
    with pytest.raises(OptionError, match="set by build's 'channels'"):
        unet.build("xxs", image_size=16, channels=1, config={"in_channels": 3})
    with pytest.raises(OptionError, match="divisible by 16"):
        unet.check_image_size(24, "celeba")
    unet.check_image_size(32, "celeba")
    with pytest.raises(OptionError, match="divisible by the patch size 2"):
        backbone("dit").build("xxs", image_size=15, channels=1)
    with pytest.raises(OptionError, match="patch size 4"):
        backbone("mmdit").build("xxs", image_size=18, channels=1, config={"patch_size": 4})
    with pytest.raises(OptionError, match="caption_projection_dim must equal"):
        backbone("mmdit").build(
            "xxs", image_size=16, channels=1, config={"caption_projection_dim": 64}
        )
    with pytest.raises(OptionError, match="num_classes"):
        unet.build("xxs", image_size=16, channels=1, num_classes=-1)


def test_config_overrides_the_preset_and_spec_rebuilds():
    model = tiny("unet", config={"layers_per_block": 2})
    assert model.spec["config"]["layers_per_block"] == 2
    assert len(model.inner.down_blocks[0].resnets) == 2
    spec = model.spec
    again = backbone("unet").build(
        spec["preset"], image_size=16, channels=1, num_classes=10, config=spec["config"]
    )
    assert again.num_parameters() == model.num_parameters()


def test_paper_scale_unets_match_published_sizes():
    unet = backbone("unet")
    # DDPM CIFAR-10: 35.7M; DDIM CelebA 64x64 (Diff-Pruning's base): 78.7M.
    assert round(count_preset(unet, "cifar10", 32, 3, 0) / 1e6, 1) == 35.7
    assert round(count_preset(unet, "celeba", 64, 3, 0) / 1e6, 1) == 78.7


def test_paper_scale_transformers_have_the_paper_shapes():
    with torch.device("meta"):
        xl = backbone("dit").build("dit-xl2", image_size=32, channels=4, num_classes=1000)
        sd3 = backbone("mmdit").build("sd3-medium", image_size=128, channels=16)
    assert (
        xl.inner.config.num_layers,
        xl.inner.inner_dim,
        xl.inner.config.num_attention_heads,
        xl.inner.config.patch_size,
    ) == (28, 1152, 16, 2)
    assert (
        sd3.inner.config.num_layers,
        sd3.inner.inner_dim,
        sd3.inner.config.joint_attention_dim,
    ) == (24, 1536, 4096)
    assert 1.9e9 < sd3.num_parameters() < 2.2e9


@pytest.mark.parametrize("name", BACKBONES)
def test_preset_ladder_spans_30x_on_cpu_and_grows(name):
    rows = preset_table(name, 16, channels=1, num_classes=10)
    params = [r["params"] for r in rows]
    assert [r["name"] for r in rows] == list(backbone(name).presets)
    assert params == sorted(params)
    cpu = {r["name"]: r["params"] for r in rows if r["name"] in backbone(name).cpu_presets}
    assert max(cpu.values()) / min(cpu.values()) >= 30
    assert 40_000 <= min(cpu.values()) <= 80_000
    # Counting on the meta device agrees with a real build.
    assert params[0] == tiny(name).num_parameters()


def test_preset_table_skips_sizes_a_preset_cannot_take():
    names = [r["name"] for r in preset_table("unet", 8, channels=1)]
    assert "celeba" not in names and "cifar10" in names


@pytest.mark.parametrize("name", BACKBONES)
def test_save_pretrained_round_trip(name, tmp_path):
    model = tiny(name).eval()
    export_diffusers(model, tmp_path / "export")
    again = backbone(name).from_pretrained(str(tmp_path / "export")).eval()
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, c), again(x, t, c))
    assert again.spec["source"] == str(tmp_path / "export")
    assert again.taps == model.taps


def test_from_pretrained_missing_folder_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match="cannot load pretrained"):
        backbone("unet").from_pretrained(str(tmp_path / "nothing"))


@pytest.mark.parametrize("name", BACKBONES)
def test_save_load_round_trip(name, tmp_path):
    model = tiny(name).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path, extra_meta={"note": "x"})
    again = load_model(path)
    assert again.spec == model.spec and again.backbone == name
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, c), again.eval()(x, t, c))


def test_corrupt_and_foreign_files_raise_checkpoint_errors(tmp_path):
    model = tiny("unet")
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path)

    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, model.state_dict())
    with pytest.raises(CheckpointError, match="not a kdbench model file"):
        load_model(plain)

    # Weights of one architecture under the metadata of another.
    import json

    other = tiny("unet", preset="xs")
    wrong = tmp_path / "wrong.safetensors"
    meta = {"format": 1, "backbone": "unet", "spec": model.spec, "extra": {}}
    save_tensors(wrong, other.state_dict(), metadata={"kdbench": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not fit the unet architecture"):
        load_model(wrong)

    good = tmp_path / "good.safetensors"
    save_model(model, good)
    with pytest.raises(CheckpointError, match="holds a unet model, expected dit"):
        load_model(good, backbone="dit")
