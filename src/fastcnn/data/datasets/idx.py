"""IDX files (MNIST, Fashion-MNIST): :func:`read_idx` and the ``mnist_idx`` /
``fashion_mnist_idx`` datasets."""
from __future__ import annotations

import os

import numpy as np

from fastcnn.data.arrays import images_and_labels
from fastcnn.data.datasets.files import check_root, find_file, read_bytes
from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset


# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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
    blob = read_bytes(path)
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


def _load_idx_pair(root: str, prefix: str) -> tuple:
    images_path = find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected images (N, H, W), got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    return images_and_labels(images_path, images, labels)


def _idx_dataset(name: str, root) -> DataSplits:
    root = check_root(name, root)
    return make_splits(name, _load_idx_pair(root, "train"), _load_idx_pair(root, "t10k"),
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
