"""Resampling: interpolate (nearest, linear, bilinear, trilinear, area)."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, check_ndim, float_dtype, lift3, ntuple
from fastcnn._ops import resample as _resample
from fastcnn._threads import get_num_threads
from fastcnn._workspace import scratch
from fastcnn.functional._pool import _adaptive_avg_pool, _avg_pool, _check_grad, _planes

__all__ = ["interpolate", "interpolate_backward"]


# --------------------------------------------------------------------------------------------
# Resampling: interpolate
# --------------------------------------------------------------------------------------------
# The kernels (_ops/resample.pyx) only gather and blend; which input cells an output reads and
# with which weights is separable per axis and computed here with torch's formulas in torch's
# precision (float32 scales for nearest; the input's float type for linear), so that the same
# sizes and scale factors pick the same source cells as torch.

_INTERP_MODES = {"nearest": None, "nearest-exact": None, "area": None,
                 "linear": 1, "bilinear": 2, "trilinear": 3}


def _scale_value(dtype, scale, n_in, n_out):
    """torch's compute_scales_value: 1/scale_factor if one was given, else in/out."""
    if scale is not None and scale > 0:
        return dtype.type(1.0 / scale)
    return dtype.type(n_in) / dtype.type(n_out)


def _nearest_source(n_in, n_out, scale, exact):
    o = np.arange(n_out, dtype=np.int64)
    s = _scale_value(np.dtype(np.float32), scale, n_in, n_out)
    if exact:    # nearest-exact: floorf((o + 0.5) * scale), the product in double
        src = np.floor(((o + 0.5) * np.float64(s)).astype(np.float32))
    elif n_out == n_in:
        return o
    elif n_out == 2 * n_in:
        return o >> 1
    else:        # legacy nearest: floorf(o * scale) in float
        src = np.floor(o.astype(np.float32) * s)
    return np.minimum(src.astype(np.int64), n_in - 1)


def _integer_blocks(table, in_size, out_size, nd):
    """The per-axis block sizes k when nearest resampling copies input cell i to outputs
    [k*i, k*(i+1)) on every axis (an integer upscale), else None."""
    blocks = []
    for a, (n_in, n_out) in enumerate(zip(in_size, out_size), start=3 - nd):
        k = n_out // n_in if n_in else 0
        if k < 1 or k * n_in != n_out or not np.array_equal(table[a, :n_out],
                                                             np.arange(n_out) // k):
            return None
        blocks.append(k)
    return tuple(blocks)


def _linear_weights(n_in, n_out, scale, align_corners, dtype):
    """torch's (i0, i1, lambda0, lambda1) for one axis (area_pixel_compute_source_index and
    guard_index_and_lambda; equal sizes copy)."""
    o = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        return o, o, np.ones(n_out, dtype), np.zeros(n_out, dtype)
    t = dtype.type
    if align_corners:
        s = t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0)
        real = s * o.astype(dtype)
    else:
        s = _scale_value(dtype, scale, n_in, n_out)
        real = np.maximum(s * (o.astype(dtype) + t(0.5)) - t(0.5), t(0))
    i0 = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), n_in - 1)  # floorf
    lam = np.minimum(np.maximum(real - i0.astype(dtype), t(0)), t(1))
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (t(1) - lam).astype(dtype), lam.astype(dtype)


