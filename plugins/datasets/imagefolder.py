"""``imagefolder``: every image under a folder (recursively), optional class subfolders.

Preprocessing follows DDPM (Ho et al., 2020) as reused by Diff-Pruning (Fang et al.,
2023): resize the shorter side to ``image_size`` (bilinear, antialiased), center crop to
``image_size`` x ``image_size``, optional random horizontal flip (training), scale to
``[-1, 1]``; RGB (3 channels) or ``grayscale = true`` (1 channel).  Choices made here:

- Image files: ``.png .jpg .jpeg .webp .bmp`` (any case); hidden files are ignored.
  At construction each image's header is opened with PIL; files that are not images
  (other extensions) or cannot be read are skipped with one warning that counts them;
  a folder with no readable image is a ``ConfigError`` naming the folder.
  ``check_files = false`` skips the header check for very large folders.
- ``labels = true``: the label is the index of the top-level subfolder (sorted names, as
  torchvision's ``ImageFolder``); images directly in the root are then an error.
- Splits: a folder has no held-out part unless ``test_fraction > 0``, in which case a
  fixed random permutation (seed 0) of the sorted file list is cut into train / test.
  With ``test_fraction = 0`` every split is the whole folder: the reference set for FID
  is then the training images, as DDPM and Diff-Pruning compute it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from harness import hookimpl
from harness.datasets import ImageDataset
from harness.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "test", "all")


def ddpm_transform(
    image_size: int, channels: int = 3, random_flip: bool = False, pre: list | None = None
):
    """PIL image -> float ``[C,S,S]`` in [-1,1]: (pre) resize shorter side, center crop, flip."""
    from torchvision.transforms import v2

    steps = list(pre or []) + [
        v2.Resize(image_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(image_size),
    ]
    if random_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * channels, [0.5] * channels),
    ]
    return v2.Compose(steps)


def check_image_size(name: str, image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"{name}: image_size must be a positive integer, got {image_size!r}")


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header is parsed lazily
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _skip_warning(root: Path, skipped: list[Path]) -> None:
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"imagefolder {root}: skipped {len(skipped)} non-image or unreadable file(s): "
            f"{shown}{more}",
            stacklevel=3,
        )


class ImageFolderDataset(ImageDataset):
    """Images found recursively under a folder; labels from class subfolders (optional)."""

    name = "imagefolder"
    feature_extractor = "inception-v3-compat"

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: int = 32,
        split: str = "train",
        labels: bool = False,
        grayscale: bool = False,
        random_flip: bool = False,
        test_fraction: float = 0.0,
        check_files: bool = True,
    ):
        check_image_size("imagefolder", image_size)
        if split not in SPLITS:
            raise ConfigError(f"imagefolder: unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if not 0.0 <= test_fraction < 1.0:
            raise ConfigError(f"imagefolder: test_fraction must be in [0, 1), got {test_fraction}")
        if root is None:
            raise ConfigError('imagefolder needs root = "/path/to/images"')
        super().__init__(root=root, image_size=image_size, split=split)
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"imagefolder: folder not found: {folder}")
        self.channels = 1 if grayscale else 3
        self.grayscale = grayscale
        self.random_flip = random_flip
        self.files, self.targets, self.class_names = self._scan(folder, labels, check_files)
        self.num_classes = len(self.class_names)
        if test_fraction > 0 and split != "all":
            perm = torch.randperm(len(self.files), generator=torch.Generator().manual_seed(0))
            n_test = max(1, round(test_fraction * len(self.files)))
            keep = sorted((perm[:n_test] if split == "test" else perm[n_test:]).tolist())
            self.files = [self.files[i] for i in keep]
            self.targets = [self.targets[i] for i in keep]
        self.transform = ddpm_transform(image_size, self.channels, random_flip)

    @staticmethod
    def _scan(folder: Path, labels: bool, check: bool):
        candidates = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        skipped = [p for p in candidates if p.suffix.lower() not in IMAGE_EXTENSIONS]
        images = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS]
        if check:
            bad = {p for p in images if not _readable(p)}
            skipped += sorted(bad)
            images = [p for p in images if p not in bad]
        if not images:
            what = f"no readable image ({', '.join(IMAGE_EXTENSIONS)})"
            extra = f"; {len(skipped)} other file(s) skipped" if skipped else ""
            raise ConfigError(f"imagefolder: {what} under {folder}{extra}")
        _skip_warning(folder, sorted(skipped))
        if not labels:
            return images, [0] * len(images), []
        at_root = [p for p in images if p.parent == folder]
        if at_root:
            raise ConfigError(
                f"imagefolder: labels = true needs one subfolder per class, but {len(at_root)} "
                f"image(s) lie directly in {folder} (e.g. {at_root[0].name})"
            )
        class_names = sorted({p.relative_to(folder).parts[0] for p in images})
        index = {c: i for i, c in enumerate(class_names)}
        return images, [index[p.relative_to(folder).parts[0]] for p in images], class_names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.grayscale else "RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ConfigError(f"imagefolder: cannot read image {path} ({exc})") from exc
        return self.transform(im), self.targets[index]

    def classifier(self):
        return None


@hookimpl
def register_datasets(register):
    register(ImageFolderDataset)
