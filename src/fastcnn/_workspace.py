"""Scratch memory for the kernels, kept per Python thread and reused across calls.

A convolution needs a columns buffer per OpenMP thread (megabytes for large layers). Allocating
it per call costs page faults on every call; a buffer per Python thread, grown to the largest
request seen, costs them once, and two Python threads never share one.
"""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(size: int, dtype) -> np.ndarray:
    """A 1-D array of ``size`` elements of ``dtype`` with undefined contents.

    Valid until the next call from the same thread: use it for one kernel call, keep nothing.
    """
    dtype = np.dtype(dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(dtype)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        buffers[dtype] = buf
    return buf[:size]

