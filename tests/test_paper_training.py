"""kdbench's paper settings train exactly as the official code's training step.

A few training steps of a small U-Net student (a narrower copy of the teacher, so every
FeatKD adapter is a real 1x1 conv) with kdbench's ``train`` and the paper options, against
an independent re-implementation of the official step, written here from the released code
(Hyun-s/LIFT_PLACE):

* Diff-Pruning (``Diff_Pruning_EXP``: ``functions/losses.py`` ``noise_estimation_kd_loss``,
  ``LIFT_PLACE``, ``FitNetLoss``, ``hook_modules``; ``runners/diffusion.py`` train loop):
  every term summed over C*H*W and averaged over the batch, PLACE's coarse term times the
  group size, FitNet over the 41-style sub-module hooks at 1e-6, ``clip_grad_norm_`` of the
  model's parameters at 1.0, ``torch.optim.Adam`` (adapters in a second param group), EMA.
* TinyFusion (``TinyFusion_EXP``: ``losses.py`` ``imp_regression_constraint_loss``,
  ``diffusion/gaussian_diffusion.py`` ``training_losses_kd_rep``, ``train_masked_kd.py``):
  ``0.9 * KD + 0.1 * mse`` with KD the mean of the L2 coarse map plus ``w`` times the mean
  fine map (eps 1e-4 on sums), AdamW with ``CosineAnnealingLR(eta_min=lr/2)``, clip 1.0.

The two runs see the same batches (the data pipeline is not under test) and end with the
same parameters to float tolerance; changing a semantic (reduction, clipping, weighting)
on kdbench's side moves them far outside it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from harness.factories import build_combination, get_backbone
from harness.process import get_process
from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, train

STEPS = 6
BATCH = 4
SIZE = 8
GROUP = 16
LR = 1e-3
# float32 end to end: two implementations that sum in different orders agree to ~1e-7 in
# the loss; Adam normalises each gradient, so a weight whose gradient is nearly zero moves
# by up to lr on rounding noise.  TOL (a quarter percent of the 6 * lr a weight can move) bounds that;
# a changed semantic moves them by 5x more.  Attention key biases are left out:
# their exact gradient is zero (softmax ignores a bias shared by all keys), so Adam steps
# them on rounding noise alone, in both implementations.
TOL = 1e-5
NOISE_ONLY = ("to_k.bias",)


def _models():
    torch.manual_seed(0)
    unet = get_backbone("unet")
    teacher = unet.build(
        "xxs", image_size=SIZE, channels=3, config={"block_out_channels": [16, 32]}
    )
    student = unet.build("xxs", image_size=SIZE, channels=3)
    return teacher.eval().requires_grad_(False), student


def _batches():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(32, 3, SIZE, SIZE, generator=g) * 2 - 1
    return BatchMaker(images, None, get_process("ddpm"), BATCH, seed=3, device=torch.device("cpu"))


# ------------------------------------------------------------------ the official step


def official_hook_modules(model):
    """``hook_modules`` of Diff-Pruning's ``losses.py`` on diffusers names: the mid block's
    children in forward order, then every child of every child of each down and up block."""
    inner = model.inner
    mid = inner.mid_block
    modules = [mid.resnets[0], mid.attentions[0], mid.resnets[1]]
    for blocks in (inner.down_blocks, inner.up_blocks):
        for block in blocks:
            for _, child in block.named_children():
                for _, sub in child.named_children():
                    modules.append(sub)
    return modules


def official_lift_place(et_s, et_t, patch_size, eps, use_l2=False):
    """``LIFT_PLACE`` (v2) of Diff-Pruning's ``losses.py``: sums over C*H*W, mean over B."""
    b, c, h, w = et_s.shape
    groups = h * w // patch_size
    importance = (et_t - et_s).pow(2).view(b, c, -1)
    order = torch.argsort(importance, dim=-1)
    s = torch.gather(et_s.view(b, c, -1), -1, order).view(b, c, groups, patch_size)
    t = torch.gather(et_t.view(b, c, -1), -1, order).view(b, c, groups, patch_size)
    s_var, s_mean = torch.var_mean(s, dim=-1, keepdim=True, correction=0)
    t_mean = t.mean(dim=-1, keepdim=True)
    cov = ((s - s_mean) * (t - t_mean)).mean(dim=-1)
    slope = cov / (s_var.squeeze(-1) + eps)
    intercept = t_mean.squeeze(-1) - slope * s_mean.squeeze(-1)
    eps_hat = s * slope.detach().unsqueeze(-1) + intercept.detach().unsqueeze(-1)
    recon = (eps_hat - t).pow(2).sum(dim=(1, 2, 3)).mean(dim=0)
    diff_s, diff_i = slope - 1.0, intercept
    sch = diff_s.abs().mean() + diff_i.abs().mean()
    if use_l2:
        loss_s = diff_s.pow(2).sum(dim=(1, 2)).mean(dim=0)
        loss_i = diff_i.pow(2).sum(dim=(1, 2)).mean(dim=0)
    else:
        loss_s = diff_s.abs().sum(dim=(1, 2)).mean(dim=0)
        loss_i = diff_i.abs().sum(dim=(1, 2)).mean(dim=0)
    return (loss_s + loss_i) * patch_size + (1.0 - min(1.0, float(sch.detach()))) * recon


