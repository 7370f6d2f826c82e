"""Convolution (1-D/2-D/3-D, Winograd for 3x3) and unfold / fold (im2col / col2im)."""
from __future__ import annotations

import functools
import math
import os
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import conv as _conv
from fastcnn._ops import depthwise as _depthwise
from fastcnn._ops import im2col as _im2col
from fastcnn._ops import winograd as _winograd
from fastcnn._ops.parallel import simd_path
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch
from fastcnn.functional._common import (
    _INT32_MAX,
    _WEIGHT_GRAD_CHUNKS,
    _delegate,
    _fused_activation,
    _mask3,
    _rows,
    conv_output_size,
)

__all__ = [
    "conv1d", "conv1d_backward", "conv2d", "conv2d_backward", "conv3d", "conv3d_backward",
    "unfold", "fold", "unfold_backward", "fold_backward", "set_conv_autotune",
]


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


def _split_operands(fname, nd, x, w, weight_layout):
    """What convolution and transposed convolution check alike about input and weight:
    (batched, n, c_in, in_size, kernel)."""
    check_ndim(fname, "weight", w, (nd + 2,), weight_layout)
    check_ndim(fname, "input", x, (nd + 1, nd + 2),
               "(N, C, *spatial), or (C, *spatial) for one unbatched sample")
    batched = x.ndim == nd + 2
    n = x.shape[0] if batched else 1
    c_in = x.shape[1] if batched else x.shape[0]
    in_size = tuple(x.shape[-nd:])
    if 0 in in_size:     # as torch: an all-padding output would index an empty input row
        raise ValueError(f"{fname}: input must have non-zero spatial sizes (only the batch may "
                         f"be empty), got shape {x.shape}")
    kernel = tuple(w.shape[2:])
    if 0 in w.shape:
        raise ValueError(f"{fname}: weight must have no zero-size axis, got shape {w.shape}")
    return batched, n, c_in, in_size, kernel


def _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups) -> _ConvGeometry:
    batched, n, c_in, in_size, kernel = _split_operands(
        fname, nd, x, w, "(out_channels, in_channels/groups, *kernel_size)")
    groups = as_int(fname, "groups", groups, minimum=1)
    c_out, c_per_group = w.shape[:2]
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


def _is_depthwise(geom):
    """One group per input channel (each convolved with its own C_out/C_in kernels): direct
    loops (_ops/depthwise.pyx) instead of C_in one-row GEMMs."""
    return geom.groups == geom.in_channels > 1


# Direct convolution (_conv_direct.h) vectorized along output channels, for 2-D layers where
# im2col costs more than the GEMM it feeds: small maps with few output channels and a moderate
# sum (C_in*kH*kW taps), and stride-2 layers (whose im2col reads with poor locality). Measured
# against im2col + GEMM (float32, 2 threads): LeNet's second layer 0.41 -> 0.26 ms,
# resnet_small's stride-2 3x3 layers 1.28 -> 0.46 and 0.79 -> 0.43 ms; stride 2, 64 -> 128
# channels on 56x56 maps 12.3 -> 9.9 ms, 128 -> 128 23.8 -> 18.8 ms; slower for 1x1 kernels,
# fewer than 64 taps, 32x32 maps at stride 1, and from 256 output channels (128 -> 256 at
# stride 2 from 28x28 maps: 11.9 vs 11.0 ms). 3x3 stride-1 layers with >= 16 channels go to
# Winograd first. Only where a vector clone of the kernel runs (AVX2 or AVX-512); otherwise
# im2col + GEMM.
_DIRECT_MAX_OUT_CHANNELS = 64
_DIRECT_TAPS = (64, 512)
_DIRECT_MAX_POSITIONS = 256
_DIRECT_STRIDE2_MAX_OUT_CHANNELS = 128
_DIRECT_STRIDE2_MAX_TAPS = 1152
_direct_vector = simd_path() in ("x86-64-v4", "x86-64-v3")


def _taps(geom):
    return geom.in_channels * geom.kernel[1] * geom.kernel[2]


