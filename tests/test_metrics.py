"""Metrics (torch-fidelity with the digit classifier) and the digit classifier itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from harness import metrics
from harness.datasets import to_uint8
from harness.errors import CheckpointError, KDBenchError, OptionError, ShapeError
from harness.metrics import (
    check_metric_available,
    class_accuracy,
    compute_metrics,
    describe_extractor,
)
from harness.storage import load_tensors
from plugins.datasets.digits import load_digits_tensors
from plugins.datasets.digits_classifier import (
    DigitClassifier,
    default_weights_path,
    load_classifier,
    train_classifier,
)

EXTRACTOR = "kdbench-digits"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convs run fastest on one thread when other test runs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    train, ytrain = load_digits_tensors(16, "train")
    test, ytest = load_digits_tensors(16, "test")
    return train[:300], ytrain[:300], test, ytest


@pytest.fixture(scope="module")
def real_scores(digits):
    gen, _, ref, _ = digits
    return compute_metrics(gen, ref, feature_extractor=EXTRACTOR)


def _embed(images: torch.Tensor) -> np.ndarray:
    """Independent path: round to uint8 as torch-fidelity sees it, then the embedding."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round()
    with torch.no_grad():
        emb, _ = load_classifier().features(u8 / 127.5 - 1)
    return emb.double().numpy()


# ----------------------------------------------------------------------------- FID & co
def test_fid_orders_real_blurred_and_noise(digits, real_scores):
    from torchvision.transforms.v2.functional import gaussian_blur

    gen, _, ref, _ = digits
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_noise = compute_metrics(noise, ref, feature_extractor=EXTRACTOR, metrics=("fid",))["fid"]
    fid_blur = [
        compute_metrics(
            gaussian_blur(gen, [7, 7], [sigma, sigma]),
            ref,
            feature_extractor=EXTRACTOR,
            metrics=("fid",),
        )["fid"]
        for sigma in (0.7, 1.0, 1.5)
    ]
    assert fid_blur == sorted(fid_blur)  # more blur, worse FID
    assert real_scores["fid"] * 4 < fid_blur[1] < fid_noise
    assert real_scores["fid"] * 30 < fid_noise


def test_fid_matches_an_independent_frechet_distance(digits, real_scores):
    gen, _, ref, _ = digits
    a, b = _embed(gen), _embed(ref)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    fid = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean)
    assert real_scores["fid"] == pytest.approx(fid, rel=1e-3, abs=1e-3)


def test_kid_matches_an_independent_unbiased_mmd(digits):
    _, _, ref, _ = digits
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = compute_metrics(noise, ref, feature_extractor=EXTRACTOR, metrics=("kid",))
    x, y = _embed(noise), _embed(ref)
    d, m = x.shape[1], len(x)

    def k(p, q):
        return (p @ q.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1))
    mmd -= 2 * kxy.sum() / (m * m)
    assert set(got) == {"kid_mean", "kid_std"}
    assert got["kid_mean"] == pytest.approx(mmd, rel=1e-3)
    assert got["kid_std"] == 0.0  # one subset covers both sets whole


