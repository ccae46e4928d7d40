"""The digit classifier: metric feature space and class-accuracy judge of ``digits``.

It ships with the ``digits`` data set (weights beside this file) and reaches the core as
``DigitsDataset.feature_classifier`` (a ``harness.datasets.FeatureClassifier``): the
metrics register it with torch-fidelity as ``kdbench-digits``, and
``kdbench train-classifier`` retrains it.

FID on 8x8 digits with Inception-v3 (trained on 299x299 ImageNet photos) says little, so
the embedded default measures samples in the feature space of a small CNN trained on
the digits, in the spirit of the domain-specific extractors of Heusel et al. (2017, FID)
and of "classifier accuracy of conditional samples" used in class-conditional diffusion
work.  Choices made here:

- Architecture (~83k parameters): two VGG-style stages of 3x3 conv + BatchNorm + ReLU
  (32 then 64 channels, each stage two convs and a 2x2 max-pool), a 2x2 average pool, a
  linear layer to a 64-d **embedding** (its pre-activation output, full rank, used by
  FID/KID/PR), then ReLU, dropout 0.2 and a linear layer to 10 **logits** (used by IS).
- Inputs are float ``[B,1,H,W]`` in ``[-1,1]``; three channels are averaged and other
  sizes are resized (bilinear, antialiased) to the classifier's own size, so samples of
  any resolution can be judged.
- Training (``train_classifier``): the digits train split (1,497 images), 15 epochs,
  AdamW (lr 3e-3, weight decay 1e-4), one-cycle schedule, batch 64, label smoothing 0.05,
  random integer shifts of up to ``max_shift`` (2) pixels per image as the only
  augmentation (~15-25 s on two idle CPU cores);
  the held-out accuracy is measured once, on the 300-image test split, after training.
- Reproducible: a fixed seed drives initialisation, data order, shifts and dropout
  inside ``torch.random.fork_rng`` (the caller's RNG state is untouched).
- Saved with ``harness.storage.save_tensors`` (atomic, SHA-256 sidecar); the
  architecture and training settings travel in the safetensors metadata, plus a JSON
  summary beside the weights.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.datasets import FeatureClassifier
from harness.errors import CheckpointError, OptionError
from harness.storage import atomic_write_json, load_tensors, read_metadata, save_tensors
from plugins.datasets.digits_data import load_digits_tensors

SHIPPED_NAME = "digits_classifier.safetensors"
ARCH_KEYS = ("image_size", "width", "embed_dim", "num_classes")


def default_weights_path() -> Path:
    """Where the shipped classifier weights live (inside ``plugins/datasets``)."""
    return Path(str(resources.files("plugins.datasets").joinpath(SHIPPED_NAME)))


def _stage(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class DigitClassifier(nn.Module):
    """Small CNN: ``forward(x) -> logits [B,10]``; ``features(x) -> (embedding, logits)``."""

    def __init__(
        self,
        image_size: int = 16,
        width: int = 32,
        embed_dim: int = 64,
        num_classes: int = 10,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.image_size = image_size
        self.width = width
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.body = nn.Sequential(
            *_stage(1, width), *_stage(width, 2 * width), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.embed = nn.Linear(2 * width * 4, embed_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def arch(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in ARCH_KEYS}

    def prepare(self, x: Tensor) -> Tensor:
        """Float ``[B,C,H,W]`` in [-1,1] -> ``[B,1,S,S]`` at the classifier's size S."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B,1|3,H,W], got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return x

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.embed(self.body(self.prepare(x)))
        return emb, self.head(emb)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[1]


