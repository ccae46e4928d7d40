"""The dataset contract: a registered ``ImageDataset`` yields ``(image, label)`` pairs.

Images are float tensors ``[C, H, W]`` scaled to ``[-1, 1]`` (the diffusion convention);
labels are ints (0 for unconditional data sets, where ``num_classes == 0``).
``feature_extractor`` names the torch-fidelity feature extractor that metrics use for
this data set (``inception-v3-compat`` for natural images).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    name: ClassVar[str] = ""
    feature_extractor: ClassVar[str] = "inception-v3-compat"

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
