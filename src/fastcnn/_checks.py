"""Argument checking shared by the public functions: arrays, dtypes and size tuples.

Everything a kernel is given passes through here first, so that a bad call raises a ValueError
or TypeError naming the function, the argument, the value and what was expected.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT32_MAX = 2**31 - 1


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return repr(value)


def to_array(fname: str, name: str, value) -> np.ndarray:
    """``np.asarray(value)`` (any dtype), or a TypeError naming the function and argument."""
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged nested lists and the like
        raise TypeError(f"{fname}: {name} could not be converted to an array ({exc})") from None


def as_array(fname: str, name: str, value) -> np.ndarray:
    """``value`` as an ndarray of a numeric real dtype (no copy yet), or TypeError."""
    if value is None:
        raise TypeError(f"{fname}: {name} must be an array, got None")
    arr = to_array(fname, name, value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{fname}: {name} must hold real numbers (float32/float64; ints and bools are cast), "
            f"got dtype {arr.dtype}")
    return arr


def float_dtype(*arrays: np.ndarray) -> np.dtype:
    """The dtype the kernels compute in: float64 if any float array is float64 (or wider),
    float32 otherwise (float16, ints and bools are computed in float32)."""
    for arr in arrays:
        if arr is not None and arr.dtype.kind == "f" and arr.dtype.itemsize >= 8:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def contiguous(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous, aligned, of ``dtype``; copies only when needed (views, Fortran order,
    negative strides, other dtypes). The common case (already so) returns ``arr`` without
    np.require's ~2 us of argument handling: every op call checks its arrays this way."""
    flags = arr.flags
    if arr.dtype == dtype and flags.c_contiguous and flags.aligned:
        return arr
    return np.require(arr, dtype=dtype, requirements=("C", "A"))


def check_ndim(fname: str, name: str, arr: np.ndarray, allowed, meaning: str) -> None:
    if arr.ndim not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{fname}: {name} must be {want}-D ({meaning}), got shape {arr.shape}")


def as_int(fname: str, name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fname}: {name} must be an int, got {_describe(value)}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{fname}: {name} must be >= {minimum}, got {value}")
    return value


def ntuple(fname: str, name: str, value, n: int, minimum: int) -> tuple:
    """An int or a sequence of ``n`` ints, each >= minimum, as a tuple of ``n`` ints."""
    # plain ints and tuples of them first, without the numbers.Integral checks (a few us per
    # call, several calls per layer); anything else, valid or not, takes the full path below
    if type(value) is int:
        if minimum <= value <= INT32_MAX:
            return (value,) * n
    elif type(value) is tuple and len(value) == n and all(
            type(v) is int and minimum <= v <= INT32_MAX for v in value):
        return value
    what = "positive" if minimum == 1 else "non-negative"
    expected = f"a {what} int or a tuple of {n} {what} ints"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fname}: {name} must be {expected}, got {value!r}")
    if isinstance(value, numbers.Integral):
        items = (operator.index(value),) * n
    elif isinstance(value, (tuple, list, np.ndarray)):
        items = tuple(value)
        if len(items) != n or any(isinstance(v, (bool, np.bool_)) or
                                  not isinstance(v, numbers.Integral) for v in items):
            raise TypeError(f"{fname}: {name} must be {expected}, got {value!r}")
        items = tuple(operator.index(v) for v in items)
    else:
        raise TypeError(f"{fname}: {name} must be {expected}, got {_describe(value)}")
    if any(v < minimum for v in items):
        raise ValueError(f"{fname}: {name} must be {expected}, got {value!r}")
    if any(v > INT32_MAX for v in items):
        # A per-axis size, stride, padding or dilation beyond 2**31-1 makes the kernels' index
        # arithmetic (start + stride, padding + ...) overflow 64 bits: refused here.
        raise ValueError(f"{fname}: {name} must be at most 2**31-1 on each axis, got {value!r}")
    return items


def lift3(values: tuple, fill: int) -> tuple:
    """Pad a per-axis tuple of 1 or 2 entries on the left to 3 (the kernels are 3-D)."""
    return (fill,) * (3 - len(values)) + tuple(values)


def optional_vector(fname: str, name: str, value, size: int, dtype) -> np.ndarray:
    """None -> an empty array (the kernels' "absent"); else a 1-D array of ``size`` entries."""
    if value is None:
        return np.empty(0, dtype=dtype)
    arr = as_array(fname, name, value)
    if arr.shape != (size,):
        raise ValueError(f"{fname}: {name} must have shape ({size},), got {arr.shape}")
    return contiguous(arr, dtype)



def check_extent(fname: str, what: str, sizes) -> None:
    """Refuse a size tuple whose product (cells per plane, rows of a matrix) exceeds 2**31-1:
    the kernels' flat indices and BLAS take 32-bit sizes. Called before anything is
    allocated, so a huge request is a ValueError, never a MemoryError or a crash."""
    sizes = tuple(sizes)
    if math.prod(sizes) > INT32_MAX:
        raise ValueError(f"{fname}: {what} {sizes} has {math.prod(sizes)} elements, which "
                         f"exceeds 2**31-1 (32-bit indices and BLAS sizes)")
