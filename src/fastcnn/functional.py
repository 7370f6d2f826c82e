"""fastcnn.functional: checked entry points over the compiled kernels.

Names, argument names, defaults, weight layouts and output sizes are those of
``torch.nn.functional``. Each differentiable op ``f`` has ``f_backward`` beside it, taking the
gradient of the loss with respect to ``f``'s output and returning the gradients with respect to
its inputs (a tuple when there are several, None for the ones not asked for or not present).
A backward takes what the forward saw -- the input, or the output where that is the cheap form
(sigmoid, tanh, softmax, log_softmax); each docstring says which. Losses return a numpy scalar
(or an array for reduction='none') and their backward takes dL/dloss.

Sections: convolution, unfold/fold, normalization (batch, layer, group, instance; kernels in
_ops/norm.pyx), linear, activations (softmax kernels in _ops/activation.pyx), dropout, padding,
losses (cross-entropy kernel in _ops/loss.pyx) and batch-norm folding. Running statistics and
counters passed to the norms are the caller's numpy arrays, updated in place.

Arrays are NCL / NCHW / NCDHW. Inputs may be any real dtype and memory layout: float32 and float64
are computed as they are (float64 wins when mixed); ints, bools and float16 are computed in
float32; views, Fortran-order and negative-stride arrays are copied to C order first. Index
arrays (max pooling's ``return_indices``, unpooling) are int64 flat positions in a spatial plane.
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
from fastcnn._ops import gemm as _gemm
from fastcnn._ops import winograd as _winograd
from fastcnn._ops import im2col as _im2col
from fastcnn._ops import pool as _pool
from fastcnn._ops import resample as _resample
from fastcnn._ops import activation as _act
from fastcnn._ops import loss as _loss
from fastcnn._ops import norm as _norm
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
    "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
    "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "elu", "elu_backward",
    "selu", "selu_backward", "gelu", "gelu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "prelu", "prelu_backward", "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward",
    "dropout", "dropout2d", "dropout_backward", "pad", "pad_backward",
    "cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward",
    "mse_loss", "mse_loss_backward", "l1_loss", "l1_loss_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "fuse_conv_bn",
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


def _conv_scratch(geom, args, threads, dtype):
    """This thread's scratch for a conv kernel call, and the samples per GEMM."""
    pointwise = _conv.is_pointwise(args[1], args[2], args[3])
    block = _conv.sample_block(geom.n, math.prod(geom.out_size), pointwise)
    per_thread = _conv.workspace_size(geom.in_channels, geom.out_channels, args[1], args[2],
                                      args[3], args[5], block)
    return scratch(per_thread * threads, dtype), block


# Winograd F(2x2, 3x3) (_ops/winograd.pyx) for 3x3 stride-1 convolutions: 2.25x fewer
# multiplications than im2col + GEMM. Below this many channels its transforms cost more than
# they save (measured on LeNet/VGG shapes), and the first layer of a network is such a case.
_WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _winograd_ok(geom, nd):
    return (nd == 2 and geom.kernel == (1, 3, 3) and geom.stride == (1, 1, 1)
            and geom.dilation == (1, 1, 1) and geom.groups == 1
            and geom.padding[1] == geom.padding[2] <= 2
            and min(geom.in_channels, geom.out_channels) >= _WINOGRAD_MIN_CHANNELS)


