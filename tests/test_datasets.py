"""Data sets: digits (split, range, golden upsampling), imagefolder, torchvision wrappers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import get_dataset
from harness.errors import ConfigError, OptionError
from harness.registry import lookup
from plugins.datasets.digits import DigitsDataset, split_indices
from plugins.datasets.imagefolder import ImageFolderDataset
from plugins.datasets.torchvision_sets import (
    CELEBA_DDIM_BOX,
    CelebADataset,
    CIFAR10Dataset,
    LSUNDataset,
    celeba_transform,
    cifar10_transform,
    lsun_transform,
)


# ----------------------------------------------------------------------------- registry
def test_all_datasets_are_registered():
    expected = {
        "digits": DigitsDataset,
        "imagefolder": ImageFolderDataset,
        "cifar10": CIFAR10Dataset,
        "celeba": CelebADataset,
        "lsun": LSUNDataset,
    }
    for name, cls in expected.items():
        assert lookup("dataset", name) is cls


# ----------------------------------------------------------------------------- digits
def test_digits_split_sizes_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    idx = split_indices()
    train, test = set(idx["train"].tolist()), set(idx["test"].tolist())
    assert (len(train), len(test), len(idx["all"])) == (1497, 300, 1797)
    assert not train & test and train | test == set(range(1797))
    y = load_digits().target
    for c in range(10):
        share = (y == c).sum() * 300 / 1797
        assert abs((y[sorted(test)] == c).sum() - share) <= 1
    for split, n in (("train", 1497), ("test", 300), ("all", 1797)):
        ds = get_dataset("digits", split=split)
        assert len(ds) == n and ds.tensors()[0].shape == (n, 1, 16, 16)


def test_digits_values_range_and_attributes():
    ds = DigitsDataset(split="all")
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() == -1.0 and x.max() == 1.0
    assert (ds.num_classes, ds.channels, ds.image_size) == (10, 1, 16)
    assert ds.feature_extractor == "kdbench-digits"
    img, label = ds[5]
    assert isinstance(label, int) and torch.equal(img, x[5]) and label == int(y[5])
    assert sorted(set(y.tolist())) == list(range(10))


def test_digits_golden_pixels_from_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits().images / 16.0  # [N,8,8] in [0,1]
    x8, _ = DigitsDataset(split="all", image_size=8).tensors()
    np.testing.assert_allclose(x8[:, 0].numpy(), raw * 2 - 1, atol=1e-6)
    # 2x bilinear (half-pixel centres): output (2i+1, 2j+1) = .75/.25 blend of (i,j),(i+1,j+1).
    x16, _ = DigitsDataset(split="all", image_size=16).tensors()
    a = raw[:, 2:4, 3:5]
    expect = 0.5625 * a[:, 0, 0] + 0.1875 * a[:, 1, 0] + 0.1875 * a[:, 0, 1] + 0.0625 * a[:, 1, 1]
    np.testing.assert_allclose(x16[:, 0, 5, 7].numpy(), expect * 2 - 1, atol=1e-5)


def test_digits_deterministic_and_order_follows_split():
    a, ya = DigitsDataset(split="test").tensors()
    b, yb = DigitsDataset(split="test").tensors()
    assert torch.equal(a, b) and torch.equal(ya, yb)
    full, yfull = DigitsDataset(split="all").tensors()
    idx = split_indices()["test"]
    assert torch.equal(full[idx], a) and torch.equal(yfull[idx], ya)


def test_digits_bad_options():
    with pytest.raises(ConfigError, match="unknown split 'val'.*train, test, all"):
        DigitsDataset(split="val")
    with pytest.raises(ConfigError, match="image_size"):
        DigitsDataset(image_size=2)
    with pytest.raises(OptionError, match="no option 'grayscale'"):
        get_dataset("digits", grayscale=True)


def test_digits_classifier_and_others_return_none(tmp_path):
    from plugins.datasets.digits_classifier import DigitClassifier

    clf = DigitsDataset(split="test").classifier()
    assert isinstance(clf, DigitClassifier) and not clf.training
    _png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert ImageFolderDataset(root=str(tmp_path)).classifier() is None


# ----------------------------------------------------------------------------- imagefolder
def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _solid(color, size=(12, 12)) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (*size, 3)).copy()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "cats" / "c1.png", _solid((255, 0, 0)))
    _png(root / "cats" / "deep" / "c2.png", _solid((255, 0, 0)))
    _png(root / "dogs" / "d1.png", _solid((0, 0, 255)))
    Image.fromarray(_solid((0, 0, 255))).save(root / "dogs" / "d2.jpg", quality=95)
    (root / "dogs" / "broken.png").write_text("not an image")
    (root / "notes.txt").write_text("hello")
    (root / ".hidden.png").write_text("ignored silently")
    return root


def test_imagefolder_labels_from_subfolders_and_bad_files_skipped(folder):
    with pytest.warns(UserWarning, match=r"skipped 2 non-image or unreadable.*broken\.png"):
        ds = ImageFolderDataset(root=str(folder), image_size=8, labels=True)
    assert len(ds) == 4 and ds.num_classes == 2 and ds.class_names == ["cats", "dogs"]
    assert ds.channels == 3 and ds.feature_extractor == "inception-v3-compat"
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1
        # red images are the cats (label 0), blue the dogs (label 1)
        assert y == (0 if x[0].mean() > 0.9 and x[2].mean() < -0.9 else 1)
        assert y == (0 if "cats" in str(ds.files[i]) else 1)


def test_imagefolder_unlabelled_grayscale(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolderDataset(root=str(folder), image_size=6, grayscale=True)
    assert ds.num_classes == 0 and ds.channels == 1
    x, y = ds.tensors()
    assert x.shape == (4, 1, 6, 6) and set(y.tolist()) == {0}
    # ITU-R 601 luma of pure red is 0.299 -> 76/255 in PIL's "L" mode
    red = x[[i for i, f in enumerate(ds.files) if "cats" in str(f)]]
    torch.testing.assert_close(red, torch.full_like(red, 76 / 127.5 - 1), atol=1e-6, rtol=0)


def test_imagefolder_resize_shorter_side_then_center_crop(tmp_path):
    bands = np.concatenate(
        [
            _solid((255, 0, 0), (20, 20)),
            _solid((0, 255, 0), (20, 20)),
            _solid((0, 0, 255), (20, 20)),
        ],
        axis=1,
    )  # 20 high, 60 wide: red | green | blue
    _png(tmp_path / "bands.png", bands)
    x, _ = ImageFolderDataset(root=str(tmp_path), image_size=10)[0]
    assert x.shape == (3, 10, 10)
    inner = x[:, :, 2:8]  # the middle band only, away from the blended edges
    torch.testing.assert_close(inner[1], torch.ones_like(inner[1]))
    torch.testing.assert_close(inner[0], -torch.ones_like(inner[0]))


def test_imagefolder_random_flip(tmp_path):
    half = np.concatenate([_solid((0, 0, 0), (8, 4)), _solid((255, 255, 255), (8, 4))], axis=1)
    _png(tmp_path / "half.png", half)
    plain = ImageFolderDataset(root=str(tmp_path), image_size=8)
    assert all(plain[0][0][0, 0, 0] == -1 for _ in range(10))
    flips = ImageFolderDataset(root=str(tmp_path), image_size=8, random_flip=True)
    torch.manual_seed(0)
    left = {float(flips[0][0][0, 0, 0]) for _ in range(30)}
    assert left == {-1.0, 1.0}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="folder not found: .*missing"):
        ImageFolderDataset(root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"no readable image .* under {tmp_path / 'empty'}"):
        ImageFolderDataset(root=str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("x")
    (bad / "b.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"no readable image .*bad; 2 other file\(s\) skipped"):
        ImageFolderDataset(root=str(bad))
    flat = tmp_path / "flat"
    _png(flat / "x.png", _solid((1, 2, 3)))
    with pytest.raises(ConfigError, match="labels = true needs one subfolder per class"):
        ImageFolderDataset(root=str(flat), labels=True)
    with pytest.raises(ConfigError, match="needs root"):
        ImageFolderDataset()
    with pytest.raises(ConfigError, match="unknown split"):
        ImageFolderDataset(root=str(flat), split="valid")


def test_imagefolder_unreadable_at_load_time_names_the_file(tmp_path):
    (tmp_path / "fake.png").write_text("x")
    ds = ImageFolderDataset(root=str(tmp_path), check_files=False)
    with pytest.raises(ConfigError, match="cannot read image .*fake.png"):
        ds[0]


def test_imagefolder_test_fraction_split(tmp_path):
    for i in range(20):
        _png(tmp_path / f"{i:02d}.png", _solid((i, i, i), (4, 4)))
    tr = ImageFolderDataset(root=str(tmp_path), image_size=4, test_fraction=0.25)
    te = ImageFolderDataset(root=str(tmp_path), image_size=4, split="test", test_fraction=0.25)
    al = ImageFolderDataset(root=str(tmp_path), image_size=4, split="all", test_fraction=0.25)
    assert (len(tr), len(te), len(al)) == (15, 5, 20)
    assert not set(tr.files) & set(te.files) and set(tr.files) | set(te.files) == set(al.files)
    again = ImageFolderDataset(root=str(tmp_path), image_size=4, split="test", test_fraction=0.25)
    assert again.files == te.files
    whole = ImageFolderDataset(root=str(tmp_path), image_size=4, split="test")
    assert len(whole) == 20  # no held-out part without test_fraction: the whole folder


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize(
    "cls,hint",
    [
        (CIFAR10Dataset, "cifar-10-batches-py.*download = true \\(needs internet\\)"),
        (CelebADataset, "celeba/img_align_celeba.*download = true \\(needs internet"),
        (LSUNDataset, "church_outdoor_train_lmdb.*github.com/fyu/lsun"),
    ],
)
def test_torchvision_missing_root_says_how_to_get_data(tmp_path, cls, hint):
    with pytest.raises(ConfigError, match=f"{cls.name}: .*{hint}"):
        cls(root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=f"{cls.name} needs root"):
        cls()
    with pytest.raises(ConfigError, match="unknown split"):
        cls(root=str(tmp_path), split="nope")


def test_lsun_needs_lmdb_package(tmp_path):
    (tmp_path / "church_outdoor_train_lmdb").mkdir()
    try:
        import lmdb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install lmdb"):
            LSUNDataset(root=str(tmp_path))
    else:
        with pytest.raises(ConfigError, match="lsun: cannot open"):
            LSUNDataset(root=str(tmp_path))


def test_cifar10_transform_is_identity_at_native_size():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = cifar10_transform(32)(Image.fromarray(arr))
    expect = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(x, expect, atol=1e-6, rtol=0)
    flipped = torch.stack(
        [cifar10_transform(32, random_flip=True)(Image.fromarray(arr)) for _ in range(20)]
    )
    assert any(torch.allclose(f, expect.flip(-1), atol=1e-6) for f in flipped)
    assert any(torch.allclose(f, expect, atol=1e-6) for f in flipped)


def _celeba_like() -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A black 178x218 face-sized image with the DDIM crop box painted white."""
    arr = np.zeros((218, 178, 3), np.uint8)
    top, left, h, w = CELEBA_DDIM_BOX
    arr[top : top + h, left : left + w] = 255
    return Image.fromarray(arr), CELEBA_DDIM_BOX


def test_celeba_ddim_crop_selects_the_documented_box():
    im, box = _celeba_like()
    assert box == (57, 25, 128, 128)
    x = celeba_transform(64)(im)
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(x, torch.ones_like(x))


def test_celeba_center_crop_140_differs_from_ddim_box():
    im, _ = _celeba_like()
    x = celeba_transform(64, crop=140)(im)  # rows 39..178: the top 18 rows are black
    assert x.shape == (3, 64, 64)
    assert x[:, :5].max() < -0.9 and x[:, 12:60, 6:58].min() > 0.9
    with pytest.raises(ConfigError, match='crop must be "ddim" or a positive integer'):
        celeba_transform(64, crop="middle")


def test_lsun_transform_center_crops_the_long_side():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre 40x40 square is white
    x = lsun_transform(16)(Image.fromarray(arr))
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[:, :, 1:15], torch.ones(3, 16, 14))
