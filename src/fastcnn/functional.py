"""fastcnn.functional: checked entry points over the compiled kernels.

Names, argument names, defaults, weight layouts and output sizes are those of
``torch.nn.functional``. Each differentiable op ``f`` has ``f_backward`` beside it, taking the
gradient of the loss with respect to ``f``'s output and returning the gradients with respect to
its inputs.

Arrays are NCL / NCHW / NCDHW. Inputs may be any real dtype and memory layout: float32 and float64
are computed as they are (float64 wins when mixed); ints, bools and float16 are computed in
float32; views, Fortran-order and negative-stride arrays are copied to C order first. Index
arrays (max pooling's ``return_indices``, unpooling) are int64 flat positions in a spatial plane.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastcnn import _checks
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import conv as _conv
from fastcnn._ops import im2col as _im2col
from fastcnn._ops import pool as _pool
from fastcnn._ops import resample as _resample
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "unfold", "fold", "unfold_backward", "fold_backward",
    "conv_output_size",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_transpose1d_backward", "conv_transpose2d_backward", "conv_transpose3d_backward",
    "conv_transpose_output_size",
]

# Samples are split into at most this many fixed chunks for the weight gradient (see conv.pyx):
# a function of the batch size only, so the result is the same for any number of threads.
_WEIGHT_GRAD_CHUNKS = 8
_INT32_MAX = 2**31 - 1


def _rows(arr: np.ndarray, n: int) -> np.ndarray:
    """``arr`` viewed as (n, -1): one row per sample (also when n == 0)."""
    return arr.reshape(n, arr.size // n if n else 0)


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """``floor((size + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ConvGeometry:
    """A checked convolution problem, with per-axis tuples lifted to 3 axes for the kernels."""
    batched: bool
    n: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple       # spatial, nd entries
    out_size: tuple      # spatial, nd entries
    kernel: tuple        # the following are lifted to 3 entries
    stride: tuple
    padding: tuple       # before each axis
    dilation: tuple

    def kernel_args(self):
        return (lift3(self.in_size, 1), self.kernel, self.stride, self.padding, self.dilation,
                lift3(self.out_size, 1))


def _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups) -> _ConvGeometry:
    check_ndim(fname, "weight", w, (nd + 2,), "(out_channels, in_channels/groups, *kernel_size)")
    check_ndim(fname, "input", x, (nd + 1, nd + 2),
               "(N, C, *spatial), or (C, *spatial) for one unbatched sample")
    batched = x.ndim == nd + 2
    n = x.shape[0] if batched else 1
    c_in = x.shape[1] if batched else x.shape[0]
    in_size = tuple(x.shape[-nd:])
    groups = as_int(fname, "groups", groups, minimum=1)
    c_out, c_per_group = w.shape[:2]
    kernel = tuple(w.shape[2:])
    if c_out == 0 or c_per_group == 0 or 0 in kernel:
        raise ValueError(f"{fname}: weight must have no zero-size axis, got shape {w.shape}")
    if c_out % groups:
        raise ValueError(f"{fname}: out_channels (weight.shape[0] = {c_out}) must be divisible "
                         f"by groups = {groups}")
    if c_in != c_per_group * groups:
        raise ValueError(
            f"{fname}: input has {c_in} channels but weight {w.shape} with groups={groups} "
            f"expects {c_per_group * groups} (weight.shape[1] * groups)")
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    dilation = ntuple(fname, "dilation", dilation, nd, minimum=1)
    span = tuple(d * (k - 1) for d, k in zip(dilation, kernel))   # dilated kernel extent - 1
    if isinstance(padding, str):
        if padding == "valid":
            pad_before = (0,) * nd
            out_size = tuple((i - s_ - 1) // st + 1 for i, s_, st in zip(in_size, span, stride))
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{fname}: padding='same' needs stride 1 (as torch), "
                                 f"got stride={stride}")
            # torch pads total//2 before and the rest after (one more after when odd).
            pad_before = tuple(s_ // 2 for s_ in span)
            out_size = in_size
        else:
            raise ValueError(f"{fname}: padding must be 'same', 'valid', an int or a tuple of "
                             f"{nd} ints, got {padding!r}")
    else:
        pad_before = ntuple(fname, "padding", padding, nd, minimum=0)
        out_size = tuple(conv_output_size(i, k, s, p, d) for i, k, s, p, d in
                         zip(in_size, kernel, stride, pad_before, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"{fname}: input spatial size {in_size} with padding {padding!r} is smaller than the "
            f"dilated kernel {tuple(s_ + 1 for s_ in span)}: the output size would be {out_size}")
    geom = _ConvGeometry(batched, n, c_in, c_out, groups, in_size, out_size,
                         lift3(kernel, 1), lift3(stride, 1), lift3(pad_before, 0),
                         lift3(dilation, 1))
    k_rows = c_in * math.prod(kernel)
    if max(k_rows, math.prod(out_size), c_out) > _INT32_MAX:
        raise ValueError(f"{fname}: a per-sample matrix dimension exceeds 2**31-1 (BLAS uses "
                         f"32-bit sizes): input {x.shape}, weight {w.shape}")
    return geom


def _conv_forward(fname, nd, input, weight, bias, stride, padding, dilation, groups):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    dtype = float_dtype(x, w, b)
    w2 = contiguous(w, dtype).reshape(geom.out_channels, -1)
    b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, dtype)
    x2 = _rows(contiguous(x, dtype), geom.n)
    out = np.empty((geom.n, geom.out_channels) + geom.out_size, dtype=dtype)
    if geom.n:
        threads = get_num_threads()
        args = geom.kernel_args()
        per_thread = _conv.workspace_size(geom.in_channels, args[1], args[2], args[3], args[5])
        ws = scratch(per_thread * threads, dtype)
        with single_threaded_blas:
            _conv.conv_forward(x2, w2, b1, _rows(out, geom.n), ws, geom.groups, *args,
                               threads)
    return out if geom.batched else out[0]


def _conv_backward(fname, nd, grad_output, input, weight, stride, padding, dilation, groups,
                   output_mask):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    dy = as_array(fname, "grad_output", grad_output)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    try:
        need_x, need_w, need_b = (bool(m) for m in output_mask)
    except (TypeError, ValueError):
        raise TypeError(f"{fname}: output_mask must be 3 booleans (input, weight, bias), "
                        f"got {output_mask!r}") from None
    expected = ((geom.n,) if geom.batched else ()) + (geom.out_channels,) + geom.out_size
    if dy.shape != expected:
        raise ValueError(f"{fname}: grad_output must have the forward output's shape "
                         f"{expected}, got {dy.shape}")
    dtype = float_dtype(x, w, dy)
    n = geom.n
    x2 = _rows(contiguous(x, dtype), n)
    w2 = contiguous(w, dtype).reshape(geom.out_channels, -1)
    dy3 = contiguous(dy, dtype).reshape(n, geom.out_channels, math.prod(geom.out_size))
    grad_x = np.empty((n, geom.in_channels) + geom.in_size, dtype=dtype) if need_x else None
    grad_w = None
    threads = get_num_threads()
    if need_w:
        chunks = max(1, min(n, _WEIGHT_GRAD_CHUNKS))
        parts = np.zeros((chunks, w2.size), dtype=dtype)
    if (need_x or need_w) and n:
        args = geom.kernel_args()
        per_thread = _conv.workspace_size(geom.in_channels, args[1], args[2], args[3], args[5])
        ws = scratch(per_thread * threads, dtype)
        gx = _rows(grad_x, n) if need_x else np.empty((0, 0), dtype=dtype)
        gw = parts if need_w else np.empty((0, 0), dtype=dtype)
        with single_threaded_blas:
            _conv.conv_backward(x2, w2, _rows(dy3, n), gx, gw, ws, need_x, need_w,
                                geom.groups, *args, threads)
    if need_w:
        # Partials added in chunk order: the same bits for any number of threads.
        grad_w = parts[0].copy() if parts.shape[0] == 1 else parts.sum(axis=0)
        grad_w = grad_w.reshape(w.shape)
    grad_b = None
    if need_b:
        grad_b = np.empty(geom.out_channels, dtype=dtype)
        _conv.bias_backward(dy3, grad_b, threads)
    if grad_x is not None and not geom.batched:
        grad_x = grad_x[0]
    return grad_x, grad_w, grad_b


_CONV_DOC = """{nd}-D convolution (cross-correlation, as every deep-learning library), as
    ``torch.nn.functional.conv{nd}d``.

    Parameters
    ----------
    input : array (N, C_in, {spatial}) or (C_in, {spatial})
    weight : array (C_out, C_in/groups, {kernel})
    bias : array (C_out,) or None
    stride, dilation : int or tuple of {nd} ints, >= 1
    padding : int or tuple of {nd} ints >= 0 (zeros on both sides), or "valid" (none) or
        "same" (output size = input size; needs stride 1; odd totals put the extra zero after)
    groups : int; C_in and C_out must be divisible by it (groups = C_in: depthwise)

    Returns
    -------
    array (N, C_out, {out}) with
    ``out = floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` per axis and

        y[n, g*C_out/groups + o] = bias[o] + sum over c, offsets of
                                   weight[o, c, offset] * x_padded[n, g*C_in/groups + c,
                                                                   out*stride + offset*dilation]
    """

_CONV_BACKWARD_DOC = """Gradients of :func:`conv{nd}d`.

    ``grad_output`` is dL/dy, shaped as conv{nd}d's output; the other arguments are those of the
    forward call. Returns ``(grad_input, grad_weight, grad_bias)``, with None for the entries
    whose ``output_mask`` flag is False:

        grad_input  = col2im(W^T @ dy)       (the transposed convolution of dy)
        grad_weight = sum_n dy[n] @ im2col(x[n])^T
        grad_bias   = dy summed over the batch and spatial axes
    """


def _make_conv(nd, spatial, kernel, out):
    def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return _conv_forward(f"conv{nd}d", nd, input, weight, bias, stride, padding, dilation,
                             groups)

    def conv_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                      output_mask=(True, True, True)):
        return _conv_backward(f"conv{nd}d_backward", nd, grad_output, input, weight, stride,
                              padding, dilation, groups, output_mask)

    conv.__name__ = conv.__qualname__ = f"conv{nd}d"
    conv_backward.__name__ = conv_backward.__qualname__ = f"conv{nd}d_backward"
    conv.__doc__ = _CONV_DOC.format(nd=nd, spatial=spatial, kernel=kernel, out=out)
    conv_backward.__doc__ = _CONV_BACKWARD_DOC.format(nd=nd)
    conv.__module__ = conv_backward.__module__ = __name__
    return conv, conv_backward


conv1d, conv1d_backward = _make_conv(1, "L", "kL", "L_out")
conv2d, conv2d_backward = _make_conv(2, "H, W", "kH, kW", "H_out, W_out")
conv3d, conv3d_backward = _make_conv(3, "D, H, W", "kD, kH, kW", "D_out, H_out, W_out")


# --------------------------------------------------------------------------------------------
# unfold / fold (im2col / col2im)
# --------------------------------------------------------------------------------------------

def _spatial_rank(*per_axis_args) -> int:
    """1, 2 or 3 from the first tuple argument's length; 2 when all are ints (as torch)."""
    for value in per_axis_args:
        if isinstance(value, (tuple, list)) and len(value) in (1, 2, 3):
            return len(value)
    return 2


def _window_args(fname, nd, kernel_size, dilation, padding, stride):
    return (ntuple(fname, "kernel_size", kernel_size, nd, minimum=1),
            ntuple(fname, "dilation", dilation, nd, minimum=1),
            ntuple(fname, "padding", padding, nd, minimum=0),
            ntuple(fname, "stride", stride, nd, minimum=1))


def _blocks(fname, in_size, kernel, dilation, padding, stride):
    blocks = tuple(conv_output_size(i, k, s, p, d) for i, k, s, p, d in
                   zip(in_size, kernel, stride, padding, dilation))
    if any(b < 1 for b in blocks):
        raise ValueError(f"{fname}: spatial size {in_size} with kernel_size {kernel}, dilation "
                         f"{dilation}, padding {padding}, stride {stride} gives no sliding "
                         f"block (blocks per axis: {blocks})")
    return blocks


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Extract sliding blocks (im2col), as ``torch.nn.functional.unfold``.

    input (N, C, *spatial) or unbatched (C, *spatial) -> (N, C * prod(kernel_size), L) or
    (C * prod(kernel_size), L), where L is the number of blocks
    ``prod(floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1)``. Row
    ``c*prod(kernel_size) + offset`` holds channel c at one kernel offset, column l one block.
    2-D unless ``kernel_size`` (or another argument) is a tuple of 1 or 3 entries.
    """
    fname = "unfold"
    nd = _spatial_rank(kernel_size, dilation, padding, stride)
    x = as_array(fname, "input", input)
    check_ndim(fname, "input", x, (nd + 1, nd + 2), f"(N, C, *spatial) or (C, *spatial) for "
                                                    f"{nd}-D blocks")
    kernel, dilation, padding, stride = _window_args(fname, nd, kernel_size, dilation, padding,
                                                     stride)
    batched = x.ndim == nd + 2
    xb = x if batched else x[None]
    n, c = xb.shape[:2]
    in_size = tuple(xb.shape[2:])
    blocks = _blocks(fname, in_size, kernel, dilation, padding, stride)
    dtype = float_dtype(x)
    rows, L = c * math.prod(kernel), math.prod(blocks)
    cols = np.empty((n, rows, L), dtype=dtype)
    if n and c:
        _im2col.unfold(contiguous(xb, dtype).reshape(n, -1), cols.reshape(n, -1), c,
                       lift3(in_size, 1), lift3(kernel, 1), lift3(stride, 1),
                       lift3(padding, 0), lift3(dilation, 1), lift3(blocks, 1),
                       get_num_threads())
    return cols if batched else cols[0]


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding blocks back into an array (col2im), as ``torch.nn.functional.fold``.

    input (N, C * prod(kernel_size), L) or (C * prod(kernel_size), L) -> (N, C, *output_size)
    or (C, *output_size). Overlapping blocks add up; ``fold(unfold(x))`` multiplies each element
    by the number of blocks that cover it. The adjoint of :func:`unfold`.
    """
    fname = "fold"
    nd = _spatial_rank(output_size, kernel_size, dilation, padding, stride)
    cols = as_array(fname, "input", input)
    check_ndim(fname, "input", cols, (2, 3), "(N, C*prod(kernel_size), L) or "
                                             "(C*prod(kernel_size), L)")
    out_size = ntuple(fname, "output_size", output_size, nd, minimum=1)
    kernel, dilation, padding, stride = _window_args(fname, nd, kernel_size, dilation, padding,
                                                     stride)
    batched = cols.ndim == 3
    cb = cols if batched else cols[None]
    n, rows, L = cb.shape
    kk = math.prod(kernel)
    if rows % kk:
        raise ValueError(f"{fname}: input.shape[-2] = {rows} must be divisible by "
                         f"prod(kernel_size) = {kk} (kernel_size={kernel})")
    blocks = _blocks(fname, out_size, kernel, dilation, padding, stride)
    if L != math.prod(blocks):
        raise ValueError(f"{fname}: input.shape[-1] = {L} must equal the number of sliding "
                         f"blocks {math.prod(blocks)} (blocks per axis {blocks} for "
                         f"output_size={out_size})")
    c = rows // kk
    dtype = float_dtype(cols)
    out = np.empty((n, c) + out_size, dtype=dtype)
    if n and c:
        _im2col.fold(contiguous(cb, dtype).reshape(n, -1), out.reshape(n, -1), c,
                     lift3(out_size, 1), lift3(kernel, 1), lift3(stride, 1),
                     lift3(padding, 0), lift3(dilation, 1), lift3(blocks, 1),
                     get_num_threads())
    return out if batched else out[0]


def unfold_backward(grad_output, input_size, kernel_size, dilation=1, padding=0, stride=1):
    """Gradient of :func:`unfold`: ``fold(grad_output, input_size[-nd:], ...)``.

    ``input_size`` is the shape of unfold's input (or just its spatial size).
    """
    nd = _spatial_rank(kernel_size, dilation, padding, stride)
    size = tuple(input_size)
    return fold(grad_output, size[len(size) - nd:], kernel_size, dilation, padding, stride)


def fold_backward(grad_output, kernel_size, dilation=1, padding=0, stride=1):
    """Gradient of :func:`fold`: ``unfold(grad_output, ...)``."""
    return unfold(grad_output, kernel_size, dilation, padding, stride)


# --------------------------------------------------------------------------------------------
# Transposed convolution
# --------------------------------------------------------------------------------------------

def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """``(size-1)*stride - 2*padding + dilation*(kernel_size-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                             dilation) -> _ConvGeometry:
    check_ndim(fname, "weight", w, (nd + 2,),
               "(in_channels, out_channels/groups, *kernel_size)")
    check_ndim(fname, "input", x, (nd + 1, nd + 2),
               "(N, C, *spatial), or (C, *spatial) for one unbatched sample")
    batched = x.ndim == nd + 2
    n = x.shape[0] if batched else 1
    c_in = x.shape[1] if batched else x.shape[0]
    in_size = tuple(x.shape[-nd:])
    groups = as_int(fname, "groups", groups, minimum=1)
    w_in, c_out_per_group = w.shape[:2]
    kernel = tuple(w.shape[2:])
    if w_in == 0 or c_out_per_group == 0 or 0 in kernel:
        raise ValueError(f"{fname}: weight must have no zero-size axis, got shape {w.shape}")
    if w_in % groups:
        raise ValueError(f"{fname}: in_channels (weight.shape[0] = {w_in}) must be divisible "
                         f"by groups = {groups}")
    if c_in != w_in:
        raise ValueError(f"{fname}: input has {c_in} channels but weight {w.shape} expects "
                         f"{w_in} (weight.shape[0])")
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    padding = ntuple(fname, "padding", padding, nd, minimum=0)
    output_padding = ntuple(fname, "output_padding", output_padding, nd, minimum=0)
    dilation = ntuple(fname, "dilation", dilation, nd, minimum=1)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise ValueError(f"{fname}: output_padding must be smaller than either stride or "
                             f"dilation on each axis (as torch), got output_padding="
                             f"{output_padding}, stride={stride}, dilation={dilation}")
    out_size = tuple(conv_transpose_output_size(i, k, s, p, op, d) for i, k, s, p, op, d in
                     zip(in_size, kernel, stride, padding, output_padding, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(f"{fname}: input spatial size {in_size} with kernel {kernel}, stride "
                         f"{stride}, padding {padding}, output_padding {output_padding}, "
                         f"dilation {dilation} gives output size {out_size}: must be >= 1")
    c_out = c_out_per_group * groups
    geom = _ConvGeometry(batched, n, c_in, c_out, groups, in_size, out_size,
                         lift3(kernel, 1), lift3(stride, 1), lift3(padding, 0),
                         lift3(dilation, 1))
    if max(c_out_per_group * math.prod(kernel), math.prod(in_size), c_in) > _INT32_MAX:
        raise ValueError(f"{fname}: a per-sample matrix dimension exceeds 2**31-1 (BLAS uses "
                         f"32-bit sizes): input {x.shape}, weight {w.shape}")
    return geom


def _conv_transpose_args(geom):
    """The kernels' geometry: the forward convolution from the output back to the input."""
    return (lift3(geom.out_size, 1), geom.kernel, geom.stride, geom.padding, geom.dilation,
            lift3(geom.in_size, 1))


def _conv_transpose_forward(fname, nd, input, weight, bias, stride, padding, output_padding,
                            groups, dilation):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    geom = _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                                    dilation)
    dtype = float_dtype(x, w, b)
    w2 = contiguous(w, dtype).reshape(geom.in_channels, -1)
    b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, dtype)
    x2 = _rows(contiguous(x, dtype), geom.n)
    out = np.empty((geom.n, geom.out_channels) + geom.out_size, dtype=dtype)
    if geom.n:
        threads = get_num_threads()
        args = _conv_transpose_args(geom)
        per_thread = _conv.conv_transpose_workspace_size(geom.out_channels, *args[1:4],
                                                         args[0], args[5])
        ws = scratch(per_thread * threads, dtype)
        with single_threaded_blas:
            _conv.conv_transpose_forward(x2, w2, b1, _rows(out, geom.n), ws, geom.groups, *args,
                                         threads)
    return out if geom.batched else out[0]


