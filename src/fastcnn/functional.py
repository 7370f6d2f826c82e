"""fastcnn.functional: checked entry points over the compiled kernels.

Names, argument names, defaults, weight layouts and output sizes are those of
``torch.nn.functional``. Each differentiable op ``f`` has ``f_backward`` beside it, taking the
gradient of the loss with respect to ``f``'s output and returning the gradients with respect to
its inputs.

Arrays are NCL / NCHW / NCDHW. Inputs may be any real dtype and memory layout: float32 and float64
are computed as they are (float64 wins when mixed); ints, bools and float16 are computed in
float32; views, Fortran-order and negative-stride arrays are copied to C order first.
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

import numpy as np

from fastcnn import _checks
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import conv as _conv
from fastcnn._ops import im2col as _im2col
from fastcnn._ops import norm as _norm
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "unfold", "fold", "unfold_backward", "fold_backward",
    "conv_output_size",
    "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
    "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
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
# Normalization (kernels in _ops/norm.pyx)
# --------------------------------------------------------------------------------------------

# Rows are cut into at most this many fixed chunks for the affine-gradient partials of the row
# norms (see norm.pyx): a function of the row count only, so any thread count gives the same bits.
_NORM_GRAD_CHUNKS = 16


def _positive_float(fname, name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a float > 0, got {_checks._describe(value)}")
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{fname}: {name} must be a finite float > 0, got {value!r}")
    return value


def _unit_float(fname, name, value) -> float:
    """A float in [0, 1] (momentum, dropout probability)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a float in [0, 1], got "
                        f"{_checks._describe(value)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{fname}: {name} must be in [0, 1], got {value!r}")
    return value


def _running_stat(fname, name, value, channels):
    """A caller-owned buffer updated in place: a writable float ndarray of shape (channels,)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{fname}: {name} must be a numpy array (it is updated in place), got "
                        f"{_checks._describe(value)}")
    if value.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{fname}: {name} must be float32 or float64 (it is updated in place), "
                        f"got dtype {value.dtype}")
    if value.shape != (channels,):
        raise ValueError(f"{fname}: {name} must have shape ({channels},) (one entry per "
                         f"channel), got {value.shape}")
    return value


def _writable(fname, name, value):
    if not value.flags.writeable:
        raise ValueError(f"{fname}: {name} must be writable (it is updated in place in "
                         f"training), got a read-only array")


def _affine_vector(fname, name, value, shape, dtype):
    """weight/bias of a norm: None, or an array of ``shape`` -> flat contiguous (or empty)."""
    if value is None:
        return np.empty(0, dtype=dtype)
    arr = as_array(fname, name, value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{fname}: {name} must have shape {tuple(shape)}, got {arr.shape}")
    return contiguous(arr, dtype).reshape(-1)


def _mask3(fname, output_mask):
    try:
        flags = tuple(bool(m) for m in output_mask)
    except TypeError:
        flags = ()
    if len(flags) != 3:
        raise TypeError(f"{fname}: output_mask must be 3 booleans (input, weight, bias), "
                        f"got {output_mask!r}")
    return flags


def _grad_like(fname, grad_output, x):
    dy = as_array(fname, "grad_output", grad_output)
    if dy.shape != x.shape:
        raise ValueError(f"{fname}: grad_output must have the input's shape {x.shape}, got "
                         f"{dy.shape}")
    return dy


def _update_running(running, batch_value, factor):
    """running = (1 - factor) * running + factor * batch_value, in place in running's dtype."""
    new = (1.0 - factor) * running.astype(np.float64) + factor * batch_value
    running[...] = new


def _momentum_factor(fname, momentum, num_batches_tracked, training):
    """torch's exponential_average_factor; increments num_batches_tracked in training."""
    if num_batches_tracked is not None:
        if (not isinstance(num_batches_tracked, np.ndarray)
                or num_batches_tracked.dtype.kind not in "iu" or num_batches_tracked.size != 1):
            raise TypeError(f"{fname}: num_batches_tracked must be an integer numpy array of "
                            f"one element (updated in place), got "
                            f"{_checks._describe(num_batches_tracked)}")
        _writable(fname, "num_batches_tracked", num_batches_tracked)
    if momentum is None:
        if training and num_batches_tracked is None:
            raise ValueError(f"{fname}: momentum=None (cumulative moving average) needs "
                             f"num_batches_tracked, an integer array counting the batches seen")
        if training:
            num_batches_tracked += 1
            return 1.0 / float(num_batches_tracked.reshape(-1)[0])
        return 0.0
    momentum = _unit_float(fname, "momentum", momentum)
    if training and num_batches_tracked is not None:
        num_batches_tracked += 1
    return momentum


