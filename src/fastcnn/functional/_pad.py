"""Padding: constant, reflect, replicate, circular."""
from __future__ import annotations

import numbers

import numpy as np

from fastcnn import _checks
from fastcnn._checks import as_array, float_dtype, ntuple
from fastcnn.functional._activation import _float, _real

__all__ = ["pad", "pad_backward"]


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def _pad_widths(fname, shape, pad, mode):
    """[(before, after)] for the last len(pad)//2 dims, first dim first (pad lists last dim
    first, as torch)."""
    if not isinstance(mode, str) or mode not in _PAD_MODES:
        raise ValueError(f"{fname}: mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    try:
        pads = tuple(pad)
    except TypeError:
        raise TypeError(f"{fname}: pad must be a tuple of ints, got {pad!r}") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in pads):
        raise TypeError(f"{fname}: pad must be a tuple of ints, got {pad!r}")
    pads = tuple(int(v) for v in pads)
    k = len(pads) // 2
    if len(pads) % 2 or k > len(shape):
        raise ValueError(f"{fname}: pad must have an even length of at most 2 * input.ndim = "
                         f"{2 * len(shape)}, got {pad!r}")
    widths = [(pads[2 * i], pads[2 * i + 1]) for i in range(k)][::-1]
    dims = list(range(len(shape) - k, len(shape)))
    if mode == "constant":
        for d, (lo, hi) in zip(dims, widths):
            if shape[d] + lo + hi < 0:
                raise ValueError(f"{fname}: dim {d} of size {shape[d]} padded by {(lo, hi)} "
                                 f"would have a negative size")
        return dims, widths
    if not 1 <= k <= 3 or len(shape) not in (k + 1, k + 2):
        raise ValueError(f"{fname}: mode {mode!r} pads the last 1 to 3 dims of a batched or "
                         f"unbatched input ((N, C, *spatial) or (C, *spatial)): got pad {pad!r} "
                         f"for input of shape {tuple(shape)}")
    for d, (lo, hi) in zip(dims, widths):
        n = shape[d]
        if lo < 0 or hi < 0:
            raise ValueError(f"{fname}: mode {mode!r} needs non-negative pads, got {pad!r}")
        if mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(f"{fname}: reflect padding must be smaller than the dim it pads: "
                             f"dim {d} of size {n}, pad {(lo, hi)}")
        if mode == "circular" and max(lo, hi) > n:
            raise ValueError(f"{fname}: circular padding must be at most the dim it pads: "
                             f"dim {d} of size {n}, pad {(lo, hi)}")
        if mode == "replicate" and n == 0 and (lo or hi):
            raise ValueError(f"{fname}: replicate padding of the empty dim {d}")
    return dims, widths


def _crop_slices(shape, dims, widths):
    """Matching slices of the unpadded (src) and padded (dst) arrays for constant mode."""
    src = [slice(None)] * len(shape)
    dst = [slice(None)] * len(shape)
    for d, (lo, hi) in zip(dims, widths):
        n = shape[d]
        s0, s1 = max(0, -lo), n - max(0, -hi)
        if s1 <= s0:
            return None
        src[d] = slice(s0, s1)
        dst[d] = slice(max(0, lo), max(0, lo) + s1 - s0)
    return tuple(src), tuple(dst)


def pad(input, pad, mode="constant", value=0.0):
    """Pad (or, with negative constant pads, crop), as ``torch.nn.functional.pad``.

    ``pad = (left_last, right_last, left_second_last, right_second_last, ...)``: pairs for the
    last dim first. Modes: 'constant' (fill with ``value``; any number of dims; negative pads
    crop; value None means 0), 'reflect' (mirror without repeating the edge; pad < size),
    'replicate' (repeat the edge), 'circular' (wrap around; pad <= size); the last three pad 1
    to 3 trailing dims of (N, C, *spatial) or (C, *spatial) inputs.
    """
    fname = "pad"
    x = as_array(fname, "input", input)
    dims, widths = _pad_widths(fname, x.shape, pad, mode)
    dtype = float_dtype(x)
    x = np.asarray(x, dtype=dtype)
    if mode != "constant":
        _checks.check_extent(fname, "output shape", [
            n + sum(widths[dims.index(d)]) if d in dims else n for d, n in enumerate(x.shape)])
        full = [(0, 0)] * (x.ndim - len(dims)) + widths
        return np.pad(x, full, mode=_PAD_MODES[mode])
    value = 0.0 if value is None else _real(fname, "value", value)   # torch's default is None
    shape = list(x.shape)
    for d, (lo, hi) in zip(dims, widths):
        shape[d] += lo + hi
    _checks.check_extent(fname, "output shape", shape)
    out = np.full(shape, value, dtype=dtype)
    sl = _crop_slices(x.shape, dims, widths)
    if sl is not None:
        out[sl[1]] = x[sl[0]]
    return out


def pad_backward(grad_output, input_shape, pad, mode="constant"):
    """Gradient of :func:`pad`: dL/dx of shape ``input_shape``.

    constant: the interior of grad_output (zeros where the forward cropped). Other modes: each
    padded cell's gradient is added back to the input cell it copied (axis by axis).
    """
    fname = "pad_backward"
    dy = _float(fname, "grad_output", grad_output)
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"{fname}: input_shape must be a tuple of non-negative ints, got "
                        f"{_checks._describe(input_shape)}")
    shape = ntuple(fname, "input_shape", input_shape, len(input_shape), minimum=0)
    dims, widths = _pad_widths(fname, shape, pad, mode)
    expected = list(shape)
    for d, (lo, hi) in zip(dims, widths):
        expected[d] += lo + hi
    if dy.shape != tuple(expected):
        raise ValueError(f"{fname}: grad_output must have the padded shape {tuple(expected)}, "
                         f"got {dy.shape}")
    if mode == "constant":
        gx = np.zeros(shape, dtype=dy.dtype)
        sl = _crop_slices(shape, dims, widths)
        if sl is not None:
            gx[sl[0]] = dy[sl[1]]
        return gx
    g = dy
    for d, (lo, hi) in zip(dims, widths):
        n = shape[d]
        g = np.moveaxis(g, d, 0)
        new = g[lo:lo + n].copy()           # the interior maps onto itself in every mode
        src = np.pad(np.arange(n), (lo, hi), mode=_PAD_MODES[mode])
        edge = np.r_[0:lo, lo + n:lo + n + hi]
        np.add.at(new, src[edge], g[edge])
        g = np.moveaxis(new, 0, d)
    return np.ascontiguousarray(g)