def _direct_ok(geom, nd):
    taps = _taps(geom)
    small = (geom.out_channels <= _DIRECT_MAX_OUT_CHANNELS and taps <= _DIRECT_TAPS[1]
             and math.prod(geom.out_size) <= _DIRECT_MAX_POSITIONS and max(geom.stride) <= 2)
    strided = (max(geom.stride) == 2 and geom.out_channels <= _DIRECT_STRIDE2_MAX_OUT_CHANNELS
               and taps <= _DIRECT_STRIDE2_MAX_TAPS)
    return (_direct_vector and nd == 2 and geom.groups == 1 and geom.kernel != (1, 1, 1)
            and taps >= _DIRECT_TAPS[0] and (small or strided))


# The direct kernel vectorized along output rows (_conv_direct.h, FC_DIRECT_CONV_ROWS): 16
# outputs of a row by 8 channels per block, each tap one contiguous load and 8 multiply-adds,
# the results stored as they lie. It needs maps wide enough to fill its vectors (16 floats; a
# width of 24 uses 3/4 of the lanes of its two blocks); a width stride is handled by storing
# each input plane as its column phases. Measured against im2col + GEMM (float32, 2 threads):
# LeNet's first layer 0.344 -> 0.165 ms, resnet_small's stem 0.326 -> 0.181 ms, 32 -> 32
# channels 5x5 on 32x32 maps 14.4 -> 7.5 ms, 3 -> 64 channels 7x7 on 64x64 19.1 -> 11.6 ms,
# 3 -> 32 channels 3x3 stride 2 on 64x64 1.07 -> 0.89 ms; slower for 1x1 kernels (a plain
# GEMM), and than the channel kernel at stride 2 from 64 taps on (16 -> 32 channels 3x3 stride
# 2: 0.53 vs 0.45 ms). Against Winograd it wins up to 16 output channels (16 -> 16 on 32x32:
# 1.08 -> 0.74 ms; 64 -> 16: 4.47 -> 2.90 ms) and loses from 32 on (32 -> 32 on 32x32: 5.7 vs
# 5.5 ms; 16 -> 128 on 28x28: 2.54 vs 2.33 ms).
_ROWS_MIN_WIDTH = 16
_ROWS_MIN_LANE_USE = 0.75
_ROWS_OVER_WINOGRAD_MAX_OUT_CHANNELS = 16