def _conv_transpose_backward(fname, nd, grad_output, input, weight, stride, padding,
                             output_padding, groups, dilation, output_mask):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    dy = as_array(fname, "grad_output", grad_output)
    geom = _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                                    dilation)
    try:
        need_x, need_w, need_b = (bool(m) for m in output_mask)
    except (TypeError, ValueError):
        raise TypeError(f"{fname}: output_mask must be 3 booleans (input, weight, bias), "
                        f"got {output_mask!r}") from None
    expected = ((geom.n,) if geom.batched else ()) + (geom.out_channels,) + geom.out_size
    if dy.shape != expected:
        raise ValueError(f"{fname}: grad_output must have the forward output's shape "
                         f"{expected}, got {dy.shape}")
    dtype = float_dtype(x, w, dy)
    n = geom.n
    x2 = _rows(contiguous(x, dtype), n)
    w2 = contiguous(w, dtype).reshape(geom.in_channels, -1)
    dy3 = contiguous(dy, dtype).reshape(n, geom.out_channels, math.prod(geom.out_size))
    grad_x = np.empty((n, geom.in_channels) + geom.in_size, dtype=dtype) if need_x else None
    grad_w = None
    threads = get_num_threads()
    if need_w:
        chunks = max(1, min(n, _WEIGHT_GRAD_CHUNKS))
        parts = np.zeros((chunks, w2.size), dtype=dtype)
    if (need_x or need_w) and n:
        args = _conv_transpose_args(geom)
        per_thread = _conv.conv_transpose_workspace_size(geom.out_channels, *args[1:4],
                                                         args[0], args[5])
        ws = scratch(per_thread * threads, dtype)
        gx = _rows(grad_x, n) if need_x else np.empty((0, 0), dtype=dtype)
        gw = parts if need_w else np.empty((0, 0), dtype=dtype)
        with single_threaded_blas:
            _conv.conv_transpose_backward(x2, w2, _rows(dy3, n), gx, gw, ws, need_x, need_w,
                                          geom.groups, *args, threads)
    if need_w:
        # Partials added in chunk order: the same bits for any number of threads.
        grad_w = parts[0].copy() if parts.shape[0] == 1 else parts.sum(axis=0)
        grad_w = grad_w.reshape(w.shape)
    grad_b = None
    if need_b:
        grad_b = np.empty(geom.out_channels, dtype=dtype)
        _conv.bias_backward(dy3, grad_b, threads)
    if grad_x is not None and not geom.batched:
        grad_x = grad_x[0]
    return grad_x, grad_w, grad_b


