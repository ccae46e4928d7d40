"""The options that reproduce the official training: validation, values and their effects.

The full training-step equivalence lives in ``test_paper_training.py``; here each option
is checked against hand-computed values, and the defaults are checked to be unchanged.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_config import SMALL

from harness.cli import cli
from harness.config import config_from_dict, expand, load_config
from harness.errors import ConfigError, OptionError
from harness.factories import get_objective
from harness.grid import preflight
from harness.objective import Combination, Outputs
from harness.trainer import LoopSettings, lr_setter, step_loss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def small(tmp_path, extra: str = "") -> Path:
    path = tmp_path / "g.toml"
    path.write_text(textwrap.dedent(SMALL) + textwrap.dedent(extra))
    return path


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "key,value,hint",
    [
        ("loss_reduction", "summ", "did you mean 'sum'?"),
        ("grad_clip_scope", "modle", "did you mean 'model'?"),
        ("lr_schedule", "cosin", "did you mean 'cosine'?"),
    ],
)
def test_train_choices_fail_with_did_you_mean(tmp_path, key, value, hint):
    with pytest.raises(ConfigError) as err:
        load_config(small(tmp_path), [f'train.{key}="{value}"'])
    message = str(err.value)
    assert f"train.{key}" in message and hint in message and "\n" not in message


def test_lr_min_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="train.lr_min"):
        load_config(small(tmp_path), ["train.lr_min=-1"])


def test_opt_in_options_at_their_defaults_keep_cell_ids(tmp_path):
    path = small(tmp_path)
    plain = [c["cell_id"] for c in expand(load_config(path))]
    spelled = load_config(
        path,
        [
            'train.loss_reduction="mean"',
            'train.grad_clip_scope="all"',
            'train.lr_schedule="constant"',
            "train.lr_min=0.0",
        ],
    )
    assert [c["cell_id"] for c in expand(spelled)] == plain
    summed = load_config(path, ['train.loss_reduction="sum"'])
    assert not set(c["cell_id"] for c in expand(summed)) & set(plain)


# ---------------------------------------------------------------- loss assembly


def test_sum_reduction_scales_prediction_terms_by_chw_and_leaves_features_alone():
    s = Outputs(randn(2, 3, 4, 4, seed=1), {"a": randn(2, 5, 2, 2, seed=2)})
    t = Outputs(randn(2, 3, 4, 4, seed=3), {"a": randn(2, 5, 2, 2, seed=4)})
    target = randn(2, 3, 4, 4, seed=5)
    featkd = get_objective("featkd", reduction="sum")
    objective = Combination([(0.5, get_objective("outkd")), (1e-2, featkd)])
    objective.setup(s, t)
    mean = step_loss(s, t, target, LoopSettings(steps=1, lambda_diff=0.3), objective, 0)
    summed = step_loss(
        s, t, target, LoopSettings(steps=1, lambda_diff=0.3, loss_reduction="sum"), objective, 0
    )
    chw = 3 * 4 * 4
    diff = ((s.pred - target) ** 2).mean()
    outkd = ((s.pred - t.pred) ** 2).mean()
    feat = ((s.features["a"] - t.features["a"]) ** 2).sum() / 2  # identity adapter (5 -> 5)
    assert mean["loss"].item() == pytest.approx((0.3 * diff + 0.5 * outkd + 1e-2 * feat).item())
    assert summed["diff"].item() == pytest.approx(chw * diff.item())
    assert summed["outkd/loss"].item() == pytest.approx(chw * outkd.item())
    assert summed["featkd/loss"].item() == pytest.approx(feat.item())
    expected = chw * (0.3 * diff + 0.5 * outkd) + 1e-2 * feat
    assert summed["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert summed["loss"].item() == pytest.approx(
        (0.3 * summed["diff"] + summed["kd"]).item(), rel=1e-6
    )


def test_mean_reduction_is_the_combination_as_before():
    s, t = Outputs(randn(2, 1, 4, 4, seed=6)), Outputs(randn(2, 1, 4, 4, seed=7))
    target = randn(2, 1, 4, 4, seed=8)
    objective = Combination([(0.7, get_objective("place", group_size=4))])
    terms = step_loss(s, t, target, LoopSettings(steps=3), objective, 1)
    kd = objective(student=s, teacher=t, step=1, total_steps=3)["loss"]
    assert torch.equal(terms["kd"], kd)
    assert torch.equal(terms["loss"], ((s.pred - target) ** 2).mean() + kd)


def test_model_clip_scope_leaves_objective_parameters_out(monkeypatch):
    from harness.factories import get_backbone
    from harness.process import get_process
    from harness.trainer import BatchMaker, LiveTeacher, train

    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append({id(p) for p in params})
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    unet = get_backbone("unet")
    torch.manual_seed(0)
    teacher = unet.build("xxs", image_size=8, channels=1, config={"block_out_channels": [16, 32]})
    images = torch.rand(8, 1, 8, 8)
    for scope in ("all", "model"):
        student = unet.build("xxs", image_size=8, channels=1)
        featkd = get_objective("featkd")
        objective = Combination([(1.0, featkd)])
        pairs = unet.pair_taps(student, teacher)
        batches = BatchMaker(images, None, get_process("ddpm"), 4, 0, torch.device("cpu"))
        seen.clear()
        train(
            student,
            batches=batches,
            settings=LoopSettings(steps=1, batch_size=4, grad_clip_scope=scope, precision="fp32"),
            objective=objective,
            teacher=LiveTeacher(teacher, pairs),
            pairs=pairs,
        )
        adapters = {id(p) for p in featkd.parameters()}
        model = {id(p) for p in student.parameters()}
        assert adapters and seen[0] >= model
        assert (adapters <= seen[0]) == (scope == "all")


# ---------------------------------------------------------------- learning rate


def _lrs(settings: LoopSettings) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    set_lr = lr_setter(opt, settings)
    out = []
    for step in range(settings.steps):
        set_lr(step)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_schedule_is_tinyfusions_cosine_annealing():
    lrs = _lrs(LoopSettings(steps=10, lr=2e-4, lr_schedule="cosine", lr_min=1e-4))
    expected = [1e-4 + 0.5 * 1e-4 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    torch_lrs = []
    for _ in range(10):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(torch_lrs, rel=1e-9)


def test_cosine_schedule_with_warmup_and_the_unchanged_constant_schedule():
    warm = _lrs(LoopSettings(steps=12, lr=1.0, lr_schedule="cosine", warmup_steps=4))
    assert warm[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert warm[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    const = _lrs(LoopSettings(steps=6, lr=1.0, warmup_steps=4))
    assert const == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------- FeatKD options


def test_featkd_sum_reduction_masking_and_linear_decay():
    fs = {"x": randn(3, 4, 5, 5, seed=9), "y": randn(3, 6, 7, seed=10)}
    ft = {"x": randn(3, 4, 5, 5, seed=11), "y": randn(3, 6, 7, seed=12)}
    s, t = Outputs(randn(3, 1, 2, 2), fs), Outputs(randn(3, 1, 2, 2), ft)
    obj = get_objective("featkd", reduction="sum")
    terms = obj(student=s, teacher=t)
    for k in fs:
        assert terms[f"layer/{k}"].item() == pytest.approx(((fs[k] - ft[k]) ** 2).sum().item() / 3)
    masked = get_objective("featkd", reduction="sum", masked=True)(student=s, teacher=t)
    mean_masked = get_objective("featkd", masked=True)(student=s, teacher=t)
    assert 0 < masked["layer/x"].item() < terms["layer/x"].item()
    assert mean_masked["layer/x"].item() < masked["layer/x"].item()
    decayed = get_objective("featkd", decay="linear")
    full = get_objective("featkd")(student=s, teacher=t)["loss"]
    assert decayed(student=s, teacher=t, step=3, total_steps=4)["loss"].item() == pytest.approx(
        0.25 * full.item()
    )
    assert decayed(student=s, teacher=t, step=4, total_steps=4)["loss"].item() == 0.0


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"reduction": "total"}, "reduction='total' is not valid; use 'mean', 'sum'"),
        ({"taps": "modules"}, "taps='modules' is not valid; use 'blocks', 'submodules'"),
        ({"decay": "cosine"}, "decay='cosine' is not valid; use 'none', 'linear'"),
    ],
)
def test_featkd_option_errors(opts, message):
    with pytest.raises(OptionError, match=message):
        get_objective("featkd", **opts)


def test_tap_sets_unet_submodules_and_an_unknown_set():
    from harness.factories import get_backbone

    unet = get_backbone("unet").build("celeba", image_size=64, channels=3)
    taps = unet.tap_set("submodules")
    assert len(taps) == 41  # Diff-Pruning's FitNet hooks on the CelebA U-Net
    assert unet.tap_set() == unet.taps
    dit = get_backbone("dit").build(image_size=8, channels=1)
    with pytest.raises(OptionError, match="has no tap set 'submodules'; its tap sets: blocks"):
        dit.tap_set("submodules")
    both = Combination(
        [(1.0, get_objective("featkd")), (1.0, get_objective("featkd", taps="submodules"))]
    )
    with pytest.raises(OptionError, match="different tap sets"):
        _ = both.tap_set


# ---------------------------------------------------------------- DIST on 1-channel data


def test_dist_sample_instances_train_both_terms_on_one_channel():
    t = randn(4, 1, 8, 8, seed=13)
    for instance, inter_trains in (("sample", True), ("pixel", False)):
        s = randn(4, 1, 8, 8, seed=14).requires_grad_()
        terms = get_objective("dist", instance=instance)(student=Outputs(s), teacher=Outputs(t))
        (g_inter,) = torch.autograd.grad(terms["inter"], s, retain_graph=True)
        (g_intra,) = torch.autograd.grad(terms["intra"], s)
        assert (g_inter.abs().max().item() > 1e-6) == inter_trains
        assert g_intra.abs().max().item() > 1e-6


@pytest.mark.parametrize(
    "options,fix",
    [
        ({}, 'use instance = "sample"'),
        ({"space": "softmax", "instance": "sample"}, 'use space = "raw" with instance = "sample"'),
    ],
)
def test_preflight_refuses_constant_dist_terms_with_the_fix(tmp_path, options, fix):
    cfg = load_config(small(tmp_path), ["objectives=['dist']"])
    cfg.objective["dist"] = options
    with pytest.raises(ConfigError) as err:
        preflight(cfg, channels=1)
    assert "objectives[0]" in str(err.value) and fix in str(err.value)


def test_preflight_accepts_pixel_dist_on_three_channels(tmp_path):
    cfg = load_config(small(tmp_path), ["objectives=['dist']"])
    preflight(cfg, channels=3)


def test_dry_run_names_the_dist_fix_in_one_line_and_the_bench_row_passes():
    bench = CONFIGS / "bench.toml"
    bad = CliRunner().invoke(
        cli, ["run", str(bench), "--dry-run", "--set", 'objective.dist.instance="pixel"']
    )
    assert bad.exit_code == 2
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1 and 'instance = "sample"' in lines[0]
    cfg = load_config(bench)
    assert cfg.objective["dist"] == {"instance": "sample"}
    preflight(cfg, channels=1)


# ---------------------------------------------------------------- sums the paper never used


def test_lift_plus_place_warns_in_preflight_and_dry_run(tmp_path):
    cfg = load_config(small(tmp_path), ["objectives=['lift+place', 'place']"])
    with pytest.warns(UserWarning, match=r"objectives\[0\] 'lift\+place' sums lift and place"):
        preflight(cfg, channels=1)
    # A real process: the CLI formats warnings as one "kdbench: warning:" line on stderr.
    cmd = [sys.executable, "-m", "harness.cli", "run", str(small(tmp_path)), "--dry-run"]
    out = subprocess.run(
        [*cmd, "--set", "objectives=['lift+place']"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert "kdbench: warning: objectives[0] 'lift+place' sums lift and place" in out.stderr
    assert "is kdbench's `place` alone" in out.stderr
    assert "lift+place | prune0 -> prune0.9 | s0" in out.stdout


def test_no_warning_for_the_papers_rows(tmp_path, recwarn):
    cfg = config_from_dict(
        {
            **load_config(small(tmp_path)).model_dump(mode="json"),
            "objectives": ["place", "place+featkd", "lift", "lift+featkd"],
        }
    )
    preflight(cfg, channels=1)
    assert not [w for w in recwarn if "sums" in str(w.message)]


def test_featkd_tinyfusion_mask_and_layer_mean_match_training_losses_kd_rep():
    fs = {f"blocks.{i}": randn(2, 6, 5, seed=20 + i) for i in range(3)}
    ft = {k: v + 0.3 * randn(2, 6, 5, seed=30 + i) for i, (k, v) in enumerate(fs.items())}
    fs["blocks.0"][0, 0, 0] = 40.0  # a massive activation, masked out on the student side
    s, t = Outputs(randn(2, 1, 2, 2), fs), Outputs(randn(2, 1, 2, 2), ft)
    expected = 0.0
    for k in fs:  # TinyFusion_EXP/diffusion/gaussian_diffusion.py, training_losses_kd_rep
        var_s, mean_s = torch.var_mean(fs[k], dim=[1, 2], keepdim=True)
        var_t, mean_t = torch.var_mean(ft[k], dim=[1, 2], keepdim=True)
        mask_t = (ft[k] - mean_t).abs() < 2 * var_t.sqrt()
        mask_s = (fs[k] - mean_s).abs() < 2 * var_s.sqrt()
        expected += ((mask_s * fs[k] - mask_t * ft[k]) ** 2).mean(dim=(1, 2))
    expected = (expected / len(fs)).mean()
    obj = get_objective("featkd", masked=True, mask_style="zeroed", layer_mean=True)
    assert obj(student=s, teacher=t)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    kept = get_objective("featkd", masked=True)(student=s, teacher=t)["loss"].item()
    assert kept != pytest.approx(expected.item(), rel=1e-3)


def test_preflight_refuses_a_tap_set_the_backbone_lacks(tmp_path):
    cfg = load_config(small(tmp_path), ["objectives=['outkd+featkd']", "model.backbone='dit'"])
    cfg.objective["featkd"] = {"taps": "submodules"}
    with pytest.raises(ConfigError, match="backbone 'dit' has no tap set 'submodules'"):
        preflight(cfg, channels=1)
    cfg.model.backbone = "unet"
    preflight(cfg, channels=1)
