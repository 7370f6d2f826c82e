"""The buffers of a plan: one per value, reused once the value is dead.

A plan knows, for each value of the network, the step that makes it and the last step that
reads it. Values are given buffers in step order; a buffer whose value has been read for the
last time goes back to the free list, and a later value takes the smallest free buffer that is
large enough (best fit), so a sequential network of any depth needs about two activation-sized
buffers and a U-Net one per live skip connection.
"""
from __future__ import annotations

import bisect

import numpy as np

__all__ = ["Arena"]


class Arena:
    """Buffers of ``dtype`` handed out and taken back by the plan builder."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._free = []              # (size, serial, flat buffer), sorted by size
        self._serial = 0
        self.total_elements = 0      # the sum of every buffer made: the plan's activation memory

    def take(self, shape):
        """A C-contiguous array of ``shape``: a view of the smallest free buffer that holds it,
        or of a new one."""
        size = max(1, int(np.prod(shape)))
        at = bisect.bisect_left(self._free, (size, -1))
        if at < len(self._free):
            _, _, flat = self._free.pop(at)
        else:
            flat = np.empty(size, self.dtype)
            self.total_elements += size
        return flat, flat[:int(np.prod(shape))].reshape(shape)

    def give_back(self, flat):
        """``flat`` (from take) is free again."""
        self._serial += 1
        bisect.insort(self._free, (flat.size, self._serial, flat))
