"""The dataset contract: a registered ``ImageDataset`` yields ``(image, label)`` pairs.

Images are float tensors ``[C, H, W]`` scaled to ``[-1, 1]`` (the diffusion convention);
labels are ints (0 for unconditional data sets, where ``num_classes == 0``).
``feature_extractor`` names the torch-fidelity feature extractor that metrics use for
this data set (``inception-v3-compat`` for natural images).  A data set that ships its
own feature space (a small classifier trained on it) sets ``feature_classifier`` to a
:class:`FeatureClassifier` of that name: the metrics find it there, through the
registry, and never import the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset


class FeatureClassifier:
    """A metric feature space shipped by a data set: a classifier of its classes.

    Its ``features(x) -> (embedding, logits)`` on float images ``[B,C,H,W]`` in [-1,1]
    feeds FID/KID/precision-recall (embedding) and IS (logits); torch-fidelity knows it
    under ``name``, the data set's ``feature_extractor``.  ``train`` is optional
    (``kdbench train-classifier``).
    """

    name: ClassVar[str] = ""

    def default_path(self) -> Path:
        """The shipped weights file (its SHA-256 sidecar names the weights in reports)."""
        raise NotImplementedError

    def load(self, path: str | Path | None = None) -> torch.nn.Module:
        """The verified classifier from ``path`` (None: the shipped weights), in eval mode."""
        raise NotImplementedError

    def describe(self, model: torch.nn.Module) -> str:
        """What FID and friends were computed with, e.g. ``"digit-classifier embedding ..."``."""
        return f"{self.name} classifier embedding"

    def train(self, *, seed: int = 0, out_path: str | Path | None = None) -> dict:
        """Retrain the classifier, write it to ``out_path``; returns what was measured."""
        raise NotImplementedError(f"feature classifier {self.name!r} cannot be retrained")


class ImageDataset(Dataset):
    name: ClassVar[str] = ""
    feature_extractor: ClassVar[str] = "inception-v3-compat"
    feature_classifier: ClassVar[FeatureClassifier | None] = None

    num_classes: int = 0
    channels: int = 3
    image_size: int = 32

    def __init__(
        self, *, root: str | None = None, image_size: int = 32, split: str = "train", **options: Any
    ):
        self.root = root
        self.image_size = image_size
        self.split = split

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def classifier(self) -> torch.nn.Module | None:
        """A classifier of this data set's classes, for class accuracy of samples (or None)."""
        return None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels at once (small in-memory data sets override this)."""
        images, labels = zip(*(self[i] for i in range(len(self))))
        return torch.stack(images), torch.tensor(labels)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255] with 3 channels (what torch-fidelity reads)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()