def _winograd_conv2d(x2, w, bias, out2, in_size, pad, out_size, dtype):
    """out2 (N, C_out*OH*OW) = 3x3 stride-1 convolution of x2 (N, C*H*W) by w (C_out, C, 3, 3)."""
    n, k, c = x2.shape[0], w.shape[0], w.shape[1]
    g = _WINOGRAD_G.astype(dtype)                   # entries 0, 1/2, 1: exact in float32
    u = (g @ w @ g.T).reshape(k, c, 16)             # U = G w G^T per (k, c)
    u = np.ascontiguousarray(u.transpose(2, 0, 1))  # (16, C_out, C): one GEMM operand per xi
    tiles = ((out_size[0] + 1) // 2) * ((out_size[1] + 1) // 2)
    threads = get_num_threads()
    block = _winograd.block_size(n, tiles)
    ws = scratch(_winograd.workspace_size(c, k, tiles, block) * threads, dtype)
    with single_threaded_blas:
        _winograd.forward(x2, u, bias, out2, ws, in_size[0], in_size[1], pad, out_size[0],
                          out_size[1], block, threads)


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
    if geom.n and _winograd_ok(geom, nd):
        _winograd_conv2d(x2, w2.reshape(w.shape), b1, _rows(out, geom.n), geom.in_size,
                         geom.padding[1], geom.out_size, dtype)
    elif geom.n:
        threads = get_num_threads()
        args = geom.kernel_args()
        ws, block = _conv_scratch(geom, args, threads, dtype)
        with single_threaded_blas:
            _conv.conv_forward(x2, w2, b1, _rows(out, geom.n), ws, geom.groups, *args, block,
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
    if need_x and n and _winograd_ok(geom, nd) and geom.padding[1] <= 2:
        # dL/dx is the convolution of dy with the kernels flipped and transposed, padded 2 - p
        flipped = np.ascontiguousarray(w2.reshape(w.shape)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _winograd_conv2d(_rows(dy3, n), flipped, np.empty(0, dtype), _rows(grad_x, n),
                         geom.out_size, 2 - geom.padding[1], geom.in_size, dtype)
        need_x = False
    if (need_x or need_w) and n:
        args = geom.kernel_args()
        ws, block = _conv_scratch(geom, args, threads, dtype)
        gx = _rows(grad_x, n) if need_x else np.empty((0, 0), dtype=dtype)
        gw = parts if need_w else np.empty((0, 0), dtype=dtype)
        with single_threaded_blas:
            _conv.conv_backward(x2, w2, _rows(dy3, n), gx, gw, ws, need_x, need_w,
                                geom.groups, *args, block, threads)
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

    training=True: mean_c and the biased var_c are the batch's (two passes -- shifted mean, then
    squared deviations -- with block sums carried in double: stable for a large mean), and the
    running statistics, when given, are updated IN PLACE (they are the caller's float arrays)
    with torch's convention

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
    x2 = _rows(contiguous(x, dtype), rows)
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
    x2 = _rows(contiguous(x, dtype), rows)
    dy2 = contiguous(dy, dtype).reshape(x2.shape)
    threads = get_num_threads()
    gx = np.empty(x.shape, dtype=dtype) if need_x else None
    chunks = max(1, min(rows, _NORM_GRAD_CHUNKS))
    width = groups * k
    gw_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    gb_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    if x.size:
        _norm.rows_backward(dy2, x2, eps, contiguous(weight, dtype), groups, k,
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
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    b = _affine_vector(fname, "bias", bias, (c,), dtype)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"use_input_stats=False")
        # every plane normalized with the channel's running statistics: eval batch norm
        return batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    if s <= 1:
        raise ValueError(f"{fname}: expected more than 1 spatial element per channel, got "
                         f"input of shape {x.shape}")
    out, mean, rstd = _rows_forward(fname, x, n * c, c, 1, w, b, eps)
    if running_mean is not None and n:
        # the plane variances back from rstd (exact to ~1e-16 * eps, clamped: never < 0)
        var = np.maximum(1.0 / (rstd * rstd) - eps, 0.0) * (s / (s - 1))
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
        _affine_vector(fname, "running_mean", running_mean, (c,), np.float64)
        _affine_vector(fname, "running_var", running_var, (c,), np.float64)
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


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------

def _linear_args(fname, input, weight):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    check_ndim(fname, "weight", w, (2,), "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{fname}: input must have in_features = weight.shape[1] = {w.shape[1]} "
                         f"as its last dim, got input of shape {x.shape}")
    return x, w


def _matmul(a, b, trans_a, trans_b):
    """op(a) @ op(b) for C-contiguous 2-D arrays of one float dtype, on the OpenMP team."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    out = np.empty((m, n), dtype=a.dtype)
    with single_threaded_blas:
        _gemm.matmul(a, b, out, trans_a, trans_b, get_num_threads())
    return out


def linear(input, weight, bias=None):
    """``y = x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) ->
    (*, out_features). One GEMM over all leading dims at once, split over the OpenMP team
    (_ops/gemm.pyx).
    """
    fname = "linear"
    x, w = _linear_args(fname, input, weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    dtype = float_dtype(x, w, b)
    out_f, in_f = w.shape
    x2 = contiguous(x, dtype).reshape(-1, in_f)
    out = _matmul(x2, contiguous(w, dtype), trans_a=False, trans_b=True)
    if b is not None:
        out += _checks.optional_vector(fname, "bias", b, out_f, dtype)
    return out.reshape(x.shape[:-1] + (out_f,))


def linear_backward(grad_output, input, weight, output_mask=(True, True, True)):
    """Gradients of :func:`linear`: ``(grad_input, grad_weight, grad_bias)``.

    With the leading dims flattened (x2 (B, in), dy2 (B, out)):
    grad_input = dy @ weight, grad_weight = dy2.T @ x2, grad_bias = dy2.sum(0). Entries whose
    output_mask flag is False are None.
    """
    fname = "linear_backward"
    x, w = _linear_args(fname, input, weight)
    dy = as_array(fname, "grad_output", grad_output)
    out_f, in_f = w.shape
    if dy.shape != x.shape[:-1] + (out_f,):
        raise ValueError(f"{fname}: grad_output must have shape {x.shape[:-1] + (out_f,)}, got "
                         f"{dy.shape}")
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, w, dy)
    dy2 = contiguous(dy, dtype).reshape(-1, out_f)
    gx = gw = gb = None
    if need_x:
        gx = _matmul(dy2, contiguous(w, dtype), trans_a=False, trans_b=False).reshape(x.shape)
    if need_w:
        gw = _matmul(dy2, contiguous(x, dtype).reshape(-1, in_f), trans_a=True, trans_b=False)
    if need_b:
        gb = dy2.sum(axis=0)
    return gx, gw, gb


# --------------------------------------------------------------------------------------------
# Activations (elementwise ones are single numpy expressions: already at memory speed;
# softmax / log_softmax reduce, kernels in _ops/activation.pyx)
# --------------------------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _float(fname, name, value, *others):
    """``value`` as a float array (ints -> float32, float64 wins when mixed with ``others``)."""
    arr = as_array(fname, name, value)
    return np.asarray(arr, dtype=float_dtype(arr, *others))


def _grad_pair(fname, grad_output, saved, saved_name):
    """(dy, saved) as arrays of one float dtype, same shape."""
    dy = as_array(fname, "grad_output", grad_output)
    s = as_array(fname, saved_name, saved)
    if dy.shape != s.shape:
        raise ValueError(f"{fname}: grad_output must have the shape of {saved_name} {s.shape}, "
                         f"got {dy.shape}")
    dtype = float_dtype(dy, s)
    return np.asarray(dy, dtype=dtype), np.asarray(s, dtype=dtype)


def _real(fname, name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a real number, got "
                        f"{_checks._describe(value)}")
    return float(value)


def relu(input, inplace=False):
    """``max(x, 0)`` elementwise (NaN stays NaN). With ``inplace=True`` (as torch) the result
    overwrites ``input`` when it is a writable C-contiguous float32/float64 array, and is
    returned; otherwise a new array is returned as without it."""
    x = _float("relu", "input", input)
    writable_here = (inplace and x is input and x.flags.c_contiguous and x.flags.writeable
                     and x.flags.aligned)
    x = contiguous(x, x.dtype)
    out = x if writable_here else np.empty_like(x)
    _act.relu_forward(x.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def relu_backward(grad_output, input):
    """``dx = dy where x > 0 else 0``; takes relu's input (its output works as well)."""
    dy, x = _grad_pair("relu_backward", grad_output, input, "input")
    dy, x = contiguous(dy, dy.dtype), contiguous(x, x.dtype)
    out = np.empty_like(dy)
    _act.relu_backward(dy.reshape(-1), x.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def leaky_relu(input, negative_slope=0.01):
    """``x if x > 0 else negative_slope * x``."""
    x = _float("leaky_relu", "input", input)
    s = _real("leaky_relu", "negative_slope", negative_slope)
    return np.where(x > 0, x, x * x.dtype.type(s))


def leaky_relu_backward(grad_output, input, negative_slope=0.01):
    """``dx = dy if x > 0 else negative_slope * dy``; takes the input."""
    dy, x = _grad_pair("leaky_relu_backward", grad_output, input, "input")
    s = _real("leaky_relu_backward", "negative_slope", negative_slope)
    return np.where(x > 0, dy, dy * dy.dtype.type(s))


def elu(input, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)`` (expm1: exact near 0)."""
    x = _float("elu", "input", input)
    a = _real("elu", "alpha", alpha)
    neg = np.expm1(np.minimum(x, 0))       # min: no overflow warning for large positive x
    neg *= x.dtype.type(a)
    return np.where(x > 0, x, neg)


def elu_backward(grad_output, input, alpha=1.0):
    """``dx = dy if x > 0 else dy * alpha * exp(x)``; takes the input."""
    dy, x = _grad_pair("elu_backward", grad_output, input, "input")
    a = _real("elu_backward", "alpha", alpha)
    neg = np.exp(np.minimum(x, 0))
    neg *= dy
    neg *= dy.dtype.type(a)
    return np.where(x > 0, dy, neg)


def selu(input):
    """``scale * elu(x, alpha)`` with torch's constants alpha = 1.6732632..., scale = 1.0507009..."""
    y = elu(input, _SELU_ALPHA)
    y *= y.dtype.type(_SELU_SCALE)
    return y


def selu_backward(grad_output, input):
    """``scale * elu_backward(dy, x, alpha)``; takes the input."""
    dx = elu_backward(grad_output, input, _SELU_ALPHA)
    dx *= dx.dtype.type(_SELU_SCALE)
    return dx


def _approximate(fname, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{fname}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate="none"):
    """GELU, as torch: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``, or with
    approximate='tanh' ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    from scipy.special import erf
    x = _float("gelu", "input", input)
    if _approximate("gelu", approximate) == "none":
        y = erf(x * x.dtype.type(1 / math.sqrt(2.0)))
    else:
        y = np.tanh(x.dtype.type(_SQRT_2_OVER_PI) * (x + x.dtype.type(0.044715) * x * x * x))
    y += 1
    y *= x
    y *= x.dtype.type(0.5)
    return y


def gelu_backward(grad_output, input, approximate="none"):
    """Takes the input. ``dx = dy * (Phi(x) + x * phi(x))`` (phi the normal density), or for
    'tanh' with t = tanh(u), u = sqrt(2/pi)(x + 0.044715 x^3):
    ``dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2))``."""
    from scipy.special import erf
    fname = "gelu_backward"
    dy, x = _grad_pair(fname, grad_output, input, "input")
    f = x.dtype.type
    if _approximate(fname, approximate) == "none":
        cdf = 0.5 * (1 + erf(x * f(1 / math.sqrt(2.0))))
        pdf = np.exp(-0.5 * x * x) * f(1 / math.sqrt(2 * math.pi))
        return dy * (cdf + x * pdf)
    x2 = x * x
    t = np.tanh(f(_SQRT_2_OVER_PI) * (x + f(0.044715) * x2 * x))
    d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * f(_SQRT_2_OVER_PI) * (1 + f(3 * 0.044715) * x2)
    return dy * d


def sigmoid(input):
    """``1 / (1 + exp(-x))``, computed without overflow (scipy's expit)."""
    from scipy.special import expit
    x = _float("sigmoid", "input", input)
    return expit(x)


def sigmoid_backward(grad_output, output):
    """``dx = dy * y * (1 - y)``; takes sigmoid's OUTPUT y."""
    dy, y = _grad_pair("sigmoid_backward", grad_output, output, "output")
    dx = np.subtract(1, y, dtype=y.dtype)
    dx *= y
    dx *= dy
    return dx


def tanh(input):
    """``tanh(x)``."""
    return np.tanh(_float("tanh", "input", input))


def tanh_backward(grad_output, output):
    """``dx = dy * (1 - y^2)``; takes tanh's OUTPUT y."""
    dy, y = _grad_pair("tanh_backward", grad_output, output, "output")
    dx = np.multiply(y, y)
    np.subtract(1, dx, out=dx)
    dx *= dy
    return dx


def _prelu_weight(fname, x, weight, dtype):
    w = as_array(fname, "weight", weight)
    channels = x.shape[1] if x.ndim >= 2 else 1
    if w.ndim != 1 or w.shape[0] not in (1, channels):
        raise ValueError(f"{fname}: weight must have shape (1,) or (C,) = ({channels},) (C the "
                         f"channels on dim 1 of input {x.shape}), got {w.shape}")
    w = np.asarray(w, dtype=dtype)
    if w.shape[0] == 1 or x.ndim < 2:
        return w.reshape(()) if w.shape[0] == 1 else w
    return w.reshape((channels,) + (1,) * (x.ndim - 2))


def prelu(input, weight):
    """``x if x > 0 else weight * x``, as torch: weight (1,) shared, or (C,) per channel on
    dim 1 (inputs with fewer than 2 dims have one channel)."""
    x = as_array("prelu", "input", input)
    dtype = float_dtype(x, as_array("prelu", "weight", weight))
    x = np.asarray(x, dtype=dtype)
    w = _prelu_weight("prelu", x, weight, dtype)
    return np.where(x > 0, x, w * x)


def prelu_backward(grad_output, input, weight):
    """Gradients of :func:`prelu`: ``(grad_input, grad_weight)``; takes the input.

    grad_input = dy if x > 0 else weight * dy; grad_weight sums dy * x over x <= 0, over all
    dims but the channel dim (over everything for a single weight), weight's shape.
    """
    fname = "prelu_backward"
    dy, x = _grad_pair(fname, grad_output, input, "input")
    wa = as_array(fname, "weight", weight)
    dtype = float_dtype(dy, x, wa)
    dy, x = dy.astype(dtype, copy=False), x.astype(dtype, copy=False)
    w = _prelu_weight(fname, x, weight, dtype)
    pos = x > 0
    gx = np.where(pos, dy, w * dy)
    contrib = np.where(pos, dtype.type(0), dy * x)
    if wa.shape[0] == 1 or x.ndim < 2:
        gw = contrib.sum(dtype=np.float64).reshape(1)
    else:
        gw = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)), dtype=np.float64)
    return gx, gw.astype(dtype)


