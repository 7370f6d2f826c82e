"""Which algorithm computes a convolution, and the runners that prepare each one's operands.

The rules (Winograd, the direct kernels of _ops/_conv_direct.h, depthwise loops; im2col + GEMM
otherwise) were measured on the development machine; each states its measurements beside it.
``set_conv_autotune`` replaces the Winograd rule by timing both candidates per shape. The
drivers in _conv.py (forward, backward) and _conv_transpose.py ask these rules and call these
runners; the kernels' math is in fastcnn/_ops.
"""
from __future__ import annotations

import functools
import math
import os
import threading
import time
from dataclasses import replace

import numpy as np

from fastcnn import _memory
from fastcnn._ops import conv as _conv
from fastcnn._ops import winograd as _winograd
from fastcnn._ops.parallel import simd_path
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch
from fastcnn.functional._common import _WEIGHT_GRAD_CHUNKS

__all__ = ["set_conv_autotune"]


# --------------------------------------------------------------------------------------------
# Rules: which algorithm
# --------------------------------------------------------------------------------------------

# Winograd F(2x2, 3x3) (_ops/winograd.pyx) for 3x3 stride-1 convolutions: 2.25x fewer
# multiplications than im2col + GEMM. Below this many channels its transforms cost more than
# they save (measured on LeNet/VGG shapes), and the first layer of a network is such a case.
_WINOGRAD_MIN_CHANNELS = 16


def winograd_possible(geom, nd):
    """A 2-D 3x3 stride-1 convolution without dilation or groups, padding <= 2 on both axes."""
    return (nd == 2 and geom.kernel == (1, 3, 3) and geom.stride == (1, 1, 1)
            and geom.dilation == (1, 1, 1) and geom.groups == 1
            and geom.padding[1] == geom.padding[2] <= 2)


def winograd_ok(geom, nd, direction="forward"):
    """The default rule: Winograd where possible and both channel counts reach the minimum,
    unless the direct kernels are faster: the row kernel for the forward (few output channels
    on wide maps), the direct weight gradient (16 channels or fewer on one side)."""
    if not (winograd_possible(geom, nd)
            and min(geom.in_channels, geom.out_channels) >= _WINOGRAD_MIN_CHANNELS):
        return False
    if direction == "forward":
        return not (_direct_vector and geom.out_channels <= _ROWS_OVER_WINOGRAD_MAX_OUT_CHANNELS
                    and rows_ok(geom, nd))
    if direction == "weight gradient":
        return not dw_rows_ok(geom, nd)
    return True


def is_depthwise(geom):
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
# Winograd first. Otherwise im2col + GEMM.
_DIRECT_MAX_OUT_CHANNELS = 64
_DIRECT_TAPS = (64, 512)
_DIRECT_MAX_POSITIONS = 256
_DIRECT_STRIDE2_MAX_OUT_CHANNELS = 128
_DIRECT_STRIDE2_MAX_TAPS = 1152

# The direct kernels run where their AVX-512 clone does. Their blocks are sized for its 32
# vector registers: the AVX2 clone, with 16, keeps accumulators on the stack and ran at 9-11
# GFLOP/s single-threaded (16 -> 16 channels 3x3 on 32x32, against 115 for AVX-512 and about
# 60 for OpenBLAS's sgemm on such operands), so AVX2 CPUs take Winograd and im2col + GEMM for
# these layers, except first layers (the row kernel's narrow variant, below).
_direct_vector = simd_path() == "x86-64-v4"


def tap_count(geom):
    return geom.in_channels * geom.kernel[1] * geom.kernel[2]


def direct_ok(geom, nd):
    taps = tap_count(geom)
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


# On AVX2 the row kernel runs as its narrow variant (32-byte vectors, 4 channels per block:
# 48-54 GFLOP/s single-threaded on a 16 -> 16 3x3 layer, against 115 for the AVX-512 variant,
# measured with a standalone -march=x86-64-v3 build on this CPU), and only for first layers
# (fewer than 64 taps), where im2col + GEMM is weakest: its other rules, against Winograd and
# GEMM, were measured with AVX-512 alone.
_rows_vector = simd_path() in ("x86-64-v4", "x86-64-v3")


