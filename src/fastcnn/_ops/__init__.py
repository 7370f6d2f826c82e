"""Compiled kernels (Cython, OpenMP, BLAS). Private: call them through :mod:`fastcnn.functional`.

Every function here trusts its arguments (shapes, contiguity, dtypes), which the Python layer
has checked; none of them may be called with unchecked user input.
"""
import os as _os
import warnings as _warnings

# FASTCNN_SIMD picks the x86-64 level the vector kernels run (_simd.h): each compiled module
# reads it when it loads. Checked here, before any of them loads, so that a typo is an error
# rather than silently the CPU's level.
_SIMD_LEVELS = ("x86-64-v4", "x86-64-v3", "baseline")
_requested = _os.environ.get("FASTCNN_SIMD", "")
if _requested not in ("",) + _SIMD_LEVELS:
    raise ValueError(f"FASTCNN_SIMD={_requested!r} in the environment: expected one of "
                     f"{', '.join(_SIMD_LEVELS)} (or unset, for the best level this CPU runs)")
if _requested:
    from fastcnn._ops import parallel as _parallel
    _cpu = _parallel.simd_cpu_path()
    if (_cpu in _SIMD_LEVELS
            and _SIMD_LEVELS.index(_requested) < _SIMD_LEVELS.index(_cpu)):
        _warnings.warn(f"FASTCNN_SIMD={_requested}: this CPU runs at most {_cpu}; the kernels "
                       f"run {_cpu}", RuntimeWarning, stacklevel=2)
    del _parallel, _cpu
del _requested