def _softmax_view(fname, x, dim):
    if x.ndim == 0:
        raise ValueError(f"{fname}: input must have at least 1 dim, got a 0-d array")
    dim = as_int(fname, "dim", dim)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{fname}: dim must be in [{-x.ndim}, {x.ndim - 1}] for input of "
                         f"shape {x.shape}, got {dim}")
    dim %= x.ndim
    return (math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:]))


def _softmax(fname, input, dim, take_log):
    x = as_array(fname, "input", input)
    view = _softmax_view(fname, x, dim)
    dtype = float_dtype(x)
    out = np.empty(x.shape, dtype=dtype)
    if x.size:
        _act.softmax_forward(contiguous(x, dtype).reshape(view), out.reshape(view), take_log,
                             get_num_threads())
    return out


def _softmax_back(fname, grad_output, output, dim, take_log):
    dy, y = _grad_pair(fname, grad_output, output, "output")
    view = _softmax_view(fname, y, dim)
    dtype = y.dtype
    dx = np.empty(y.shape, dtype=dtype)
    if y.size:
        _act.softmax_backward(contiguous(dy, dtype).reshape(view),
                              contiguous(y, dtype).reshape(view), dx.reshape(view), take_log,
                              get_num_threads())
    return dx


def softmax(input, dim):
    """``exp(x - max) / sum(exp(x - max))`` along ``dim`` (any axis; the max is subtracted,
    so huge logits do not overflow)."""
    return _softmax("softmax", input, dim, False)