_CONV_TRANSPOSE_DOC = """{nd}-D transposed convolution (the input gradient of conv{nd}d, sometimes
    called deconvolution), as ``torch.nn.functional.conv_transpose{nd}d``.

    Parameters
    ----------
    input : array (N, C_in, {spatial}) or (C_in, {spatial})
    weight : array (C_in, C_out/groups, {kernel})
    bias : array (C_out,) or None
    stride, dilation : int or tuple of {nd} ints, >= 1
    padding : int or tuple of {nd} ints >= 0: ``dilation*(kernel-1) - padding`` zeros are
        implicitly added to both sides of the input (padding crops the output)
    output_padding : int or tuple of {nd} ints >= 0, smaller than stride or dilation per axis:
        extra size added to one side of the output (picks among the input sizes that a strided
        convolution maps to the same output size)
    groups : int; C_in must be divisible by it

    Returns
    -------
    array (N, C_out, {out}) with, per axis,
    ``out = (in-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1`` and

        y[n, g*C_out/groups + o, i*stride - padding + offset*dilation] +=
            x[n, g*C_in/groups + c, i] * weight[g*C_in/groups + c, o, offset]   (+ bias[o])

    computed per sample as ``col2im(W^T @ x)`` (a GEMM, then col2im), never by zero-upsampling.
    """

