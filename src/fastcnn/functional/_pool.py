"""Pooling: max, average, adaptive, global, max unpooling."""
from __future__ import annotations

import functools
import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import pool as _pool
from fastcnn._threads import get_num_threads

__all__ = ["pool_output_size", "global_avg_pool2d", "global_avg_pool2d_backward"]


# --------------------------------------------------------------------------------------------
# Pooling: max, average, adaptive, global, max unpooling
# --------------------------------------------------------------------------------------------
# The kernels (_ops/pool.pyx) see (planes, cells) arrays and per-axis window tables built here:
# for output index o along an axis, start[o] (first tap inside the input), count[o] (taps
# inside the input) and span[o] (the window length an average divides by when padding counts).

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def pool_output_size(size: int, kernel_size: int, stride: int, padding: int = 0,
                     dilation: int = 1, ceil_mode: bool = False) -> int:
    """torch's pooling output size: ``floor`` (or ``ceil`` with ceil_mode) of
    ``(size + 2*padding - dilation*(kernel_size-1) - 1) / stride`` plus one; with ceil_mode
    the last window must start inside the input or the left padding, else it is dropped."""
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1
           + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_input(fname, nd, input):
    """The checked input array, its leading (N, C) or (C,) shape and its spatial size."""
    x = as_array(fname, "input", input)
    check_ndim(fname, "input", x, (nd + 1, nd + 2),
               f"(N, C, {_SPATIAL[nd]}) or (C, {_SPATIAL[nd]}) for one unbatched sample")
    if 0 in x.shape[x.ndim - nd - 1:]:
        raise ValueError(f"{fname}: input must have non-zero channel and spatial sizes (only "
                         f"the batch may be empty), got shape {x.shape}")
    _checks.check_extent(fname, "input spatial size", x.shape[x.ndim - nd:])
    return x, x.shape[:x.ndim - nd], tuple(x.shape[x.ndim - nd:])


