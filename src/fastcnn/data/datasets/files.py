"""Finding and reading a dataset's files on disk, with errors that name the path."""
from __future__ import annotations

import gzip
import os
import zlib


def read_bytes(path: str) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``."""
    if not path.endswith(".gz"):
        with open(path, "rb") as fh:
            return fh.read()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def find_file(root: str, name: str) -> str:
    """``root/name`` or ``root/name.gz``, whichever exists; FileNotFoundError naming both."""
    candidates = [os.path.join(root, name), os.path.join(root, name + ".gz")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"missing file {candidates[0]} (also tried {candidates[1]})")


def check_root(name: str, root) -> str:
    if root is None:
        raise ValueError(f"{name}: the option 'root' (the directory holding the files) is required")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: root directory {root} does not exist")
    return root
