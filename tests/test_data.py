"""ddpm.data: every dataset in [-1, 1] on the 8-bit grid, read from real on-disk formats.

Nothing here touches the network: torchvision datasets are read from tiny files written in the
real formats (MNIST's idx files, CIFAR-10's Python 2 pickles), and the offline tests make
``urllib.request.urlopen`` fail.
"""

import dataclasses
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import data
from ddpm.data import DatasetUnavailableError, dataset_info, load_dataset, random_flip


def on_grid(x: torch.Tensor) -> bool:
    """True when every value is one of the 256 levels v / 127.5 - 1."""
    v = (x.double() + 1) * 127.5
    return bool(((v - v.round()).abs() < 1e-4).all() and v.min() >= 0 and v.max() <= 255)


# ---------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_digits_shapes_values_and_grid(digits):
    train, test = digits
    assert train.data.shape == (1500, 1, 8, 8) and test.data.shape == (297, 1, 8, 8)
    assert train.data.dtype == torch.float32 and train.targets.dtype == torch.int64
    for ds in digits:
        assert ds.data.min() == -1 and ds.data.max() == 1
        assert on_grid(ds.data)
    levels = torch.unique(torch.cat([train.data, test.data]))
    assert len(levels) == 17
    # level k of 0..16 sits at round(k * 255 / 16) on the 8-bit grid
    expected = torch.tensor([np.floor(k * 255 / 16 + 0.5) for k in range(17)]) / 127.5 - 1
    torch.testing.assert_close(levels.double(), expected.double(), atol=1e-6, rtol=0)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int) and 0 <= y <= 9


def test_digits_split_is_a_disjoint_stratified_partition(digits):
    from sklearn.datasets import load_digits

    train, test = digits
    both = torch.cat([train.indices, test.indices])
    assert sorted(both.tolist()) == list(range(1797))  # disjoint, and together the whole set
    full = load_digits()
    v = np.floor(full.images * 255 / 16 + 0.5)[:, None] / 127.5 - 1
    for ds in digits:  # the images are the ones the indices say
        np.testing.assert_allclose(ds.data.numpy(), v[ds.indices.numpy()], atol=1e-6)
        assert (ds.targets.numpy() == full.target[ds.indices.numpy()]).all()
        assert set(ds.targets.tolist()) == set(range(10))  # every class in both splits
    counts = torch.bincount(test.targets, minlength=10)
    assert counts.min() >= 29 and counts.max() <= 30  # ~297 / 10 each: stratified


def test_digits_are_deterministic(digits):
    again = load_dataset("digits", "test")
    assert torch.equal(again.indices, digits[1].indices)
    assert torch.equal(again.data, digits[1].data)
    # pinned: the split must not change between machines or library versions
    assert digits[1].indices[:8].tolist() == [3, 7, 13, 19, 36, 43, 48, 53]
    assert int(digits[1].indices.sum()) == 256199


def test_digits_resize_stays_on_grid():
    ds = load_dataset("digits", "test", image_size=16)
    x, _ = ds[0]
    assert x.shape == (1, 16, 16)
    assert on_grid(ds.data) and ds.data.min() >= -1 and ds.data.max() <= 1
    assert dataset_info("digits", image_size=16).image_size == 16


def test_dataset_info_agrees_with_loaded_digits(digits):
    info = dataset_info("digits")
    train = digits[0]
    assert info.channels == train.data.shape[1]
    assert info.image_size == train.data.shape[-1]
    assert info.num_classes == len(torch.unique(train.targets))
    assert info.levels == len(torch.unique(train.data))
    assert info.flip is False and train.flip is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.channels = 3