def log_softmax(input, dim):
    """``x - max - log(sum(exp(x - max)))`` along ``dim`` (finite for logits of +-1e4)."""
    return _softmax("log_softmax", input, dim, True)


def softmax_backward(grad_output, output, dim):
    """``dx = y * (dy - sum(dy * y, dim))``; takes softmax's OUTPUT y."""
    return _softmax_back("softmax_backward", grad_output, output, dim, False)


def log_softmax_backward(grad_output, output, dim):
    """``dx = dy - exp(y) * sum(dy, dim)``; takes log_softmax's OUTPUT y."""
    return _softmax_back("log_softmax_backward", grad_output, output, dim, True)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------

def _dropout(fname, input, p, training, rng, return_mask, mask_shape_of):
    x = as_array(fname, "input", input)
    p = _unit_float(fname, "p", p)
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fname}: rng must be a numpy.random.Generator or None, got "
                        f"{_checks._describe(rng)}")
    dtype = float_dtype(x)
    x = np.asarray(x, dtype=dtype)
    if not training:
        return (x, None) if return_mask else x
    mask = rng.random(mask_shape_of(x), dtype=np.float32) >= p   # keep with probability 1-p
    out = np.multiply(x, mask, dtype=dtype)
    if p < 1.0:
        out *= dtype.type(1.0 / (1.0 - p))
    return (out, mask) if return_mask else out