_CONV_TRANSPOSE_BACKWARD_DOC = """Gradients of :func:`conv_transpose{nd}d`.

    ``grad_output`` is dL/dy, shaped as conv_transpose{nd}d's output; the other arguments are
    those of the forward call. Returns ``(grad_input, grad_weight, grad_bias)``, None where
    ``output_mask`` is False:

        grad_input  = W @ im2col(dy)           (the convolution of dy with the same weight)
        grad_weight = sum_n x[n] @ im2col(dy[n])^T
        grad_bias   = dy summed over the batch and spatial axes
    """


def _make_conv_transpose(nd, spatial, kernel, out):
    def conv_transpose(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                       dilation=1):
        return _conv_transpose_forward(f"conv_transpose{nd}d", nd, input, weight, bias, stride,
                                       padding, output_padding, groups, dilation)

    def conv_transpose_backward(grad_output, input, weight, stride=1, padding=0,
                                output_padding=0, groups=1, dilation=1,
                                output_mask=(True, True, True)):
        return _conv_transpose_backward(f"conv_transpose{nd}d_backward", nd, grad_output, input,
                                        weight, stride, padding, output_padding, groups,
                                        dilation, output_mask)

    name = f"conv_transpose{nd}d"
    conv_transpose.__name__ = conv_transpose.__qualname__ = name
    conv_transpose_backward.__name__ = conv_transpose_backward.__qualname__ = name + "_backward"
    conv_transpose.__doc__ = _CONV_TRANSPOSE_DOC.format(nd=nd, spatial=spatial, kernel=kernel,
                                                        out=out)
    conv_transpose_backward.__doc__ = _CONV_TRANSPOSE_BACKWARD_DOC.format(nd=nd)
    conv_transpose.__module__ = conv_transpose_backward.__module__ = __name__
    return conv_transpose, conv_transpose_backward


