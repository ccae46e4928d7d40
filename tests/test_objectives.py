"""The seven built-in KD objectives against golden values computed here with numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from harness import Outputs, build_combination, get_objective
from harness.errors import OptionError, ShapeError
from harness.registry import entries
from plugins.objectives._grouped import difficulty_order
from plugins.objectives.takd import (
    assistant_parameters,
    assistant_prune_ratio,
    choose_assistant,
)

NAMES = ["none", "outkd", "featkd", "dist", "takd", "lift", "place"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def num(x: torch.Tensor) -> float:
    return x.detach().item()


def run(obj, s, t, fs=None, ft=None):
    return obj(student=Outputs(s, fs or {}), teacher=Outputs(t, ft or {}))


# ----------------------------------------------------------------------------- golden values
def fit_np(x: np.ndarray, y: np.ndarray, eps: float) -> tuple[float, float]:
    """Least squares of y on x with population moments, one loop per element."""
    n = len(x)
    mx = sum(x) / n
    my = sum(y) / n
    var = sum((xi - mx) ** 2 for xi in x) / n
    cov = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / n
    b1 = cov / (var + eps)
    return b1, my - b1 * mx


def grouped_np(s, t, group_size, eps, coarse="l1"):
    """LIFT/PLACE terms by loops: group_size=None means one set per (sample, channel)."""
    s = s.detach().double().numpy()
    t = t.detach().double().numpy()
    b, c, h, w = s.shape
    betas, sq_err = [], 0.0
    for i in range(b):
        for j in range(c):
            x, y = s[i, j].ravel(), t[i, j].ravel()
            n = len(x)
            if group_size is None:
                sets = [list(range(n))]
            else:
                order = sorted(range(n), key=lambda k: ((y[k] - x[k]) ** 2, k))
                count = n // group_size
                sets = [order[g * group_size : (g + 1) * group_size] for g in range(count - 1)]
                sets.append(order[(count - 1) * group_size :])
            for idx in sets:
                b1, b0 = fit_np(x[idx], y[idx], eps)
                betas.append((b1, b0))
                sq_err += sum((b1 * x[k] + b0 - y[k]) ** 2 for k in idx)
    if coarse == "l1":
        coarse_v = np.mean([abs(b1 - 1) + abs(b0) for b1, b0 in betas])
    else:
        coarse_v = np.mean([(b1 - 1) ** 2 + b0**2 for b1, b0 in betas])
    dev = np.mean([abs(b1 - 1) for b1, _ in betas]) + np.mean([abs(b0) for _, b0 in betas])
    w = 1 - min(1.0, dev)
    fine = sq_err / s.size
    return {"coarse": coarse_v, "fine": fine, "w": w, "loss": coarse_v + w * fine}


def pearson_np(u, v):
    u = u - u.mean()
    v = v - v.mean()
    return float((u * v).sum() / (np.sqrt((u * u).sum()) * np.sqrt((v * v).sum()) + 1e-8))


def dist_np(s, t, beta, gamma, tau, space, instance):
    s = s.detach().double().numpy()
    t = t.detach().double().numpy()

    def table(x):
        if space == "softmax":
            e = np.exp(x / tau - (x / tau).max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        if instance == "sample":
            return x.reshape(x.shape[0], -1)
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])

    ys, yt = table(s), table(t)
    inter = 1 - np.mean([pearson_np(ys[i], yt[i]) for i in range(ys.shape[0])])
    intra = 1 - np.mean([pearson_np(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return tau**2 * inter, tau**2 * intra, beta * tau**2 * inter + gamma * tau**2 * intra


def masked_mse_np(a, b):
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    keep = np.ones_like(a, dtype=bool)
    for x in (a, b):
        for i in range(x.shape[0]):
            mu, sigma = x[i].mean(), x[i].std()
            keep[i] &= np.abs(x[i] - mu) < 2 * sigma
    return float(((a - b) ** 2)[keep].sum() / max(1, keep.sum()))


# ----------------------------------------------------------------------------- registry, options
def test_all_builtins_registered_as_plugins():
    table = entries("objective")
    for name in NAMES:
        assert table[name].provenance.module == f"plugins.objectives.{name}"
        assert table[name].summary


def test_unknown_option_lists_valid_options():
    with pytest.raises(OptionError) as err:
        get_objective("place", group_sise=4)
    msg = str(err.value)
    assert "did you mean 'group_size'" in msg
    assert "valid options: group_size, coarse, eps" in msg


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("place", {"group_size": 0}, "group_size must be an integer >= 2"),
        ("place", {"group_size": 1}, "group_size must be an integer >= 2"),
        ("place", {"group_size": True}, "group_size must be an integer >= 2"),
        ("place", {"group_size": 4.0}, "group_size must be an integer >= 2"),
        ("place", {"coarse": "l3"}, "coarse='l3' is not valid; use 'l1', 'l2'"),
        ("lift", {"coarse": "l3"}, "coarse='l3' is not valid; use 'l1', 'l2'"),
        ("lift", {"eps": -1e-6}, "eps must be a finite number > 0"),
        ("place", {"eps": -1.0}, "eps must be a finite number > 0"),
        ("place", {"eps": float("nan")}, "eps must be a finite number > 0"),
        ("dist", {"tau": 0}, "tau must be a finite number > 0"),
        ("dist", {"beta": -1}, "beta must be a finite number >= 0"),
        ("dist", {"space": "logits"}, "space='logits' is not valid; use 'raw', 'softmax'"),
        ("dist", {"instance": "channel"}, "use 'pixel', 'sample'"),
        ("featkd", {"layers": "mid_block"}, "layers must be a non-empty list"),
        ("featkd", {"layers": []}, "layers must be a non-empty list"),
        ("featkd", {"masked": "yes"}, "masked must be true or false"),
        ("takd", {"base": "takd"}, "base='takd' is not allowed"),
        ("takd", {"base": "outkdd"}, "did you mean 'outkd'"),
        ("takd", {"base": "place", "base_options": {"group_size": 0}}, "base_options:"),
        ("takd", {"base_options": [1]}, "base_options must be a table"),
        ("takd", {"assistant": 1.0}, "pruning ratio in [0, 1)"),
        ("takd", {"assistant": ""}, "must not be an empty name"),
    ],
)
def test_bad_option_values(name, options, needle):
    with pytest.raises(OptionError) as err:
        get_objective(name, **options)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_takd_unknown_base_lists_valid_bases():
    with pytest.raises(OptionError) as err:
        get_objective("takd", base="nosuch")
    msg = str(err.value)
    assert "'nosuch' is not a registered objective" in msg
    assert "valid bases: dist, featkd, lift, none, outkd, place" in msg


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype_mismatch(name):
    obj = get_objective(name)
    feats = {"f": randn(2, 3, 4, 4)}
    with pytest.raises(ShapeError, match=r"shapes differ: \(2, 3, 4, 4\) vs \(2, 3, 4, 5\)"):
        run(obj, randn(2, 3, 4, 4), randn(2, 3, 4, 5), feats, feats)
    with pytest.raises(ShapeError, match="dtypes differ: torch.float32 vs torch.float64"):
        run(obj, randn(2, 3, 4, 4), randn(2, 3, 4, 4, dtype=torch.float64), feats, feats)


@pytest.mark.parametrize("name", ["lift", "place"])
def test_lift_place_need_images(name):
    with pytest.raises(ShapeError, match=r"needs predictions shaped \[B, C, H, W\]"):
        run(get_objective(name), randn(2, 16), randn(2, 16))


# ----------------------------------------------------------------------------- common properties
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_only(name):
    s = randn(2, 3, 8, 8, seed=1).requires_grad_()
    t = randn(2, 3, 8, 8, seed=2).requires_grad_()
    fs = {"down.0": randn(2, 4, 8, 8, seed=3).requires_grad_()}
    ft = {"down.0": randn(2, 6, 8, 8, seed=4).requires_grad_()}
    obj = get_objective(name)
    loss = run(obj, s, t, fs, ft)["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    if name == "none":
        assert float(loss) == 0.0 and not loss.requires_grad
        return
    loss.backward()
    assert t.grad is None and ft["down.0"].grad is None
    grad = fs["down.0"].grad if name == "featkd" else s.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["outkd", "lift", "place", "dist"])
def test_identical_outputs_give_zero_loss(name):
    s = randn(2, 3, 8, 8, seed=5).requires_grad_()
    terms = run(get_objective(name), s, s.detach().clone())
    assert num(terms["loss"]) == pytest.approx(0.0, abs=1e-5)
    if name in ("lift", "place"):
        assert num(terms["coarse"]) == pytest.approx(0.0, abs=1e-5)
        assert num(terms["fine"]) == pytest.approx(0.0, abs=1e-6)
        assert num(terms["w"]) == pytest.approx(1.0, abs=1e-5)


def test_none_is_a_plain_zero():
    s = randn(2, 3, 4, 4, dtype=torch.float64)
    loss = run(get_objective("none"), s, s)["loss"]
    assert loss.dtype == torch.float64 and loss.shape == () and float(loss) == 0.0


# ----------------------------------------------------------------------------- OutKD
def test_outkd_golden_and_gradcheck():
    s, t = randn(2, 3, 4, 5, seed=1), randn(2, 3, 4, 5, seed=2)
    a, b = s.double().numpy(), t.double().numpy()
    golden = sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size
    assert num(run(get_objective("outkd"), s, t)["loss"]) == pytest.approx(golden, rel=1e-6)
    obj = get_objective("outkd")
    s64, t64 = s.double().requires_grad_(), t.double()
    assert torch.autograd.gradcheck(lambda x: run(obj, x, t64)["loss"], (s64,))


def test_outkd_upcasts_half_precision():
    s, t = randn(2, 3, 4, 4).bfloat16(), randn(2, 3, 4, 4, seed=1).bfloat16()
    loss = run(get_objective("outkd"), s, t)["loss"]
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------------------- LIFT
@pytest.mark.parametrize("coarse", ["l1", "l2"])
def test_lift_golden(coarse):
    s, t = randn(2, 3, 4, 5, seed=3), randn(2, 3, 4, 5, seed=4)
    t = 0.7 * s + 0.2 * t  # correlated, so w is not clamped at 0
    terms = run(get_objective("lift", coarse=coarse, eps=1e-3), s, t)
    golden = grouped_np(s, t, None, 1e-3, coarse)
    for key in ("coarse", "fine", "w", "loss"):
        assert num(terms[key]) == pytest.approx(golden[key], rel=1e-5, abs=1e-6), key


def test_lift_exact_affine_teacher():
    s = randn(3, 2, 6, 6, seed=6)
    a, b = 1.3, -0.2
    terms = run(get_objective("lift"), s, a * s + b)
    assert num(terms["fine"]) == pytest.approx(0.0, abs=1e-8)
    assert num(terms["coarse"]) == pytest.approx(abs(a - 1) + abs(b), rel=1e-5)
    assert num(terms["w"]) == pytest.approx(1 - (abs(a - 1) + abs(b)), rel=1e-5)
    l2 = run(get_objective("lift", coarse="l2"), s, a * s + b)
    assert num(l2["coarse"]) == pytest.approx((a - 1) ** 2 + b**2, rel=1e-5)
    assert num(l2["w"]) == pytest.approx(num(terms["w"]), rel=1e-6)  # w is always L1


@pytest.mark.parametrize("name", ["lift", "place"])
def test_weight_is_in_unit_interval_and_has_no_grad(name):
    s = randn(2, 3, 8, 8, seed=7).requires_grad_()
    obj = get_objective(name)
    for t, expect in [
        (randn(2, 3, 8, 8, seed=8) * 5, 0.0),  # far from a fit: clamped at 0
        (s.detach() * 1.1 + 0.05, 0.85),  # exact affine: 1 - (0.1 + 0.05)
        (s.detach().clone(), 1.0),
    ]:
        w = run(obj, s, t)["w"]
        assert not w.requires_grad and w.grad_fn is None
        assert 0.0 <= float(w) <= 1.0
        assert float(w) == pytest.approx(expect, abs=1e-4)


@pytest.mark.parametrize("name", ["lift", "place"])
@pytest.mark.parametrize("coarse", ["l1", "l2"])
def test_gradcheck_fit_terms(name, coarse):
    s = randn(2, 2, 4, 4, seed=9, dtype=torch.float64)
    t = randn(2, 2, 4, 4, seed=10, dtype=torch.float64)
    # Keys (t - s)^2 well apart, so the 1e-6 perturbations of gradcheck keep the sort order.
    gaps = ((t - s) ** 2).reshape(4, 16).sort(-1).values.diff(dim=-1)
    assert float(gaps.min()) > 1e-4
    options = {"coarse": coarse, **({"group_size": 4} if name == "place" else {})}
    obj = get_objective(name, **options)
    s.requires_grad_()
    for term in ("coarse", "fine"):
        assert torch.autograd.gradcheck(lambda x, k=term: run(obj, x, t)[k], (s,)), term
    # The loss's gradient is coarse' + w * fine' (w is a constant of the step).
    terms = run(obj, s, t)
    g_loss, g_coarse, g_fine = (
        torch.autograd.grad(terms[k], s, retain_graph=True)[0] for k in ("loss", "coarse", "fine")
    )
    torch.testing.assert_close(g_loss, g_coarse + terms["w"] * g_fine)


# ----------------------------------------------------------------------------- PLACE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("coarse", ["l1", "l2"])
def test_place_non_divisible_matches_loops(dtype, coarse):
    s = randn(2, 3, 5, 5, seed=11, dtype=dtype)
    t = 0.8 * s + 0.3 * randn(2, 3, 5, 5, seed=12, dtype=dtype)
    terms = run(get_objective("place", group_size=4, coarse=coarse, eps=1e-4), s, t)
    golden = grouped_np(s, t, 4, 1e-4, coarse)  # 25 = 5 groups of 4 + one group of 5
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for key in ("coarse", "fine", "w", "loss"):
        assert num(terms[key]) == pytest.approx(golden[key], rel=tol, abs=tol), key


def test_place_with_one_group_equals_lift():
    s = randn(4, 3, 8, 8, seed=13).requires_grad_()
    t = 0.9 * s.detach() + 0.4 * randn(4, 3, 8, 8, seed=14)
    place = run(get_objective("place", group_size=64), s, t)
    lift = run(get_objective("lift"), s, t)
    for key in ("coarse", "fine", "w", "loss"):
        torch.testing.assert_close(place[key], lift[key], rtol=1e-6, atol=1e-6)
    g_place = torch.autograd.grad(place["loss"], s)[0]
    g_lift = torch.autograd.grad(lift["loss"], s)[0]
    torch.testing.assert_close(g_place, g_lift, rtol=1e-5, atol=1e-8)


def test_place_too_few_elements():
    with pytest.raises(OptionError) as err:
        run(get_objective("place", group_size=16), randn(1, 1, 3, 3), randn(1, 1, 3, 3))
    assert "H*W = 3x3 = 9" in str(err.value) and "group_size = 16" in str(err.value)


def test_place_half_precision_input():
    s = randn(2, 3, 8, 8, seed=15).bfloat16().requires_grad_()
    t = randn(2, 3, 8, 8, seed=16).bfloat16()
    terms = run(get_objective("place"), s, t)
    golden = grouped_np(s.float(), t.float(), 16, 1e-6)
    assert terms["loss"].dtype == torch.float32
    assert num(terms["loss"]) == pytest.approx(golden["loss"], rel=1e-5)
    terms["loss"].backward()
    assert s.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_difficulty_order_breaks_ties_by_index(dtype):
    key = torch.randint(0, 5, (6, 37), generator=gen(17)).to(dtype)  # many ties
    order = difficulty_order(key)
    golden = np.argsort(key.numpy(), axis=-1, kind="stable")
    assert order.dtype == torch.int64
    np.testing.assert_array_equal(order.numpy(), golden)


# ----------------------------------------------------------------------------- DIST
@pytest.mark.parametrize("space", ["raw", "softmax"])
@pytest.mark.parametrize("instance", ["pixel", "sample"])
def test_dist_golden(space, instance):
    s, t = randn(3, 4, 3, 2, seed=18), randn(3, 4, 3, 2, seed=19)
    t = t + s
    opts = {"beta": 0.5, "gamma": 2.0, "tau": 2.0, "space": space, "instance": instance}
    terms = run(get_objective("dist", **opts), s, t)
    inter, intra, loss = dist_np(s, t, 0.5, 2.0, 2.0, space, instance)
    assert num(terms["inter"]) == pytest.approx(inter, rel=1e-5)
    assert num(terms["intra"]) == pytest.approx(intra, rel=1e-5)
    assert num(terms["loss"]) == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("instance", ["pixel", "sample"])
def test_dist_affine_invariance(instance):
    s, t = randn(3, 4, 5, 5, seed=20), randn(3, 4, 5, 5, seed=21)
    obj = get_objective("dist", instance=instance)
    base = run(obj, s, t)
    if instance == "pixel":  # an instance is one pixel across channels
        scale = torch.rand(3, 1, 5, 5, generator=gen(22)) + 0.5
        shift = randn(3, 1, 5, 5, seed=23)
        column_scale, column_shift = torch.tensor([0.5, 2, 3, 1]).view(1, 4, 1, 1), 0.7
    else:  # an instance is one image
        scale = torch.rand(3, 1, 1, 1, generator=gen(22)) + 0.5
        shift = randn(3, 1, 1, 1, seed=23)
        column_scale = torch.rand(1, 4, 5, 5, generator=gen(24)) + 0.5
        column_shift = randn(1, 4, 5, 5, seed=25)
    per_instance = run(obj, scale * s + shift, t)
    torch.testing.assert_close(per_instance["inter"], base["inter"], rtol=0, atol=1e-6)
    per_column = run(obj, column_scale * s + column_shift, t)
    torch.testing.assert_close(per_column["intra"], base["intra"], rtol=0, atol=1e-6)
    everywhere = run(obj, 3.0 * s - 2.0, t)
    torch.testing.assert_close(everywhere["loss"], base["loss"], rtol=0, atol=1e-6)
    flipped = run(obj, -s, t)  # a negative scale is not invariant: correlations change sign
    assert num(flipped["inter"]) == pytest.approx(2 * 1 - num(base["inter"]), abs=1e-5)


@pytest.mark.parametrize("space, instance", [("raw", "pixel"), ("softmax", "sample")])
def test_dist_gradcheck(space, instance):
    s = randn(2, 3, 3, 3, seed=26, dtype=torch.float64).requires_grad_()
    t = randn(2, 3, 3, 3, seed=27, dtype=torch.float64)
    obj = get_objective("dist", space=space, instance=instance, tau=1.5)
    assert torch.autograd.gradcheck(lambda x: run(obj, x, t)["loss"], (s,))


def test_dist_constant_instances_have_finite_gradient():
    s = randn(2, 1, 4, 4, seed=28).requires_grad_()  # one channel: every pixel row is constant
    terms = run(get_objective("dist"), s, randn(2, 1, 4, 4, seed=29))
    assert num(terms["inter"]) == pytest.approx(1.0)
    terms["loss"].backward()
    assert torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- FeatKD
def test_featkd_adapters_shape_init_and_training():
    obj = get_objective("featkd")
    fs = {
        "down_blocks.0": randn(2, 4, 6, 6, seed=30).requires_grad_(),
        "blocks.1": randn(2, 5, 6, seed=31).requires_grad_(),
        "mid": randn(2, 3, 6, 6, seed=32).requires_grad_(),
    }
    ft = {
        "down_blocks.0": randn(2, 8, 6, 6, seed=33),
        "blocks.1": randn(2, 5, 10, seed=34),
        "mid": randn(2, 3, 6, 6, seed=35),
    }
    pred = randn(2, 3, 6, 6)
    obj.setup(Outputs(pred, fs), Outputs(pred, ft))
    conv, lin, ident = (obj.adapters[k] for k in ("down_blocks__0", "blocks__1", "mid"))
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (8, 4, 1, 1) and conv.bias is None
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (10, 6) and lin.bias is None
    assert isinstance(ident, nn.Identity)
    params = list(obj.parameters())
    assert len(params) == 2 and all(p.requires_grad for p in params)
    for p in params:
        assert num(p.abs().max()) <= 0.005 and num(p.std()) > 0.001
    terms = run(obj, pred, pred, fs, ft)
    assert set(terms) == {"layer/down_blocks.0", "layer/blocks.1", "layer/mid", "loss"}
    terms["loss"].backward()
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    before = conv.weight.detach().clone()
    torch.optim.SGD(obj.parameters(), lr=10.0).step()
    assert not torch.equal(before, conv.weight.detach())


def test_featkd_golden_with_identity_adapters_and_layers():
    fs = {"a.x": randn(2, 3, 4, 4, seed=36), "b": randn(2, 7, 5, seed=37)}
    ft = {"a.x": randn(2, 3, 4, 4, seed=38), "b": randn(2, 7, 5, seed=39)}
    pred = randn(2, 3, 4, 4)

    def mse(k):
        a, b = fs[k].double().numpy().ravel(), ft[k].double().numpy().ravel()
        return sum((x - y) ** 2 for x, y in zip(a, b)) / a.size

    terms = run(get_objective("featkd"), pred, pred, fs, ft)
    assert num(terms["layer/a.x"]) == pytest.approx(mse("a.x"), rel=1e-6)
    assert num(terms["loss"]) == pytest.approx(mse("a.x") + mse("b"), rel=1e-6)
    only = run(get_objective("featkd", layers=["b"]), pred, pred, fs, ft)
    assert set(only) == {"layer/b", "loss"}
    assert num(only["loss"]) == pytest.approx(mse("b"), rel=1e-6)
    with pytest.raises(OptionError, match="layers names tap 'c'.*student taps: a.x, b"):
        run(get_objective("featkd", layers=["c"]), pred, pred, fs, ft)


def test_featkd_forward_builds_adapters_once():
    obj = get_objective("featkd")
    fs, ft = {"t.0": randn(2, 2, 3, 3)}, {"t.0": randn(2, 4, 3, 3)}
    pred = randn(2, 3, 3, 3)
    run(obj, pred, pred, fs, ft)
    first = obj.adapters["t__0"]
    obj.setup(Outputs(pred, fs), Outputs(pred, ft))
    run(obj, pred, pred, fs, ft)
    assert obj.adapters["t__0"] is first


def test_featkd_errors_name_the_tap():
    obj = get_objective("featkd")
    pred = randn(2, 3, 4, 4)
    with pytest.raises(ShapeError, match="tap 'up.1' differs in batch or spatial size"):
        run(obj, pred, pred, {"up.1": randn(2, 4, 4, 4)}, {"up.1": randn(2, 8, 8, 8)})
    with pytest.raises(ShapeError, match="tap 'up.1' has no teacher feature; teacher taps: up.2"):
        run(obj, pred, pred, {"up.1": randn(2, 4, 4, 4)}, {"up.2": randn(2, 4, 4, 4)})
    with pytest.raises(ShapeError, match="got no student features"):
        run(obj, pred, pred)


def test_featkd_mask_drops_massive_activation():
    fs = {"mid": randn(2, 4, 8, 8, seed=40)}
    target = fs["mid"] + 0.1 * randn(2, 4, 8, 8, seed=41)
    target[0, 1, 2, 3] = 1e4  # a massive activation in one sample
    ft = {"mid": target}
    pred = randn(2, 3, 8, 8)
    plain = num(run(get_objective("featkd"), pred, pred, fs, ft)["loss"])
    masked = num(run(get_objective("featkd", masked=True), pred, pred, fs, ft)["loss"])
    assert plain > 1e5
    assert masked < 0.1
    assert masked == pytest.approx(masked_mse_np(fs["mid"], target), rel=1e-5)


# ----------------------------------------------------------------------------- TAKD
def test_takd_forwards_to_its_base():
    obj = get_objective("takd", base="place", base_options={"group_size": 4}, assistant=0.5)
    assert obj.needs_assistant and not obj.needs_features
    s, t = randn(2, 3, 4, 4, seed=42), randn(2, 3, 4, 4, seed=43)
    got = run(obj, s, t)
    want = run(get_objective("place", group_size=4), s, t)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    feat = get_objective("takd", base="featkd")
    assert feat.needs_features
    fs, ft = {"m": randn(2, 2, 4, 4)}, {"m": randn(2, 6, 4, 4)}
    feat.setup(Outputs(s, fs), Outputs(t, ft))
    assert len(list(feat.parameters())) == 1  # the base's adapter is trained with the student


def test_takd_assistant_rules():
    teacher, student = 78_700_000, 1_300_000
    target = 10 ** ((math.log10(teacher) + math.log10(student)) / 2)
    assert assistant_parameters(teacher, student) == pytest.approx(target, rel=1e-12)
    assert assistant_parameters(100, 1) == pytest.approx(10.0)
    ladder = {"s": 1_300_000, "m": 9_200_000, "l": 16_600_000, "xl": 19_700_000, "t": teacher}
    assert choose_assistant(ladder, teacher, student) == "m"
    # Candidates strictly between win over a closer one equal to the teacher.
    assert choose_assistant({"teach": 100, "mid": 90}, 100, 1) == "mid"
    # None between: the closest in log-space overall.
    assert choose_assistant({"a": 1_000, "b": 10**9}, 10**6, 10**4) == "a"
    # Equal log distance (ln 2 either side of 10): the smaller model.
    assert choose_assistant({"b": 20, "a": 5}, 100, 1) == "a"
    with pytest.raises(OptionError, match="at least one candidate"):
        choose_assistant({}, 100, 1)
    with pytest.raises(OptionError, match="positive parameter count"):
        assistant_parameters(0, 10)


def test_takd_prune_ratio_rule():
    for rt, rs in [(0.0, 0.9), (0.5, 0.9), (0.3, 0.7)]:
        kept_t, kept_s = (1 - rt) ** 2, (1 - rs) ** 2
        kept = math.exp((math.log(kept_t) + math.log(kept_s)) / 2)
        golden = 1 - math.sqrt(kept)
        assert assistant_prune_ratio(rt, rs) == pytest.approx(golden, rel=1e-12)
        assert assistant_prune_ratio(rt, rs, base_params=35_700_000) == pytest.approx(golden)
    assert assistant_prune_ratio(0.0, 0.9) == pytest.approx(1 - math.sqrt(0.1))
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(OptionError, match=r"pruning ratio in \[0, 1\)"):
            assistant_prune_ratio(bad, 0.9)


# ----------------------------------------------------------------------------- combinations
def test_place_plus_featkd_combination():
    combo = build_combination(
        [{"name": "place", "weight": 1.0, "group_size": 16}, {"name": "featkd", "weight": 1e-6}]
    )
    assert combo.label == "place+featkd" and combo.needs_features
    s = randn(2, 3, 8, 8, seed=44)
    t = 0.9 * s + 0.2 * randn(2, 3, 8, 8, seed=45)
    fs, ft = {"mid": randn(2, 4, 4, 4, seed=46)}, {"mid": randn(2, 4, 4, 4, seed=47) * 30}
    terms = combo(student=Outputs(s, fs), teacher=Outputs(t, ft))
    place = grouped_np(s, t, 16, 1e-6)["loss"]
    feat = float(((fs["mid"].double() - ft["mid"].double()) ** 2).mean())
    assert num(terms["place/loss"]) == pytest.approx(place, rel=1e-5)
    assert num(terms["featkd/loss"]) == pytest.approx(feat, rel=1e-6)
    assert num(terms["loss"]) == pytest.approx(place + 1e-6 * feat, rel=1e-5)
    assert {"place/coarse", "place/fine", "place/w", "featkd/layer/mid"} <= set(terms)
