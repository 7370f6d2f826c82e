"""Output arrays that reuse the memory of earlier outputs nobody holds any more.

A training step allocates the same activations and gradients, megabytes each, every step. Fresh
large blocks come from ``mmap`` and are returned to the system when freed, so every step pays a
page fault (and the kernel's zeroing) per 4 KiB touched: on resnet_small that was a fifth of the
step (40 ms with fresh memory, 31 ms with glibc told to keep it). This pool keeps the buffers
of large arrays and hands one out again once every array made from it has been dropped.

Whether a buffer is free is read from its reference count: each array handed out is a view
whose ``base`` is the pooled buffer, and so is every view of those views (numpy points them all
at the array that owns the memory). A buffer nobody else references cannot be observed, so
reusing it is safe whatever the caller kept: a result still held, or a view of it, is never
overwritten. The pool is shared by all threads behind one lock.

Only arrays of at least ``MIN_BYTES`` are pooled (smaller ones come from malloc's own free
lists, without page faults), and the pool holds at most ``limit`` bytes: past it, free buffers
are dropped least-recently-used first, and when none are free a request is served by plain
``np.empty``. ``release_memory()`` hands every free buffer back to the system.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

__all__ = ["empty", "memory_stats", "release_memory", "set_memory_limit", "zeros"]

MIN_BYTES = 1 << 18          # 256 KiB
# A free buffer not handed out during this many requests is dropped at the next miss: a loop
# over the same shapes keeps its buffers, shapes seen once (a last short batch) are let go.
IDLE_REQUESTS = 1024
_ALIGN = 64                  # a cache line (and an AVX-512 register)


def _env_limit() -> int:
    mib = os.environ.get("FASTCNN_POOL_MB", "")
    try:
        return int(mib) << 20 if mib else 4 << 30
    except ValueError:
        raise ValueError(f"FASTCNN_POOL_MB must be an integer number of MiB, got {mib!r}") from None


class _Pool:
    """Free lists of pooled buffers by size. An entry is [buffer, offset, last use]."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0                    # bytes of all pooled buffers, in use or not
        self.free_lists: dict = {}       # nbytes -> [entry, ...]
        self.lock = threading.Lock()
        self.tick = 0                    # requests served so far: the pool's clock
        self.hits = self.misses = 0
        self.free_refs = 0               # set below, once _refs is defined

    def _is_free(self, entry) -> bool:
        """Whether nothing but the pool references the entry's buffer."""
        return _refs(entry) <= self.free_refs

    def take(self, nbytes: int):
        """An entry of ``nbytes`` free for the caller, or None (then use plain numpy)."""
        with self.lock:
            self.tick += 1
            for entry in self.free_lists.get(nbytes, ()):
                if self._is_free(entry):
                    entry[2] = self.tick
                    self.hits += 1
                    return entry
            self.misses += 1
            # a new size or more of one: first let go of what the last requests did not use
            self._drop(lambda e: e[2] < self.tick - IDLE_REQUESTS)
            size = nbytes + _ALIGN
            if self.held + size > self.limit:
                self._drop(lambda e: True, size - (self.limit - self.held))
                if self.held + size > self.limit:
                    return None
            buf = np.empty(size, dtype=np.uint8)
            entry = [buf, -buf.ctypes.data % _ALIGN, self.tick]
            self.free_lists.setdefault(nbytes, []).append(entry)
            self.held += size
            return entry

    def _drop(self, stale, needed=None):
        """Forget free buffers for which ``stale(entry)``, oldest first, until ``needed``
        bytes went (all of them when needed is None)."""
        free = sorted((e[2], nbytes, i) for nbytes, entries in self.free_lists.items()
                      for i, e in enumerate(entries) if stale(e) and self._is_free(e))
        gone = set()
        for _, nbytes, i in free:
            if needed is not None and needed <= 0:
                break
            size = self.free_lists[nbytes][i][0].nbytes
            gone.add((nbytes, i))
            self.held -= size
            if needed is not None:
                needed -= size
        if gone:
            for nbytes in {n for n, _ in gone}:
                kept = [e for i, e in enumerate(self.free_lists[nbytes]) if (nbytes, i) not in gone]
                if kept:
                    self.free_lists[nbytes] = kept
                else:
                    del self.free_lists[nbytes]

    def release(self):
        with self.lock:
            self._drop(lambda e: True)


def _refs(entry) -> int:
    return sys.getrefcount(entry[0])


_pool = _Pool(_env_limit())
# References a buffer held only by its pool entry shows to _refs, measured once rather than
# assumed (interpreter versions count differently).
_pool.free_refs = _refs([np.empty(1, dtype=np.uint8), 0, 0])


def empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, 64-byte aligned and pooled when large (see module doc)."""
    dtype = np.dtype(dtype)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    size = 1
    for s in shape:
        size *= s
    nbytes = size * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    got = _pool.take(nbytes)
    if got is None:
        return np.empty(shape, dtype=dtype)
    buf, offset, _ = got
    return buf[offset:offset + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` from the pool (zeroed in one pass over warm memory)."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def release_memory() -> None:
    """Return every pooled buffer that no array uses any more to the system."""
    _pool.release()


def set_memory_limit(megabytes: int) -> None:
    """Cap the bytes the pool keeps (default 4096 MiB, or ``FASTCNN_POOL_MB``); 0 disables it."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, (int, np.integer)) or megabytes < 0:
        raise ValueError(f"set_memory_limit: megabytes must be an integer >= 0, got {megabytes!r}")
    with _pool.lock:
        _pool.limit = int(megabytes) << 20
        if _pool.held > _pool.limit:
            _pool._drop(lambda e: True, _pool.held - _pool.limit)


def memory_stats() -> dict:
    """Pool counters: bytes held, buffers held, hits and misses since import."""
    with _pool.lock:
        return {"held_bytes": _pool.held,
                "buffers": sum(len(v) for v in _pool.free_lists.values()),
                "free_buffers": sum(_pool._is_free(e) for v in _pool.free_lists.values()
                                    for e in v),
                "hits": _pool.hits, "misses": _pool.misses, "limit_bytes": _pool.limit}
