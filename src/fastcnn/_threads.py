"""How many threads the kernels use, and keeping BLAS from multiplying them.

The kernels run an OpenMP team of ``get_num_threads()`` threads, and each thread calls BLAS on
its own sample. BLAS must then be single-threaded: an OpenBLAS pool of its own on top of our
team would oversubscribe the cores, and its spinning threads slow OpenMP down (OpenBLAS issue
3187, scikit-learn issue 28883). :func:`single_threaded_blas` sets every loaded BLAS to one thread
for the duration of a kernel call and restores it afterwards; it is re-entrant across Python
threads (the first caller in saves, the last caller out restores).

OpenBLAS's result bits depend on its thread count (a 64 x 100 x 300 sgemm block differs by
3e-5 between 1 and 2 threads with its Haswell kernels), so the limit must hold whichever Python
thread calls. threadpoolctl >= 3.6 lets only one "controlling" Python thread change a
process-wide (pthreads) OpenBLAS pool and silently ignores the others: a model run from a
``threading.Thread`` then ran its GEMMs on OpenBLAS's 2 threads while the main thread ran them
on 1, and gave different bits. The count is therefore set through the library's own setter
(``_real_set_num_threads``, where threadpoolctl has it), under this module's lock.
"""
from __future__ import annotations

import ctypes
import os
import threading

from fastcnn._ops import parallel as _parallel

__all__ = ["set_num_threads", "get_num_threads", "single_threaded_blas"]

_num_threads: int | None = None


def _parse_positive_int(name: str, value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def _default_num_threads() -> int:
    env = os.environ.get("FASTCNN_NUM_THREADS")
    if env not in (None, ""):
        return _parse_positive_int("FASTCNN_NUM_THREADS", env)
    # omp_get_max_threads() honours OMP_NUM_THREADS and the CPU affinity mask.
    return max(1, _parallel.openmp_max_threads())


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every kernel from now on (default: FASTCNN_NUM_THREADS,
    else OMP_NUM_THREADS, else the number of usable cores)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


# A lower count for the calling Python thread only (one_thread): an inference plan runs the
# layers too small to share on one thread, without touching other threads' runs.
_local = threading.local()


def get_num_threads() -> int:
    """The number of threads the kernels use (in this Python thread)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    if getattr(_local, "one", False):
        return 1
    return _num_threads if _parallel.openmp_enabled() else 1


class one_thread:
    """``with one_thread(): ...`` runs the kernels called in the block, from this Python thread,
    on one thread (results are the same bits for any count: only the speed changes). Used for
    layers so small that waking a team costs more than it saves."""
    __slots__ = ("_before",)

    def __enter__(self):
        self._before = getattr(_local, "one", False)
        _local.one = True
        return self

    def __exit__(self, *exc):
        _local.one = self._before
        return False


def _setter(lib):
    """The function that sets ``lib``'s thread count from any Python thread (see the module
    docstring): threadpoolctl's controller method without its controlling-thread check."""
    return getattr(lib, "_real_set_num_threads", lib.set_num_threads)


def _count_functions(lib):
    """(get, set, in_c) for ``lib``'s thread count. For an OpenBLAS with its own (pthreads)
    pool, its C functions (which threadpoolctl's methods end up calling), in_c True; else the
    controller's methods."""
    symbol = getattr(lib, "_get_symbol", None)
    if (getattr(lib, "internal_api", None) == "openblas" and symbol is not None
            and getattr(lib, "threading_layer", None) != "openmp"):
        get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
        if get is not None and set_ is not None:
            return get, set_, True
    return lib.get_num_threads, _setter(lib), False


def _address(function):
    return ctypes.cast(function, ctypes.c_void_p).value


class _SingleThreadedBlas:
    """``with single_threaded_blas:`` (see the module docstring). When every loaded BLAS has
    C functions for its count (_count_functions), the guard runs in C
    (fastcnn._ops.blas_threads.CountGuard: ~0.1 us a use instead of ~2 us); otherwise through
    threadpoolctl under this object's lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list = []
        self._libs = None
        self._in_c = None           # the CountGuard of every library, when all are in C

    def _blas_libs(self):
        """(get, set, in_c) of every loaded BLAS's thread count (_count_functions)."""
        if self._libs is None:
            try:
                from threadpoolctl import ThreadpoolController
                libs = [_count_functions(lib)
                        for lib in ThreadpoolController().lib_controllers
                        if lib.user_api == "blas"]
            except Exception:  # threadpoolctl cannot see the libraries: nothing to limit
                libs = []
            if libs and all(in_c for _, _, in_c in libs):
                from fastcnn._ops.blas_threads import CountGuard
                self._in_c = CountGuard([(_address(get), _address(set_))
                                         for get, set_, _ in libs])
            self._libs = libs
        return self._libs

    def __enter__(self):
        if self._libs is None:
            self._blas_libs()
        if self._in_c is not None:
            self._in_c.enter()
            return self
        with self._lock:
            if self._depth == 0:
                self._saved = []
                for get, set_, _ in self._libs:
                    n = get()
                    if n is not None and n != 1:
                        set_(1)
                        self._saved.append((set_, n))
            self._depth += 1
        return self

    def __exit__(self, *exc):
        if self._in_c is not None:
            self._in_c.exit()
            return False
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for set_, n in self._saved:
                    set_(n)
                self._saved = []
        return False


single_threaded_blas = _SingleThreadedBlas()