conv_transpose1d, conv_transpose1d_backward = _make_conv_transpose(1, "L", "kL", "L_out")
conv_transpose2d, conv_transpose2d_backward = _make_conv_transpose(2, "H, W", "kH, kW",
                                                                   "H_out, W_out")
conv_transpose3d, conv_transpose3d_backward = _make_conv_transpose(3, "D, H, W", "kD, kH, kW",
                                                                   "D_out, H_out, W_out")


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
    idx = np.asarray(indices)
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
    return starts, counts, spans


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
    return kernel, stride, padding, dilation, out_size


def _max_pool(fname, nd, input, kernel_size, stride, padding, dilation, ceil_mode,
              return_indices):
    x, lead, in_size = _pool_input(fname, nd, input)
    kernel, stride, padding, dilation, out_size = _pool_args(
        fname, nd, in_size, kernel_size, stride, padding, dilation, ceil_mode)
    dtype = float_dtype(x)
    starts, counts, _ = _fixed_windows(in_size, kernel, stride, padding, dilation, out_size)
    out = np.empty(lead + out_size, dtype=dtype)
    p = math.prod(lead)
    ind = np.empty(lead + out_size if return_indices else (0, 0), dtype=np.int64)
    if p:
        _pool.max_pool_forward(_planes(x, lead, dtype), out.reshape(p, -1),
                               ind.reshape(p, -1) if return_indices else ind,
                               lift3(in_size, 1), lift3(dilation, 1), starts, counts,
                               lift3(out_size, 1),
                               _interior(in_size, kernel, stride, padding, dilation, out_size),
                               get_num_threads())
    return (out, ind) if return_indices else out


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
    grad = np.empty(lead + in_size, dtype=dtype)
    p = math.prod(lead)
    if p:
        bad = _pool.scatter_add(_planes(dy, lead, dtype), _planes(idx, lead, np.int64),
                                grad.reshape(p, -1), get_num_threads())
        if strict:
            _raise_bad_indices(fname, bad, math.prod(in_size), in_size)
    return grad