def _interp_args(fname, x, size, scale_factor, mode, align_corners, recompute_scale_factor):
    check_ndim(fname, "input", x, (3, 4, 5), "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
    nd = x.ndim - 2
    if 0 in x.shape[1:]:
        raise ValueError(f"{fname}: input must have non-zero channel and spatial sizes (only "
                         f"the batch may be empty), got shape {x.shape}")
    if not isinstance(mode, str) or mode not in _INTERP_MODES:
        raise ValueError(f"{fname}: mode must be one of {', '.join(map(repr, _INTERP_MODES))}, "
                         f"got {mode!r}")
    need = _INTERP_MODES[mode]
    if need is not None and need != nd:
        raise ValueError(f"{fname}: got {x.ndim}-D input, but {mode} mode needs {need + 2}-D "
                         f"input (as torch)")
    if need is None and align_corners is not None:
        raise ValueError(f"{fname}: align_corners can only be set with the interpolating "
                         f"modes linear, bilinear and trilinear, got mode={mode!r}")
    if align_corners is not None and not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(f"{fname}: align_corners must be None or a bool, got {align_corners!r}")
    in_size = tuple(x.shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{fname}: exactly one of size and scale_factor must be given, got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    if size is not None:
        out_size = ntuple(fname, "size", size, nd, minimum=1)
        scales = (None,) * nd
    else:
        items = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else \
            (scale_factor,) * nd
        if len(items) != nd or any(isinstance(v, (bool, np.bool_)) or
                                   not isinstance(v, (int, float, np.integer, np.floating))
                                   for v in items):
            raise TypeError(f"{fname}: scale_factor must be a number or a tuple of {nd} "
                            f"numbers, got {scale_factor!r}")
        if not all(math.isfinite(v) and v > 0 for v in items):
            raise ValueError(f"{fname}: scale_factor must be positive and finite, got "
                             f"{scale_factor!r}")
        out_size = tuple(math.floor(float(i) * float(v)) for i, v in zip(in_size, items))
        if any(o < 1 for o in out_size):
            raise ValueError(f"{fname}: input size {in_size} times scale_factor "
                             f"{scale_factor!r} gives output size {out_size}: must be >= 1")
        scales = (None,) * nd if recompute_scale_factor else tuple(float(v) for v in items)
    _checks.check_extent(fname, "input size", in_size)
    _checks.check_extent(fname, "output size", out_size)
    return nd, in_size, out_size, scales, bool(align_corners)


def _interpolate(fname, input, size, scale_factor, mode, align_corners, recompute_scale_factor,
                 grad_output=None):
    """interpolate, or its backward (grad_output given; ``input`` is then only a shape)."""
    x = as_array(fname, "input", input)
    nd, in_size, out_size, scales, corners = _interp_args(
        fname, x, size, scale_factor, mode, align_corners, recompute_scale_factor)
    if mode == "area":                           # torch: adaptive average pooling
        if grad_output is None:
            return _adaptive_avg_pool(fname, nd, x, out_size)
        return _adaptive_avg_pool(fname, nd, x, out_size, grad_output)
    lead = x.shape[:2]
    p = math.prod(lead)
    if grad_output is None:
        dtype = float_dtype(x)
        src = _planes(x, lead, dtype)
        res = _memory.empty(lead + out_size, dtype)
    else:
        dy = _check_grad(fname, grad_output, lead + out_size)
        dtype = np.dtype(float_dtype(dy))
        src = _planes(dy, lead, dtype)
        res = _memory.empty(lead + in_size, dtype)
    if not p:
        return res
    in3, out3 = lift3(in_size, 1), lift3(out_size, 1)
    m = max(out3)
    threads = get_num_threads()
    if mode in ("nearest", "nearest-exact"):
        table = np.zeros((3, m), np.int64)
        for a, (n_in, n_out, s) in enumerate(zip(in_size, out_size, scales), start=3 - nd):
            table[a, :n_out] = _nearest_source(n_in, n_out, s, mode == "nearest-exact")
        blocks = _integer_blocks(table, in_size, out_size, nd)
        if grad_output is not None and blocks is not None:
            # each input cell was copied to one k-block of outputs: its gradient is the block's
            # sum, a sum pool (avg pool, divisor 1), twice as fast as scattering output by output
            return _avg_pool(fname, nd, dy, blocks, blocks, 0, False, False, 1)
        kernel = _resample.nearest if grad_output is None else _resample.nearest_backward
        kernel(src, res.reshape(p, -1), in3, out3, table, threads)
        return res
    idx = np.zeros((2, 3, m), np.int64)
    lam = np.zeros((2, 3, m), dtype)
    lam[0] = 1                                   # lifted axes: one corner, weight 1
    for a, (n_in, n_out, s) in enumerate(zip(in_size, out_size, scales), start=3 - nd):
        i0, i1, l0, l1 = _linear_weights(n_in, n_out, s, corners, dtype)
        idx[0, a, :n_out], idx[1, a, :n_out], lam[0, a, :n_out], lam[1, a, :n_out] = \
            i0, i1, l0, l1
    if grad_output is None:
        _resample.linear(src, res.reshape(p, -1), nd, in3, out3, idx, lam, threads)
        return res
    # the backward gathers: input i of an axis collects outputs [s0[i], e0[i]) (i0 == i) and
    # [s1[i], e1[i]) (i1 == i); i0, i1 never decrease, so searchsorted finds the ranges
    mi = max(in3)
    adj = np.zeros((4, 3, mi), np.int64)
    adj[1, :, 0] = adj[3, :, 0] = 1                # lifted axes: output 0 -> input 0
    for a, n_in in enumerate(in_size, start=3 - nd):
        cells = np.arange(n_in)
        n_out = out3[a]
        for k in (0, 1):
            adj[2 * k, a, :n_in] = np.searchsorted(idx[k, a, :n_out], cells, side="left")
            adj[2 * k + 1, a, :n_in] = np.searchsorted(idx[k, a, :n_out], cells, side="right")
    ws = scratch(_resample.linear_backward_workspace(nd, in3, out3) * threads, dtype)
    _resample.linear_backward(src, res.reshape(p, -1), nd, in3, out3, idx, lam, adj, ws,
                              threads)
    return res


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """Resample to a new spatial size, as ``torch.nn.functional.interpolate``.

    input (N, C, L), (N, C, H, W) or (N, C, D, H, W) -> (N, C, *out). Give exactly one of
    ``size`` (int or tuple) and ``scale_factor`` (number or tuple; ``out = floor(in *
    scale_factor)``). Per axis, with ``scale = 1/scale_factor`` when a factor was given (and
    ``recompute_scale_factor`` is not True), else ``in/out``:

    - "nearest" (torch's legacy rule): ``src = min(floor(o * scale), in - 1)`` in float32
    - "nearest-exact": ``src = min(floor((o + 0.5) * scale), in - 1)``
    - "linear" (3-D input), "bilinear" (4-D), "trilinear" (5-D): the source coordinate is
      ``o * (in-1)/(out-1)`` with ``align_corners=True``, else ``max((o + 0.5) * scale - 0.5,
      0)``; the output blends the two neighbours per axis with weights ``1 - frac, frac``
    - "area": adaptive average pooling to the output size
    """
    return _interpolate("interpolate", input, size, scale_factor, mode, align_corners,
                        recompute_scale_factor)


def interpolate_backward(grad_output, input_size, size=None, scale_factor=None, mode="nearest",
                         align_corners=None, recompute_scale_factor=None):
    """Gradient of :func:`interpolate` with respect to its input, of shape ``input_size`` (the
    forward input's full shape). Each output's gradient goes back to the input cells it was
    read from, times their weights (nearest: the one source cell; linear: the corners)."""
    fname = "interpolate_backward"
    try:
        shape = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        got = (f"an array of shape {np.shape(input_size)}" if isinstance(input_size, np.ndarray)
               else repr(input_size)[:80])
        raise TypeError(f"{fname}: input_size must be the forward input's shape (a tuple of "
                        f"ints), got {got}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{fname}: input_size must be non-negative, got {shape}")
    dy = as_array(fname, "grad_output", grad_output)
    # A zero-stride stand-in for the input: the checks need its shape only.
    ghost = np.broadcast_to(np.zeros((), float_dtype(dy)), shape)
    return _interpolate(fname, ghost, size, scale_factor, mode, align_corners,
                        recompute_scale_factor, grad_output=dy)
