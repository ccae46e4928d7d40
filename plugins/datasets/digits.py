"""``digits``: scikit-learn's handwritten digits, the embedded offline default data set.

Source: ``sklearn.datasets.load_digits`` (the UCI optical-recognition digits, Alpaydin &
Kaynak 1998): 1,797 grey images of 8x8 pixels with 17 levels (0..16), 10 classes.

Choices made here:

- Images are divided by 16, upsampled to ``image_size`` (default 16) with bilinear
  interpolation (``antialias=True``, so sizes below 8 are filtered, not aliased), and
  mapped to ``[-1, 1]``; one channel.
- Splits are fixed and stratified by class: 300 test images, 1,497 train images, drawn by
  ``sklearn.model_selection.train_test_split(test_size=300, stratify=labels,
  random_state=0)`` over the original order.  ``split="all"`` is every image in the
  original order.
- ``feature_extractor = "kdbench-digits"``: metrics use the shipped digit classifier's
  embedding (``harness.metrics``), not Inception, so FID needs no download.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.datasets import ImageDataset
from harness.errors import ConfigError

SPLITS = ("train", "test", "all")
TEST_SIZE = 300
SPLIT_SEED = 0
NUM_IMAGES = 1797


@lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    return images, torch.from_numpy(data.target).long()


@lru_cache(maxsize=1)
def split_indices() -> dict[str, torch.Tensor]:
    """Indices (into the original order) of the fixed stratified train/test split."""
    from sklearn.model_selection import train_test_split

    _, labels = _raw()
    all_idx = torch.arange(len(labels))
    train, test = train_test_split(
        all_idx.numpy(), test_size=TEST_SIZE, stratify=labels.numpy(), random_state=SPLIT_SEED
    )
    return {
        "train": torch.from_numpy(train).long(),
        "test": torch.from_numpy(test).long(),
        "all": all_idx,
    }


@lru_cache(maxsize=8)
def _resized(image_size: int) -> torch.Tensor:
    images, _ = _raw()
    if image_size != images.shape[-1]:
        images = F.interpolate(
            images,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return (images.clamp(0, 1) * 2 - 1).contiguous()


def load_digits_tensors(
    image_size: int = 16, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N,1,S,S]`` in ``[-1,1]`` and labels ``[N]`` of one split (fresh copies)."""
    _check(image_size, split)
    idx = split_indices()[split]
    _, labels = _raw()
    return _resized(image_size)[idx].clone(), labels[idx].clone()


def _check(image_size: int, split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"digits: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ConfigError(f"digits: image_size must be an integer >= 4, got {image_size!r}")


class DigitsDataset(ImageDataset):
    """scikit-learn digits (1,797 8x8 images, 10 classes) upsampled to image_size, offline."""

    name = "digits"
    feature_extractor = "kdbench-digits"

    def __init__(self, *, root: str | None = None, image_size: int = 16, split: str = "train"):
        _check(image_size, split)
        super().__init__(root=root, image_size=image_size, split=split)
        self.num_classes = 10
        self.channels = 1
        self.images, self.labels = load_digits_tensors(image_size, split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def classifier(self):
        """The shipped digit classifier (eval mode); it resizes inputs to its own size."""
        from harness.classifier import load_classifier

        return load_classifier()


@hookimpl
def register_datasets(register):
    register(DigitsDataset)