def _planes(arr, lead, dtype):
    """``arr`` as a C-contiguous (planes, cells) array of ``dtype``."""
    p = math.prod(lead)
    return contiguous(arr, dtype).reshape(p, arr.size // p if p else 0)


def _check_grad(fname, dy, expected):
    dy = as_array(fname, "grad_output", dy)
    if dy.shape != tuple(expected):
        raise ValueError(f"{fname}: grad_output must have the forward output's shape "
                         f"{tuple(expected)}, got {dy.shape}")
    return dy


def _check_indices(fname, indices, expected, what="the forward output's"):
    if indices is None:
        raise TypeError(f"{fname}: indices must be an int64 array, got None")
    idx = _checks.to_array(fname, "indices", indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{fname}: indices must hold integers (int64, as returned with "
                        f"return_indices=True), got dtype {idx.dtype}")
    if idx.shape != tuple(expected):
        raise ValueError(f"{fname}: indices must have {what} shape {tuple(expected)}, "
                         f"got {idx.shape}")
    return idx


def _raise_bad_indices(fname, bad, cells, in_size):
    if bad:
        raise ValueError(f"{fname}: indices hold {bad} value(s) outside [0, {cells}), the flat "
                         f"positions of a spatial plane of size {in_size}")


def _tables(rows, in_size, out_size):
    """(3, max(out)) int64 tables (start, count, span), axes lifted to 3 with trivial rows."""
    m = max(lift3(out_size, 1))
    starts, counts, spans = (np.zeros((3, m), np.int64) for _ in range(3))
    counts[:, 0] = spans[:, 0] = 1                     # a lifted axis: one window, one tap
    for a, (st, cn, sp) in enumerate(rows, start=3 - len(rows)):
        starts[a, :st.size], counts[a, :cn.size], spans[a, :sp.size] = st, cn, sp
    for table in (starts, counts, spans):
        table.flags.writeable = False        # cached below: shared by every call of a shape
    return starts, counts, spans


# The window tables depend on the shapes only: computed once per shape (they were 40 of the
# 50 us a small pooling call spent in Python).
@functools.lru_cache(maxsize=256)
def _fixed_windows(in_size, kernel, stride, padding, dilation, out_size, include_pad=True):
    rows = []
    for n_in, k, s, p, d, n_out in zip(in_size, kernel, stride, padding, dilation, out_size):
        start = np.arange(n_out, dtype=np.int64) * s - p
        t_lo = np.where(start < 0, (-start + d - 1) // d, 0)          # first tap >= 0
        room = n_in - 1 - start
        t_hi = np.minimum(np.where(room >= 0, room // d + 1, 0), k)   # last tap < n_in
        count = np.maximum(t_hi - t_lo, 0)
        span = np.minimum(start + k, n_in + p) - start if include_pad else count
        rows.append((start + t_lo * d, count, span))
    return _tables(rows, in_size, out_size)


def _interior(in_size, kernel, stride, padding, dilation, out_size):
    """(kW, sW, pW, lo, hi) for the kernels: outputs lo <= o < hi along the last axis have
    their whole window inside the input (no padding, no ceil_mode overhang)."""
    n_in, k, s, p, d, n_out = (v[-1] for v in (in_size, kernel, stride, padding, dilation,
                                               out_size))
    room = n_in - 1 + p - (k - 1) * d
    hi = min(n_out, room // s + 1) if room >= 0 else 0
    return (k, s, p, min((p + s - 1) // s, hi), hi)


_NO_INTERIOR = (0, 1, 0, 0, 0)      # adaptive bins: every output takes the general path


@functools.lru_cache(maxsize=256)
def _adaptive_windows(in_size, out_size):
    rows = []
    for n_in, n_out in zip(in_size, out_size):
        o = np.arange(n_out, dtype=np.int64)
        start = (o * n_in) // n_out                          # floor(o * in / out)
        end = -((-(o + 1) * n_in) // n_out)                  # ceil((o+1) * in / out)
        rows.append((start, end - start, end - start))
    return _tables(rows, in_size, out_size)


def _pool_args(fname, nd, in_size, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = ntuple(fname, "kernel_size", kernel_size, nd, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel                                      # torch: stride defaults to kernel
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    padding = ntuple(fname, "padding", padding, nd, minimum=0)
    dilation = ntuple(fname, "dilation", dilation, nd, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{fname}: ceil_mode must be a bool, got {ceil_mode!r}")
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{fname}: padding must be at most half of kernel_size (as torch), "
                         f"got padding={padding}, kernel_size={kernel}")
    out_size = tuple(pool_output_size(i, k, s, p, d, bool(ceil_mode)) for i, k, s, p, d in
                     zip(in_size, kernel, stride, padding, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(f"{fname}: input spatial size {in_size} is too small for kernel_size "
                         f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}: "
                         f"the output size would be {out_size}")
    _checks.check_extent(fname, "output spatial size", out_size)
    return kernel, stride, padding, dilation, out_size


class MaxPoolForward:
    """A max pooling's forward over planes of spatial size ``in_size`` (its geometry checked
    and its window tables made once): ``run(x2, out2, ind2)``: out2 (P, prod(out_size)) =
    the window maxima of x2 (P, prod(in_size)), and their flat indices in ind2 (P, ...) when
    it has that shape (a (0, 0) array keeps none). F.max_pool*d prepares one per call; an
    InferenceSession once per plan."""
    __slots__ = ("out_size", "_tables")

    def __init__(self, fname, nd, in_size, kernel_size, stride, padding, dilation, ceil_mode):
        kernel, stride, padding, dilation, out_size = _pool_args(
            fname, nd, in_size, kernel_size, stride, padding, dilation, ceil_mode)
        starts, counts, _ = _fixed_windows(in_size, kernel, stride, padding, dilation, out_size)
        self.out_size = out_size
        self._tables = (lift3(in_size, 1), lift3(dilation, 1), starts, counts,
                        lift3(out_size, 1),
                        _interior(in_size, kernel, stride, padding, dilation, out_size),
                        _two_by_two(in_size, kernel, stride, padding, dilation, out_size))

    def run(self, x2, out2, ind2):
        _pool.max_pool_forward(x2, out2, ind2, *self._tables, get_num_threads())

    def step(self, x2, out2):
        """run(x2, out2) without indices as a compiled step of an inference plan."""
        in_size, step, starts, counts, out_size, interior, two_by_two = self._tables
        return _pool.PoolStep(x2, out2, in_size, step, starts, counts, None, 0.0, out_size,
                              interior, two_by_two)


_NO_INDICES = np.empty((0, 0), np.int64)


def _max_pool(fname, nd, input, kernel_size, stride, padding, dilation, ceil_mode,
              return_indices):
    x, lead, in_size = _pool_input(fname, nd, input)
    pool = MaxPoolForward(fname, nd, in_size, kernel_size, stride, padding, dilation, ceil_mode)
    dtype = float_dtype(x)
    out = _memory.empty(lead + pool.out_size, dtype)
    p = math.prod(lead)
    ind = _memory.empty(lead + pool.out_size, np.int64) if return_indices else _NO_INDICES
    if p:
        pool.run(_planes(x, lead, dtype), out.reshape(p, -1),
                 ind.reshape(p, -1) if return_indices else ind)
    return (out, ind) if return_indices else out


def _two_by_two(in_size, kernel, stride, padding, dilation, out_size):
    """2-D 2x2 windows at stride 2, no padding or dilation, none overhanging (ceil_mode on an
    odd size): the pooling kernels' fast path."""
    return (len(in_size) == 2 and kernel == (2, 2) and stride == (2, 2) and padding == (0, 0)
            and dilation == (1, 1) and all(2 * o <= i for o, i in zip(out_size, in_size)))


def _max_pool_backward(fname, nd, grad_output, input, indices, kernel_size, stride, padding,
                       dilation, ceil_mode):
    x, lead, in_size = _pool_input(fname, nd, input)
    out_size = _pool_args(fname, nd, in_size, kernel_size, stride, padding, dilation,
                          ceil_mode)[-1]
    dy = _check_grad(fname, grad_output, lead + out_size)
    # max_pool itself gives an index outside the plane for a window with no tap inside the
    # input (possible with dilation and padding; its output is -inf): no gradient goes there.
    return _scatter_add(fname, dy, x, lead, in_size, _check_indices(fname, indices, dy.shape),
                        strict=False)


def _scatter_add(fname, dy, x, lead, in_size, idx, strict=True):
    dtype = float_dtype(x, dy)
    grad = _memory.empty(lead + in_size, dtype)
    p = math.prod(lead)
    if p:
        bad = _pool.scatter_add(_planes(dy, lead, dtype), _planes(idx, lead, np.int64),
                                grad.reshape(p, -1), get_num_threads())
        if strict:
            _raise_bad_indices(fname, bad, math.prod(in_size), in_size)
    return grad


class AvgPool:
    """An average pooling's windows over planes of spatial size ``in_size``, made once (the
    window tables and the kernels' arguments): ``run(x2, out2)`` the forward, out2 (P,
    prod(out_size)) from x2 (P, prod(in_size)); ``run_backward(dy2, grad2)`` its gradient.
    ``AvgPool.fixed`` (avg_pool*d's windows) and ``AvgPool.adaptive`` (adaptive_avg_pool*d's
    bins) check the arguments. F.avg_pool*d prepares one per call; an InferenceSession once
    per plan."""
    __slots__ = ("out_size", "_args")

    def __init__(self, in_size, out_size, starts, counts, spans, divisor_override=None,
                 interior=_NO_INTERIOR, two_by_two=False):
        self.out_size = out_size
        self._args = (lift3(in_size, 1), starts, counts, spans, float(divisor_override or 0),
                      lift3(out_size, 1), interior, two_by_two)

    @classmethod
    def fixed(cls, fname, nd, in_size, kernel_size, stride, padding, ceil_mode,
              count_include_pad, divisor_override):
        kernel, stride, padding, _, out_size = _pool_args(fname, nd, in_size, kernel_size,
                                                          stride, padding, 1, ceil_mode)
        if divisor_override is not None:
            divisor_override = as_int(fname, "divisor_override", divisor_override, minimum=1)
        ones = (1,) * nd
        starts, counts, spans = _fixed_windows(in_size, kernel, stride, padding, ones,
                                               out_size, include_pad=bool(count_include_pad))
        return cls(in_size, out_size, starts, counts, spans, divisor_override,
                   _interior(in_size, kernel, stride, padding, ones, out_size),
                   _two_by_two(in_size, kernel, stride, padding, ones, out_size))

    @classmethod
    def adaptive(cls, fname, nd, in_size, output_size):
        out_size = _adaptive_size(fname, nd, output_size, in_size)
        return cls(in_size, out_size, *_adaptive_windows(in_size, out_size))

    def run(self, x2, out2):
        _pool.avg_pool_forward(x2, out2, *self._args, get_num_threads())

    def step(self, x2, out2):
        """run(x2, out2) as a compiled step of an inference plan."""
        in_size, starts, counts, spans, divisor, out_size, interior, two_by_two = self._args
        return _pool.PoolStep(x2, out2, in_size, (1, 1, 1), starts, counts, spans, divisor,
                              out_size, interior, two_by_two)

    def run_backward(self, dy2, grad2):
        _pool.avg_pool_backward(dy2, grad2, *self._args, get_num_threads())


def _avg_pool(fname, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, grad_output=None):
    """avg_pool forward, or its backward when grad_output is given."""
    x, lead, in_size = _pool_input(fname, nd, input)
    pool = AvgPool.fixed(fname, nd, in_size, kernel_size, stride, padding, ceil_mode,
                         count_include_pad, divisor_override)
    return _avg_kernel(fname, x, lead, in_size, pool, grad_output)


def _avg_kernel(fname, x, lead, in_size, pool, grad_output):
    p = math.prod(lead)
    if grad_output is None:
        dtype = float_dtype(x)
        out = _memory.empty(lead + pool.out_size, dtype)
        if p:
            pool.run(_planes(x, lead, dtype), out.reshape(p, -1))
        return out
    dy = _check_grad(fname, grad_output, lead + pool.out_size)
    dtype = float_dtype(x, dy)
    grad = _memory.empty(lead + in_size, dtype)
    if p:
        pool.run_backward(_planes(dy, lead, dtype), grad.reshape(p, -1))
    return grad


def _adaptive_size(fname, nd, output_size, in_size):
    """output_size as a tuple of nd ints >= 1; None entries keep the input's size (as torch)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == nd:
        output_size = tuple(i if o is None else o for o, i in zip(output_size, in_size))
    out_size = ntuple(fname, "output_size", output_size, nd, minimum=1)
    _checks.check_extent(fname, "output_size", out_size)
    return out_size


def _adaptive_avg_pool(fname, nd, input, output_size, grad_output=None):
    x, lead, in_size = _pool_input(fname, nd, input)
    pool = AvgPool.adaptive(fname, nd, in_size, output_size)
    return _avg_kernel(fname, x, lead, in_size, pool, grad_output)


def _adaptive_max_pool(fname, nd, input, output_size, return_indices):
    x, lead, in_size = _pool_input(fname, nd, input)
    out_size = _adaptive_size(fname, nd, output_size, in_size)
    starts, counts, _ = _adaptive_windows(in_size, out_size)
    dtype = float_dtype(x)
    p = math.prod(lead)
    out = _memory.empty(lead + out_size, dtype)
    ind = _memory.empty(lead + out_size if return_indices else (0, 0), np.int64)
    if p:
        _pool.max_pool_forward(_planes(x, lead, dtype), out.reshape(p, -1),
                               ind.reshape(p, -1) if return_indices else ind,
                               lift3(in_size, 1), (1, 1, 1), starts, counts,
                               lift3(out_size, 1), _NO_INTERIOR, False, get_num_threads())
    return (out, ind) if return_indices else out


def _adaptive_max_pool_backward(fname, nd, grad_output, input, indices):
    x, lead, in_size = _pool_input(fname, nd, input)
    dy = as_array(fname, "grad_output", grad_output)
    if dy.shape[:-nd] != lead or dy.ndim != x.ndim:
        raise ValueError(f"{fname}: grad_output must have shape {lead} + output_size, got "
                         f"{dy.shape}")
    return _scatter_add(fname, dy, x, lead, in_size, _check_indices(fname, indices, dy.shape))


def _unpool_size(fname, nd, in_size, kernel_size, stride, padding, output_size):
    kernel = ntuple(fname, "kernel_size", kernel_size, nd, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    padding = ntuple(fname, "padding", padding, nd, minimum=0)
    default = tuple((i - 1) * s + k - 2 * p for i, s, k, p in
                    zip(in_size, stride, kernel, padding))
    if output_size is None:
        out_size = default
    else:
        if isinstance(output_size, (tuple, list)) and len(output_size) == nd + 2:
            output_size = tuple(output_size)[2:]              # torch accepts (N, C, *size)
        out_size = ntuple(fname, "output_size", output_size, nd, minimum=1)
        for o, d, s in zip(out_size, default, stride):
            if not d - s < o < d + s:
                raise ValueError(f"{fname}: output_size {out_size} must be within stride "
                                 f"{stride} of the default size {default} (exclusive, as torch)")
    if any(o < 1 for o in out_size):
        raise ValueError(f"{fname}: kernel_size {kernel}, stride {stride}, padding {padding} "
                         f"give output size {out_size} for input size {in_size}: must be >= 1")
    _checks.check_extent(fname, "output size", out_size)
    return out_size


def _max_unpool(fname, nd, input, indices, kernel_size, stride, padding, output_size):
    x, lead, in_size = _pool_input(fname, nd, input)
    idx = _check_indices(fname, indices, x.shape, what="the input's")
    out_size = _unpool_size(fname, nd, in_size, kernel_size, stride, padding, output_size)
    dtype = float_dtype(x)
    out = _memory.empty(lead + out_size, dtype)
    p = math.prod(lead)
    if p:
        bad = _pool.scatter(_planes(x, lead, dtype), _planes(idx, lead, np.int64),
                            out.reshape(p, -1), get_num_threads())
        _raise_bad_indices(fname, bad, math.prod(out_size), out_size)
    return out


def _max_unpool_backward(fname, nd, grad_output, input, indices, kernel_size, stride, padding,
                         output_size):
    x, lead, in_size = _pool_input(fname, nd, input)
    idx = _check_indices(fname, indices, x.shape, what="the input's")
    out_size = _unpool_size(fname, nd, in_size, kernel_size, stride, padding, output_size)
    dy = _check_grad(fname, grad_output, lead + out_size)
    dtype = float_dtype(x, dy)
    grad = _memory.empty(x.shape, dtype)
    p = math.prod(lead)
    if p:
        bad = _pool.gather(_planes(dy, lead, dtype), _planes(idx, lead, np.int64),
                           grad.reshape(p, -1), get_num_threads())
        _raise_bad_indices(fname, bad, math.prod(out_size), out_size)
    return grad


def _pool_doc(func, doc, nd):
    func.__doc__ = doc.format(nd=nd, spatial=_SPATIAL[nd],
                              out=", ".join(f"{a}_out" for a in _SPATIAL[nd].split(", ")))
    func.__module__ = __name__
    return func


_MAX_POOL_DOC = """{nd}-D max pooling, as ``torch.nn.functional.max_pool{nd}d``.

    input (N, C, {spatial}) or (C, {spatial}) -> (N, C, {out}) [, indices]. Per axis
    ``out = floor((in + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1`` (ceil with
    ``ceil_mode``, dropping a last window that would start in the right padding), and
    ``y[o] = max over taps t in [0, kernel_size) of x[o*stride - padding + t*dilation]``, taps
    in the padding ignored. ``stride`` defaults to ``kernel_size``; ``padding`` must be at most
    ``kernel_size // 2``. Ties pick the first tap; a NaN in the window wins (NaN propagates).
    With ``return_indices``, also returns int64 indices shaped as the output: each maximum's
    flat position in its input plane (``h*W + w`` in 2-D), as max_unpool{nd}d and
    max_pool{nd}d_backward take them.
    """

_MAX_POOL_BACKWARD_DOC = """Gradient of :func:`max_pool{nd}d` with respect to its input.

    grad_output and indices (int64) are shaped as max_pool{nd}d's output; the other arguments
    are the forward's. Each gradient is added to the input cell its index names:
    ``grad_input[n, c].flat[indices[n, c, o]] += grad_output[n, c, o]`` (one thread per plane,
    so no races). An index outside the plane (max_pool gives one for a window with no tap
    inside the input, whose output is -inf) receives nothing.
    """

_AVG_POOL_DOC = """{nd}-D average pooling, as ``torch.nn.functional.avg_pool{nd}d``.

    input (N, C, {spatial}) or (C, {spatial}) -> (N, C, {out}), sizes as max_pool{nd}d with
    dilation 1. ``y[o] = sum of the window's cells inside the input / divisor`` where divisor is
    ``divisor_override`` if given, else the window size counting the padding cells
    (``count_include_pad=True``; a ceil_mode window hanging past the padding is cut there) or
    only the cells inside the input (``count_include_pad=False``; an empty window gives 0).
    """

_AVG_POOL_BACKWARD_DOC = """Gradient of :func:`avg_pool{nd}d` with respect to its input.

    grad_output is shaped as avg_pool{nd}d's output; the other arguments are the forward's.
    Every input cell of output o's window receives ``grad_output[o] / divisor(o)``.
    """

_ADAPTIVE_AVG_DOC = """{nd}-D adaptive average pooling, as
    ``torch.nn.functional.adaptive_avg_pool{nd}d``.

    input (N, C, {spatial}) or (C, {spatial}) -> (N, C, *output_size). Output o along an axis
    of input size ``in`` averages the bin ``[floor(o*in/out), ceil((o+1)*in/out))``.
    ``output_size`` is an int or a tuple of {nd} ints (None keeps that axis's input size).
    """

_ADAPTIVE_AVG_BACKWARD_DOC = """Gradient of :func:`adaptive_avg_pool{nd}d`.

    grad_output (N, C, *output_size); every cell of bin o receives grad_output[o] / bin size.
    """

_ADAPTIVE_MAX_DOC = """{nd}-D adaptive max pooling, as
    ``torch.nn.functional.adaptive_max_pool{nd}d``.

    Bins as adaptive_avg_pool{nd}d; the maximum of each (first on ties, NaN wins), and with
    ``return_indices`` the int64 flat positions of the maxima in their input planes.
    """

_ADAPTIVE_MAX_BACKWARD_DOC = """Gradient of :func:`adaptive_max_pool{nd}d`.

    grad_output and indices (N, C, *output_size): each gradient is added at its index.
    """

_MAX_UNPOOL_DOC = """{nd}-D max unpooling, as ``torch.nn.functional.max_unpool{nd}d``: the
    inverse placement of max_pool{nd}d.

    input and indices (int64, from max_pool{nd}d(..., return_indices=True)) (N, C, {spatial})
    -> zeros (N, C, {out}) with ``out.flat[indices[o]] = input[o]`` per plane. Per axis the
    default ``out = (in-1)*stride - 2*padding + kernel_size``; ``output_size`` ({nd} ints, or
    with the leading N, C) may pick another size strictly within ``stride`` of it. An index
    outside the output plane raises ValueError.
    """

_MAX_UNPOOL_BACKWARD_DOC = """Gradient of :func:`max_unpool{nd}d` with respect to its input: the
    gather ``grad_input[o] = grad_output.flat[indices[o]]`` per plane.
    """


def _make_pools(nd):
    def max_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False):
        return _max_pool(f"max_pool{nd}d", nd, input, kernel_size, stride, padding, dilation,
                         ceil_mode, return_indices)

    def max_pool_backward(grad_output, input, indices, kernel_size, stride=None, padding=0,
                          dilation=1, ceil_mode=False):
        return _max_pool_backward(f"max_pool{nd}d_backward", nd, grad_output, input, indices,
                                  kernel_size, stride, padding, dilation, ceil_mode)

    if nd == 1:   # torch's avg_pool1d has no divisor_override
        def avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True):
            return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode,
                             count_include_pad, None)

        def avg_pool_backward(grad_output, input, kernel_size, stride=None, padding=0,
                              ceil_mode=False, count_include_pad=True):
            return _avg_pool("avg_pool1d_backward", 1, input, kernel_size, stride, padding,
                             ceil_mode, count_include_pad, None, grad_output)
    else:
        def avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None):
            return _avg_pool(f"avg_pool{nd}d", nd, input, kernel_size, stride, padding,
                             ceil_mode, count_include_pad, divisor_override)

        def avg_pool_backward(grad_output, input, kernel_size, stride=None, padding=0,
                              ceil_mode=False, count_include_pad=True, divisor_override=None):
            return _avg_pool(f"avg_pool{nd}d_backward", nd, input, kernel_size, stride,
                             padding, ceil_mode, count_include_pad, divisor_override,
                             grad_output)

    def adaptive_avg_pool(input, output_size):
        return _adaptive_avg_pool(f"adaptive_avg_pool{nd}d", nd, input, output_size)

    def adaptive_avg_pool_backward(grad_output, input):
        fname = f"adaptive_avg_pool{nd}d_backward"
        dy = as_array(fname, "grad_output", grad_output)
        if dy.ndim < nd:
            raise ValueError(f"{fname}: grad_output must be (N, C, *output_size), got shape "
                             f"{dy.shape}")
        return _adaptive_avg_pool(fname, nd, input, tuple(dy.shape[dy.ndim - nd:]), dy)

    def adaptive_max_pool(input, output_size, return_indices=False):
        return _adaptive_max_pool(f"adaptive_max_pool{nd}d", nd, input, output_size,
                                  return_indices)

    def adaptive_max_pool_backward(grad_output, input, indices):
        return _adaptive_max_pool_backward(f"adaptive_max_pool{nd}d_backward", nd, grad_output,
                                           input, indices)

    def max_unpool(input, indices, kernel_size, stride=None, padding=0, output_size=None):
        return _max_unpool(f"max_unpool{nd}d", nd, input, indices, kernel_size, stride, padding,
                           output_size)

    def max_unpool_backward(grad_output, input, indices, kernel_size, stride=None, padding=0,
                            output_size=None):
        return _max_unpool_backward(f"max_unpool{nd}d_backward", nd, grad_output, input,
                                    indices, kernel_size, stride, padding, output_size)

    funcs = {}
    for base, f, doc in [
            ("max_pool", max_pool, _MAX_POOL_DOC),
            ("max_pool_backward", max_pool_backward, _MAX_POOL_BACKWARD_DOC),
            ("avg_pool", avg_pool, _AVG_POOL_DOC),
            ("avg_pool_backward", avg_pool_backward, _AVG_POOL_BACKWARD_DOC),
            ("adaptive_avg_pool", adaptive_avg_pool, _ADAPTIVE_AVG_DOC),
            ("adaptive_avg_pool_backward", adaptive_avg_pool_backward,
             _ADAPTIVE_AVG_BACKWARD_DOC),
            ("adaptive_max_pool", adaptive_max_pool, _ADAPTIVE_MAX_DOC),
            ("adaptive_max_pool_backward", adaptive_max_pool_backward,
             _ADAPTIVE_MAX_BACKWARD_DOC),
            ("max_unpool", max_unpool, _MAX_UNPOOL_DOC),
            ("max_unpool_backward", max_unpool_backward, _MAX_UNPOOL_BACKWARD_DOC)]:
        head, _, tail = base.partition("_backward")
        name = f"{head}{nd}d" + ("_backward" if _ else "")
        f.__name__ = f.__qualname__ = name
        funcs[name] = _pool_doc(f, doc, nd)
    return funcs


for _nd in (1, 2, 3):
    globals().update(_make_pools(_nd))
    __all__ += [f"{base}{_nd}d{suffix}" for base in
                ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "max_unpool")
                for suffix in ("", "_backward")]
del _nd


def global_avg_pool2d(input):
    """Mean over the spatial axes, keeping them: (N, C, H, W) -> (N, C, 1, 1) (or (C, H, W) ->
    (C, 1, 1)). Equals ``adaptive_avg_pool2d(input, 1)``, bit for bit: each plane summed in
    order from 0, then divided by H*W (several planes' sums at once in one loop)."""
    x, lead, _ = _pool_input("global_avg_pool2d", 2, input)
    dtype = float_dtype(x)
    out = _memory.empty(lead + (1, 1), dtype)
    p = math.prod(lead)
    if p:
        _pool.global_avg_forward(_planes(x, lead, dtype), out.reshape(p, 1), get_num_threads())
    return out


def global_avg_pool2d_backward(grad_output, input):
    """Gradient of :func:`global_avg_pool2d`: grad_output (N, C, 1, 1) / (H*W) broadcast over
    each plane (as ``adaptive_avg_pool2d_backward(grad_output, input)``, bit for bit)."""
    fname = "global_avg_pool2d_backward"
    x, lead, in_size = _pool_input(fname, 2, input)
    dy = _check_grad(fname, grad_output, lead + (1, 1))
    dtype = float_dtype(x, dy)
    grad = _memory.empty(lead + in_size, dtype)
    p = math.prod(lead)
    if p:
        _pool.global_avg_backward(_planes(dy, lead, dtype), grad.reshape(p, -1),
                                  get_num_threads())
    return grad