def test_fid_bootstrap_std_matches_an_independent_resampling(digits, real_scores):
    gen, _, ref, _ = digits
    got = compute_metrics(gen, ref, feature_extractor=EXTRACTOR, metrics=("fid",), fid_bootstrap=8)
    assert set(got) == {"fid", "fid_boot_std"}
    assert got["fid"] == pytest.approx(real_scores["fid"], rel=1e-9)  # FID itself unchanged
    a, b = _embed(gen), _embed(ref)
    mu_b, cov_b = b.mean(0), np.cov(b, rowvar=False)
    rng = np.random.default_rng(metrics.FID_BOOTSTRAP_SEED)
    values = []
    for _ in range(8):
        x = a[rng.integers(0, len(a), len(a))]
        covmean = scipy.linalg.sqrtm(np.cov(x, rowvar=False) @ cov_b).real
        values.append(
            ((x.mean(0) - mu_b) ** 2).sum()
            + np.trace(np.cov(x, rowvar=False) + cov_b - 2 * covmean)
        )
    assert got["fid_boot_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-2)
    # Fewer generated samples, more sampling noise.
    few = compute_metrics(
        gen[:60], ref, feature_extractor=EXTRACTOR, metrics=("fid",), fid_bootstrap=8
    )
    assert few["fid_boot_std"] > got["fid_boot_std"] > 0


def test_all_keys_present_sane_and_deterministic(digits, real_scores):
    gen, _, ref, _ = digits
    assert set(real_scores) == {
        "fid",
        "kid_mean",
        "kid_std",
        "isc_mean",
        "isc_std",
        "precision",
        "recall",
    }
    assert all(isinstance(v, float) and np.isfinite(v) for v in real_scores.values())
    assert 0.0 <= real_scores["precision"] <= 1.0 and 0.0 <= real_scores["recall"] <= 1.0
    assert real_scores["precision"] > 0.7 and real_scores["recall"] > 0.7
    assert 5.0 < real_scores["isc_mean"] <= 10.0  # 10 classes: IS is at most 10
    assert real_scores["kid_std"] >= 0 and real_scores["isc_std"] >= 0
    assert compute_metrics(gen, ref, feature_extractor=EXTRACTOR) == real_scores


def test_noise_scores_badly_on_every_metric(digits, real_scores):
    _, _, ref, _ = digits
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    bad = compute_metrics(noise, ref, feature_extractor=EXTRACTOR)
    assert bad["isc_mean"] < 2.0 < real_scores["isc_mean"]
    assert bad["kid_mean"] > real_scores["kid_mean"] + 1.0
    assert bad["recall"] < 0.05 < real_scores["recall"]


def test_subset_of_metrics_and_channel_and_order_invariance(digits):
    gen, _, ref, _ = digits
    one = compute_metrics(gen, ref, feature_extractor=EXTRACTOR, metrics=("fid", "prc"))
    assert set(one) == {"fid", "precision", "recall"}
    perm = torch.randperm(len(gen), generator=torch.Generator().manual_seed(0))
    three = compute_metrics(
        gen[perm].expand(-1, 3, -1, -1), ref, feature_extractor=EXTRACTOR, metrics=("fid", "prc")
    )
    assert three["fid"] == pytest.approx(one["fid"], rel=1e-5)
    assert (three["precision"], three["recall"]) == (one["precision"], one["recall"])


def test_kid_subset_size_is_clipped_and_used(digits):
    gen, _, ref, _ = digits
    gen, ref = gen[:150], ref[:150]
    small = compute_metrics(
        gen[:40], ref, feature_extractor=EXTRACTOR, metrics=("kid",), kid_subset_size=5000
    )
    assert np.isfinite(small["kid_mean"])
    sub = compute_metrics(
        gen, ref, feature_extractor=EXTRACTOR, metrics=("kid",), kid_subset_size=50
    )
    assert sub["kid_std"] > 0  # 100 different subsets of 50
    with pytest.raises(OptionError, match="kid_subset_size must be >= 2"):
        compute_metrics(gen, ref, feature_extractor=EXTRACTOR, kid_subset_size=1)


def test_bad_inputs_raise_clear_errors(digits):
    gen, _, ref, _ = digits
    with pytest.raises(OptionError, match=r"unknown metric\(s\) \['ppl'\]; valid: fid, kid"):
        compute_metrics(gen, ref, feature_extractor=EXTRACTOR, metrics=("ppl",))
    with pytest.raises(KDBenchError, match="unknown feature extractor 'incepton'.*kdbench-digits"):
        compute_metrics(gen, ref, feature_extractor="incepton")
    with pytest.raises(KDBenchError, match="at least 10 generated images, got 3"):
        compute_metrics(gen[:3], ref, feature_extractor=EXTRACTOR)
    nan = gen.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(KDBenchError, match="generated images contain NaN"):
        compute_metrics(nan, ref, feature_extractor=EXTRACTOR)
    with pytest.raises(ShapeError, match="generated images must be floats in \\[-1, 1\\]"):
        compute_metrics(to_uint8(gen), ref, feature_extractor=EXTRACTOR)
    with pytest.raises(ShapeError, match=r"reference images must be a tensor \[N,1\|3,H,W\]"):
        compute_metrics(gen, ref[:, 0], feature_extractor=EXTRACTOR)


def test_reference_cache_dir_reuses_features(digits, tmp_path, monkeypatch):
    gen, _, ref, _ = digits
    gen, ref = gen[:120], ref[:120]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    plain = compute_metrics(gen, ref, feature_extractor=EXTRACTOR, metrics=("fid", "kid"))
    assert not (tmp_path / "torch_home").exists()  # nothing written without cache_dir
    cache = tmp_path / "cache"
    first = compute_metrics(
        gen, ref, feature_extractor=EXTRACTOR, metrics=("fid", "kid"), cache_dir=str(cache)
    )
    names = sorted(p.name for p in cache.iterdir())
    assert names and all(n.startswith("kdbench-ref-") for n in names)
    again = compute_metrics(
        gen, ref, feature_extractor=EXTRACTOR, metrics=("fid", "kid"), cache_dir=str(cache)
    )
    assert first == again == plain
    ignored = compute_metrics(
        gen, ref, feature_extractor=EXTRACTOR, metrics=("fid", "kid"), weights_path="/no/w.pth"
    )
    assert ignored == plain  # eval.inception_weights does not apply to the digit extractor
    compute_metrics(
        gen, ref[:100], feature_extractor=EXTRACTOR, metrics=("fid",), cache_dir=str(cache)
    )
    assert len({p.name.split("-kdbench-digits")[0] for p in cache.iterdir()}) == 2


def test_extractor_is_registered_with_torch_fidelity():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    assert EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY
    fe = create_feature_extractor(
        EXTRACTOR, ["logits_unbiased", "embedding"], cuda=False, verbose=False
    )
    x, _ = load_digits_tensors(16, "test")
    logits, emb = fe(to_uint8(x[:8]))
    assert logits.shape == (8, 10) and emb.shape == (8, 64)
    with pytest.raises(ValueError, match="uint8"):
        fe(x[:8].expand(-1, 3, -1, -1))


# ----------------------------------------------------------------------------- availability
def test_inception_offline_without_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "network_available", lambda url=None: False)
    with pytest.raises(KDBenchError) as info:
        check_metric_available("inception-v3-compat", None)
    msg = str(info.value)
    assert "\n" not in msg and "cannot be reached" in msg
    assert 'eval.inception_weights = "/path/to/weights-inception-2015-12-05-6726825d.pth"' in msg
    cached = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    check_metric_available("inception-v3-compat", None)  # found in torch-fidelity's cache


