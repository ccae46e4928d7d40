"""The digits data: scikit-learn's 8x8 handwritten digits, resized, with fixed splits.

Source: ``sklearn.datasets.load_digits`` (the UCI optical-recognition digits, Alpaydin &
Kaynak 1998).  Used by the ``digits`` data set and to train its classifier; the choices
(resizing, the stratified 300-image test split) are described in ``plugins.datasets.digits``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

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
    check_options(image_size, split)
    idx = split_indices()[split]
    _, labels = _raw()
    return _resized(image_size)[idx].clone(), labels[idx].clone()


def check_options(image_size: int, split: str) -> None:
    """ConfigError unless ``split`` is known and ``image_size`` an integer >= 4."""
    if split not in SPLITS:
        raise ConfigError(f"digits: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ConfigError(f"digits: image_size must be an integer >= 4, got {image_size!r}")