def _bn_layout(fname, x):
    check_ndim(fname, "input", x, (2, 3, 4, 5), "(N, C), (N, C, L), (N, C, H, W) or "
                                                "(N, C, D, H, W)")
    n, c = x.shape[:2]
    return n, c, math.prod(x.shape[2:])


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_batches_tracked=None, return_stats=False):
    """Batch normalization over the channel axis 1, as ``torch.nn.functional.batch_norm``.

    input (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); running_mean, running_var,
    weight, bias (C,). With M = N * prod(spatial) values per channel c:

        y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

    training=True: mean_c and the biased var_c are the batch's (accumulated in double, stable
    for a large mean), and the running statistics, when given, are updated IN PLACE (they are
    the caller's float arrays) with torch's convention

        running_mean = (1 - momentum) * running_mean + momentum * mean_c
        running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)  (unbiased)

    momentum=None uses a cumulative moving average, factor 1/num_batches_tracked: pass the
    counter as keyword-only ``num_batches_tracked`` (an integer numpy array of one element, as
    torch's buffer), which training increments in place (also when momentum is a float).
    training=False normalizes with running_mean and running_var (both required).

    ``return_stats=True`` (keyword-only) returns ``(y, save_mean, save_invstd)``: float64 (C,)
    arrays of the statistics used, which :func:`batch_norm_backward` accepts to skip a pass.
    """
    fname = "batch_norm"
    x = as_array(fname, "input", input)
    n, c, s = _bn_layout(fname, x)
    eps = _positive_float(fname, "eps", eps)
    training = bool(training)
    factor = _momentum_factor(fname, momentum, num_batches_tracked, training)
    if running_mean is not None:
        _running_stat(fname, "running_mean", running_mean, c)
    if running_var is not None:
        _running_stat(fname, "running_var", running_var, c)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fname}: running_mean and running_var must be both given or both "
                         f"None")
    if not training and running_mean is None:
        raise ValueError(f"{fname}: running_mean and running_var are required when "
                         f"training=False (evaluation normalizes with them)")
    if training and running_mean is not None:
        _writable(fname, "running_mean", running_mean)
        _writable(fname, "running_var", running_var)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), np.float64)
    b = _affine_vector(fname, "bias", bias, (c,), np.float64)
    m = n * s
    if training and m <= 1:
        raise ValueError(f"{fname}: expected more than 1 value per channel when training, got "
                         f"input of shape {x.shape}")
    x3 = contiguous(x, dtype).reshape(n, c, s)
    out = np.empty(x.shape, dtype=dtype)
    threads = get_num_threads()
    if training:
        mean, var, invstd = np.empty(c), np.empty(c), np.empty(c)
        _norm.channel_train_forward(x3, w, b, eps, out.reshape(n, c, s), mean, var, invstd,
                                    threads)
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        scale = invstd * w if w.size else invstd
        shift = b if b.size else np.zeros(c)
        if m:
            _norm.channel_affine(x3, mean, scale, shift, out.reshape(n, c, s), threads)
    if training and running_mean is not None:
        _update_running(running_mean, mean, factor)
        _update_running(running_var, var * (m / (m - 1)), factor)
    if return_stats:
        return out, mean, invstd
    return out


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5, *, save_mean=None, save_invstd=None,
                        output_mask=(True, True, True)):
    """Gradients of :func:`batch_norm`: ``(grad_input, grad_weight, grad_bias)``.

    grad_output is dL/dy (the input's shape). Per channel, with M values, xhat the normalized
    input and invstd = 1/sqrt(var + eps):

        training:  dx = (invstd / M) * (M * dy * w - sum(dy) * w - xhat * sum(dy * xhat) * w)
        eval:      dx = dy * w * invstd_running          (the statistics are constants)
        grad_weight = sum(dy * xhat),   grad_bias = sum(dy)

    (w = 1 without weight). In training the batch statistics are recomputed from ``input``
    unless keyword-only ``save_mean`` and ``save_invstd`` (from ``batch_norm(...,
    return_stats=True)``) are given; in eval running_mean and running_var are required.
    grad_weight and grad_bias are None when weight is None (no affine transform), and any
    entry is None when its ``output_mask`` flag is False.
    """
    fname = "batch_norm_backward"
    x = as_array(fname, "input", input)
    n, c, s = _bn_layout(fname, x)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    if weight is None:
        need_w = need_b = False
    w = _affine_vector(fname, "weight", weight, (c,), np.float64)
    dtype = float_dtype(x, dy)
    x3 = contiguous(x, dtype).reshape(n, c, s)
    dy3 = contiguous(dy, dtype).reshape(n, c, s)
    m = n * s
    threads = get_num_threads()
    if training:
        if (save_mean is None) != (save_invstd is None):
            raise ValueError(f"{fname}: save_mean and save_invstd must be both given or both "
                             f"None")
        if save_mean is not None:
            mean = _affine_vector(fname, "save_mean", save_mean, (c,), np.float64)
            invstd = _affine_vector(fname, "save_invstd", save_invstd, (c,), np.float64)
        else:
            if m <= 1:
                raise ValueError(f"{fname}: expected more than 1 value per channel when "
                                 f"training, got input of shape {x.shape}")
            mean, var = np.empty(c), np.empty(c)
            _norm.channel_stats(x3, mean, var, threads)
            invstd = 1.0 / np.sqrt(var + eps)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"training=False")
        mean = _affine_vector(fname, "running_mean", running_mean, (c,), np.float64)
        var = _affine_vector(fname, "running_var", running_var, (c,), np.float64)
        invstd = 1.0 / np.sqrt(var + eps)
    wv = w if w.size else np.ones(c)
    sum_dy = np.zeros(c)
    sum_dy_xmu = np.zeros(c)
    grad_x = None
    if training and need_x:
        # one fused kernel: the sums, then dx, channel by channel (cache-friendly)
        grad_x = np.empty(x.shape, dtype=dtype)
        if m:
            _norm.channel_train_backward(dy3, x3, mean, invstd, w, grad_x.reshape(n, c, s),
                                         sum_dy, sum_dy_xmu, threads)
        need_x = False
    elif m and (need_w or need_b):
        _norm.channel_grad_sums(dy3, x3, mean, sum_dy, sum_dy_xmu, threads)
    if need_x:
        # eval: the statistics are constants, dx = dy * w * invstd
        grad_x = np.empty(x.shape, dtype=dtype)
        zeros = np.zeros(c)
        if m:
            _norm.channel_grad_apply(dy3, x3, mean, wv * invstd, zeros, zeros,
                                     grad_x.reshape(n, c, s), threads)
    grad_w = (sum_dy_xmu * invstd).astype(dtype) if need_w else None
    grad_b = sum_dy.astype(dtype) if need_b else None
    return grad_x, grad_w, grad_b


