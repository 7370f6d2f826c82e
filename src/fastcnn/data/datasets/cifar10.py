"""``cifar10``: the CIFAR-10 "python version" batches, unpickled with an unpickler that can
build nothing but numpy arrays."""
from __future__ import annotations

import os
import pickle

import numpy as np

from fastcnn.data.arrays import images_and_labels
from fastcnn.data.datasets.files import check_root
from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset


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
    return images_and_labels(path, data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"]))


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
    folder = _cifar_folder(check_root("cifar10", root))

    def batch(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cifar10: missing file {path}")
        return _read_cifar_batch(path)

    train = _concatenate([batch(f"data_batch_{i}") for i in range(1, 6)])
    return make_splits("cifar10", train, batch("test_batch"), num_classes=10)