def dropout(input, p=0.5, training=True, rng=None, *, return_mask=False):
    """Zero each element with probability p, scale the others by 1/(1-p) (inverted dropout).

    ``rng`` is a numpy.random.Generator (None: a fresh unseeded one). training=False returns
    the input unchanged (as a float array). p=1 gives zeros. With keyword-only
    ``return_mask=True`` returns ``(output, mask)``, mask a bool array of the input's shape
    (None when not training), for :func:`dropout_backward`.
    """
    return _dropout("dropout", input, p, training, rng, return_mask, lambda x: x.shape)


def dropout2d(input, p=0.5, training=True, rng=None, *, return_mask=False):
    """Channel dropout: zero whole (H, W) planes with probability p, scale the others by
    1/(1-p). input (N, C, H, W) or (C, H, W); the mask is (N, C, 1, 1) or (C, 1, 1) and
    broadcasts in :func:`dropout_backward`."""
    x = as_array("dropout2d", "input", input)
    check_ndim("dropout2d", "input", x, (3, 4), "(N, C, H, W) or (C, H, W)")
    return _dropout("dropout2d", x, p, training, rng, return_mask,
                    lambda a: a.shape[:-2] + (1, 1))


def dropout_backward(grad_output, mask, p):
    """``dx = dy * mask / (1 - p)`` (zeros for p = 1); mask from ``dropout(..., return_mask=True)``
    (or dropout2d's, broadcast); mask None (not training) passes dy through."""
    fname = "dropout_backward"
    dy = _float(fname, "grad_output", grad_output)
    p = _unit_float(fname, "p", p)
    if mask is None:
        return dy
    m = np.asarray(mask)
    try:
        ok = np.broadcast_shapes(m.shape, dy.shape) == dy.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{fname}: mask of shape {m.shape} does not broadcast to grad_output's "
                         f"shape {dy.shape}")
    out = np.multiply(dy, m, dtype=dy.dtype)
    if p < 1.0:
        out *= dy.dtype.type(1.0 / (1.0 - p))
    return out


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def _pad_widths(fname, shape, pad, mode):
    """[(before, after)] for the last len(pad)//2 dims, first dim first (pad lists last dim
    first, as torch)."""
    if mode not in _PAD_MODES:
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
        full = [(0, 0)] * (x.ndim - len(dims)) + widths
        return np.pad(x, full, mode=_PAD_MODES[mode])
    value = 0.0 if value is None else _real(fname, "value", value)   # torch's default is None
    shape = list(x.shape)
    for d, (lo, hi) in zip(dims, widths):
        shape[d] += lo + hi
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
    shape = tuple(operator.index(v) for v in input_shape)
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