def test_inception_weights_path_is_checked(tmp_path):
    with pytest.raises(KDBenchError, match="weights not found: .*nope.pth"):
        check_metric_available("inception-v3-compat", str(tmp_path / "nope.pth"))
    given = tmp_path / "w.pth"
    given.write_bytes(b"x")
    check_metric_available("inception-v3-compat", str(given))


def test_network_probe_needs_a_success_status(tmp_path):
    import http.server
    import threading

    (tmp_path / "w.pth").write_bytes(b"x")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert metrics._probe(f"{base}/w.pth") is True
        assert metrics._probe(f"{base}/missing.pth") is False  # 404: not downloadable
    finally:
        server.shutdown()
    assert metrics._probe("http://kdbench.invalid/weights.pth", timeout=0.5) is False


def test_digits_and_unknown_extractors_availability(tmp_path):
    check_metric_available(EXTRACTOR, None)
    check_metric_available(EXTRACTOR, str(tmp_path / "inception.pth"))  # not its weights
    with pytest.raises(CheckpointError, match="digit classifier weights not found"):
        check_metric_available(EXTRACTOR, classifier_path=str(tmp_path / "none.safetensors"))
    with pytest.raises(KDBenchError, match="unknown feature extractor 'resnet'; valid: .*"):
        check_metric_available("resnet", None)