def official_diff_pruning(
    student, teacher, batches, adapters, *, lamb=1.0, fit_weight=1e-6, steps=STEPS
):
    """Diff-Pruning's KD fine-tuning loop (``runners/diffusion.py``), ``LIFT_PLACE_fitnet``."""
    model = copy.deepcopy(student)
    adapters = copy.deepcopy(adapters)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    optimizer.add_param_group({"params": adapters.parameters()})
    s_modules, t_modules = official_hook_modules(model), official_hook_modules(teacher)
    s_feats, t_feats = [], []  # hook_forward's lists, filled in forward order
    hooks = [m.register_forward_hook(lambda m, i, o: s_feats.append(o)) for m in s_modules]
    hooks += [
        m.register_forward_hook(lambda m, i, o: t_feats.append(o.detach())) for m in t_modules
    ]
    for step in range(steps):
        batch = batches(step)
        s_feats.clear()
        t_feats.clear()
        output = model(batch.x_t, batch.t)
        with torch.no_grad():
            teacher_output = teacher(batch.x_t, batch.t)
        diffusion = (batch.target - output).square().sum(dim=(1, 2, 3)).mean(dim=0)
        place = official_lift_place(output, teacher_output, GROUP, 1e-7) * lamb
        fitnet = 0
        for sf, tf, adapter in zip(s_feats, t_feats, adapters):
            fitnet += ((adapter(sf) - tf) ** 2).sum(dim=(1, 2, 3)).mean(dim=0)
        loss = diffusion + place + fitnet * fit_weight
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    for hook in hooks:
        hook.remove()
    return model, adapters


def official_tinyfusion(student, teacher, batches, *, eps_sum=1e-4, alpha_kd=0.9):
    """TinyFusion's ``train_masked_kd.py`` step with ``training_losses_kd_rep`` (LIFT_PLACE)."""
    model = copy.deepcopy(student)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=LR * 0.5)
    for step in range(STEPS):
        batch = batches(step)
        output = model(batch.x_t, batch.t)
        with torch.no_grad():
            teacher_output = teacher(batch.x_t, batch.t)
        b, c, h, w = output.shape
        groups = h * w // GROUP
        order = torch.argsort((teacher_output - output).pow(2).view(b, c, -1), dim=-1)
        s = torch.gather(output.view(b, c, -1), -1, order).view(b, c, groups, GROUP)
        t = torch.gather(teacher_output.view(b, c, -1), -1, order).view(b, c, groups, GROUP)
        ms, mt = s.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
        slope = ((s - ms) * (t - mt)).sum(-1) / (((s - ms) ** 2).sum(-1) + eps_sum)
        intercept = mt.squeeze(-1) - slope * ms.squeeze(-1)
        recon = (s * slope.detach().unsqueeze(-1) + intercept.detach().unsqueeze(-1) - t) ** 2
        sch = (slope - 1).abs().mean().item() + intercept.abs().mean().item()
        lift = (slope - 1) ** 2 + intercept**2
        kd = lift.mean(dim=(1, 2)) + ((1 - min(1, sch)) * recon).mean(dim=(1, 2, 3))
        mse = ((batch.target - output) ** 2).mean(dim=(1, 2, 3))
        loss = (alpha_kd * kd + (1 - alpha_kd) * mse).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model