# --------------------------------------------------------------------------------------------
# Losses (cross-entropy fused with its log-softmax in _ops/loss.pyx; the others are numpy
# expressions). A loss returns a numpy scalar of the input's float dtype ('mean', 'sum') or an
# array ('none'); its backward takes grad_output = dL/dloss (1.0 for a scalar loss) and
# returns dL/dinput.
# --------------------------------------------------------------------------------------------

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(fname, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fname}: reduction must be 'mean', 'sum' or 'none', got "
                         f"{reduction!r}")
    return reduction


def _class_problem(fname, input, target, weight, ignore_index):
    """Checked (x3 (N, C, inner), t2 (N, inner) int64, w (C,) float64, out_shape, dtype)."""
    x = as_array(fname, "input", input)
    if x.ndim < 1:
        raise ValueError(f"{fname}: input must be (C,), (N, C) or (N, C, d1, ...), got a 0-d "
                         f"array")
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{fname}: target must hold integer class indices, got dtype "
                        f"{t.dtype} (probability targets are not supported)")
    batched = x.ndim >= 2
    c = x.shape[1] if batched else x.shape[0]
    expected = (x.shape[:1] + x.shape[2:]) if batched else ()
    if t.shape != expected:
        raise ValueError(f"{fname}: target must have shape {expected} (input's shape without "
                         f"the class dim 1), got {t.shape} for input {x.shape}")
    ignore_index = as_int(fname, "ignore_index", ignore_index)
    bad = ((t < 0) | (t >= c)) & (t != ignore_index)
    if bad.any():
        value = t[bad].reshape(-1)[0]
        raise ValueError(f"{fname}: target values must be class indices in [0, {c}) or "
                         f"ignore_index={ignore_index}, got {value}")
    if weight is None:
        w = np.ones(c)
    else:
        w = np.asarray(_checks.optional_vector(fname, "weight", weight, c, np.float64))
    dtype = float_dtype(x)
    n = x.shape[0] if batched else 1
    inner = math.prod(x.shape[2:]) if batched else 1
    x3 = contiguous(x, dtype).reshape(n, c, inner)
    t2 = np.ascontiguousarray(t, dtype=np.int64).reshape(n, inner)
    return x3, t2, w, expected, dtype, ignore_index


def _grad_per_item(fname, grad_output, reduction, shape, denom):
    """dL/d(per-item loss) as float64 of ``shape``: grad_output (scalar for mean/sum, an
    array of ``shape`` for 'none'), divided by ``denom`` for 'mean'."""
    g = np.asarray(as_array(fname, "grad_output", grad_output), dtype=np.float64)
    if reduction == "none":
        if g.shape != tuple(shape):
            raise ValueError(f"{fname}: grad_output must have the loss's shape {tuple(shape)} "
                             f"for reduction='none', got {g.shape}")
        return g
    if g.size != 1:
        raise ValueError(f"{fname}: grad_output must be a scalar for reduction={reduction!r}, "
                         f"got shape {g.shape}")
    value = float(g.reshape(-1)[0])
    if reduction == "mean":
        value = value / denom if denom else math.nan
    return np.full(shape, value)


