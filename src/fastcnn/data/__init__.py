"""The data side of ``fastcnn train``: datasets, splits, normalization, augmentation, batches.

Every dataset is a function registered in :data:`fastcnn.registry.DATASETS` (add your own with
``@fastcnn.register_dataset("name")``) that takes its options as keywords and returns a
:class:`DataSplits`: images ``x`` as float32 ``(N, C, H, W)`` in [0, 1] (uint8 sources are
divided by 255) and labels ``y`` as int64 ``(N,)``.

Built in, one module per source format in :mod:`fastcnn.data.datasets`:

- ``mnist_sample``: 5,000 real MNIST digits shipped inside fastcnn (IDX files, CC BY-SA 3.0),
  with a fixed stratified 4,000 / 1,000 train/test split; the default of ``fastcnn train``;
- ``mnist_idx`` / ``fashion_mnist_idx``: the original IDX files from a directory ``root``;
- ``cifar10``: the CIFAR-10 "python version" batches from a directory ``root``, unpickled with
  an unpickler that can build nothing but numpy arrays;
- ``npz``: arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``) from a ``.npz`` file;
- ``synthetic``: a small generated set a CNN learns in seconds, for tests and smoke runs.

The rest, a module each: ``arrays`` (checking a user's images and labels), ``splits``
(:class:`DataSplits`, validation split, stratified subset), ``loading`` (the ``data`` config
section: :func:`load_dataset`), ``normalization``, ``augmentation``, ``batching``. Every public
name is importable from ``fastcnn.data`` itself.

Only numpy is needed; nothing here imports a deep-learning framework.
"""
from fastcnn.data.augmentation import Augmenter
from fastcnn.data.batching import batches
from fastcnn.data.datasets.cifar10 import cifar10
from fastcnn.data.datasets.idx import fashion_mnist_idx, mnist_idx, read_idx
from fastcnn.data.datasets.mnist_sample import mnist_sample
from fastcnn.data.datasets.npz import npz
from fastcnn.data.datasets.synthetic import synthetic
from fastcnn.data.loading import load_dataset
from fastcnn.data.normalization import (channel_stats, normalization_option,
                                        normalization_stats, normalize)
from fastcnn.data.splits import DataSplits, stratified_subset, train_validation_split

__all__ = [
    "DataSplits", "load_dataset", "train_validation_split", "stratified_subset",
    "read_idx", "channel_stats", "normalize", "normalization_option", "normalization_stats", "Augmenter", "batches",
    "mnist_sample", "mnist_idx", "fashion_mnist_idx", "cifar10", "npz", "synthetic",
]
