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
  embedding, not Inception, so FID needs no download.  The classifier ships with this
  data set (``plugins.datasets.digits_classifier``) and reaches the core's metrics as the
  class's ``feature_classifier``.
"""

from __future__ import annotations

import torch

from harness import hookimpl
from harness.datasets import ImageDataset
from plugins.datasets.digits_classifier import DigitFeatures, load_classifier
from plugins.datasets.digits_data import check_options, load_digits_tensors, split_indices

__all__ = ["DigitsDataset", "load_digits_tensors", "split_indices"]


class DigitsDataset(ImageDataset):
    """scikit-learn digits (1,797 8x8 images, 10 classes) upsampled to image_size, offline."""

    name = "digits"
    feature_extractor = "kdbench-digits"
    feature_classifier = DigitFeatures()

    def __init__(self, *, root: str | None = None, image_size: int = 16, split: str = "train"):
        check_options(image_size, split)
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
        return load_classifier()


@hookimpl
def register_datasets(register):
    register(DigitsDataset)