# ------------------------------------------------------------------ kdbench's side


DIFF_PRUNING = {
    "train": dict(loss_reduction="sum", grad_clip=1.0, grad_clip_scope="model", lambda_diff=1.0),
    "place": {"name": "place", "weight": 1.0, "group_size": GROUP, "eps": 1e-7},
    "featkd": {"name": "featkd", "weight": 1e-6, "taps": "submodules", "reduction": "sum"},
}


def kdbench_run(student, teacher, batches, train_opts, parts, *, adapters_from=None, steps=STEPS):
    model = copy.deepcopy(student)
    objective = build_combination(parts)
    pairs = get_backbone("unet").pair_taps(model, teacher, objective.tap_set)
    live = LiveTeacher(teacher, pairs if objective.needs_features else None)
    if objective.needs_features:  # build the adapters, then give both runs the same init
        from harness.features import FeatureRecorder

        first = batches(0)
        with torch.no_grad(), FeatureRecorder(model, list(pairs)) as rec:
            pred = model(first.x_t, first.t)
        from harness.objective import Outputs

        objective.setup(Outputs(pred, dict(rec.features)), live(first))
        if adapters_from is not None:
            objective.load_state_dict(adapters_from.state_dict())
    settings = LoopSettings(
        steps=steps,
        batch_size=BATCH,
        lr=LR,
        ema_decay=0.9999,
        precision="fp32",
        log_every=1,
        checkpoint_every=10_000,
        **train_opts,
    )
    result = train(
        model, batches=batches, settings=settings, objective=objective, teacher=live, pairs=pairs
    )
    return result, objective


def _official_adapters(model, batch, objective):
    """kdbench's adapters in the official order: ``FitNetLoss.construct_adapter`` builds one
    per hooked feature in the order the hooks fire (forward execution order)."""
    from plugins.objectives.featkd import _slot

    featkd = next(p for p in objective.parts if p.name == "featkd")
    names = {id(m): n for n, m in model.named_modules()}
    fired = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: fired.append(m))
        for m in official_hook_modules(model)
    ]
    with torch.no_grad():
        model(batch.x_t, batch.t)
    for hook in hooks:
        hook.remove()
    return torch.nn.ModuleList([featkd.adapters[_slot(names[id(m)])] for m in fired])


def _max_diff(a: dict, b: dict) -> float:
    keys = [k for k in a if not k.endswith(NOISE_ONLY)]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def test_diff_pruning_tap_set_is_the_official_hook_list():
    teacher, student = _models()
    names = {id(m): n for n, m in student.named_modules()}
    official = [names[id(m)] for m in official_hook_modules(student)]
    assert sorted(official) == sorted(student.tap_set("submodules"))
    assert len(official) == len(set(official))


def _diff_pruning_runs(
    train_changes=None, place_changes=None, featkd_changes=None, fit_weight=1e-6, steps=STEPS
):
    teacher, student = _models()
    batches = _batches()
    init_model = copy.deepcopy(student)
    init_objective = build_combination([DIFF_PRUNING["place"], DIFF_PRUNING["featkd"]])
    pairs = get_backbone("unet").pair_taps(init_model, teacher, "submodules")
    from harness.features import FeatureRecorder
    from harness.objective import Outputs

    first = batches(0)
    live = LiveTeacher(teacher, pairs)
    with torch.no_grad(), FeatureRecorder(init_model, list(pairs)) as rec:
        pred = init_model(first.x_t, first.t)
    torch.manual_seed(5)
    init_objective.setup(Outputs(pred, dict(rec.features)), live(first))
    adapters = _official_adapters(init_model, first, init_objective)
    ref_model, ref_adapters = official_diff_pruning(
        student, teacher, batches, adapters, fit_weight=fit_weight, steps=steps
    )
    train_opts = {**DIFF_PRUNING["train"], **(train_changes or {})}
    parts = [
        {**DIFF_PRUNING["place"], **(place_changes or {})},
        {**DIFF_PRUNING["featkd"], "weight": fit_weight, **(featkd_changes or {})},
    ]
    result, objective = kdbench_run(
        student, teacher, batches, train_opts, parts, adapters_from=init_objective, steps=steps
    )
    adapters = _official_adapters(result.model, first, objective)
    return result, ref_model, ref_adapters, adapters, student