def test_dataset_info_needs_no_files():
    assert dataset_info("cifar10").flip is True
    assert (dataset_info("mnist").channels, dataset_info("mnist").image_size) == (1, 32)
    folder = dataset_info("folder:/does/not/exist")
    assert (folder.channels, folder.image_size, folder.num_classes) == (3, 64, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="digits.*mnist.*fashion-mnist.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
    for size in (0, -8, 8.0, "16", True):
        with pytest.raises(ValueError, match="image_size"):
            load_dataset("digits", image_size=size)
    with pytest.raises(ValueError, match="flip"):
        load_dataset("digits", flip="yes")


def test_random_flip():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and 20 < int(flipped.sum()) < 80


# ---------------------------------------------------------------------- MNIST, Fashion-MNIST
def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file: magic (0, 0, type 0x08 = uint8, number of dims), big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root: Path, class_name: str, n_train=5, n_test=3) -> dict:
    raw = root / class_name / "raw"  # where torchvision's MNIST.raw_folder points
    raw.mkdir(parents=True)
    rng = np.random.RandomState(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize(
    "name, class_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_family_from_idx_files(tmp_path, no_network, name, class_name):
    arrays = write_mnist(tmp_path / name, class_name)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[prefix]
        for download in (False, True):  # the files exist: torchvision must not download
            ds = load_dataset(name, split, root=tmp_path, download=download)
            assert ds.data.shape == (len(images), 1, 32, 32)
            assert ds.targets.tolist() == labels.tolist()
            assert on_grid(ds.data)
            border = torch.ones_like(ds.data[0, 0], dtype=torch.bool)
            border[2:30, 2:30] = False
            assert (ds.data[:, 0][:, border] == -1).all()  # padded with background
            expected = torch.from_numpy(images).float() / 127.5 - 1
            torch.testing.assert_close(ds.data[:, 0, 2:30, 2:30], expected, atol=1e-6, rtol=0)
            x, y = ds[1]
            assert x.shape == (1, 32, 32) and y == int(labels[1])
            assert ds.flip is False
    assert no_network == []
    info = dataset_info(name)
    assert (info.channels, info.image_size, info.num_classes) == (1, 32, 10)


def test_mnist_resized(tmp_path):
    write_mnist(tmp_path / "mnist", "MNIST")
    ds = load_dataset("mnist", "test", root=tmp_path, download=False, image_size=16)
    assert ds.data.shape == (3, 1, 16, 16) and on_grid(ds.data)


# ---------------------------------------------------------------------- CIFAR-10
class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as in the real CIFAR-10 files (pickled by
    Python 2): read with ``encoding="latin1"`` (as torchvision does) the keys become ``"data"``,
    read with ``encoding="bytes"`` they are ``b"data"``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj, path: Path) -> None:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def write_cifar(root: Path, per_batch=2, n_test=4) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(2)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        images = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images.reshape(n, 3072),  # rows: 1024 red, 1024 green, 1024 blue
            b"filenames": [f"img{j}.png".encode() for j in range(n)],
        }
        py2_pickle(entry, folder / name)
        batches[name] = (images, labels)
    classes = "airplane automobile bird cat deer dog frog horse ship truck".split()
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in classes]}
    meta[b"num_vis"] = 3072
    py2_pickle(meta, folder / "batches.meta")
    return batches


@pytest.fixture
def skip_md5(monkeypatch):
    """Bypass only the md5 comparison of torchvision's CIFAR integrity check."""
    import torchvision.datasets.cifar as tv_cifar

    real = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: real(fpath))


