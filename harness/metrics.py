"""Sample-quality metrics through torch-fidelity: FID, KID, IS, precision/recall.

All four come from ``torch_fidelity.calculate_metrics`` (Obukhov et al., 2020): FID
(Heusel et al., 2017), KID (Binkowski et al., 2018), IS (Salimans et al., 2016) and
precision/recall with k-NN manifolds (Kynkaanniemi et al., 2019, k = 3).  Choices made:

- One feature extractor for every metric, named by the data set: ``inception-v3-compat``
  (torch-fidelity's TF-compatible Inception; pool3 2048-d for FID/KID/PR, logits for IS;
  note PR then uses Inception features, not the VGG-16 of the PR paper) or
  the feature space a data set ships (``ImageDataset.feature_classifier``, found through
  the registry and registered here with torch-fidelity under its name), e.g.
  ``kdbench-digits``: the digit classifier's 64-d embedding for FID/KID/PR and its 10
  logits for IS, so the offline default needs no download.
  There is no silent fallback: a metric named "fid" is always computed with the
  extractor that was asked for.
- ``generated`` is torch-fidelity's input1 and ``reference`` its input2 (precision is
  the fraction of generated samples on the reference manifold).
- KID's subset size is ``min(kid_subset_size or 1000, N_gen, N_ref)`` over 100 subsets
  (one subset when it covers both sets whole: every draw is then the same MMD, and
  ``kid_std`` is 0); IS uses ``min(10, N_gen)`` splits; torch-fidelity's fixed
  ``rng_seed`` (2020) makes the values deterministic for fixed inputs.
- ``weights_path`` (``eval.inception_weights``) only feeds torch-fidelity extractors;
  a data set's own extractor reads ``classifier_path`` (default: its shipped file).
- Evaluation noise (``fid_bootstrap = B``, kdbench's evaluation uses 20): the generated
  features are resampled with replacement B times and FID is recomputed against the
  fixed reference statistics (torch-fidelity's ``fid_features_to_statistics`` and
  ``fid_statistics_to_metric``); ``fid_boot_std`` is the std of those B values, the
  metric's sampling noise for this run apart from seed-to-seed variation (the bootstrap
  FIDs themselves are biased upward by duplicated samples; only their spread is used).
  The generated features are extracted a second time for this (a fraction of sampling).
- With ``cache_dir`` the reference features and FID statistics are cached on disk by
  torch-fidelity under a name made of the SHA-256 of the reference uint8 pixels and of
  the extractor weights; without it nothing is written.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import urllib.parse
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from harness.datasets import FeatureClassifier
from harness.errors import KDBenchError, OptionError, ShapeError
from harness.schema import Metric

INCEPTION_EXTRACTOR = "inception-v3-compat"
METRICS = ("fid", "kid", "isc", "prc")
MIN_IMAGES = 10
NETWORK_TIMEOUT_S = 1.0
FID_BOOTSTRAP_SEED = 2020  # torch-fidelity's default rng_seed

_KEYS = {
    "fid": {"frechet_inception_distance": "fid"},
    "kid": {
        "kernel_inception_distance_mean": "kid_mean",
        "kernel_inception_distance_std": "kid_std",
    },
    "isc": {"inception_score_mean": "isc_mean", "inception_score_std": "isc_std"},
    "prc": {"precision": "precision", "recall": "recall"},
}


# --------------------------------------------------------------------------- extractor
def shipped_extractors() -> dict[str, FeatureClassifier]:
    """The feature spaces that registered data sets ship, by extractor name."""
    from harness import registry

    found: dict[str, FeatureClassifier] = {}
    for entry in registry.entries("dataset").values():
        own = getattr(entry.cls, "feature_classifier", None)
        if isinstance(own, FeatureClassifier) and own.name:
            found.setdefault(own.name, own)
    return found


def _shipped(name: str) -> FeatureClassifier | None:
    return shipped_extractors().get(name)


def _classifier_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity extractor over a data set's own classifier (uint8 RGB in)."""

        def __init__(self, name, features_list, kdbench_classifier_path=None, **kwargs):
            super().__init__(name, features_list)
            own = _shipped(name)
            if own is None:
                raise KDBenchError(f"no installed data set ships feature extractor {name!r}")
            self.classifier = own.load(kdbench_classifier_path)

        @staticmethod
        def get_provided_features_list():
            return "embedding", "logits_unbiased", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {
                "isc": "logits_unbiased",
                "fid": "embedding",
                "kid": "embedding",
                "prc": "embedding",
            }[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected uint8 images [B,3,H,W], got {x.dtype} {tuple(x.shape)}")
            images = x.float() / 127.5 - 1.0  # the classifier averages the channels
            emb, logits = self.classifier.features(images)
            out = {"embedding": emb, "logits_unbiased": logits, "logits": logits}
            return tuple(out[f].float() for f in self.features_list)

    return ClassifierFeatureExtractor


def register_extractors() -> None:
    """Register the data sets' own extractors with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    for name in shipped_extractors():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, _classifier_extractor_class())


def _known_extractors() -> list[str]:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register_extractors()
    return sorted(FEATURE_EXTRACTORS_REGISTRY)


def _check_extractor_name(name: str) -> None:
    valid = _known_extractors()
    if name not in valid:
        raise KDBenchError(f"unknown feature extractor {name!r}; valid: {', '.join(valid)}")


# --------------------------------------------------------------------------- availability
def inception_cache_path() -> Path:
    """Where torch-fidelity's first use stores the Inception weights (torch hub checkpoints)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def _probe(url: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """True when ``url``'s server answers an HTTP HEAD within ``timeout`` s (DNS included).

    A 2xx/3xx status counts (redirects are not followed: GitHub answers 302 for release
    files); an error status (e.g. from a filtering proxy) or no answer in time does not.
    """
    parts = urllib.parse.urlsplit(url)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    answered: list[bool] = []

    def attempt():
        conn = conn_cls(parts.hostname or "", parts.port, timeout=timeout)
        try:
            conn.request("HEAD", parts.path or "/")
            answered.append(conn.getresponse().status < 400)
        except (OSError, http.client.HTTPException):
            answered.append(False)
        finally:
            conn.close()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)  # getaddrinfo ignores socket timeouts: bound the wait here
    return bool(answered and answered[0])


def network_available(url: str | None = None) -> bool:
    """Whether torch-fidelity could download its Inception weights right now (<= ~1 s)."""
    if url is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        url = URL_INCEPTION_V3
    return _probe(url)


def check_metric_available(
    feature_extractor: str, weights_path: str | None = None, *, classifier_path: str | None = None
) -> None:
    """Raise ``KDBenchError`` (one line) when the extractor's weights cannot be had.

    ``weights_path`` is the Inception (torch-fidelity extractor) weights file; a data
    set's own extractor ignores it and checks ``classifier_path`` (default: its shipped
    classifier).
    """
    _check_extractor_name(feature_extractor)
    own = _shipped(feature_extractor)
    if own is not None:
        own.load(classifier_path)  # CheckpointError (a KDBenchError): missing/corrupt
        return
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise KDBenchError(f"feature extractor weights not found: {weights_path}")
        return
    if feature_extractor == INCEPTION_EXTRACTOR:
        cached = inception_cache_path()
        if cached.is_file() or network_available():
            return
        raise KDBenchError(
            f"FID needs the Inception-v3 weights: not in {cached} and the download host "
            "cannot be reached; set "
            f'eval.inception_weights = "/path/to/{cached.name}" or go online once'
        )
    if not network_available():
        raise KDBenchError(
            f"feature extractor {feature_extractor!r} downloads its weights at first use and "
            "there is no network; pass its weights path or go online once"
        )


def describe_extractor(name: str, *, classifier_path: str | None = None) -> str:
    """One line saying what FID and friends were computed with (leaderboard metadata)."""
    own = _shipped(name)
    if own is not None:
        model = own.load(classifier_path)
        digest = _file_digest(classifier_path or own.default_path())[:12]
        return f"{own.describe(model)}, weights sha256 {digest}"
    if name == INCEPTION_EXTRACTOR:
        return "Inception-v3 pool3 (2048-d; IS on 1008 logits), torch-fidelity"
    return f"{name}, torch-fidelity"


# --------------------------------------------------------------------------- metrics
class _UInt8Images(Dataset):
    """uint8 ``[N,3,H,W]`` images as torch-fidelity reads them (one tensor per item)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def _check_images(x: Tensor, what: str) -> None:
    if isinstance(x, Tensor) and not x.is_floating_point():
        raise ShapeError(f"{what} images must be floats in [-1, 1], got {x.dtype}")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"{what} images must be a tensor [N,1|3,H,W], got {shape}")
    if len(x) < MIN_IMAGES:
        raise KDBenchError(f"metrics need at least {MIN_IMAGES} {what} images, got {len(x)}")
    if not torch.isfinite(x).all():
        raise KDBenchError(f"{what} images contain NaN or inf")