def _adapter_diff(a, b) -> float:
    return max((x.weight - y.weight).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("steps,fit_weight", [(1, 1e-6), (STEPS, 1e-6), (STEPS, 1e-3)])
def test_diff_pruning_step_matches_the_official_code(steps, fit_weight):
    result, ref_model, ref_adapters, adapters, student = _diff_pruning_runs(
        fit_weight=fit_weight, steps=steps
    )
    assert _max_diff(ref_model.state_dict(), student.state_dict()) > 50 * TOL  # it trained
    assert _max_diff(result.model.state_dict(), ref_model.state_dict()) < TOL
    assert _adapter_diff(adapters, ref_adapters) < TOL
    # The terms are on the official scale (sums over C*H*W), where clipping at 1.0 acts.
    assert result.last_terms["diff"] > 10


@pytest.mark.parametrize(
    "change",
    [
        {"train_changes": {"loss_reduction": "mean"}},
        {"train_changes": {"grad_clip": 0.0}},
        {"train_changes": {"lambda_diff": 0.5}},
        {"place_changes": {"weight": 0.5}},
        {"featkd_changes": {"weight": 1e-2}, "fit_weight": 1e-3},
        {"featkd_changes": {"reduction": "mean"}, "fit_weight": 1e-3},
    ],
    ids=lambda c: ",".join(
        f"{k}={v}" for d in c.values() if isinstance(d, dict) for k, v in d.items()
    ),
)
def test_diff_pruning_equivalence_breaks_when_a_semantic_changes(change):
    result, ref_model, ref_adapters, adapters, _ = _diff_pruning_runs(**change)
    assert (
        max(
            _max_diff(result.model.state_dict(), ref_model.state_dict()),
            _adapter_diff(adapters, ref_adapters),
        )
        > 5 * TOL
    )


TINYFUSION = {
    "train": dict(
        lambda_diff=0.1, grad_clip=1.0, grad_clip_scope="model", lr_schedule="cosine", lr_min=LR / 2
    ),
    "place": {
        "name": "place",
        "weight": 0.9,
        "group_size": GROUP,
        "coarse": "l2",
        "eps": 1e-4 / GROUP,
    },
}


def _tinyfusion_runs(train_changes=None, place_changes=None):
    teacher, student = _models()
    batches = _batches()
    ref = official_tinyfusion(student, teacher, batches)
    result, _ = kdbench_run(
        student,
        teacher,
        batches,
        {**TINYFUSION["train"], **(train_changes or {})},
        [{**TINYFUSION["place"], **(place_changes or {})}],
    )
    return result, ref, student


def test_tinyfusion_step_matches_the_official_code():
    result, ref, student = _tinyfusion_runs()
    assert _max_diff(ref.state_dict(), student.state_dict()) > 100 * TOL
    assert _max_diff(result.model.state_dict(), ref.state_dict()) < TOL


@pytest.mark.parametrize(
    "change",
    [
        {"train_changes": {"lr_schedule": "constant"}},
        {"train_changes": {"lambda_diff": 1.0}},
        {"place_changes": {"weight": 1.0}},
        {"place_changes": {"coarse": "l1"}},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for d in c.values() for k, v in d.items()),
)
def test_tinyfusion_equivalence_breaks_when_a_semantic_changes(change):
    result, ref, _ = _tinyfusion_runs(**change)
    assert _max_diff(result.model.state_dict(), ref.state_dict()) > 5 * TOL