def test_cifar10_from_python_batches(tmp_path, skip_md5, no_network):
    batches = write_cifar(tmp_path / "cifar10")
    raw = (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert {b"data", b"labels"} <= pickle.loads(raw, encoding="bytes").keys()  # as the real files
    train = load_dataset("cifar10", "train", root=tmp_path)  # download=True: files exist
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert no_network == []
    images = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.data.shape == (10, 3, 32, 32) and test.data.shape == (4, 3, 32, 32)
    torch.testing.assert_close(train.data, torch.from_numpy(images).float() / 127.5 - 1)
    assert train.targets.tolist() == labels
    assert test.targets.tolist() == batches["test_batch"][1]
    assert on_grid(train.data) and on_grid(test.data)
    # flips: on by default for train only
    assert train.flip is True and test.flip is False
    torch.manual_seed(0)
    flipped = [torch.equal(train[i][0], train.data[i].flip(-1)) for i in range(10) for _ in (0, 1)]
    assert any(flipped) and not all(flipped)
    assert all(torch.equal(test[i][0], test.data[i]) for i in range(4))
    assert load_dataset("cifar10", root=tmp_path, flip=False).flip is False
    info = dataset_info("cifar10")
    assert (info.channels, info.image_size, info.num_classes) == (3, 32, 10)


# ---------------------------------------------------------------------- offline
@pytest.mark.parametrize(
    "name, folder",
    [
        ("mnist", "mnist/MNIST/raw"),
        ("fashion-mnist", "fashion-mnist/FashionMNIST/raw"),
        ("cifar10", "cifar10/cifar-10-batches-py"),
    ],
)
def test_offline_without_files_gives_one_clear_error(tmp_path, no_network, name, folder):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(name, root=tmp_path, download=True)
    assert no_network  # a download was attempted, and blocked
    message = str(err.value)
    assert str(tmp_path / folder) in message and '"digits"' in message
    assert "downloading them failed" in message and "network disabled in tests" in message
    assert err.value.folder == tmp_path / folder
    assert err.value.__cause__ is None and err.value.__suppress_context__
    expected = "train-images-idx3-ubyte" if "mnist" in name else "data_batch_1"
    assert expected in message

    tried = len(no_network)
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset(name, "test", root=tmp_path, download=False)
    assert len(no_network) == tried  # download=False never touches the network


def test_default_root_is_the_cache_folder(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetUnavailableError, match=str(tmp_path / "cache" / "mnist")):
        load_dataset("mnist", download=False)


# ---------------------------------------------------------------------- image folders
def save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_folder_crop_resize_modes_and_order(tmp_path):
    red, blue = (255, 0, 0), (0, 0, 255)
    wide = Image.new("RGB", (60, 20), blue)  # red centre square, blue sides
    wide.paste(Image.new("RGB", (20, 20), red), (20, 0))
    save(tmp_path / "b_wide.png", wide)
    tall = Image.new("L", (10, 30), 0)  # grey centre square, black top and bottom
    tall.paste(Image.new("L", (10, 10), 200), (0, 10))
    save(tmp_path / "sub" / "c_tall.png", tall)
    save(tmp_path / "a_rgba.png", Image.new("RGBA", (12, 12), (0, 255, 0, 255)))
    save(tmp_path / "d_pal.gif", Image.new("RGB", (9, 9), red).convert("P"))
    save(tmp_path / "e.jpg", Image.new("RGB", (16, 16), (128, 128, 128)))
    (tmp_path / "notes.txt").write_text("not an image")
    save(tmp_path / ".hidden" / "x.png", Image.new("RGB", (8, 8)))

    ds = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert ds.files == ["a_rgba.png", "b_wide.png", "d_pal.gif", "e.jpg", "sub/c_tall.png"]
    assert ds.data.shape == (5, 3, 8, 8) and on_grid(ds.data)
    assert ds.targets.tolist() == [-1] * 5 and ds[0][1] == -1
    assert ds.flip is False
    pixel = lambda i: ds.data[i].flatten(1).unique(dim=1).T.tolist()  # noqa: E731
    assert pixel(0) == [[-1.0, 1.0, -1.0]]  # RGBA -> RGB
    assert pixel(1) == [[1.0, -1.0, -1.0]]  # only the red centre survives the crop
    assert pixel(2) == [[1.0, -1.0, -1.0]]  # palette GIF
    assert pixel(4) == [[pytest.approx(200 / 127.5 - 1)] * 3]  # grey -> 3 equal channels
    again = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert torch.equal(again.data, ds.data)
    assert load_dataset(f"folder:{tmp_path}").data.shape[-1] == 64  # default size


def test_folder_split(tmp_path):
    for i in range(40):
        save(tmp_path / f"{i:02d}.png", Image.new("L", (4, 4), i))
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=4)
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=4)
    assert (len(train), len(test)) == (38, 2)
    assert not set(train.files) & set(test.files)
    assert sorted(train.files + test.files) == [f"{i:02d}.png" for i in range(40)]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"found 0 images in .*\.png.*\.jpg"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    for i in range(7):
        save(tmp_path / f"ok{i}.png", Image.new("RGB", (5, 5)))
    for name in ("a.png", "b.jpg", "c.webp"):
        (tmp_path / name).write_bytes(b"definitely not an image")
    with pytest.raises(ValueError, match=r"3 of 10 files .* could not be read.*a\.png, b\.jpg"):
        load_dataset(f"folder:{tmp_path}")
    for name in ("a.png", "b.jpg", "c.webp"):
        (tmp_path / name).unlink()
    with pytest.raises(ValueError, match="at least 20"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_module_names_match_docs():
    assert set(data.NAMES) == {"digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH"}
