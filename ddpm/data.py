"""Datasets scaled to [-1, 1], behind one entry point: ``load_dataset(name, split)``.

Every dataset yields ``(x, y)``: ``x`` a float32 tensor [C, H, W] on the 8-bit grid
``v / 127.5 - 1`` (v = 0..255), ``y`` an int label (-1 where there is none). [-1, 1] is the
scale the N(0, I) prior and the sampler's clipping of x0 assume ([0, 1] data would not match
them). Names:

- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 images, grey levels 0..16),
  offline. Quantized to 8 bits, ``v = round(level * 255 / 16)``, so bits/dim means what it
  means in the paper. Fixed split, the same on every machine: 1500 train / 297 test, stratified
  by class, drawn with ``numpy.random.RandomState(0)`` (see ``DIGITS_TEST_SIZE``).
- ``"mnist"``, ``"fashion-mnist"``: torchvision's files under ``root/<name>``, padded with
  background (-1) from 28x28 to 32x32 (2 pixels each side). Splits: the official train / test.
- ``"cifar10"``: torchvision's files under ``root/cifar10``; random horizontal flips on the train
  split by default (as in the paper).
- ``"folder:PATH"``: every image under PATH (recursive, sorted; hidden files and folders
  skipped), centre-cropped to a square and resized to ``image_size`` (default 64), always RGB.
  Split: a seeded (RandomState(0)) 95 / 5 train / test split of the sorted files (the test split
  gets ``n // 20`` images, so a folder needs at least 20 to have one). Labels are -1.

The tensor fast path: every dataset returned here is an ``ImageTensorDataset`` holding all its
images in memory, ``.data`` [N, C, H, W] float32 in [-1, 1] and ``.targets`` [N] int64. A
training loop may skip the DataLoader and index a batch directly, ``ds.data[idx]``; it must then
apply ``random_flip`` itself when ``ds.flip`` is true (``__getitem__`` does this per item).
Memory: 245 MB for MNIST's train split, 614 MB for CIFAR-10's; a folder is decoded once, when
loaded (fine for thousands of images, not for millions).

``root`` (the download cache) defaults to ``ddpm.paths.data_dir()``. Offline, with the files
missing, loading raises ``DatasetUnavailableError`` naming the folder to fill; ``"digits"``
always works offline.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, replace
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .paths import data_dir

__all__ = [
    "DatasetInfo",
    "DatasetUnavailableError",
    "ImageTensorDataset",
    "dataset_info",
    "load_dataset",
    "random_flip",
]

NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
SPLITS = ("train", "test")
DIGITS_TEST_SIZE = 297  # of 1797: 1500 train / 297 test
DIGITS_SEED = 0
FOLDER_SEED = 0
FOLDER_TEST_EVERY = 20  # the test split of a folder holds n // 20 images (5 %)
FOLDER_IMAGE_SIZE = 64
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}


class DatasetUnavailableError(RuntimeError):
    """A downloadable dataset's files are missing and could not be downloaded (e.g. offline)."""

    def __init__(self, message: str, folder: Path | None = None):
        super().__init__(message)
        self.folder = folder


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like, known without loading it.

    ``image_size`` is the side after padding / resizing; ``num_classes`` is 0 for unlabelled
    data; ``flip`` says whether the train split is randomly flipped by default; ``levels`` is the
    number of distinct grey levels the data take (always on the 256-level 8-bit grid).
    """

    name: str
    channels: int
    image_size: int
    num_classes: int
    flip: bool
    levels: int


_INFO = {
    "digits": DatasetInfo("digits", 1, 8, 10, False, 17),
    "mnist": DatasetInfo("mnist", 1, 32, 10, False, 256),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 32, 10, False, 256),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, True, 256),
}


def _parse_name(name: str) -> tuple[str, Path | None]:
    """The canonical dataset name, and the folder for ``folder:PATH``."""
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string; choose one of {', '.join(NAMES)}")
    if name.startswith("folder:"):
        path = name[len("folder:") :].strip()
        if not path:
            raise ValueError('"folder:" needs a path, e.g. "folder:~/pictures"')
        return "folder", Path(path).expanduser()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return key, None


def _check_image_size(image_size) -> None:
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be a positive int (e.g. 32), not {image_size!r}")
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive int (e.g. 32), not {image_size}")


def dataset_info(name: str, *, image_size: int | None = None) -> DatasetInfo:
    """Channels, size, classes, default flips and grey levels of a dataset; loads nothing.

    ``image_size`` gives the info for a resized copy (as ``load_dataset(..., image_size=)``).
    """
    _check_image_size(image_size)
    key, folder = _parse_name(name)
    if key == "folder":
        size = FOLDER_IMAGE_SIZE if image_size is None else int(image_size)
        return DatasetInfo(f"folder:{folder}", 3, size, 0, False, 256)
    info = _INFO[key]
    if image_size is not None and image_size != info.image_size:
        # resizing interpolates between grey levels: any of the 256 can then occur
        info = replace(info, image_size=int(image_size), levels=256)
    return info


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x`` ([B, C, H, W] or one [C, H, W]) left-right with probability 1/2."""
    if x.dim() == 3:
        return random_flip(x[None], generator)[0]
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