def _avg_pool(fname, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, grad_output=None):
    """avg_pool forward, or its backward when grad_output is given."""
    x, lead, in_size = _pool_input(fname, nd, input)
    kernel, stride, padding, _, out_size = _pool_args(fname, nd, in_size, kernel_size, stride,
                                                      padding, 1, ceil_mode)
    if divisor_override is not None:
        divisor_override = as_int(fname, "divisor_override", divisor_override, minimum=1)
    starts, counts, spans = _fixed_windows(in_size, kernel, stride, padding, (1,) * nd,
                                           out_size, include_pad=bool(count_include_pad))
    interior = _interior(in_size, kernel, stride, padding, (1,) * nd, out_size)
    return _avg_kernel(fname, x, lead, in_size, out_size, starts, counts, spans,
                       divisor_override, grad_output, interior)


def _avg_kernel(fname, x, lead, in_size, out_size, starts, counts, spans, divisor_override,
                grad_output, interior=_NO_INTERIOR):
    p = math.prod(lead)
    args = (lift3(in_size, 1), starts, counts, spans, float(divisor_override or 0),
            lift3(out_size, 1), interior, get_num_threads())
    if grad_output is None:
        dtype = float_dtype(x)
        out = np.empty(lead + out_size, dtype=dtype)
        if p:
            _pool.avg_pool_forward(_planes(x, lead, dtype), out.reshape(p, -1), *args)
        return out
    dy = _check_grad(fname, grad_output, lead + out_size)
    dtype = float_dtype(x, dy)
    grad = np.empty(lead + in_size, dtype=dtype)
    if p:
        _pool.avg_pool_backward(_planes(dy, lead, dtype), grad.reshape(p, -1), *args)
    return grad