def _file_digest(path: str | os.PathLike) -> str:
    sidecar = Path(str(path) + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text().strip()
    st = Path(path).stat()
    return hashlib.sha256(
        f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()


def _reference_cache_name(
    reference_u8: Tensor, feature_extractor: str, weights_path: str | None
) -> str:
    """Cache name: SHA-256 of the pixels and of the extractor weights actually used."""
    h = hashlib.sha256()
    h.update(str(tuple(reference_u8.shape)).encode())
    h.update(reference_u8.cpu().numpy().tobytes())
    own = _shipped(feature_extractor)
    if own is not None:
        h.update(_file_digest(weights_path or own.default_path()).encode())
    elif weights_path is not None:
        h.update(_file_digest(weights_path).encode())
    return f"kdbench-ref-{h.hexdigest()[:24]}"


def compute_metrics(
    generated: Tensor,
    reference: Tensor,
    *,
    feature_extractor: str,
    metrics: Sequence[str] = METRICS,
    weights_path: str | None = None,
    device: str = "cpu",
    kid_subset_size: int | None = None,
    cache_dir: str | None = None,
    classifier_path: str | None = None,
    fid_bootstrap: int = 0,
) -> dict[str, float]:
    """FID/KID/IS/PR of ``generated`` against ``reference`` (float [-1,1] ``[N,C,H,W]``).

    Returns the keys of the requested metrics among ``fid``, ``kid_mean``, ``kid_std``,
    ``isc_mean``, ``isc_std``, ``precision``, ``recall``, plus ``fid_boot_std`` when FID
    is requested with ``fid_bootstrap >= 2`` resamples.  ``weights_path``: local weights
    of a torch-fidelity extractor (Inception); ignored by a data set's own extractor
    (e.g. ``kdbench-digits``), which uses ``classifier_path`` (default: its shipped file).
    """
    import torch_fidelity

    from harness.datasets import to_uint8

    wanted = list(dict.fromkeys(metrics))
    bad = [m for m in wanted if m not in METRICS]
    if bad or not wanted:
        raise OptionError(f"unknown metric(s) {bad or '(none given)'}; valid: {', '.join(METRICS)}")
    _check_extractor_name(feature_extractor)
    _check_images(generated, "generated")
    _check_images(reference, "reference")
    gen_u8 = to_uint8(generated.detach().cpu())
    ref_u8 = to_uint8(reference.detach().cpu())
    n_gen, n_ref = len(gen_u8), len(ref_u8)
    if kid_subset_size is not None and kid_subset_size < 2:
        raise OptionError(f"kid_subset_size must be >= 2, got {kid_subset_size}")
    subset = min(kid_subset_size or 1000, n_gen, n_ref)

    device = str(device)
    cuda = device.startswith("cuda")
    kwargs = dict(
        input1=_UInt8Images(gen_u8),
        input2=_UInt8Images(ref_u8),
        feature_extractor=feature_extractor,
        cuda=cuda,
        save_cpu_ram=True,
        verbose=False,
        batch_size=256,
        isc_splits=min(10, n_gen),
        kid_subset_size=subset,
        kid_subsets=1 if subset == n_gen == n_ref else 100,
        **{m: m in wanted for m in METRICS},
    )
    if _shipped(feature_extractor) is not None:
        weights_path = classifier_path  # eval.inception_weights does not apply here
        kwargs["kdbench_classifier_path"] = (
            None if classifier_path is None else str(classifier_path)
        )
    elif weights_path is not None:
        kwargs["feature_extractor_weights_path"] = str(weights_path)
    if cache_dir is not None:
        kwargs.update(
            cache=True,
            cache_root=str(cache_dir),
            input2_cache_name=_reference_cache_name(ref_u8, feature_extractor, weights_path),
        )
    else:
        kwargs["cache"] = False

    ctx = torch.cuda.device(torch.device(device)) if cuda and ":" in device else nullcontext()
    with ctx:
        raw = torch_fidelity.calculate_metrics(**kwargs)
    out: dict[str, float] = {}
    for m in wanted:
        for src, dst in _KEYS[m].items():
            out[dst] = float(raw[src])
    if "fid" in wanted and fid_bootstrap >= 2:
        with ctx:
            out[Metric.FID_BOOT_STD] = fid_bootstrap_std(kwargs, fid_bootstrap)
    return out


def fid_bootstrap_std(kwargs: dict, resamples: int, seed: int = FID_BOOTSTRAP_SEED) -> float:
    """Std of FID over ``resamples`` bootstrap resamples of the generated features
    (input1 of torch-fidelity ``kwargs``) against the fixed reference statistics (input2)."""
    import numpy as np
    from torch_fidelity.metric_fid import (
        KEY_METRIC_FID,
        fid_features_to_statistics,
        fid_input_id_to_statistics_cached,
        fid_statistics_to_metric,
    )
    from torch_fidelity.utils import (
        create_feature_extractor,
        extract_featuresdict_from_input_id,
        resolve_feature_layer_for_metric,
    )

    layer = resolve_feature_layer_for_metric("fid", **kwargs)
    extractor = create_feature_extractor(kwargs["feature_extractor"], [layer], **kwargs)
    features = extract_featuresdict_from_input_id(1, extractor, **kwargs)[layer]
    reference = fid_input_id_to_statistics_cached(2, extractor, layer, **kwargs)
    rng = np.random.default_rng(seed)
    n = len(features)
    values = [
        fid_statistics_to_metric(
            fid_features_to_statistics(features[torch.from_numpy(rng.integers(0, n, n))]),
            reference,
            False,
        )[KEY_METRIC_FID]
        for _ in range(resamples)
    ]
    return float(np.std(values, ddof=1))


@torch.no_grad()
def class_accuracy(
    classifier: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512
) -> float:
    """Fraction of ``images`` (float [-1,1]) that ``classifier`` assigns to ``labels``."""
    if len(images) != len(labels) or len(images) == 0:
        raise ShapeError(
            f"class_accuracy needs as many labels as images (>0): "
            f"{len(images)} images, {len(labels)} labels"
        )
    was_training = classifier.training
    classifier.eval()
    try:
        param = next(classifier.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
        correct = 0
        for i in range(0, len(images), batch_size):
            logits = classifier(images[i : i + batch_size].to(dev))
            correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size].cpu()).sum())
    finally:
        classifier.train(was_training)
    return correct / len(images)


register_extractors()