def _rows_ok(geom, nd):
    width = geom.out_size[-1]
    lane_use = width / (-(-width // 16) * 16)
    return (_direct_vector and nd == 2 and geom.groups == 1 and geom.kernel != (1, 1, 1)
            and width >= _ROWS_MIN_WIDTH and lane_use >= _ROWS_MIN_LANE_USE
            and (geom.stride[2] == 1 or _taps(geom) < _DIRECT_TAPS[0]))


# The weight gradient by the direct kernels' layout (_conv_direct.h fc_dw_rows): no im2col,
# products accumulated in vector lanes per chunk of samples. Measured against im2col + GEMM
# (or Winograd's, where it applies; float32, 2 threads): LeNet's layers 0.30 -> 0.22 and 0.70
# -> 0.55 ms, resnet_small's stem 0.29 -> 0.24 ms, its 16-channel 3x3 layers 1.13 -> 0.89 ms
# (32x32 maps) and 1.01 -> 0.84 ms (stride 2), 5x5 32 -> 32 channels on 32x32 maps 21.2 -> 8.8
# ms; slower from 32 channels on both sides with 3x3 kernels (32 -> 32 on 16x16: 1.17 vs
# 0.82 ms; 64 -> 128 at stride 2: 15.5 vs 12.6 ms), where the GEMM's operands are large enough.
_DW_ROWS_MAX_CHANNELS = 16         # min(C_in, C_out) at most this, or
_DW_ROWS_MIN_KERNEL_AREA = 25      # a kernel this large
_DW_ROWS_MAX_OUT_CHANNELS = 64
_DW_ROWS_MIN_WIDTH = 8


def _dw_rows_ok(geom, nd):
    return (_direct_vector and nd == 2 and geom.groups == 1 and geom.kernel != (1, 1, 1)
            and geom.out_channels <= _DW_ROWS_MAX_OUT_CHANNELS
            and geom.out_size[-1] >= _DW_ROWS_MIN_WIDTH
            and (min(geom.in_channels, geom.out_channels) <= _DW_ROWS_MAX_CHANNELS
                 or geom.kernel[1] * geom.kernel[2] >= _DW_ROWS_MIN_KERNEL_AREA))


def _direct_weight_grad(x2, dy2, geom, dtype):
    """dW (C_out, C_in, kH, kW) of a 2-D one-group convolution by _conv.direct_weight_grad (no
    im2col): double partials over fixed sample chunks, added in chunk order."""
    n, c_in, c_out = geom.n, geom.in_channels, geom.out_channels
    _, kh, kw = geom.kernel
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    wq = -(-wp // sw)
    taps = c_in * kh * kw
    cpad, kpad, ldy = _conv.direct_weight_grad_layout(c_out, taps, ow)
    offsets = np.zeros(kpad, np.intp)
    offsets[:taps] = _direct_offsets(c_in, kh, kw, dh, dw, hp, wq, sw)
    threads = get_num_threads()
    per_thread = (_conv.direct_workspace_size(c_in * sw, hp, wq, sh, sw) + cpad * oh * ldy
                  + cpad * kpad * 16)
    ws = scratch(per_thread * threads, dtype)
    parts = np.empty((max(1, min(n, _WEIGHT_GRAD_CHUNKS)), c_out * taps))
    _conv.direct_weight_grad(x2, dy2, parts, ws, offsets, taps, c_in, *geom.in_size, ph, pw,
                             hp, wp, oh, ow, sh, sw, threads)
    total = parts[0].copy()
    for part in parts[1:]:          # in chunk order: the same bits for any number of threads
        total += part
    return total.astype(dtype).reshape(c_out, c_in, kh, kw)


# The input gradient by the row kernel needs at least one full block of its 8 output channels
# (the layer's input channels): with 1 to 4 (a first layer's) it ran slower than col2im (LeNet's
# first layer 0.69 vs 0.28 ms; 3 channels 0.42 vs 0.39 ms), with 8 it ran 0.46 vs 1.17 ms.
_ROWS_INPUT_GRAD_MIN_CHANNELS = 8


def _rows_input_grad(geom, nd):
    """The input gradient of a stride-1 convolution as the convolution the row kernel runs: dy
    by the kernels transposed and flipped, padded span - padding (span = dilation * (k - 1)),
    giving the input's size. Its geometry when the row kernel is the choice for it (as for a
    forward: wide maps, and Winograd not ahead, i.e. at most 16 input channels where Winograd
    applies; and at least 8 input channels), else None."""
    if (nd != 2 or geom.groups != 1 or geom.stride != (1, 1, 1)
            or geom.in_channels < _ROWS_INPUT_GRAD_MIN_CHANNELS):
        return None
    span = tuple(d * (k - 1) for d, k in zip(geom.dilation, geom.kernel))
    if any(p > s for p, s in zip(geom.padding, span)):
        return None
    as_conv = replace(geom, in_channels=geom.out_channels, out_channels=geom.in_channels,
                      in_size=geom.out_size, out_size=geom.in_size,
                      padding=tuple(s - p for s, p in zip(span, geom.padding)))
    if not _rows_ok(as_conv, nd):
        return None
    if (_winograd_ok(geom, nd, "input gradient")
            and geom.in_channels > _ROWS_OVER_WINOGRAD_MAX_OUT_CHANNELS):
        return None
    return as_conv


@functools.lru_cache(maxsize=64)
def _direct_offsets(c_in, kh, kw, dh, dw, hp, wp, phases=1):
    """Tap k = (ci, a, e) of the direct kernel reads the padded planes at ci*hp*wp + a*dh*wp +
    e*dw from each output's corner. With ``phases`` column phases per plane (the row kernel
    with a width stride; rows wp long), column e*dw is phase (e*dw) % phases, position
    (e*dw) // phases."""
    ci, a, e = np.meshgrid(np.arange(c_in), np.arange(kh), np.arange(kw), indexing="ij")
    col = e * dw
    offsets = (ci * phases * hp * wp + (col % phases) * hp * wp + a * dh * wp
               + col // phases).ravel().astype(np.intp)
    offsets.flags.writeable = False
    return offsets


def _direct_conv2d(x2, w, b1, out2, geom, dtype, relu=False, by_rows=False, out_layout=None):
    """out2 (N, C_out*L) by _conv.direct_forward: weight transposed to (K, C_out padded to 16);
    ``by_rows``: the kernel vectorized along output rows; ``out_layout``: where its outputs go
    (see direct_forward)."""
    c_out, c_in, kh, kw = w.shape
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    cpad = -(-c_out // 16) * 16
    wt = np.zeros((c_in * kh * kw, cpad), dtype=dtype)
    wt[:, :c_out] = w.reshape(c_out, -1).T
    bias = np.zeros(cpad, dtype=dtype)
    if b1.size:
        bias[:c_out] = b1
    phases = sw if by_rows else 1
    wq = -(-wp // phases)
    offsets = _direct_offsets(c_in, kh, kw, dh, dw, hp, wq, phases)
    threads = get_num_threads()
    ws = scratch(_conv.direct_workspace_size(c_in * phases, hp, wq, sh, sw) * threads, dtype)
    _conv.direct_forward(x2, wt, bias, out2, ws, offsets, c_in, *geom.in_size, ph, pw, hp, wp,
                         oh, ow, sh, sw, by_rows, relu, threads, out_layout)


def _winograd_possible(geom, nd):
    """A 2-D 3x3 stride-1 convolution without dilation or groups, padding <= 2 on both axes."""
    return (nd == 2 and geom.kernel == (1, 3, 3) and geom.stride == (1, 1, 1)
            and geom.dilation == (1, 1, 1) and geom.groups == 1
            and geom.padding[1] == geom.padding[2] <= 2)


def _winograd_ok(geom, nd, direction="forward"):
    """The default rule: Winograd where possible and both channel counts reach the minimum,
    unless the direct kernels are faster: the row kernel for the forward (few output channels
    on wide maps), the direct weight gradient (16 channels or fewer on one side)."""
    if not (_winograd_possible(geom, nd)
            and min(geom.in_channels, geom.out_channels) >= _WINOGRAD_MIN_CHANNELS):
        return False
    if direction == "forward":
        return not (geom.out_channels <= _ROWS_OVER_WINOGRAD_MAX_OUT_CHANNELS
                    and _rows_ok(geom, nd))
    if direction == "weight gradient":
        return not _dw_rows_ok(geom, nd)
    return True


# Autotuning (as torch.backends.cudnn.benchmark): with it on, the first call of each shape
# times both algorithms and the faster one is kept for that shape.
_autotune = {"enabled": os.environ.get("FASTCNN_AUTOTUNE", "") not in ("", "0")}
_tuned: dict = {}
_tuned_lock = threading.Lock()


def set_conv_autotune(enabled: bool = True) -> None:
    """Choose between Winograd and the other path (im2col + GEMM, or the direct kernel) for
    each 3x3 stride-1 convolution shape by timing both on its first call (forward, input
    gradient and weight gradient separately), instead of the channel-count rule. Off by
    default; ``FASTCNN_AUTOTUNE=1`` turns it on at import. The results of both algorithms agree
    to rounding; the choice is cached per shape, dtype and thread count for the life of the
    process."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_conv_autotune: enabled must be True or False, got {enabled!r}")
    _autotune["enabled"] = enabled


def _pick_winograd(direction, geom, nd, dtype, run_winograd, run_im2col):
    """Whether to use Winograd; while tuning, both candidates run once more and are timed."""
    if not _winograd_possible(geom, nd):
        return False
    if not _autotune["enabled"]:
        return _winograd_ok(geom, nd, direction)
    key = (direction, geom.n, geom.in_channels, geom.out_channels, geom.in_size, geom.padding,
           np.dtype(dtype).name, get_num_threads())
    with _tuned_lock:
        choice = _tuned.get(key)
    if choice is None:
        timings = {}
        for use_winograd, run in ((True, run_winograd), (False, run_im2col)):
            run()                                   # warm: workspaces, caches
            start = time.perf_counter()
            run()
            timings[use_winograd] = time.perf_counter() - start
        choice = timings[True] < timings[False]
        with _tuned_lock:
            _tuned[key] = choice
    return choice


def _winograd_conv2d(x2, w, bias, out2, in_size, pad, out_size, dtype, flip=False,
                     relu=False):
    """out2 (N, C_out*OH*OW) = 3x3 stride-1 convolution of x2 (N, C*H*W) by w (C_out, C, 3, 3),
    or with ``flip`` by the kernels of w (C, C_out, 3, 3) transposed and rotated (the input
    gradient's); plus bias, then max(., 0) if relu."""
    n = x2.shape[0]
    k, c = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
    threads = get_num_threads()
    u = np.empty((16, k, c), dtype=dtype)                # U = G g G^T, one GEMM operand per xi
    _winograd.weight_transform(w, u, flip, threads)
    tiles = ((out_size[0] + 1) // 2) * ((out_size[1] + 1) // 2)
    block = _winograd.block_size(n, tiles)
    ws = scratch(_winograd.workspace_size(c, k, out_size[0], out_size[1], block) * threads,
                 dtype)
    with single_threaded_blas:
        _winograd.forward(x2, u, bias, out2, ws, in_size[0], in_size[1], pad, out_size[0],
                          out_size[1], block, relu, threads)


# The Winograd weight gradient sums over samples in fixed chunks (one dU partial each, added in
# chunk order: the same bits for any number of threads). Each chunk gets at least about this
# many tiles, at least 2 and at most _WEIGHT_GRAD_CHUNKS chunks: on small maps, 8 chunks of a
# batch of 32 left GEMMs too short (8x8 maps: 64 tiles; 2 chunks ran 1.43 -> 0.81 ms).
_WINOGRAD_TILES_PER_CHUNK = 2048
# Tiles per GEMM within a chunk: the GEMMs' inner dimension (longer than the forward's 128,
# measured: VGG 32-channel dW 6.1 -> 5.7 ms).
_WINOGRAD_WEIGHT_BLOCK_TILES = 256


def _winograd_weight_grad(x2, dy2, geom, dtype):
    """dW (C_out, C, 3, 3) of a 3x3 stride-1 convolution: the dU partials of fixed sample
    chunks from the kernel, added in chunk order, then dW = G^T dU G."""
    n, c, k = geom.n, geom.in_channels, geom.out_channels
    (h, w), (oh, ow) = geom.in_size, geom.out_size
    tiles = ((oh + 1) // 2) * ((ow + 1) // 2)
    chunks = min(n, _WEIGHT_GRAD_CHUNKS, max(2, n * tiles // _WINOGRAD_TILES_PER_CHUNK))
    threads = get_num_threads()
    block = max(1, min(n, _WINOGRAD_WEIGHT_BLOCK_TILES // tiles))
    ws = scratch(_winograd.workspace_size(c, k, oh, ow, block) * threads, dtype)
    du = _memory.empty((chunks, 16, k * c), dtype)
    with single_threaded_blas:
        _winograd.weight_grad(x2, dy2, du, ws, h, w, geom.padding[1], oh, ow, block, threads)
    grad_w = np.empty((k, c, 3, 3), dtype=dtype)
    _winograd.weight_grad_finish(du, grad_w, threads)
    return grad_w


def _conv_forward(fname, nd, input, weight, bias, stride, padding, dilation, groups,
                  activation=None):
    relu = _fused_activation(fname, activation) == "relu"
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    dtype = float_dtype(x, w, b)
    w2 = contiguous(w, dtype).reshape(geom.out_channels, -1)
    b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, dtype)
    x2 = _rows(contiguous(x, dtype), geom.n)
    out = _memory.empty((geom.n, geom.out_channels) + geom.out_size, dtype)
    if geom.n == 0:
        return out if geom.batched else out[0]

    def run_winograd():
        _winograd_conv2d(x2, w2.reshape(w.shape), b1, _rows(out, geom.n), geom.in_size,
                         geom.padding[1], geom.out_size, dtype, relu=relu)

    def run_im2col():
        threads = get_num_threads()
        args = geom.kernel_args()
        ws, block = _conv_scratch(geom, args, threads, dtype)
        with single_threaded_blas:
            _conv.conv_forward(x2, w2, b1, _rows(out, geom.n), ws, geom.groups, *args, block,
                               relu, threads)

    def run_direct(by_rows=False):
        _direct_conv2d(x2, w2.reshape(w.shape), b1, _rows(out, geom.n), geom, dtype, relu,
                       by_rows)

    if _rows_ok(geom, nd):
        run_other = functools.partial(run_direct, by_rows=True)
    else:
        run_other = run_direct if _direct_ok(geom, nd) else run_im2col
    if _is_depthwise(geom):
        _depthwise.forward(x2.reshape(geom.n, geom.in_channels, -1), w2, b1,
                           out.reshape(geom.n, geom.out_channels, -1), *geom.kernel_args(),
                           relu, get_num_threads())
    elif _pick_winograd("forward", geom, nd, dtype, run_winograd, run_other):
        run_winograd()
    else:
        run_other()
    return out if geom.batched else out[0]


def _conv_backward(fname, nd, grad_output, input, weight, stride, padding, dilation, groups,
                   output_mask):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    dy = as_array(fname, "grad_output", grad_output)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    b = _BackwardOperands(fname, geom, x, w, dy, output_mask)
    need_x, need_w = b.need_x, b.need_w
    dtype, n, threads = b.dtype, geom.n, b.threads
    x2, w2, dy3, grad_x = b.x2, b.w2, b.dy3, b.grad_x
    empty = np.empty((0, 0), dtype=dtype)

    def run_im2col(with_x, with_w):
        args = geom.kernel_args()
        ws, block = _conv_scratch(geom, args, threads, dtype)
        with single_threaded_blas:
            _conv.conv_backward(x2, w2, _rows(dy3, n), _rows(grad_x, n) if with_x else empty,
                                b.parts if with_w else empty, ws, with_x, with_w, geom.groups,
                                *args, block, threads)

    def run_winograd():
        # dL/dx is the convolution of dy with the kernels flipped and transposed, padded 2 - p
        _winograd_conv2d(_rows(dy3, n), w2.reshape(w.shape), np.empty(0, dtype),
                         _rows(grad_x, n), geom.out_size, 2 - geom.padding[1], geom.in_size,
                         dtype, flip=True)

    def run_winograd_weight():
        b.grad_w = _winograd_weight_grad(x2, _rows(dy3, n), geom, dtype)

    as_conv = _rows_input_grad(geom, nd) if need_x and n else None
    if as_conv is not None:
        flipped = np.ascontiguousarray(w2.reshape(w.shape).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        _direct_conv2d(_rows(dy3, n), flipped, np.empty(0, dtype), _rows(grad_x, n), as_conv,
                       dtype, by_rows=True)
        need_x = False

    if n and _is_depthwise(geom):
        x3 = x2.reshape(n, geom.in_channels, -1)
        if need_x:
            _depthwise.grad_input(dy3, w2, grad_x.reshape(n, geom.in_channels, -1),
                                  *geom.kernel_args(), threads)
        if need_w:
            acc = np.empty(w2.shape)
            _depthwise.grad_weight(dy3, x3, acc, *geom.kernel_args(), threads)
            b.grad_w = acc.astype(dtype, copy=False)
        return b.gradients()
    if need_x and n and _pick_winograd("input gradient", geom, nd, dtype, run_winograd,
                                       lambda: run_im2col(True, False)):
        run_winograd()
        need_x = False
    def run_direct_weight():
        b.grad_w = _direct_weight_grad(x2, _rows(dy3, n), geom, dtype)

    direct_w = _dw_rows_ok(geom, nd)
    if need_w and n and _pick_winograd("weight gradient", geom, nd, dtype, run_winograd_weight,
                                       run_direct_weight if direct_w else
                                       lambda: run_im2col(False, True)):
        run_winograd_weight()
        need_w = False
    elif need_w and n and direct_w:
        run_direct_weight()
        need_w = False
    if (need_x or need_w) and n:
        run_im2col(need_x, need_w)
    return b.gradients()


class _BackwardOperands:
    """What the backward of convolution and of transposed convolution share: the checked
    grad_output, the operands as contiguous (rows, ...) arrays of one dtype, the output
    buffers, and the final reduction (weight partials in chunk order, bias sums)."""

    def __init__(self, fname, geom, x, w, dy, output_mask):
        self.need_x, self.need_w, self.need_b = _mask3(fname, output_mask)
        expected = ((geom.n,) if geom.batched else ()) + (geom.out_channels,) + geom.out_size
        if dy.shape != expected:
            raise ValueError(f"{fname}: grad_output must have the forward output's shape "
                             f"{expected}, got {dy.shape}")
        self.geom, self.weight_shape = geom, w.shape
        self.dtype = dtype = float_dtype(x, w, dy)
        n = geom.n
        self.threads = get_num_threads()
        self.x2 = _rows(contiguous(x, dtype), n)
        self.w2 = contiguous(w, dtype).reshape(w.shape[0], -1)
        self.dy3 = contiguous(dy, dtype).reshape(n, geom.out_channels, math.prod(geom.out_size))
        self.grad_x = (_memory.empty((n, geom.in_channels) + geom.in_size, dtype)
                       if self.need_x else None)
        self.grad_w = None      # set instead of the partials by the Winograd and depthwise paths

    @functools.cached_property
    def parts(self):
        """One weight-gradient partial per fixed chunk of the batch, each fully written by the
        im2col kernels (the first sample of a chunk overwrites); an empty batch runs no kernel.
        Made only when those kernels run."""
        n = self.geom.n
        alloc = np.empty if n else np.zeros
        return alloc((max(1, min(n, _WEIGHT_GRAD_CHUNKS)), self.w2.size), dtype=self.dtype)

    def gradients(self):
        """(grad_input, grad_weight, grad_bias), None where not asked for."""
        grad_w = grad_b = None
        if self.need_w and self.grad_w is not None:
            grad_w = self.grad_w.reshape(self.weight_shape)
        elif self.need_w:
            # partials added in chunk order: the same bits for any number of threads
            parts = self.parts
            grad_w = (parts[0].copy() if parts.shape[0] == 1 else parts.sum(axis=0))
            grad_w = grad_w.reshape(self.weight_shape)
        if self.need_b:
            grad_b = np.empty(self.geom.out_channels, dtype=self.dtype)
            _conv.bias_backward(self.dy3, grad_b, self.threads)
        grad_x = self.grad_x
        if grad_x is not None and not self.geom.batched:
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
    activation : None or "relu", keyword-only: "relu" returns ``relu(conv{nd}d(...))``, the
        ReLU applied as the kernel stores each output, with the bias (not in torch's signature;
        the backward is :func:`relu_backward` of this output, then :func:`conv{nd}d_backward`)

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
    def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
             activation=None):
        return _conv_forward(f"conv{nd}d", nd, input, weight, bias, stride, padding, dilation,
                             groups, activation)

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
    _checks.check_extent(fname, "output (rows, blocks)", (rows, L))
    _checks.check_extent(fname, "input spatial size", (c,) + in_size)
    cols = _memory.empty((n, rows, L), dtype)
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
    _checks.check_extent(fname, "output_size", out_size)
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
    _checks.check_extent(fname, "input (rows, blocks)", (rows, L))
    _checks.check_extent(fname, "output (channels, *output_size)", (c,) + out_size)
    dtype = float_dtype(cols)
    out = _memory.empty((n, c) + out_size, dtype)
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
    if not isinstance(input_size, (tuple, list, np.ndarray)):
        raise TypeError(f"unfold_backward: input_size must be a tuple of ints, got "
                        f"{_checks._describe(input_size)}")
    size = tuple(input_size)
    return _delegate("unfold_backward", fold, grad_output, size[len(size) - nd:], kernel_size,
                     dilation, padding, stride)


def fold_backward(grad_output, kernel_size, dilation=1, padding=0, stride=1):
    """Gradient of :func:`fold`: ``unfold(grad_output, ...)``."""
    return _delegate("fold_backward", unfold, grad_output, kernel_size, dilation, padding,
                     stride)