def _adaptive_size(fname, nd, output_size, in_size):
    """output_size as a tuple of nd ints >= 1; None entries keep the input's size (as torch)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == nd:
        output_size = tuple(i if o is None else o for o, i in zip(output_size, in_size))
    return ntuple(fname, "output_size", output_size, nd, minimum=1)


def _adaptive_avg_pool(fname, nd, input, output_size, grad_output=None):
    x, lead, in_size = _pool_input(fname, nd, input)
    out_size = _adaptive_size(fname, nd, output_size, in_size)
    starts, counts, spans = _adaptive_windows(in_size, out_size)
    return _avg_kernel(fname, x, lead, in_size, out_size, starts, counts, spans, None,
                       grad_output)


def _adaptive_max_pool(fname, nd, input, output_size, return_indices):
    x, lead, in_size = _pool_input(fname, nd, input)
    out_size = _adaptive_size(fname, nd, output_size, in_size)
    starts, counts, _ = _adaptive_windows(in_size, out_size)
    dtype = float_dtype(x)
    p = math.prod(lead)
    out = np.empty(lead + out_size, dtype=dtype)
    ind = np.empty(lead + out_size if return_indices else (0, 0), dtype=np.int64)
    if p:
        _pool.max_pool_forward(_planes(x, lead, dtype), out.reshape(p, -1),
                               ind.reshape(p, -1) if return_indices else ind,
                               lift3(in_size, 1), (1, 1, 1), starts, counts,
                               lift3(out_size, 1), _NO_INTERIOR, get_num_threads())
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
    return out_size


def _max_unpool(fname, nd, input, indices, kernel_size, stride, padding, output_size):
    x, lead, in_size = _pool_input(fname, nd, input)
    idx = _check_indices(fname, indices, x.shape, what="the input's")
    out_size = _unpool_size(fname, nd, in_size, kernel_size, stride, padding, output_size)
    dtype = float_dtype(x)
    out = np.empty(lead + out_size, dtype=dtype)
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
    grad = np.empty(x.shape, dtype=dtype)
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
__all__ += ["global_avg_pool2d", "global_avg_pool2d_backward", "pool_output_size"]


def global_avg_pool2d(input):
    """Mean over the spatial axes, keeping them: (N, C, H, W) -> (N, C, 1, 1) (or (C, H, W) ->
    (C, 1, 1)). Equals ``adaptive_avg_pool2d(input, 1)``."""
    return _adaptive_avg_pool("global_avg_pool2d", 2, input, 1)


def global_avg_pool2d_backward(grad_output, input):
    """Gradient of :func:`global_avg_pool2d`: grad_output (N, C, 1, 1) / (H*W) broadcast over
    each plane."""
    return _adaptive_avg_pool("global_avg_pool2d_backward", 2, input, 1, grad_output)


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
        res = np.empty(lead + out_size, dtype=dtype)
    else:
        dy = _check_grad(fname, grad_output, lead + out_size)
        dtype = np.dtype(float_dtype(dy))
        src = _planes(dy, lead, dtype)
        res = np.empty(lead + in_size, dtype=dtype)
    if not p:
        return res
    in3, out3 = lift3(in_size, 1), lift3(out_size, 1)
    m = max(out3)
    threads = get_num_threads()
    if mode in ("nearest", "nearest-exact"):
        table = np.zeros((3, m), np.int64)
        for a, (n_in, n_out, s) in enumerate(zip(in_size, out_size, scales), start=3 - nd):
            table[a, :n_out] = _nearest_source(n_in, n_out, s, mode == "nearest-exact")
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
        raise TypeError(f"{fname}: input_size must be the forward input's shape (a tuple of "
                        f"ints), got {input_size!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{fname}: input_size must be non-negative, got {shape}")
    dy = as_array(fname, "grad_output", grad_output)
    # A zero-stride stand-in for the input: the checks need its shape only.
    ghost = np.broadcast_to(np.zeros((), float_dtype(dy)), shape)
    return _interpolate(fname, ghost, size, scale_factor, mode, align_corners,
                        recompute_scale_factor, grad_output=dy)


__all__ += ["interpolate", "interpolate_backward"]
