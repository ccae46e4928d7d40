"""``cifar10``, ``celeba``, ``lsun``: torchvision data sets with the papers' preprocessing.

The data are read by ``torchvision.datasets`` (CIFAR10, CelebA, LSUN); images are then
transformed as DDPM (Ho et al., 2020) and Diff-Pruning (Fang et al., 2023, whose DDPM
experiments use the DDIM code base of Song et al., 2021) do, ending in ``[-1, 1]``:

- ``cifar10``: 32x32, 10 classes; resize + center crop only when ``image_size != 32``;
  ``split`` train (50k) / test (10k) / all.
- ``celeba``: unconditional; ``crop = "ddim"`` (default) cuts the 128x128 box centred on
  row 121, column 89 of the 178x218 aligned faces (DDIM / Diff-Pruning), ``crop = 140``
  (or any int) a centre crop of that size (the DCGAN/NCSN convention); then resize to
  ``image_size`` (default 64).  ``split`` train / valid / test / all (the official
  partition).
- ``lsun``: unconditional, one ``category`` (default ``church_outdoor``); resize the shorter
  side + centre crop to ``image_size`` (default 256); ``split`` train / test (= the
  official ``_val`` set) / all.  Needs the ``lmdb`` package and the LMDB folders.

``random_flip`` adds a horizontal flip with p = 0.5 (training).  ``download`` (CIFAR-10,
CelebA) defaults to false; a missing data folder is a ``ConfigError`` that says how to get
the data.  Nothing here downloads unless asked.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import ConcatDataset

from harness import hookimpl
from harness.datasets import ImageDataset
from harness.errors import ConfigError
from plugins.datasets.imagefolder import check_image_size, ddpm_transform

# DDIM / Diff-Pruning CelebA crop: 128x128 around (row 121, col 89) of the 178x218 image.
CELEBA_DDIM_BOX = (121 - 64, 89 - 64, 128, 128)  # top, left, height, width


def cifar10_transform(image_size: int = 32, random_flip: bool = False):
    return ddpm_transform(image_size, 3, random_flip)


def celeba_transform(image_size: int = 64, crop: str | int = "ddim", random_flip: bool = False):
    """The CelebA crop (see module doc), then resize to ``image_size``, flip, [-1,1]."""
    from torchvision.transforms import v2

    if crop == "ddim":
        top, left, h, w = CELEBA_DDIM_BOX
        pre = [v2.Lambda(partial(v2.functional.crop, top=top, left=left, height=h, width=w))]
    elif isinstance(crop, int) and not isinstance(crop, bool) and crop > 0:
        pre = [v2.CenterCrop(crop)]
    else:
        raise ConfigError(f'celeba: crop must be "ddim" or a positive integer, got {crop!r}')
    return ddpm_transform(image_size, 3, random_flip, pre=pre)


def lsun_transform(image_size: int = 256, random_flip: bool = False):
    return ddpm_transform(image_size, 3, random_flip)


def _root(name: str, root: str | None) -> Path:
    if root is None:
        raise ConfigError(f'{name} needs root = "/path/to/data"')
    return Path(root).expanduser()


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ConfigError(f"{name}: unknown split {split!r}; valid: {', '.join(valid)}")


class _TorchvisionSet(ImageDataset):
    """Shared item access: torchvision returns ``(PIL image, target)``; we transform it."""

    feature_extractor = "inception-v3-compat"
    channels = 3
    data: torch.utils.data.Dataset
    label_of_target: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.data[index]
        label = int(target) if self.label_of_target else 0
        return self.transform(image), label

    def classifier(self):
        return None


class CIFAR10Dataset(_TorchvisionSet):
    """CIFAR-10 (torchvision), 32x32, 10 classes, DDPM preprocessing."""

    name = "cifar10"
    label_of_target = True
    SPLITS = ("train", "test", "all")

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: int = 32,
        split: str = "train",
        random_flip: bool = False,
        download: bool = False,
    ):
        check_image_size(self.name, image_size)
        _check_split(self.name, split, self.SPLITS)
        folder = _root(self.name, root)
        super().__init__(root=str(folder), image_size=image_size, split=split)
        self.num_classes = 10
        if not download and not (folder / "cifar-10-batches-py").is_dir():
            raise ConfigError(
                f"cifar10: no CIFAR-10 data in {folder} (expected {folder}/cifar-10-batches-py); "
                "set download = true (needs internet) or extract cifar-10-python.tar.gz there"
            )
        from torchvision.datasets import CIFAR10

        try:
            parts = [
                CIFAR10(str(folder), train=s == "train", download=download)
                for s in (("train", "test") if split == "all" else (split,))
            ]
        except Exception as exc:  # torchvision: RuntimeError (corrupt), URLError (offline)
            raise ConfigError(f"cifar10: cannot load CIFAR-10 from {folder}: {exc}") from exc
        self.data = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        self.transform = cifar10_transform(image_size, random_flip)


class CelebADataset(_TorchvisionSet):
    """CelebA aligned faces (torchvision), unconditional, DDIM/Diff-Pruning crop."""

    name = "celeba"
    SPLITS = ("train", "valid", "test", "all")

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: int = 64,
        split: str = "train",
        crop: str | int = "ddim",
        random_flip: bool = False,
        download: bool = False,
    ):
        check_image_size(self.name, image_size)
        _check_split(self.name, split, self.SPLITS)
        folder = _root(self.name, root)
        self.transform = celeba_transform(image_size, crop, random_flip)
        super().__init__(root=str(folder), image_size=image_size, split=split)
        self.num_classes = 0
        if not download and not (folder / "celeba" / "img_align_celeba").is_dir():
            raise ConfigError(
                f"celeba: no CelebA data in {folder} (expected {folder}/celeba/img_align_celeba "
                "and the list_*.txt files); set download = true (needs internet and gdown) or "
                "place the official aligned images there"
            )
        from torchvision.datasets import CelebA

        try:
            self.data = CelebA(str(folder), split=split, target_type=[], download=download)
        except Exception as exc:
            raise ConfigError(f"celeba: cannot load CelebA from {folder}: {exc}") from exc


class LSUNDataset(_TorchvisionSet):
    """LSUN scenes (torchvision, LMDB), one category, unconditional."""

    name = "lsun"
    SPLITS = ("train", "test", "all")

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: int = 256,
        split: str = "train",
        category: str = "church_outdoor",
        random_flip: bool = False,
    ):
        check_image_size(self.name, image_size)
        _check_split(self.name, split, self.SPLITS)
        folder = _root(self.name, root)
        super().__init__(root=str(folder), image_size=image_size, split=split)
        self.num_classes = 0
        self.category = category
        suffixes = {"train": ("train",), "test": ("val",), "all": ("train", "val")}[split]
        classes = [f"{category}_{s}" for s in suffixes]
        missing = [c for c in classes if not (folder / f"{c}_lmdb").is_dir()]
        if missing:
            raise ConfigError(
                f"lsun: no LMDB folder {folder / (missing[0] + '_lmdb')}; LSUN has no automatic "
                "download: fetch it with the official script (github.com/fyu/lsun, "
                f"`python download.py -c {category}`, needs internet) and unzip into {folder}"
            )
        try:
            import lmdb  # noqa: F401 - torchvision's LSUN needs it
        except ImportError:
            raise ConfigError("lsun needs the lmdb package: pip install lmdb") from None
        from torchvision.datasets import LSUN

        try:
            self.data = LSUN(str(folder), classes=classes)
        except Exception as exc:
            raise ConfigError(f"lsun: cannot open {classes} in {folder}: {exc}") from exc
        self.transform = lsun_transform(image_size, random_flip)


@hookimpl
def register_datasets(register):
    register(CIFAR10Dataset)
    register(CelebADataset)
    register(LSUNDataset)