def _rows_forward(fname, x, rows, groups, k, weight, bias, eps):
    """out, mean, rstd of the row norm of x viewed as (rows, M); affine indexed by g*k + kk."""
    dtype = float_dtype(x)
    x2 = contiguous(x, dtype).reshape(rows, -1 if rows else 0)
    out = np.empty(x.shape, dtype=dtype)
    mean = np.empty(rows)
    rstd = np.empty(rows)
    if x.size:
        _norm.rows_forward(x2, contiguous(weight, dtype), contiguous(bias, dtype), groups, k,
                           eps, out.reshape(x2.shape), mean, rstd, get_num_threads())
    return out, mean, rstd


def _rows_backward(fname, dy, x, rows, groups, k, weight, eps, need_x, need_wb, affine_shape):
    """(grad_input, sum dy*xhat, sum dy) of the row norm; the sums reshaped to affine_shape."""
    dtype = float_dtype(x, dy)
    x2 = contiguous(x, dtype).reshape(rows, -1 if rows else 0)
    dy2 = contiguous(dy, dtype).reshape(x2.shape)
    threads = get_num_threads()
    mean = np.empty(rows)
    rstd = np.empty(rows)
    gx = np.empty(x.shape, dtype=dtype) if need_x else None
    chunks = max(1, min(rows, _NORM_GRAD_CHUNKS))
    width = groups * k
    gw_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    gb_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    if x.size:
        _norm.rows_stats(x2, eps, mean, rstd, threads)
        _norm.rows_backward(dy2, x2, mean, rstd, contiguous(weight, dtype), groups, k,
                            gx.reshape(x2.shape) if need_x else np.empty((0, 0), dtype),
                            gw_parts, gb_parts, threads)
    elif need_x:
        gx[...] = 0
    sums = None
    if need_wb:
        # partials added in chunk order: the same bits for any number of threads
        sums = (gw_parts.sum(axis=0).astype(dtype).reshape(affine_shape),
                gb_parts.sum(axis=0).astype(dtype).reshape(affine_shape))
    return gx, sums