def _reduce(per_item, reduction, dtype, denom=None):
    if reduction == "none":
        return per_item.astype(dtype)
    total = per_item.sum()
    if reduction == "mean":
        total = total / denom if denom else math.nan   # torch: nan when nothing counts
    return dtype.type(total)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Cross-entropy of class logits, as ``torch.nn.functional.cross_entropy`` (class-index
    targets).

    input (N, C), (N, C, d1, ...) or (C,); target (N,), (N, d1, ...) or () integers in [0, C)
    or ignore_index; weight (C,) per-class weights. With log p = log_softmax(input, 1), eps the
    label smoothing and w_t the target's weight, each non-ignored position contributes

        l = (1 - eps) * w_t * (-log p_t) + (eps / C) * sum_c w_c * (-log p_c)

    reduction 'none' -> l per position (0 where ignored), 'sum' -> sum l, 'mean' -> sum l /
    sum of w_t over non-ignored positions (torch's weighted mean; nan if all are ignored).
    Logits of +-1e4 give finite results (log-sum-exp after subtracting the max).
    """
    fname = "cross_entropy"
    reduction = _reduction(fname, reduction)
    eps = _unit_float(fname, "label_smoothing", label_smoothing)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    loss = np.zeros(t2.shape)
    wt = np.zeros(t2.shape)
    _loss.cross_entropy_forward(x3, t2, w, ignore_index, eps, loss, wt, get_num_threads())
    return _reduce(loss.reshape(shape), reduction, dtype, wt.sum())


def cross_entropy_backward(grad_output, input, target, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0):
    """dL/dinput of :func:`cross_entropy` (input's shape), grad_output = dL/dloss.

    With p = softmax(input, 1), W = sum_c w_c and g the gradient reaching a position's loss
    (grad_output, divided by sum w_t for 'mean'):

        dx_c = g * ((1 - eps) * w_t * (p_c - [c == t]) + (eps / C) * (W * p_c - w_c))

    and 0 at ignored positions.
    """
    fname = "cross_entropy_backward"
    reduction = _reduction(fname, reduction)
    eps = _unit_float(fname, "label_smoothing", label_smoothing)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    denom = w[np.where(valid, t2, 0)][valid].sum() if reduction == "mean" else None
    g = _grad_per_item(fname, grad_output, reduction, shape, denom)
    dx = np.empty(x3.shape, dtype=dtype)
    _loss.cross_entropy_backward(x3, t2, w, ignore_index, eps,
                                 np.ascontiguousarray(g).reshape(t2.shape), dx,
                                 get_num_threads())
    return dx.reshape(np.shape(input))


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities, as ``torch.nn.functional.nll_loss``.

    Shapes as :func:`cross_entropy`; per position ``l = -w_t * input[t]`` (0 where ignored);
    'mean' divides the sum by the sum of w_t over non-ignored positions.
    """
    fname = "nll_loss"
    reduction = _reduction(fname, reduction)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    safe = np.where(valid, t2, 0)
    picked = np.take_along_axis(x3, safe[:, None, :], axis=1)[:, 0, :].astype(np.float64)
    wt = np.where(valid, w[safe], 0.0)
    loss = -wt * picked
    return _reduce(loss.reshape(shape), reduction, dtype, wt.sum())


def nll_loss_backward(grad_output, input, target, weight=None, ignore_index=-100,
                      reduction="mean"):
    """dL/dinput of :func:`nll_loss`: ``-g * w_t`` at each target class, 0 elsewhere."""
    fname = "nll_loss_backward"
    reduction = _reduction(fname, reduction)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    safe = np.where(valid, t2, 0)
    wt = np.where(valid, w[safe], 0.0)
    g = _grad_per_item(fname, grad_output, reduction, shape, wt.sum()).reshape(t2.shape)
    dx = np.zeros(x3.shape, dtype=dtype)
    np.put_along_axis(dx, safe[:, None, :], (-g * wt)[:, None, :].astype(dtype), axis=1)
    return dx.reshape(np.shape(input))


def _pair(fname, input, target):
    x = as_array(fname, "input", input)
    t = as_array(fname, "target", target)
    if x.shape != t.shape:
        raise ValueError(f"{fname}: target must have the input's shape {x.shape}, got {t.shape}")
    dtype = float_dtype(x, t)
    return np.asarray(x, dtype=dtype), np.asarray(t, dtype=dtype), dtype


def mse_loss(input, target, reduction="mean"):
    """``(input - target)^2``, averaged / summed / per element (input and target same shape)."""
    fname = "mse_loss"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    d = x - t
    d *= d
    return _reduce(d.astype(np.float64, copy=False) if reduction != "none" else d, reduction,
                   dtype, x.size)


def mse_loss_backward(grad_output, input, target, reduction="mean"):
    """``dx = 2 * (input - target) * g`` (g = grad_output, / numel for 'mean')."""
    fname = "mse_loss_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    return (2.0 * (x - t) * g).astype(dtype)


def l1_loss(input, target, reduction="mean"):
    """``|input - target|``, averaged / summed / per element."""
    fname = "l1_loss"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    d = np.abs(x - t)
    return _reduce(d.astype(np.float64, copy=False) if reduction != "none" else d, reduction,
                   dtype, x.size)


def l1_loss_backward(grad_output, input, target, reduction="mean"):
    """``dx = sign(input - target) * g`` (0 where equal, as torch)."""
    fname = "l1_loss_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    return (np.sign(x - t) * g).astype(dtype)


def _bce_args(fname, input, target, weight, pos_weight):
    x, t, dtype = _pair(fname, input, target)
    extra = []
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is None:
            extra.append(None)
            continue
        arr = as_array(fname, name, value)
        try:
            ok = np.broadcast_shapes(arr.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{fname}: {name} of shape {arr.shape} must broadcast to the "
                             f"input's shape {x.shape}")
        extra.append(np.asarray(arr, dtype=np.float64))
    return x.astype(np.float64), t.astype(np.float64), dtype, extra[0], extra[1]


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid + binary cross-entropy in one stable expression, as torch's.

    With lw = 1 + (pos_weight - 1) * target (lw = 1 without pos_weight) and
    softplus(z) = log(1 + exp(z)) computed as max(z, 0) + log1p(exp(-|z|)):

        l = weight * ((1 - target) * x + lw * softplus(-x))

    (= -weight * (pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))). weight
    broadcasts to the input; pos_weight too (typically (C,) along the last dim).
    """
    fname = "binary_cross_entropy_with_logits"
    reduction = _reduction(fname, reduction)
    x, t, dtype, w, pw = _bce_args(fname, input, target, weight, pos_weight)
    softplus_neg = np.maximum(-x, 0) + np.log1p(np.exp(-np.abs(x)))
    lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    loss = (1.0 - t) * x + lw * softplus_neg
    if w is not None:
        loss = loss * w
    return _reduce(loss, reduction, dtype, x.size)


def binary_cross_entropy_with_logits_backward(grad_output, input, target, weight=None,
                                              reduction="mean", pos_weight=None):
    """``dx = g * weight * ((1 - target) - lw * sigmoid(-x))`` (= g * weight * (sigmoid(x) -
    target) without pos_weight); g = grad_output, / numel for 'mean'."""
    from scipy.special import expit
    fname = "binary_cross_entropy_with_logits_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype, w, pw = _bce_args(fname, input, target, weight, pos_weight)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    dx = (1.0 - t) - lw * expit(-x)
    if w is not None:
        dx = dx * w
    return (dx * g).astype(dtype)


# --------------------------------------------------------------------------------------------
# Batch-norm folding (inference)
# --------------------------------------------------------------------------------------------

def fuse_conv_bn(weight, bias, running_mean, running_var, bn_weight=None, bn_bias=None,
                 eps=1e-5):
    """Fold an eval-mode batch norm into the conv or linear layer before it.

    weight (C_out, ...) (conv (C_out, C_in/groups, *kernel) or linear (out, in)), bias (C_out,)
    or None; the batch norm's running statistics and affine parameters (C_out,). With
    s = bn_weight / sqrt(running_var + eps):

        fused_weight = weight * s (per output channel)
        fused_bias   = (bias - running_mean) * s + bn_bias

    so that ``conv(x, fused_weight, fused_bias) == batch_norm(conv(x, weight, bias), ...)``
    in eval mode. Returns ``(fused_weight, fused_bias)`` in weight's float dtype.
    """
    fname = "fuse_conv_bn"
    w = as_array(fname, "weight", weight)
    if w.ndim < 2:
        raise ValueError(f"{fname}: weight must be (C_out, ...) with at least 2 dims, got shape "
                         f"{w.shape}")
    c = w.shape[0]
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(w)
    vec = {}
    for name, value, default in (("bias", bias, 0.0), ("running_mean", running_mean, None),
                                 ("running_var", running_var, None),
                                 ("bn_weight", bn_weight, 1.0), ("bn_bias", bn_bias, 0.0)):
        if value is None:
            if default is None:
                raise TypeError(f"{fname}: {name} must be an array, got None")
            vec[name] = np.full(c, default)
        else:
            vec[name] = np.asarray(_checks.optional_vector(fname, name, value, c, np.float64))
    if (vec["running_var"] < 0).any():
        raise ValueError(f"{fname}: running_var must be non-negative")
    s = vec["bn_weight"] / np.sqrt(vec["running_var"] + eps)
    fused_w = (w.astype(np.float64) * s.reshape((c,) + (1,) * (w.ndim - 1))).astype(dtype)
    fused_b = ((vec["bias"] - vec["running_mean"]) * s + vec["bn_bias"]).astype(dtype)
    return fused_w, fused_b