def _shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    d = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen).float()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * d[:, 0] / w
    theta[:, 1, 2] = -2.0 * d[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample x+1 so that the zero padding is the background (-1) after shifting back.
    return F.grid_sample(x + 1, grid, mode="nearest", align_corners=False) - 1


@torch.no_grad()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    return float((model(images).argmax(1) == labels).float().mean())


def train_classifier(
    image_size: int = 16,
    seed: int = 0,
    epochs: int = 15,
    out_path: str | Path | None = None,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_shift: int = 2,
    n_train: int | None = None,
) -> dict:
    """Train the digit classifier on the digits train split; save it when ``out_path`` is set.

    ``n_train`` keeps only the first n training images (quick checks; default all 1,497).
    Returns ``test_accuracy`` (held-out, 300 images), ``train_accuracy``, ``params``,
    ``seconds`` and the settings.  Writes ``out_path`` (+ ``.sha256``) and a JSON summary
    with the same stem.
    """
    if epochs < 1:
        raise OptionError(f"epochs must be >= 1, got {epochs}")
    start = time.perf_counter()
    x_train, y_train = load_digits_tensors(image_size, "train")
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    x_test, y_test = load_digits_tensors(image_size, "test")
    shift = max(0, round(max_shift * image_size / 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = DigitClassifier(image_size=image_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-len(y_train) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch
        )
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(y_train), generator=gen)
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                logits = model(_shift(x_train[idx], shift, gen))
                loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    result = {
        "test_accuracy": _accuracy(model, x_test, y_test),
        "train_accuracy": _accuracy(model, x_train, y_train),
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 2),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "max_shift": shift,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "split": "digits stratified split, seed 0 (plugins.datasets.digits)",
        "torch": torch.__version__,
        **model.arch(),
    }
    if out_path is not None:
        save_classifier(model, out_path, result)
        result["path"] = str(out_path)
    return result


def save_classifier(model: DigitClassifier, path: str | Path, info: dict | None = None) -> None:
    """Weights (atomic, with SHA-256 sidecar) plus a JSON summary ``<stem>.json``."""
    path = Path(path)
    meta = {k: str(v) for k, v in (info or {}).items()}
    meta.update({k: str(v) for k, v in model.arch().items()})
    meta["format"] = "kdbench-digit-classifier-1"
    save_tensors(path, model.state_dict(), metadata=meta)
    atomic_write_json(path.with_suffix(".json"), {**(info or {}), **model.arch()})


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> tuple[dict[str, int], dict[str, Tensor]]:
    state = load_tensors(path)  # verifies the SHA-256 sidecar
    meta = read_metadata(path)
    if meta.get("format") != "kdbench-digit-classifier-1":
        raise CheckpointError(f"{path}: not a kdbench digit classifier (metadata format missing)")
    try:
        arch = {k: int(meta[k]) for k in ARCH_KEYS}
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: digit classifier metadata is incomplete ({exc})") from None
    return arch, state


def load_classifier(path: str | Path | None = None) -> DigitClassifier:
    """Load (and verify) a digit classifier; ``None`` loads the shipped one. Eval mode.

    The verified file is read once per path and file stamp; each call builds a new module.
    """
    p = Path(path) if path is not None else default_weights_path()
    if not p.is_file():
        hint = " (run `kdbench train-classifier` to make one)" if path is None else ""
        raise CheckpointError(f"{p}: digit classifier weights not found{hint}")
    st = p.stat()
    arch, state = _read(str(p.resolve()), st.st_mtime_ns, st.st_size)
    model = DigitClassifier(**arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{p}: digit classifier does not match its metadata ({msg})"
        ) from None
    return model.eval().requires_grad_(False)


def classifier_info(path: str | Path | None = None) -> dict:
    """The JSON summary written beside the weights (settings, measured accuracy)."""
    p = Path(path) if path is not None else default_weights_path()
    summary = p.with_suffix(".json")
    return json.loads(summary.read_text()) if summary.is_file() else {}


class DigitFeatures(FeatureClassifier):
    """``kdbench-digits``: the digit classifier's 64-d embedding (FID/KID/PR), 10 logits (IS)."""

    name = "kdbench-digits"

    def default_path(self) -> Path:
        return default_weights_path()

    def load(self, path: str | Path | None = None) -> DigitClassifier:
        return load_classifier(path)

    def describe(self, model: nn.Module) -> str:
        return (
            f"digit-classifier embedding ({model.embed_dim}-d; IS on {model.num_classes} "
            "logits), kdbench"
        )

    def train(self, *, seed: int = 0, out_path: str | Path | None = None) -> dict:
        return train_classifier(seed=seed, out_path=out_path)