def _normalized_shape(fname, x, normalized_shape):
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    else:
        try:
            shape = tuple(operator.index(v) for v in normalized_shape)
        except TypeError:
            raise TypeError(f"{fname}: normalized_shape must be an int or a tuple of ints, got "
                            f"{normalized_shape!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"{fname}: normalized_shape must be non-empty with positive sizes, got "
                         f"{normalized_shape!r}")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"{fname}: normalized_shape {shape} must match the trailing dims of "
                         f"input, got input of shape {x.shape}")
    return shape


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization over the trailing dims, as ``torch.nn.functional.layer_norm``.

    input (*, *normalized_shape); weight, bias of shape normalized_shape. Each of the
    R = prod(*) rows of M = prod(normalized_shape) values is normalized on its own:

        y = (x - mean_row) / sqrt(var_row + eps) * weight + bias      (biased variance)
    """
    fname = "layer_norm"
    x = as_array(fname, "input", input)
    shape = _normalized_shape(fname, x, normalized_shape)
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, shape, dtype)
    b = _affine_vector(fname, "bias", bias, shape, dtype)
    m = math.prod(shape)
    rows = x.size // m
    # without an affine transform, a row is one "channel" of m values (one tight loop)
    k = m if (w.size or b.size) else 1
    return _rows_forward(fname, x, rows, 1, k, w, b, eps)[0]


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None,
                        eps=1e-5, output_mask=(True, True, True)):
    """Gradients of :func:`layer_norm`: ``(grad_input, grad_weight, grad_bias)``.

    Per row of M values, with xhat the normalized input and g = grad_output * weight:

        dx = invstd / M * (M * g - sum(g) - xhat * sum(g * xhat))
        grad_weight = sum over rows of grad_output * xhat,   grad_bias = sum of grad_output

    grad_weight is None when weight is None, grad_bias when bias is None (and any entry whose
    output_mask flag is False).
    """
    fname = "layer_norm_backward"
    x = as_array(fname, "input", input)
    shape = _normalized_shape(fname, x, normalized_shape)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, shape, dtype)
    _affine_vector(fname, "bias", bias, shape, dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    m = math.prod(shape)
    rows = x.size // m
    gx, sums = _rows_backward(fname, dy, x, rows, 1, m, w, eps, need_x, need_w or need_b,
                              shape)
    return gx, sums[0] if need_w else None, sums[1] if need_b else None


def _group_layout(fname, x, num_groups):
    check_ndim(fname, "input", x, tuple(range(2, 33)), "(N, C, *spatial)")
    n, c = x.shape[:2]
    g = as_int(fname, "num_groups", num_groups, minimum=1)
    if c % g:
        raise ValueError(f"{fname}: num_groups = {g} must divide the number of channels "
                         f"C = {c} (input shape {x.shape})")
    return n, c, g


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization, as ``torch.nn.functional.group_norm``.

    input (N, C, *spatial), C divisible by num_groups = G; weight, bias (C,). Each sample's
    channels are split into G groups of C/G consecutive channels; each group's
    M = C/G * prod(spatial) values are normalized together, then scaled per channel:

        y[n, c] = (x[n, c] - mean_{n,g}) / sqrt(var_{n,g} + eps) * weight[c] + bias[c]
    """
    fname = "group_norm"
    x = as_array(fname, "input", input)
    n, c, g = _group_layout(fname, x, num_groups)
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    b = _affine_vector(fname, "bias", bias, (c,), dtype)
    return _rows_forward(fname, x, n * g, g, c // g, w, b, eps)[0]


def group_norm_backward(grad_output, input, num_groups, weight=None, bias=None, eps=1e-5,
                        output_mask=(True, True, True)):
    """Gradients of :func:`group_norm`: ``(grad_input, grad_weight, grad_bias)``.

    The layer-norm formula per (sample, group) of M values, with g = grad_output * weight[c]:
    dx = invstd / M * (M * g - sum(g) - xhat * sum(g * xhat)); grad_weight[c] and grad_bias[c]
    sum grad_output * xhat and grad_output over the batch and spatial axes. grad_weight is None
    when weight is None, grad_bias when bias is None.
    """
    fname = "group_norm_backward"
    x = as_array(fname, "input", input)
    n, c, g = _group_layout(fname, x, num_groups)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    _affine_vector(fname, "bias", bias, (c,), dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    gx, sums = _rows_backward(fname, dy, x, n * g, g, c // g, w, eps, need_x,
                              need_w or need_b, (c,))
    return gx, sums[0] if need_w else None, sums[1] if need_b else None


def _instance_layout(fname, x):
    check_ndim(fname, "input", x, (3, 4, 5), "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
    n, c = x.shape[:2]
    return n, c, math.prod(x.shape[2:])


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Instance normalization, as ``torch.nn.functional.instance_norm``.

    input (N, C, *spatial) with 1 to 3 spatial dims; running_mean, running_var, weight, bias
    (C,). use_input_stats=True: each (sample, channel) plane of S = prod(spatial) values is
    normalized with its own mean and biased variance,

        y[n, c] = (x[n, c] - mean_{n,c}) / sqrt(var_{n,c} + eps) * weight[c] + bias[c]

    and the running statistics, when given, are updated in place with the batch average of the
    plane statistics (unbiased variance), torch's momentum convention:
    running = (1 - momentum) * running + momentum * mean_n(stat_{n,c}).
    use_input_stats=False normalizes every plane with running_mean and running_var (required).
    """
    fname = "instance_norm"
    x = as_array(fname, "input", input)
    n, c, s = _instance_layout(fname, x)
    eps = _positive_float(fname, "eps", eps)
    momentum = _unit_float(fname, "momentum", momentum)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fname}: running_mean and running_var must be both given or both "
                         f"None")
    if running_mean is not None:
        _running_stat(fname, "running_mean", running_mean, c)
        _running_stat(fname, "running_var", running_var, c)
        if use_input_stats:
            _writable(fname, "running_mean", running_mean)
            _writable(fname, "running_var", running_var)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"use_input_stats=False")
        return batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    if s <= 1:
        raise ValueError(f"{fname}: expected more than 1 spatial element per channel, got "
                         f"input of shape {x.shape}")
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    b = _affine_vector(fname, "bias", bias, (c,), dtype)
    out, mean, rstd = _rows_forward(fname, x, n * c, c, 1, w, b, eps)
    if running_mean is not None and n:
        var = (1.0 / (rstd * rstd) - eps) * (s / (s - 1))
        _update_running(running_mean, mean.reshape(n, c).mean(axis=0), momentum)
        _update_running(running_var, var.reshape(n, c).mean(axis=0), momentum)
    return out


def instance_norm_backward(grad_output, input, running_mean=None, running_var=None,
                           weight=None, bias=None, use_input_stats=True, eps=1e-5,
                           output_mask=(True, True, True)):
    """Gradients of :func:`instance_norm`: ``(grad_input, grad_weight, grad_bias)``.

    use_input_stats=True: the layer-norm formula per (sample, channel) plane;
    use_input_stats=False: dx = grad_output * weight / sqrt(running_var + eps). grad_weight and
    grad_bias sum grad_output * xhat and grad_output over batch and space; None when weight
    (resp. bias) is None.
    """
    fname = "instance_norm_backward"
    x = as_array(fname, "input", input)
    n, c, s = _instance_layout(fname, x)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    _affine_vector(fname, "bias", bias, (c,), dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"use_input_stats=False")
        gx, gw, gb = batch_norm_backward(dy, x, weight if weight is not None else np.ones(c),
                                         running_mean, running_var, training=False, eps=eps,
                                         output_mask=(need_x, need_w, need_b))
        return gx, gw, gb
    if s <= 1:
        raise ValueError(f"{fname}: expected more than 1 spatial element per channel, got "
                         f"input of shape {x.shape}")
    gx, sums = _rows_backward(fname, dy, x, n * c, c, 1, w, eps, need_x, need_w or need_b,
                              (c,))
    return gx, sums[0] if need_w else None, sums[1] if need_b else None