def rows_ok(geom, nd):
    width = geom.out_size[-1]
    lane_use = width / (-(-width // 16) * 16)
    few_taps = tap_count(geom) < _DIRECT_TAPS[0]
    return (_rows_vector and nd == 2 and geom.groups == 1 and geom.kernel != (1, 1, 1)
            and width >= _ROWS_MIN_WIDTH and lane_use >= _ROWS_MIN_LANE_USE
            and (geom.stride[2] == 1 or few_taps) and (_direct_vector or few_taps))


# The input gradient by the row kernel needs at least one full block of its 8 output channels
# (the layer's input channels): with 1 to 4 (a first layer's) it ran slower than col2im (LeNet's
# first layer 0.69 vs 0.28 ms; 3 channels 0.42 vs 0.39 ms), with 8 it ran 0.46 vs 1.17 ms.
_ROWS_INPUT_GRAD_MIN_CHANNELS = 8


def rows_input_grad(geom, nd):
    """The input gradient of a stride-1 convolution as the convolution the row kernel runs: dy
    by the kernels transposed and flipped, padded span - padding (span = dilation * (k - 1)),
    giving the input's size. Its geometry when the row kernel is the choice for it (as for a
    forward: wide maps, and Winograd not ahead, i.e. at most 16 input channels where Winograd
    applies; and at least 8 input channels), else None."""
    if (not _direct_vector or nd != 2 or geom.groups != 1 or geom.stride != (1, 1, 1)
            or geom.in_channels < _ROWS_INPUT_GRAD_MIN_CHANNELS):
        return None
    span = tuple(d * (k - 1) for d, k in zip(geom.dilation, geom.kernel))
    if any(p > s for p, s in zip(geom.padding, span)):
        return None
    as_conv = replace(geom, in_channels=geom.out_channels, out_channels=geom.in_channels,
                      in_size=geom.out_size, out_size=geom.in_size,
                      padding=tuple(s - p for s, p in zip(span, geom.padding)))
    if not rows_ok(as_conv, nd):
        return None
    if (winograd_ok(geom, nd, "input gradient")
            and geom.in_channels > _ROWS_OVER_WINOGRAD_MAX_OUT_CHANNELS):
        return None
    return as_conv


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


def dw_rows_ok(geom, nd):
    return (_direct_vector and nd == 2 and geom.groups == 1 and geom.kernel != (1, 1, 1)
            and geom.out_channels <= _DW_ROWS_MAX_OUT_CHANNELS
            and geom.out_size[-1] >= _DW_ROWS_MIN_WIDTH
            and (min(geom.in_channels, geom.out_channels) <= _DW_ROWS_MAX_CHANNELS
                 or geom.kernel[1] * geom.kernel[2] >= _DW_ROWS_MIN_KERNEL_AREA))


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


def pick_winograd(direction, geom, nd, dtype, run_winograd, run_im2col):
    """Whether to use Winograd; while tuning, both candidates run once more and are timed."""
    if not winograd_possible(geom, nd):
        return False
    if not _autotune["enabled"]:
        return winograd_ok(geom, nd, direction)
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


# --------------------------------------------------------------------------------------------
# Runners: each kernel's operands and workspace
# --------------------------------------------------------------------------------------------

def padded_plane(geom):
    """(Hp, Wp): the zero-bordered input plane the direct kernels read, just large enough for
    the output (rows or columns past it are never read)."""
    (_, kh, kw), (_, dh, dw), (_, sh, sw) = geom.kernel, geom.dilation, geom.stride
    oh, ow = geom.out_size
    return (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1


@functools.lru_cache(maxsize=64)
def direct_offsets(c_in, kh, kw, dh, dw, hp, wp, phases=1):
    """Tap k = (ci, a, e) of the direct kernel reads the padded planes (hp x wp) at ci*hp*wp +
    a*dh*wp + e*dw from each output's corner. With ``phases`` column phases per plane (the row
    kernel with a width stride: rows wq = ceil(wp / phases) long), column e*dw is phase
    (e*dw) % phases, position (e*dw) // phases."""
    wq = -(-wp // phases)
    ci, a, e = np.meshgrid(np.arange(c_in), np.arange(kh), np.arange(kw), indexing="ij")
    col = e * dw
    offsets = (ci * phases * hp * wq + (col % phases) * hp * wq + a * dh * wq
               + col // phases).ravel().astype(np.intp)
    offsets.flags.writeable = False
    return offsets


def direct_conv2d(x2, w, b1, out2, geom, dtype, relu=False, by_rows=False, out_layout=None):
    """out2 (N, C_out*L) by _conv.direct_forward: weight transposed to (K, C_out padded to 16);
    ``by_rows``: the kernel vectorized along output rows; ``out_layout``: where its outputs go
    (see direct_forward)."""
    c_out, c_in, kh, kw = w.shape
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = padded_plane(geom)
    cpad = -(-c_out // 16) * 16
    wt = np.zeros((c_in * kh * kw, cpad), dtype=dtype)
    wt[:, :c_out] = w.reshape(c_out, -1).T
    bias = np.zeros(cpad, dtype=dtype)
    if b1.size:
        bias[:c_out] = b1
    offsets = direct_offsets(c_in, kh, kw, dh, dw, hp, wp, sw if by_rows else 1)
    threads = get_num_threads()
    ws = scratch(_conv.direct_workspace_size(c_in, hp, wp, sh, sw, by_rows) * threads, dtype)
    _conv.direct_forward(x2, wt, bias, out2, ws, offsets, c_in, *geom.in_size, ph, pw, hp, wp,
                         oh, ow, sh, sw, by_rows, relu, threads, out_layout)


def direct_weight_grad(x2, dy2, geom, dtype):
    """dW (C_out, C_in, kH, kW) of a 2-D one-group convolution by _conv.direct_weight_grad (no
    im2col): double partials over fixed sample chunks, added in chunk order."""
    n, c_in, c_out = geom.n, geom.in_channels, geom.out_channels
    _, kh, kw = geom.kernel
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = padded_plane(geom)
    taps = c_in * kh * kw
    _, kpad, _ = _conv.direct_weight_grad_layout(c_out, taps, ow)
    offsets = np.zeros(kpad, np.intp)
    offsets[:taps] = direct_offsets(c_in, kh, kw, dh, dw, hp, wp, sw)
    threads = get_num_threads()
    per_thread = _conv.direct_weight_grad_workspace_size(c_in, hp, wp, sh, sw, c_out, taps, oh,
                                                         ow)
    ws = scratch(per_thread * threads, dtype)
    parts = np.empty((max(1, min(n, _WEIGHT_GRAD_CHUNKS)), c_out * taps))
    _conv.direct_weight_grad(x2, dy2, parts, ws, offsets, taps, c_in, *geom.in_size, ph, pw,
                             hp, wp, oh, ow, sh, sw, threads)
    total = parts[0].copy()
    for part in parts[1:]:          # in chunk order: the same bits for any number of threads
        total += part
    return total.astype(dtype).reshape(c_out, c_in, kh, kw)


def winograd_conv2d(x2, w, bias, out2, in_size, pad, out_size, dtype, flip=False,
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


def winograd_weight_grad(x2, dy2, geom, dtype):
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