class ImageTensorDataset(Dataset):
    """Images held in memory: ``.data`` [N, C, H, W] float32 in [-1, 1], ``.targets`` [N] int64.

    ``ds[i]`` is ``(data[i], int(targets[i]))``, flipped left-right at random when ``flip`` is
    true. A training loop that indexes ``.data`` directly must flip the batch itself
    (``random_flip``) when ``flip`` is true. Digits datasets also carry ``.indices`` (positions in
    scikit-learn's ``load_digits()``), folder datasets ``.files`` (paths relative to the folder).
    """

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor,
        *,
        flip: bool = False,
        name: str = "",
        split: str = "",
    ):
        if data.dim() != 4 or len(data) != len(targets):
            raise ValueError("data must be [N, C, H, W] with one target per image")
        self.data = data
        self.targets = targets
        self.flip = bool(flip)
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.data[index]
        if self.flip:
            x = random_flip(x)
        return x, int(self.targets[index])

    def __repr__(self) -> str:
        c, h, w = self.data.shape[1:]
        return (
            f"ImageTensorDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape=({c}, {h}, {w}), flip={self.flip})"
        )


# ---------------------------------------------------------------------- 8-bit helpers
def _resize_uint8(v: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 images [N, C, H, W], re-quantized to 0..255."""
    if v.shape[-1] == size and v.shape[-2] == size:
        return v
    out = F.interpolate(
        v.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _to_unit_range(v: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1] on the 256-level grid."""
    return v.to(torch.float32).div_(127.5).sub_(1.0)


def _make(v, targets, image_size, flip, name, split) -> ImageTensorDataset:
    if image_size is not None:
        v = _resize_uint8(v, int(image_size))
    targets = torch.as_tensor(targets, dtype=torch.int64)
    return ImageTensorDataset(_to_unit_range(v), targets, flip=flip, name=name, split=split)


# ---------------------------------------------------------------------- digits
def _digits_split(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train / test indices (sorted), the same on every machine.

    Each class gives its share of the ``DIGITS_TEST_SIZE`` test images (largest remainder, ties
    to the smaller class label), chosen by ``RandomState(DIGITS_SEED)`` permutations.
    """
    rng = np.random.RandomState(DIGITS_SEED)
    classes = np.unique(target)
    counts = np.array([(target == c).sum() for c in classes])
    quota = counts * DIGITS_TEST_SIZE / len(target)
    n_test = np.floor(quota).astype(int)
    short = DIGITS_TEST_SIZE - n_test.sum()
    n_test[np.argsort(-(quota - n_test), kind="stable")[:short]] += 1
    test = []
    for c, k in zip(classes, n_test, strict=True):
        members = np.flatnonzero(target == c)
        test.append(members[rng.permutation(len(members))[:k]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(target)), test)
    return train, test


def _load_digits(split, image_size, flip) -> ImageTensorDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            'the "digits" dataset needs scikit-learn: pip install scikit-learn'
        ) from err
    bunch = load_digits()
    levels = bunch.images.astype(np.int64)  # 0..16
    v = np.floor(levels * 255 / 16 + 0.5).astype(np.uint8)  # round half up
    train, test = _digits_split(bunch.target)
    idx = train if split == "train" else test
    v = torch.from_numpy(v[idx][:, None])
    ds = _make(v, bunch.target[idx], image_size, flip, "digits", split)
    ds.indices = torch.from_numpy(idx)  # positions in sklearn's load_digits() order
    return ds


# ---------------------------------------------------------------------- torchvision
# what can go wrong while torchvision downloads or reads its files
_LOAD_ERRORS = (
    RuntimeError,
    OSError,  # includes urllib's URLError, socket and SSL errors, bad gzip files
    EOFError,
    HTTPException,
    tarfile.TarError,
    zlib.error,
    pickle.UnpicklingError,
    AssertionError,  # torchvision's idx reader asserts on malformed files
)


def _torchvision_class(key: str):
    try:
        import torchvision.datasets as tvd
    except ImportError as err:
        raise ImportError(
            f'the "{key}" dataset needs torchvision: pip install torchvision '
            '(or use the offline dataset "digits")'
        ) from err
    return {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[key]


def _expected_files(cls, root: Path) -> tuple[Path, list[str], str]:
    """The folder torchvision reads, the files it needs there, and the archive alternative."""
    if hasattr(cls, "resources"):  # MNIST family: the raw idx files, or their .gz archives
        folder = root / cls.__name__ / "raw"
        names = [os.path.basename(url) for url, _ in cls.resources]
        files = [os.path.splitext(n)[0] for n in names]
        alt = f"or the archives {', '.join(names)}, which download=True unpacks without network"
    else:  # CIFAR: the unpacked python batches, or the tar.gz archive one level up
        folder = root / cls.base_folder
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        alt = (
            f"or the archive {cls.filename} in {root}, which download=True unpacks without network"
        )
    return folder, files, alt


def _load_torchvision(key, split, root, image_size, flip, download) -> ImageTensorDataset:
    cls = _torchvision_class(key)
    base = Path(root).expanduser() if root is not None else data_dir()
    folder = base / key
    try:
        tv = cls(str(folder), train=(split == "train"), download=download)
    except _LOAD_ERRORS as err:
        files_folder, files, alt = _expected_files(cls, folder)
        missing = [f for f in files if not (files_folder / f).is_file()]
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        if missing:
            why = f"{len(missing)} of its {len(files)} files are missing from {files_folder}"
        else:
            why = f"its files in {files_folder} are corrupted or unreadable"
        if download:
            why += f" and downloading them failed ({type(err).__name__}: {reason})"
        else:
            why += " and download=False" if missing else f" ({reason})"
        raise DatasetUnavailableError(
            f"{key} is not available: {why}. Put {', '.join(files)} there ({alt}), e.g. copied "
            "from the cache of a machine with network access, or use the offline dataset "
            '"digits".',
            folder=files_folder,
        ) from None
    if key == "cifar10":
        v = torch.from_numpy(np.ascontiguousarray(tv.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    else:
        v = F.pad(tv.data[:, None], (2, 2, 2, 2), value=0)  # 28 -> 32, background (0 -> -1)
    return _make(v, tv.targets, image_size, flip, key, split)


# ---------------------------------------------------------------------- image folders
def _list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), hidden ones skipped, sorted by relative path."""
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def _read_square(path: Path, size: int) -> np.ndarray:
    """One image as RGB uint8 [3, size, size]: centre-cropped to a square, then resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        if s != size:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _load_folder(folder: Path, split, image_size, flip) -> ImageTensorDataset:
    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder}")
    size = FOLDER_IMAGE_SIZE if image_size is None else int(image_size)
    files = _list_images(folder)
    if not files:
        raise ValueError(
            f"found 0 images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    images, bad = [], []
    for rel in files:
        try:
            images.append(_read_square(folder / rel, size))
        except (OSError, ValueError, SyntaxError):  # PIL's errors for unreadable files
            bad.append(rel.as_posix())
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{len(bad)} of {len(files)} files in {folder} could not be read as images: {shown}"
        )
    n_test = len(files) // FOLDER_TEST_EVERY
    test = np.sort(np.random.RandomState(FOLDER_SEED).permutation(len(files))[:n_test])
    idx = np.setdiff1d(np.arange(len(files)), test) if split == "train" else test
    if len(idx) == 0:
        raise ValueError(
            f"{folder} has {len(files)} images; its test split (1 in {FOLDER_TEST_EVERY}) needs "
            f'at least {FOLDER_TEST_EVERY}; use split="train"'
        )
    v = torch.from_numpy(np.stack([images[i] for i in idx]))
    ds = _make(v, torch.full((len(idx),), -1), None, flip, f"folder:{folder}", split)
    ds.files = [files[i].as_posix() for i in idx]  # relative to the folder, in dataset order
    return ds


# ---------------------------------------------------------------------- entry point
def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    flip: bool | None = None,
    download: bool = True,
) -> ImageTensorDataset:
    """A dataset of ``(x, y)``: x float32 [C, H, W] in [-1, 1], y an int label (-1 if none).

    Args:
        name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"folder:PATH"``.
        split: ``"train"`` or ``"test"``.
        root: the download cache for torchvision datasets (files under ``root/<name>``);
            None means ``ddpm.paths.data_dir()``.
        image_size: resize to this side (bilinear, antialiased for datasets, bicubic for
            folders), re-quantized to the 8-bit grid; None keeps the native size (8 for digits,
            32 for MNIST / Fashion-MNIST after padding and for CIFAR-10, 64 for folders).
        flip: random horizontal flips; None means the dataset's default on the train split
            (``dataset_info(name).flip``) and no flips on the test split.
        download: let torchvision download missing files into the cache.
    """
    _check_image_size(image_size)
    key, folder = _parse_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if flip is None:
        flip = split == "train" and (key != "folder" and _INFO[key].flip)
    elif not isinstance(flip, bool):
        raise ValueError(f"flip must be True, False or None, not {flip!r}")
    if key == "digits":
        return _load_digits(split, image_size, flip)
    if key == "folder":
        return _load_folder(folder, split, image_size, flip)
    return _load_torchvision(key, split, root, image_size, flip, download)