def test_describe_extractor():
    digest = (
        default_weights_path()
        .with_name(default_weights_path().name + ".sha256")
        .read_text()
        .strip()
    )
    assert describe_extractor(EXTRACTOR) == (
        f"digit-classifier embedding (64-d; IS on 10 logits), kdbench, weights sha256 {digest[:12]}"
    )
    assert describe_extractor("inception-v3-compat").startswith("Inception-v3 pool3 (2048-d")


# ----------------------------------------------------------------------------- accuracy
def test_class_accuracy_real_and_shuffled(digits):
    _, _, x, y = digits
    clf = load_classifier()
    acc = class_accuracy(clf, x, y)
    with torch.no_grad():
        manual = float((clf(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(manual) and acc >= 0.95
    assert class_accuracy(clf, x, y, batch_size=7) == acc
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert 0.0 <= class_accuracy(clf, x, shuffled) < 0.25
    clf.train()
    class_accuracy(clf, x[:20], y[:20])
    assert clf.training  # mode restored
    with pytest.raises(ShapeError, match="as many labels as images"):
        class_accuracy(clf, x, y[:5])


# ----------------------------------------------------------------------------- classifier
def test_shipped_classifier_held_out_accuracy(digits):
    _, _, x, y = digits
    clf = load_classifier()
    assert isinstance(clf, DigitClassifier) and not clf.training
    with torch.no_grad():
        acc = float((clf(x).argmax(1) == y).float().mean())
    info = json.loads(default_weights_path().with_suffix(".json").read_text())
    assert acc >= 0.95 and acc == pytest.approx(info["test_accuracy"], abs=1e-6)
    assert info["n_test"] == 300 and info["n_train"] == 1497 and info["seed"] == 0
    assert default_weights_path().stat().st_size < 1_000_000
    assert 50_000 < sum(p.numel() for p in clf.parameters()) < 150_000


def test_classifier_accepts_rgb_and_other_sizes(digits):
    _, _, x, y = digits
    clf = load_classifier()
    with torch.no_grad():
        grey = clf(x[:32])
        rgb = clf(x[:32].expand(-1, 3, -1, -1))
        big = clf(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    torch.testing.assert_close(grey, rgb)
    assert float((big.argmax(1) == y).float().mean()) > 0.9


def test_load_classifier_rejects_tampered_or_missing_files(tmp_path):
    copy = tmp_path / "clf.safetensors"
    shutil.copy(default_weights_path(), copy)
    shutil.copy(str(default_weights_path()) + ".sha256", str(copy) + ".sha256")
    assert isinstance(load_classifier(copy), DigitClassifier)
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_classifier(copy)
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "absent.safetensors")


def test_train_classifier_is_reproducible_and_learns(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    kw = dict(epochs=2, seed=3, n_train=500)
    a = train_classifier(**kw, out_path=tmp_path / "a.safetensors")
    after = torch.rand(3)
    b = train_classifier(**kw, out_path=tmp_path / "b.safetensors")
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    wa = load_tensors(tmp_path / "a.safetensors")
    wb = load_tensors(tmp_path / "b.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test_accuracy"] == b["test_accuracy"] > 0.3  # chance is 0.1
    assert a["n_train"] == 500 and a["n_test"] == 300
    assert json.loads((tmp_path / "a.json").read_text())["test_accuracy"] == a["test_accuracy"]
    loaded = load_classifier(tmp_path / "a.safetensors")
    x, y = load_digits_tensors(16, "test")
    assert class_accuracy(loaded, x, y) == pytest.approx(a["test_accuracy"])
    gen, _ = load_digits_tensors(16, "train")
    own = compute_metrics(
        gen[:100],
        x,
        feature_extractor=EXTRACTOR,
        metrics=("fid",),
        classifier_path=str(tmp_path / "a.safetensors"),
    )
    shipped = compute_metrics(gen[:100], x, feature_extractor=EXTRACTOR, metrics=("fid",))
    assert own["fid"] != shipped["fid"]
    assert describe_extractor(EXTRACTOR, classifier_path=str(tmp_path / "a.safetensors")) != (
        describe_extractor(EXTRACTOR)
    )
