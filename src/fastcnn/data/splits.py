"""A dataset's splits (:class:`DataSplits`, what every dataset function returns) and the
seeded, stratified ways of making them: a validation split and a subset."""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from fastcnn.data.arrays import images_and_labels


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
        train = images_and_labels(f"{name} (x, y)", x, y)
        test = None if x_test is None else images_and_labels(f"{name} (x_test, y_test)", x_test, y_test)
        return make_splits(name, train, test, num_classes)

    def sizes(self) -> dict:
        """Samples per split, e.g. ``{"train": 3600, "validation": 400, "test": 1000}``."""
        return {split: (0 if pair is None else len(pair[1]))
                for split, pair in (("train", self.train), ("validation", self.validation),
                                    ("test", self.test))}


def make_splits(name: str, train: tuple, test: tuple | None,
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


def as_generator(where: str, rng):
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
    held_out = _stratified_pick(y, size, as_generator("train_validation_split", seed))
    return (x[~held_out], y[~held_out]), (x[held_out], y[held_out])


def stratified_subset(x, y, size: int, seed=0) -> tuple:
    """At most ``size`` samples of ``(x (N, ...), y (N,))``, each class in proportion, chosen
    with ``seed`` (int or Generator); all of them (no copy) when ``size >= N``. Order kept."""
    y = np.asarray(y)
    if size >= len(y):
        return x, y
    keep = _stratified_pick(y, int(size), as_generator("stratified_subset", seed))
    return x[keep], y[keep]


# The `data` config section
