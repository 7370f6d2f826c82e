"""Which algorithm computes a convolution, and the runners that prepare each one's operands.

The rules (Winograd, the direct kernels of _ops/_conv_direct.h, depthwise loops; im2col + GEMM
otherwise) are data: one ``Rules`` table per x86-64 level (RULES), each with the measurements
that justify it beside it. ``choose(direction, geom, nd, isa)`` is a pure function of the
problem and the level; ``select`` adds what the caller asked for: ``conv_algorithms(...)``
forces a choice, ``set_conv_autotune`` times Winograd against the rules' other choice per
shape. The drivers in _conv.py (forward, backward) and _conv_transpose.py call ``select`` and
these runners; the kernels' math is in fastcnn/_ops.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from fastcnn import _memory
from fastcnn._ops import conv_direct as _direct
from fastcnn._ops import winograd as _winograd
from fastcnn._ops.parallel import simd_path
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch
from fastcnn.functional._common import _WEIGHT_GRAD_CHUNKS, _ConvGeometry

__all__ = ["set_conv_autotune", "conv_algorithms"]


# --------------------------------------------------------------------------------------------
# Rules: which algorithm, as data per x86-64 level
# --------------------------------------------------------------------------------------------

ISAS = ("x86-64-v4", "x86-64-v3", "baseline")
DIRECTIONS = ("forward", "input gradient", "weight gradient", "transposed forward")
# The algorithms of each direction, in the order the rules consider them.
ALGORITHMS = {
    "forward": ("depthwise", "pointwise", "winograd4", "winograd", "winograd_s2", "rows",
                "direct", "im2col"),
    "input gradient": ("depthwise", "pointwise", "direct", "rows", "winograd4", "winograd",
                       "im2col"),
    "weight gradient": ("depthwise", "channels", "winograd4", "winograd", "direct", "im2col"),
    "transposed forward": ("subpixel", "im2col"),
}
# Winograd's output tile per algorithm name: F(2x2, 3x3) and F(4x4, 3x3) (_ops/winograd.pyx).
WINOGRAD_TILE = {"winograd": 2, "winograd4": 4}


@functools.lru_cache(maxsize=1)
def machine_isa():
    """The level whose rules apply here: the one the kernels run (_ops.parallel.simd_path(),
    lowered by FASTCNN_SIMD); a build without dispatch takes the baseline's rules. Fixed when
    the modules load, so computed once (select() asks on every convolution)."""
    path = simd_path()
    return path if path in ISAS else "baseline"


def machine_rules():
    """RULES of machine_isa()."""
    return RULES[machine_isa()]


@dataclass(frozen=True)
class Rules:
    """The thresholds of the selection rules on one x86-64 level. Each was measured (float32,
    2 threads) against the alternatives; the measurements are beside RULES below."""
    # Winograd F(2x2, 3x3) (_ops/winograd.pyx) for 3x3 stride-1 convolutions: 2.25x fewer
    # multiplications than im2col + GEMM; below this many channels (on either side) its
    # transforms cost more than they save.
    winograd_min_channels: int = 16
    # Winograd F(4x4, 3x3) instead of F(2x2, 3x3) (4x fewer multiplications than direct
    # instead of 2.25x; its transforms cost more a tile) from this many 4x4 output tiles in
    # the batch (N * ceil(OH/4) * ceil(OW/4)): fewer make GEMMs too short to pay.
    winograd4_min_tiles: int = 32
    # ... and from this many tiles a sample (AVX-512: maps of at least 13x13).
    winograd4_min_sample_tiles: int = 16
    # Winograd's (xis) GEMMs M = U V by its own kernel (_winograd.inc fc_wino_gemm: 4 rows by 2
    # vectors of tiles in registers) instead of one BLAS call each, where a block of samples
    # has at least a vector (rows_lanes) of tiles.
    winograd_own_gemm: bool = False
    # F(4x4, 3x3) for the weight gradient too (dU = sum over tiles dM V^T, 36 GEMMs on 4x fewer
    # tiles) from this many channels on both sides and this many 4x4 tiles a sample (49: maps
    # of at least 25x25); None: never.
    winograd4_weight_grad_min_channels: int | None = 16
    winograd4_weight_grad_min_sample_tiles: int = 16
    # Winograd on the stride-2 polyphase components (_ops/winograd.pyx forward_s2: 1.78x fewer
    # multiplications than direct) for 3x3 stride-2 forwards: from this many channels on both
    # sides and this many 4x4 output tiles a sample (49: outputs of at least 25x25); where the
    # channel kernel does not take the layer (direct_ok: more output channels or taps), from
    # winograd_s2_min_sample_tiles_over_im2col tiles (None: the same). None: never. Its GEMMs
    # by fc_wino_gemm (winograd_s2_own_gemm) or one single-threaded BLAS call each.
    winograd_s2_min_channels: int | None = 64
    winograd_s2_min_sample_tiles: int = 100
    winograd_s2_min_sample_tiles_over_im2col: int | None = 4
    winograd_s2_own_gemm: bool = True
    # ... for 4x4 stride-2 forwards (and the transposed convolutions' input gradients, which
    # are such convolutions; F(4, 2) on both axes of all four phases: 2.56x fewer
    # multiplications than direct): from this many channels on both sides, and against the
    # channel kernel (direct_ok) from this many 4x4 output tiles a sample and this many tiles
    # a block of samples (the GEMMs' width: block_size samples), against im2col from
    # winograd_s2_k4_min_block_tiles_over_im2col tiles a block; None: never.
    winograd_s2_k4_min_channels: int | None = 32
    winograd_s2_k4_min_sample_tiles: int = 16
    winograd_s2_k4_min_block_tiles: int = 32
    winograd_s2_k4_min_block_tiles_over_im2col: int = 32
    # The channel kernel (_conv_direct.h fc_direct_conv): small maps with few output channels
    # and a moderate sum, and stride-2 layers (whose im2col reads with poor locality).
    direct: bool = True
    direct_max_out_channels: int = 64
    direct_taps: tuple = (64, 512)          # C_in * kH * kW within this range, and
    direct_max_positions: int = 256         # at most this many outputs per channel, or
    direct_stride2_max_out_channels: int = 128   # stride 2 with at most this many channels
    direct_stride2_max_taps: int = 1152          # and taps
    # ... and, ahead of Winograd (and the row kernel), 3x3 stride-1 layers with at least
    # this many and at most direct_max_out_channels output channels, and at most this many
    # outputs a sample (C_out * OH * OW): small maps, where Winograd's tiles are few and its
    # GEMMs short (the input gradient too, as the convolution of dy). None: never.
    direct_over_winograd_min_out_channels: int = 32
    direct_over_winograd_max_outputs: int | None = 8192
    # The pointwise kernel (_ops/pointwise.pyx) for 1x1 convolutions at stride 1 without
    # padding, forward and input gradient (W^T dy, itself pointwise): a GEMM per sample with
    # no BLAS call, from this many positions a sample (P = prod(spatial); fewer leave its
    # blocks of positions part empty), where a sample of its input (C * P values) and the
    # weight (C_out * C) are at most these many bytes (beyond, BLAS's cache blocking wins).
    # False: never (im2col's GEMM by BLAS, on x in place too).
    pointwise: bool = True
    pointwise_min_positions: int = 64
    pointwise_max_sample_bytes: int = 1 << 20
    pointwise_max_weight_bytes: int = 256 << 10
    # The row kernel (fc_direct_conv_rows): wide maps, first layers, few output channels.
    rows: bool = True
    rows_lanes: int = 16                    # outputs per vector (float32) on this level
    rows_max_taps: int | None = None        # only layers with fewer taps (None: any)
    rows_min_width: int = 16
    rows_min_lane_use: float = 0.75         # width / (width rounded up to whole vectors)
    rows_over_winograd_max_out_channels: int = 16
    # ... for the input gradient of a stride-1 convolution (dy by the flipped kernels): at
    # least one full block of the kernel's 8 output channels (the layer's input channels).
    rows_input_grad: bool = True
    rows_input_grad_min_channels: int = 8
    # ... on maps at least this wide (None: rows_min_width, as the forward)
    rows_input_grad_min_width: int | None = None
    # The weight gradient with the output channels in the vector lanes (fc_dw_channels, an
    # implicit GEMM over the outputs: no im2col, and no lane left empty on narrow maps): from
    # this many taps (C_in * kH * kW; fewer leave most of its 24-tap blocks padding) up to
    # this many output channels (its lanes); against Winograd (3x3 stride 1) only where one
    # of dw_channels_over_winograd's (most output channels, fewest outputs a channel, most
    # outputs a channel or None) holds.
    dw_channels: bool = True
    dw_channels_min_taps: int = 64
    dw_channels_max_out_channels: int = 128
    dw_channels_over_winograd: tuple = ((32, 0, 256), (64, 0, 64))
    # The weight gradient on the row kernel's layout (fc_dw_rows): no im2col.
    dw_rows: bool = True
    dw_rows_max_channels: int = 16          # min(C_in, C_out) at most this, or
    dw_rows_min_kernel_area: int | None = 25   # a kernel this large (None: no such rule);
    dw_rows_max_out_channels: int = 64      # and at most this many output channels,
    dw_rows_min_width: int = 8              # outputs this wide
    # A transposed convolution's forward as one direct convolution per output phase, by the
    # channel kernel from this many output channels (and direct_taps[0] taps), else by rows.
    subpixel: bool = True
    subpixel_channels_min_out_channels: int = 16
    subpixel_rows: bool = True              # phases on the row kernel too (else none)


# Measured on AVX-512 (Intel Sapphire Rapids, 2 cores; float32, 2 threads):
# - Winograd: below 16 channels it loses (LeNet/VGG shapes), and first layers are such a case.
# - The channel kernel with blocks of 2 vectors by up to 12 positions (24 accumulators; before:
#   1 vector by 8), its weights in panels read in L1-sized chunks of taps, on an Intel Xeon
#   (AVX-512, KVM, 2 cores), ms, against im2col: stride 2, 64 -> 128 channels from 56x56 7.4-8.1
#   (9.5-9.6; the kernel before 10.9), LeNet's second layer 0.18 (0.42).
# - Winograd F(4x4, 3x3) against F(2x2, 3x3) (Intel Xeon, AVX-512, KVM; kernel alone, ms):
#   batch 32, 32 -> 32 channels on 32x32 maps 1.98 vs 2.69, 64 -> 64 on 32x32 5.70 vs 10.16,
#   on 16x16 1.74 vs 1.82, 128 -> 128 on 8x8 1.83 vs 1.88-2.13, 16 -> 16 on 32x32 0.82 vs
#   1.09; batch 8, 64 -> 64 on 28x28 1.18 vs 1.46; batch 1, 32 -> 32 on 32x32 0.127 vs 0.174.
#   It loses with few tiles: batch 1, 64 -> 64 on 16x16 (16 tiles) 0.128 vs 0.115, 128 -> 128
#   on 8x8 (4 tiles) 0.178 vs 0.109; batch 4 on 16x16 (64 tiles) is a tie (0.223 vs 0.230);
#   and on 8x8 maps (4 tiles a sample) even in large batches: F.conv2d 128 -> 128, batch 64,
#   4.26 vs 3.79 (input gradient 4.31 vs 3.88). The weight gradient by F(4x4, 3x3) against
#   F(2x2, 3x3) (F.conv2d_backward, best of 9 interleaved, ms; AVX-512 / AVX2): 64 -> 64 on
#   32x32, batch 32, 9.46 vs 10.13 / 9.79 vs 10.59; 128 -> 128 on 28x28, batch 16, 10.62 vs
#   11.85 / 10.81 vs 13.30; but 32 -> 32 on 32x32 (batch 64) 6.71 vs 6.53 / 6.98 vs 7.34, and on
#   16x16 and 8x8 maps it loses by 10-30% (64 -> 64 on 16x16: 6.71 vs 6.04 / 7.30 vs 5.79).
#   Winograd's own GEMM kernel against OpenBLAS's
#   SkylakeX sgemm (kernel alone, ms, F(4x4) / F(2x2)): batch 32, 32 -> 32 on 32x32 1.89 / 2.37
#   vs 1.88 / 2.37, 64 -> 64 on 16x16 1.72 / 1.98 vs 1.71 / 1.84; batch 8, 256 -> 256 on 8x8
#   2.94 / 1.48 vs 3.31 / 1.91: a tie but for the widest layers, BLAS kept. Against the row
#   kernel (F.conv2d, batch 32): 16 -> 16 on 32x32 0.87 vs 0.68 (rows kept), 32 -> 32 2.04 vs
#   3.02.
# - The channel kernel against im2col + GEMM: LeNet's second layer 0.41 -> 0.26 ms,
#   resnet_small's stride-2 3x3 layers 1.28 -> 0.46 and 0.79 -> 0.43 ms; stride 2, 64 -> 128
#   channels on 56x56 maps 12.3 -> 9.9 ms, 128 -> 128 23.8 -> 18.8 ms; slower for 1x1 kernels,
#   fewer than 64 taps, 32x32 maps at stride 1, and from 256 output channels (128 -> 256 at
#   stride 2 from 28x28 maps: 11.9 vs 11.0 ms).
# - The row kernel against im2col + GEMM: LeNet's first layer 0.344 -> 0.165 ms, resnet_small's
#   stem 0.326 -> 0.181 ms, 32 -> 32 channels 5x5 on 32x32 maps 14.4 -> 7.5 ms, 3 -> 64
#   channels 7x7 on 64x64 19.1 -> 11.6 ms, 3 -> 32 channels 3x3 stride 2 on 64x64 1.07 -> 0.89
#   ms; slower for 1x1 kernels, and than the channel kernel at stride 2 from 64 taps on (16 ->
#   32 channels 3x3 stride 2: 0.53 vs 0.45 ms). Against Winograd it wins up to 16 output
#   channels (16 -> 16 on 32x32: 1.08 -> 0.74 ms; 64 -> 16: 4.47 -> 2.90 ms) and loses from 32
#   on (32 -> 32 on 32x32: 5.7 vs 5.5 ms; 16 -> 128 on 28x28: 2.54 vs 2.33 ms).
# - The row kernel's input gradient: with 1 to 4 input channels it ran slower than col2im
#   (LeNet's first layer 0.69 vs 0.28 ms; 3 channels 0.42 vs 0.39 ms), with 8 0.46 vs 1.17 ms.
# - fc_dw_rows against im2col + GEMM (or Winograd's): LeNet's layers 0.30 -> 0.22 and 0.70 ->
#   0.55 ms, resnet_small's stem 0.29 -> 0.24 ms, its 16-channel 3x3 layers 1.13 -> 0.89 ms
#   (32x32 maps) and 1.01 -> 0.84 ms (stride 2), 5x5 32 -> 32 channels on 32x32 maps 21.2 ->
#   8.8 ms; slower from 32 channels on both sides with 3x3 kernels (32 -> 32 on 16x16: 1.17 vs
#   0.82 ms; 64 -> 128 at stride 2: 15.5 vs 12.6 ms).
# - The channel kernel (its 24-accumulator blocks) against Winograd F(2x2) / F(4x4) and the row
#   kernel on 3x3 stride-1 layers (same Xeon, ms): 32 -> 32 on 16x16 at batch 32 0.59 (0.79 /
#   0.74; rows 0.70), 64 -> 64 on 8x8 0.59 (0.72 / 0.86); but 64 -> 64 on 16x16 at batch 64
#   4.36 (4.08 / 3.68), 128 -> 128 on 8x8 4.32 (3.96 / 5.22), 32 -> 32 on 32x32 4.84 (5.78 /
#   5.03): direct_over_winograd_max_outputs = 8192 outputs a sample, 32 to 64 channels (the
#   wins measured; fewer channels fill fewer of its lanes). Input gradients as that
#   convolution of dy: 32 -> 32 on 16x16 0.60 (0.77 / 0.75; rows 0.69), 64 -> 64 on 8x8 0.59
#   (0.70 / 0.80).
# - Sub-pixel transposed convolution: a k4 s2 upsampling 64 -> 32 channels, 16x16 -> 32x32
#   maps 2.16 -> 1.82 ms against GEMM + col2im; its phases (64 -> 32 channels, 2x2 taps) on the
#   channel kernel instead of the row kernel 1.49 vs 1.68 ms (Intel Xeon; GEMM + col2im 1.86).
# - The weight gradient with the channels in the lanes (fc_dw_channels) against the rules'
#   choice before it (F.conv2d_backward, weight only, best of 11, ms; batch, C_in -> C_out,
#   map, kernel): 64, LeNet's 6 -> 16 on 14x14 5x5 0.22-0.24 (fc_dw_rows 0.49-0.51, im2col
#   0.50); 32, 16 -> 16 on 32x32 3x3 0.90 (fc_dw_rows 1.01-1.02, F(2x2) 1.10-1.15); 32 -> 32
#   on 16x16 0.65-0.66 (F(2x2) 1.02-1.08); 32 -> 32 on 32x32 2.31 (F(4x4) 2.67, F(2x2) 2.80);
#   64 -> 64 on 8x8 0.99 (F(2x2) 0.95-0.96: Winograd kept from 64 channels); stride 2, 16 -> 32
#   from 32x32 0.52 (im2col 0.94), 32 -> 64 from 16x16 0.59 (0.65-0.66); 5x5 32 -> 32 on 32x32
#   6.04 (fc_dw_rows 8.64); a k4 s2 transposed convolution's (64 -> 32 channels, 16x16 ->
#   32x32: the convolution of dy, 32 -> 64 at stride 2) 1.47 (im2col 1.88); batch 64, 32 ->
#   32 on 32x32 4.73 (F(2x2) 5.70), 64 -> 64 on 16x16 4.54-5.50 (F(4x4) 4.72-5.50, F(2x2)
#   5.07-5.90), 32 -> 64 on 16x16 2.67 (F(2x2) 3.45; batch 32 1.48 vs 1.72): up to 64 channels
#   on 16x16 to 24x24 maps (batch 16, 64 -> 64 on 24x24 2.81 vs F(2x2) 3.04; on 32x32 4.65
#   vs F(4x4) 4.05); but 128 -> 128 on 8x8 5.99 (4.38), 64 -> 128 on 8x8 3.42 (3.25), and
#   stride 2, 64 -> 128 from 56x56 (batch 16) 9.16 (im2col 8.49). With the partials summed in
#   the kernel's module and no Python pass over them (same machine, later): 64 -> 64 on 8x8
#   (batch 32) 0.73 (F(2x2) 0.98), 64 -> 128 on 8x8 (batch 64) 2.76 (3.10), stride 2, 64 ->
#   128 from 56x56 8.37 (im2col 9.22), but 128 -> 128 on 8x8 5.65 (F(4x4) 5.29). After
#   Winograd's transforms got their column-phase split and shuffled output rows (1a4d129),
#   F(4x4) took back the larger maps (ms): batch 32, 16 -> 16 on 32x32 0.65 (channels 0.81,
#   F(2x2) 0.70); batch 64, 32 -> 32 on 32x32 4.09 (4.42), 32 -> 64 on 16x16 2.11 (2.41; F(2x2)
#   2.59), 64 -> 64 on 16x16 3.54 (4.62; 4.00); batch 16, 64 -> 64 on 24x24 1.87 (2.42); and
#   F(2x2) 128 -> 128 on 8x8 3.69 (4.92); the channels keep 32 -> 32 on 16x16 (batch 32, 0.55
#   vs F(2x2) 0.65, F(4x4) 0.67) and 64 -> 64 on 8x8 (0.72 vs 0.81 / 0.82): F(4x4) for the
#   weight gradient from 16 channels and 16 tiles a sample, the channels over Winograd up to
#   32 channels on maps up to 16x16 and 64 on 8x8; with few
#   taps it loses: LeNet's first layer (25 taps) 0.41 (0.19), a 3-channel stem (27) 0.36
#   (fc_dw_rows 0.23). Per perf, the kernel itself runs at about 80% of the FMA rate; padding,
#   transposing dy and the partials take the rest.
# - Winograd for 4x4 stride-2 kernels (forward_s2 with u of 25 matrices: F(4, 2) x F(4, 2) on
#   the four phases; F.conv2d forced, best of 15 / 11, ms, against the channel kernel / im2col;
#   padding 1, sizes are the input's): the k4 s2 transposed convolution's input gradient, 32
#   -> 64 from 32x32, batch 16 (16 tiles a sample, 2 samples a GEMM), 0.76 (0.92 / 1.93); 64 ->
#   128 from 32x32 2.64 (3.63); 32 -> 64 from 64x64 (batch 8) 1.46 (1.84); but 16 -> 32 from
#   32x32 0.258 (0.234), 8 -> 16 0.111 (0.093), and at batch 1 (16 tiles a GEMM) 32 -> 64 0.173
#   (0.146), 64 -> 128 0.59 (0.45), 128 -> 128 1.06 (0.94); on 4 tiles a sample 64 -> 64 from
#   16x16 0.61 (0.51), 64 -> 128 1.14 (1.13): against the channel kernel from 32 channels, 16
#   tiles a sample and 32 a GEMM. Where the rules take im2col (more output channels or
#   taps): 128 -> 256 from 16x16 (4 tiles a sample, 8 samples a GEMM) 4.32 (im2col 7.96),
#   128 -> 128 2.35 (4.91), 256 -> 256 from 8x8 (1 tile, 16 a GEMM) 4.79 (5.59), but 256 -> 512
#   from 16x16 at batch 4 (16 tiles a GEMM; U is 52 MB) 12.0 (9.2): from 32 tiles a GEMM.
#   In compare_torch (conv_transpose k4s2 bwd, dx by it and dW by the channels kernel in a
#   second pass over dy instead of one pass for both): 2.352 -> 2.277 ms.
# - The row kernel's input gradient on narrower maps and fewer channels (conv2d_backward, best
#   of 5 interleaved, ms, against im2col): LeNet's second layer (6 channels, 14 wide, 5x5) 0.32
#   (0.39), 6 -> 16 channels 0.36 (0.40), 8 -> 16 3x3 on 13 wide 0.159 (0.172); but 4 channels
#   on 14 wide 0.32 (0.26), 5 channels on 12 wide 0.091 (0.075), 6 channels from 32 on 12 wide
#   0.31 (0.12): from 6 channels on maps from 13 wide.
# - Winograd on the stride-2 polyphase components (forward_s2, its GEMMs by fc_wino_gemm's 8 x 3
#   vector blocks; F.conv2d forced, best of 7 twice, ms, against the channel kernel / im2col):
#   64 -> 128 channels from 56x56 (28x28 outputs: 49 tiles a sample), batch 16 6.57 (6.64 /
#   10.14), batch 32 13.01 (13.88), batch 1 0.59 (0.69); but 32 -> 64 from 56x56 2.02 (1.74),
#   and with 16 tiles a sample or fewer it loses: 128 -> 256 from 28x28 8.25 (7.51), 64 -> 64
#   from 32x32 (batch 8) 0.64 (0.55), 256 -> 512 from 14x14 10.99 (9.48), 128 -> 128 from 14x14
#   1.47 (0.99). Its GEMMs by OpenBLAS instead: 7.2 ms on the first (one call per GEMM, 36 a
#   sample of 128 x 64 by 49 to 784 tiles). After the channel kernel's base pointers (4300a97):
#   64 -> 128 from 56x56, batch 16, 6.35 (6.46), batch 32 12.77 (12.56), in compare_torch
#   (median, torch between) 6.62-6.68 against 5.99-6.35: no longer ahead on 49 tiles a sample;
#   from 112x112 (196 tiles, batch 8) 13.62 (16.28), batch 1 from 56x56 0.57 (0.66); where
#   the rules take im2col (more than 128 output channels): 128 -> 256 from 56x56 (batch 4)
#   6.08 (im2col 7.22), 256 -> 512 from 14x14 (4 tiles) 10.99 (13.13), 128 -> 256 from 28x28
#   8.25 (8.34): from 100 tiles a sample against the channel kernel, 4 against im2col.
# - The pointwise kernel against im2col's GEMM (OpenBLAS sgemm per sample; float32, ms, forward
#   / input gradient, best of 3 x 15): 16 x 256 -> 64 on 14x14 0.45 / 0.41 (0.54 / 0.52); 32 x
#   64 -> 256 on 56x56 14.4 (23.2); its input gradient (dy 3.2 MB a sample) 39.7 (29.5); 32 x
#   256 -> 64 on 56x56 (x 3.2 MB a sample) 39.1 (27.7), its input gradient 14.2 (20.6); batch
#   1, 128 -> 128 on 28x28 0.14 / 0.14 (0.22 / 0.22); 64 x 32 -> 32 on 8x8 0.047 / 0.049 (0.050
#   / 0.057); but 128 -> 128 on 4x4 0.126 (0.085) and 64 -> 64 on 6x6 0.050 (0.034) (16 and 36
#   positions: blocks of 32 part empty), 512 -> 2048 on 7x7 13.6 (4.2; a 4 MB weight) and 1024
#   -> 256 on 14x14 2.15 (1.62; 1 MB): from 64 positions, samples up to 1 MB, weights up to
#   256 KB.
_V4 = Rules(rows_input_grad_min_channels=6, rows_input_grad_min_width=13)

# AVX2 (x86-64-v3): the kernels' AVX2 copies have their own register blocks (_conv_direct.inc:
# 8-float vectors; the row kernel two of them by 4 channels, the others 8 accumulators).
# Measured with FASTCNN_SIMD=x86-64-v3 OPENBLAS_CORETYPE=Haswell on an AVX-512 machine (AMD EPYC,
# Zen 4, 2 cores; float32, 2 threads, best of 15), in ms:
# - forward, the row kernel against the others: LeNet's first layer 0.26 (im2col 0.72); 3 -> 32
#   3x3 1.13 (1.75); 16 -> 16 3x3 on 32x32 1.10 (Winograd 2.10, im2col 2.94); 32 -> 32 3x3 on
#   16x16 1.11 (Winograd 1.22) and on 32x32 9.52 (9.81): on AVX2 it beat Winograd F(2x2, 3x3)
#   up to 32 output channels, and lost from 64 (64 -> 64 on 32x32: 21.5 vs 13.2); 32 -> 32 5x5
#   on 32x32 6.49 (im2col 10.20); 32 -> 32 3x3 dilation 2 2.55 (3.94). Winograd F(4x4, 3x3)
#   moved the line back to 16 (Intel Xeon, F.conv2d, batch 32, ms): 32 -> 32 on 32x32 2.78
#   (rows 4.21, F(2x2) 3.87), on 16x16 0.98 (1.02); 16 -> 16 on 32x32 1.35 (rows 0.99); input
#   gradients alike (2.98 vs 4.15; 1.37 vs 1.07).
# - forward, the channel kernel: LeNet's second layer 0.38 (im2col 0.78; the row kernel 0.36 on
#   its 10-wide maps); stride 2, 16 -> 32 channels from 32x32 0.98 (1.40), but 32 -> 64 from
#   16x16 0.89 (0.85) and 64 -> 128 from 56x56 20.75 (13.58): stride-2 layers only up to 32
#   output channels.
# - input gradient by the row kernel: 16 -> 16 3x3 on 32x32 1.16 (im2col 1.90, Winograd 2.18),
#   32 -> 32 on 32x32 9.60 (Winograd 10.00), 32 -> 32 5x5 6.54 (8.03); from 3 input channels
#   (a stem's: 0.38 vs 0.54; 3 -> 32 on 32x32: 1.53 vs 1.78), unlike AVX-512; with 1 a tie (0.58
#   vs 0.56).
# - weight gradient by fc_dw_rows: LeNet's first layer 0.30 (im2col 0.80), a 3-channel stem 0.51
#   (0.74), 16 -> 16 3x3 on 32x32 1.95 (Winograd 2.33); it loses on maps narrower than 24 (LeNet's
#   second layer, 10 wide: 1.03 vs 0.81; 16 -> 32 stride 2, 16 wide: 1.90 vs 1.47) and on large
#   kernels with 32 channels on both sides (32 -> 32 5x5: 10.95 vs 10.34), which AVX-512 wins.
# - transposed convolution by phases on the row kernel: k4 s2 64 -> 32 channels, 16x16 -> 32x32,
#   3.53 against 2.73 for GEMM + col2im (its stores interleave the phases: no full-vector store
#   on 8 lanes); on the channel kernel, below, it wins.
# - the channel kernel again, with its blocks of 2 vectors by 6 positions (12 accumulators;
#   before: 1 vector by 8), on an Intel Xeon (AVX-512 machine, FASTCNN_SIMD=x86-64-v3), ms, against
#   im2col: stride 2, 64 -> 128 channels from 56x56 11.66 (12.67), 32 -> 64 from 16x16 0.55
#   (0.84), 16 -> 32 from 32x32 0.57 (1.01): stride-2 layers up to 128 output channels, as
#   AVX-512.
# - Winograd F(4x4, 3x3) against F(2x2, 3x3) (FASTCNN_SIMD=x86-64-v3 OPENBLAS_CORETYPE=Haswell
#   on the Intel Xeon; ms): AVX2's slower GEMMs make its 1.8x fewer multiplications count more:
#   batch 32, 32 -> 32 on 32x32 2.71 vs 4.13, 64 -> 64 on 16x16 2.10 vs 2.71, 128 -> 128 on 8x8
#   2.20 vs 2.62 (batch 64: 5.00 vs 5.32); batch 1, 64 -> 64 on 16x16 (16 tiles) 0.149 vs
#   0.175, but 128 -> 128 on 8x8 (4 tiles) 0.283 vs 0.175.
# - transposed convolution by phases on the channel kernel: k4 s2 64 -> 32 channels, 16x16 ->
#   32x32, 1.91 against 2.12 for GEMM + col2im (same machine, forced AVX2).
# - Winograd's GEMMs by its own kernel against OpenBLAS's Haswell sgemm (kernel alone, ms, F(4x4)
#   / F(2x2)): batch 32, 32 -> 32 on 32x32 1.99 / 2.60 vs 2.72 / 3.64, 64 -> 64 on 16x16 1.74 /
#   2.22 vs 2.13 / 2.71, 128 -> 128 on 8x8 1.72 / 2.08 vs 2.10 / 2.54, 16 -> 16 on 32x32 0.79 /
#   0.96 vs 1.20 / 1.48; batch 1, 64 -> 64 on 16x16 0.105 / 0.123 vs 0.139 / 0.158; only with
#   fewer tiles than a vector it loses (batch 1, 128 -> 128 on 8x8, F(4x4): 4 tiles, 0.87 vs 0.26).
# - the channel kernel against Winograd F(2x2) / F(4x4) on its own GEMMs (above) on 3x3
#   stride-1 layers (same machine, forced AVX2, ms): 32 -> 32 on 16x16 at batch 32 0.79 (0.74
#   / 0.70), 64 -> 64 on 8x8 0.80 (0.72 / 0.76); input gradients 0.82 (0.74 / 0.70), 0.88 (0.70
#   / 0.75): Winograd keeps them (direct_over_winograd_max_outputs None). (Against OpenBLAS's
#   GEMMs the channel kernel had won: 0.85 vs 0.97 and 0.85 vs 0.90.)
# - The weight gradient with the channels in the lanes (as for AVX-512 above, same machine,
#   forced AVX2, ms): LeNet's second layer 0.23 (im2col 0.53); batch 32, 16 -> 16 on 32x32 0.95
#   (F(4x4) 1.05, fc_dw_rows 1.68), 32 -> 32 on 16x16 0.86 (F(2x2) 1.02); batch 8, 16 -> 16 on
#   64x64 1.17 (F(4x4) 1.38); stride 2, 16 -> 32 from 32x32 0.56 (im2col 0.90), the k4 s2
#   transposed convolution's 1.86 (2.14), 5x5 32 -> 32 on 32x32 8.83 (14.7); but against
#   Winograd F(4x4) it loses from 32 channels on 32x32 maps (batch 32: 3.24 vs 2.62; batch 64:
#   6.92 vs 5.47) and from 64 channels (64 -> 64 on 8x8: 1.19 vs F(2x2) 0.88; batch 64 on 16x16
#   7.27 vs F(4x4) 4.73; 32 -> 64 on 16x16 4.11 vs 3.38): on AVX2 only 16 channels, or 32 on
#   maps of up to 16x16, over Winograd; stride 2, 64 -> 128 channels from 56x56 (batch 16)
#   7.45-11.1 (im2col 8.46-12.2), from 16x16 (batch 32) 1.72-2.09 (1.75-2.14).
# - Winograd F(4x4) for the weight gradient from 32 channels (forced AVX2, ms): batch 64, 32 ->
#   32 on 32x32 5.47 vs F(2x2) 6.62; batch 32 2.62 vs 3.27; on 16x16 and 8x8 maps F(2x2) kept
#   (32 -> 32 on 16x16 1.03 vs 1.02; 64 -> 64 on 8x8 0.94 vs 0.88).
# - Winograd F(4x4, 3x3) against the row kernel on 16-channel layers, after the transforms'
#   column-phase split and shuffled output rows (same machine, forced AVX2, ms, forward / input
#   gradient): batch 32, 16 -> 16 on 32x32 0.71 / 0.59 (rows 0.92 / 0.97); batch 8 on 64x64
#   0.57 / 0.74 (0.89 / 0.90): Winograd from 16 channels (rows_over_winograd_max_out_channels 8).
# - After the transforms' change (1a4d129; forced AVX2, ms, channels / F(4x4) / F(2x2)): batch
#   32, 16 -> 16 on 32x32 0.92 / 0.93 / 1.19, 32 -> 32 on 16x16 0.82 / 0.78 / 0.89, 64 -> 64 on
#   8x8 0.90 / 0.76 / 0.78; batch 64, 32 -> 32 on 32x32 9.05 / 5.36 / 6.16; batch 8, 16 -> 16
#   on 64x64 0.88 / 0.83 / 1.21: Winograd keeps every 3x3 stride-1 weight gradient, F(4x4) from
#   16 channels and 16 tiles a sample.
# - The row kernel's AVX2 blocks of 6 channels (2 vectors by 6: one block for LeNet's 6-channel
#   input gradient instead of 4 + 2 half empty), its input gradient on narrower maps (forced
#   AVX2 with OpenBLAS's Haswell kernels, conv2d_backward, best of 3 x 15, ms, against im2col /
#   the channel kernel): LeNet's second layer (6 channels, 14 wide, 5x5, batch 64) 0.41 (0.59 /
#   0.61); 4 channels on 14 wide 0.18 (0.21); 8 -> 16 3x3 on 13 wide 0.14 (0.21 / 0.15); 6 ->
#   32 3x3 on 12 wide 0.17 (0.23); 6 channels on 12 wide 5x5 0.35 (0.37): from maps 13 wide, as
#   AVX-512.
# - Winograd on the stride-2 polyphase components (forward_s2, fc_wino_gemm's 4 x 3 blocks; same
#   machine, forced AVX2, F.conv2d, ms, against the channel kernel / im2col): 64 -> 128 from
#   56x56, batch 16 8.54 (10.27 / 12.82), batch 32 16.62 (19.89), batch 1 0.68 (0.89); 32 -> 64
#   from 56x56 2.27 (2.45): from 32 channels on 49 tiles a sample; with 16 or fewer a sample
#   mixed: 128 -> 256 from 28x28 11.29 (9.76), 48 -> 96 1.51 (1.44), 64 -> 64 from 32x32
#   (batch 8) 0.78 (0.81), 256 -> 512 from 14x14 13.47 (14.43 / 17.24), 128 -> 128 from 14x14
#   1.68 (1.58): kept to 49 tiles. After the channel kernel's base pointers (4300a97): 64 ->
#   128 from 56x56 8.31 (9.68), batch 1 0.66 (0.89), from 112x112 (batch 8) 17.74 (27.12);
#   128 -> 256 from 56x56 (batch 4) 8.16 (im2col 9.86); in compare_torch (median, torch
#   between) 8.17-8.19 against 8.35-8.37.
# - Winograd for 4x4 stride-2 kernels (forward_s2 with u of 25 matrices; forced AVX2, F.conv2d
#   forced, best of 15 / 11, ms, against the channel kernel / im2col; padding 1, sizes are the
#   input's): the k4 s2 transposed convolution's input gradient, 32 -> 64 from 32x32, batch
#   16, 0.87 (1.49 / 2.35); batch 1 0.150 (0.171); 64 -> 128 from 32x32 3.64 (5.51); 16 -> 32
#   from 32x32 0.31 (0.36); 64 -> 64 from 16x16 (4 tiles a sample) 0.71 (0.78); 32 -> 64 from
#   64x64 (batch 8) 1.75 (3.28); 128 -> 256 from 16x16 5.58 (6.76 / 9.87); 128 -> 128 from
#   16x16 2.72 (3.16); batch 1, 64 -> 128 and 128 -> 128 from 32x32 0.60 (0.61), 1.13 (1.27);
#   8 -> 16 from 32x32 0.118 (0.115): from 16 channels; but 256 -> 512 from 16x16, batch 4
#   (16 tiles a GEMM, U 52 MB) 15.8 (im2col 12.0): against im2col from 32 tiles a GEMM.
# - The pointwise kernel (forced AVX2, OpenBLAS's Haswell kernels; ms as for AVX-512): 16 x
#   256 -> 64 on 14x14 0.63 / 0.59 (0.71 / 0.67); batch 1, 128 -> 128 on 28x28 0.16 (0.28);
#   64 x 32 -> 32 on 8x8 0.063 (0.100); 128 -> 128 on 4x4 0.112 (0.156; its blocks are 16
#   wide here); 64 -> 64 on 6x6 0.051 (0.055); but 32 x 64 -> 256 on 56x56 25.2 (26.5; 800 KB
#   a sample) with its input gradient 28.2 (23.9), 256 -> 64 on 56x56 28.1 (24.8), the 4 MB
#   and 1 MB weights above 16.2 (5.1) and 2.9 (2.2): from 16 positions, samples up to 512 KB.
_V3 = replace(_V4, rows_lanes=8, winograd4_min_tiles=16, winograd4_min_sample_tiles=1,
              pointwise_min_positions=16, pointwise_max_sample_bytes=512 << 10,
              winograd_own_gemm=True, rows_over_winograd_max_out_channels=8,
              dw_channels_over_winograd=(),
              rows_input_grad_min_channels=2, rows_input_grad_min_width=13,
              dw_rows_min_width=24,
              dw_rows_min_kernel_area=None, subpixel_rows=False,
              direct_over_winograd_max_outputs=None, winograd_s2_min_channels=32,
              winograd_s2_min_sample_tiles=49, winograd_s2_min_sample_tiles_over_im2col=None,
              winograd_s2_k4_min_channels=16, winograd_s2_k4_min_sample_tiles=1,
              winograd_s2_k4_min_block_tiles=16)

# Baseline (SSE2, 4-float vectors): OpenBLAS picks its GEMM kernels for the CPU by itself, so
# im2col + GEMM and Winograd (whose GEMMs are BLAS) keep every layer. Measured with
# FASTCNN_SIMD=baseline (same machine, ms, direct kernel vs the rule's choice): LeNet's
# first layer 0.38 (row kernel) vs 0.30 (im2col), its second 0.70 (channel kernel) vs 0.36,
# 16 -> 16 3x3 on 32x32 3.43 (rows) vs 1.29 (Winograd), 16 -> 32 stride 2 2.66 vs 1.25; weight
# gradients by fc_dw_rows 0.28 / 0.88 / 2.89 / 2.66 vs 0.24 / 0.70 / 1.32 / 1.46.
# Winograd F(4x4, 3x3) against F(2x2, 3x3) (FASTCNN_SIMD=baseline OPENBLAS_CORETYPE=Nehalem,
# the Intel Xeon; ms): batch 32, 32 -> 32 on 32x32 4.57 vs 7.26, 128 -> 128 on 8x8 4.11 vs
# 5.79; batch 1, 64 -> 64 on 16x16 (16 tiles) 0.273 vs 0.362, 128 -> 128 on 8x8 (4 tiles)
# 0.431 vs 0.400.
# Winograd's own GEMM kernel (SSE2) against OpenBLAS (OPENBLAS_CORETYPE=Nehalem), F(4x4) / F(2x2):
# batch 32, 32 -> 32 on 32x32 3.68 / 5.46 vs 4.69 / 6.88; 128 -> 128 on 8x8 3.28 / 4.94 vs 4.15
# / 6.26; batch 1, 128 -> 128 on 8x8 0.255 / 0.295 vs 0.439 / 0.421.
# The weight gradient with the channels in the lanes (SSE2, FASTCNN_SIMD=baseline
# OPENBLAS_CORETYPE=Nehalem, ms): LeNet's second layer 0.54 (im2col 0.75), stride 2, 16 -> 32
# from 32x32 1.23 (1.58), the k4 s2 transposed convolution's 4.38 (4.90); but never against
# Winograd: batch 32, 16 -> 16 on 32x32 2.26 vs F(4x4) 1.48, 32 -> 32 on 16x16 2.26 vs 1.24.
# Winograd F(4x4) for the weight gradient from 16 channels and 16 tiles a sample (F(2x2): 2.02
# and 1.57 on those two).
# Winograd on the stride-2 polyphase components (SSE2, FASTCNN_SIMD=baseline
# OPENBLAS_CORETYPE=Nehalem, ms, against the channel kernel / im2col, the rules' choice before):
# 64 -> 128 from 56x56 (batch 16) 19.3 (31.2 / 32.5), batch 1 1.28 (2.05 / 3.96); 32 -> 64 from
# 56x56 5.27 (7.39 / 9.39); 128 -> 256 from 28x28 23.4 (28.3 / 30.6); 16 -> 32 from 32x32
# (batch 32, 16 tiles a sample) 0.90 (1.20 / 1.74); 32 -> 64 from 16x16 (4 tiles) 0.89 (1.13 /
# 1.61): every stride-2 3x3 layer from 16 channels.
# The pointwise kernel on SSE2 loses to OpenBLAS (which runs the CPU's own kernels) on every
# shape measured: 16 x 256 -> 64 on 14x14 1.73 ms against 0.54, batch 1 128 -> 128 on 28x28
# 0.43 against 0.21.
# Winograd for 4x4 stride-2 kernels (SSE2, FASTCNN_SIMD=baseline OPENBLAS_CORETYPE=Nehalem, ms,
# against the channel kernel / im2col; sizes are the input's): 32 -> 64 from 32x32, batch 16,
# 2.01 (4.01 / 5.36), batch 1 0.233 (0.345 / 0.677); 64 -> 128 8.17 (17.18 / 20.16); 16 -> 32
# 0.57 (1.05 / 1.62); 8 -> 16 0.189 (0.290 / 0.529); 64 -> 64 from 16x16 1.17 (2.21 / 4.22);
# 128 -> 256 from 16x16 9.42 (17.70 / 28.61): every such layer from 8 channels.
_BASELINE = replace(_V4, direct=False, rows=False, rows_input_grad=False, dw_rows=False,
                    pointwise=False,
                    subpixel=False, rows_lanes=4, winograd4_min_tiles=16,
                    winograd4_min_sample_tiles=1, winograd_own_gemm=True,
                    dw_channels_max_out_channels=64, dw_channels_over_winograd=(),
                    winograd_s2_min_channels=16, winograd_s2_min_sample_tiles=1,
                    winograd_s2_min_sample_tiles_over_im2col=None,
                    winograd_s2_k4_min_channels=8, winograd_s2_k4_min_sample_tiles=1,
                    winograd_s2_k4_min_block_tiles=1,
                    winograd_s2_k4_min_block_tiles_over_im2col=1)

RULES = {"x86-64-v4": _V4, "x86-64-v3": _V3, "baseline": _BASELINE}


def winograd_possible(geom, nd):
    """A 2-D 3x3 stride-1 convolution without dilation or groups, padding <= 2 on both axes."""
    return (nd == 2 and geom.kernel == (1, 3, 3) and geom.stride == (1, 1, 1)
            and geom.dilation == (1, 1, 1) and geom.groups == 1
            and geom.padding[1] == geom.padding[2] <= 2)


def winograd_s2_possible(geom, nd):
    """A 2-D 3x3 (4x4) stride-2 convolution without dilation or groups, padding <= 2 (3), the
    same on both axes (forward_s2)."""
    return (nd == 2 and geom.kernel in ((1, 3, 3), (1, 4, 4)) and geom.stride == (1, 2, 2)
            and geom.dilation == (1, 1, 1) and geom.groups == 1
            and geom.padding[1] == geom.padding[2] < geom.kernel[1])


def winograd_s2_ok(geom, nd, rules):
    """Winograd on the polyphase components for a stride-2 forward: enough channels on both
    sides and enough 4x4 output tiles a sample (Rules.winograd_s2_min_channels; fewer tiles
    against im2col than against the channel kernel)."""
    if not winograd_s2_possible(geom, nd):
        return False
    tiles = math.prod(-(-s // 4) for s in geom.out_size)
    if geom.kernel[1] == 4:
        if not (rules.winograd_s2_k4_min_channels is not None and min(
                geom.in_channels, geom.out_channels) >= rules.winograd_s2_k4_min_channels):
            return False
        block = _winograd.block_size(max(geom.n, 1), tiles)
        if direct_ok(geom, nd, rules):
            return (tiles >= rules.winograd_s2_k4_min_sample_tiles
                    and block * tiles >= rules.winograd_s2_k4_min_block_tiles)
        return block * tiles >= rules.winograd_s2_k4_min_block_tiles_over_im2col
    if not (rules.winograd_s2_min_channels is not None
            and min(geom.in_channels, geom.out_channels) >= rules.winograd_s2_min_channels):
        return False
    over_im2col = rules.winograd_s2_min_sample_tiles_over_im2col
    return tiles >= rules.winograd_s2_min_sample_tiles or (
        over_im2col is not None and tiles >= over_im2col and not direct_ok(geom, nd, rules))


def is_depthwise(geom):
    """One group per input channel (each convolved with its own C_out/C_in kernels): direct
    loops (_ops/depthwise.pyx) instead of C_in one-row GEMMs."""
    return geom.groups == geom.in_channels > 1


def tap_count(geom):
    return geom.in_channels * geom.kernel[1] * geom.kernel[2]


def is_pointwise(geom):
    """A 1x1 kernel at stride 1 without padding, one group, any number of spatial axes: per
    sample a GEMM on x as it is (C, prod(spatial))."""
    return (geom.groups == 1 and all(k == 1 for k in geom.kernel)
            and all(s == 1 for s in geom.stride) and not any(geom.padding))


def pointwise_ok(geom, nd, rules, direction="forward"):
    """The pointwise kernel, forward or input gradient (whose input is dy): enough positions
    a sample, an input sample and a weight small enough (Rules.pointwise_max_*_bytes, counted
    as float32, as measured, whatever the dtype)."""
    if not (rules.pointwise and is_pointwise(geom)):
        return False
    positions = math.prod(geom.out_size)
    channels = geom.in_channels if direction == "forward" else geom.out_channels
    item = 4
    return (positions >= rules.pointwise_min_positions
            and channels * positions * item <= rules.pointwise_max_sample_bytes
            and geom.in_channels * geom.out_channels * item
            <= rules.pointwise_max_weight_bytes)


def _direct_kernels_apply(geom, nd):
    return nd == 2 and geom.groups == 1


def winograd_ok(geom, nd, rules, direction="forward"):
    """Winograd where possible and both channel counts reach the minimum, unless a direct
    kernel is faster: for the forward, the row kernel (few output channels on wide maps) or the
    channel kernel (direct_over_winograd)."""
    if not (winograd_possible(geom, nd)
            and min(geom.in_channels, geom.out_channels) >= rules.winograd_min_channels):
        return False
    if direction == "forward":
        return not (geom.out_channels <= rules.rows_over_winograd_max_out_channels
                    and rows_ok(geom, nd, rules)) and not direct_over_winograd(geom, nd, rules)
    # (the weight gradient: Winograd ahead of fc_dw_rows since the transforms' phase split,
    # 16 -> 16 on 32x32 at batch 32 F(4x4) 0.65 ms against 1.01; the channels are ahead of it
    # where dw_channels_ok says, being first in ALGORITHMS)
    return True


def winograd4_ok(geom, nd, rules, direction="forward"):
    """Winograd F(4x4, 3x3) rather than F(2x2, 3x3): where the rules choose Winograd, with
    enough 4x4 output tiles in the batch (the input gradient's outputs are the input's size)."""
    size = geom.in_size if direction == "input gradient" else geom.out_size
    per_sample = math.prod(-(-s // 4) for s in size)
    if direction == "weight gradient" and (
            rules.winograd4_weight_grad_min_channels is None
            or per_sample < rules.winograd4_weight_grad_min_sample_tiles
            or min(geom.in_channels, geom.out_channels) < rules.winograd4_weight_grad_min_channels):
        return False
    return (per_sample >= rules.winograd4_min_sample_tiles
            and geom.n * per_sample >= rules.winograd4_min_tiles
            and winograd_ok(geom, nd, rules, direction))


def direct_over_winograd(geom, nd, rules):
    """A 3x3 stride-1 layer on small maps, where the channel kernel is ahead of Winograd and
    of the row kernel (Rules.direct_over_winograd_max_outputs)."""
    limit = rules.direct_over_winograd_max_outputs
    return (rules.direct and limit is not None and winograd_possible(geom, nd)
            and rules.direct_over_winograd_min_out_channels <= geom.out_channels
            <= rules.direct_max_out_channels
            and geom.out_channels * math.prod(geom.out_size) <= limit
            and tap_count(geom) >= rules.direct_taps[0])


def direct_ok(geom, nd, rules):
    """The channel kernel for the forward."""
    if direct_over_winograd(geom, nd, rules):
        return True
    taps = tap_count(geom)
    small = (geom.out_channels <= rules.direct_max_out_channels
             and taps <= rules.direct_taps[1]
             and math.prod(geom.out_size) <= rules.direct_max_positions and max(geom.stride) <= 2)
    strided = (max(geom.stride) == 2 and geom.out_channels <= rules.direct_stride2_max_out_channels
               and taps <= rules.direct_stride2_max_taps)
    return (rules.direct and _direct_kernels_apply(geom, nd) and geom.kernel != (1, 1, 1)
            and taps >= rules.direct_taps[0] and (small or strided))


def rows_ok(geom, nd, rules):
    """The row kernel for the forward: maps wide enough to fill its vectors; a width stride
    only with few taps (first layers), where the channel kernel is not ahead."""
    width = geom.out_size[-1]
    lanes = rules.rows_lanes
    lane_use = width / (-(-width // lanes) * lanes)
    taps = tap_count(geom)
    few_taps = taps < rules.direct_taps[0]
    return (rules.rows and _direct_kernels_apply(geom, nd) and geom.kernel != (1, 1, 1)
            and width >= rules.rows_min_width and lane_use >= rules.rows_min_lane_use
            and (geom.stride[2] == 1 or few_taps)
            and (rules.rows_max_taps is None or taps < rules.rows_max_taps))


def input_grad_as_conv(geom, nd):
    """The input gradient of a stride-1 convolution as the convolution the row kernel runs: dy
    by the kernels transposed and flipped, padded span - padding (span = dilation * (k - 1)),
    giving the input's size; None where that padding would be negative, or the layer is
    strided, grouped or not 2-D."""
    if not _direct_kernels_apply(geom, nd) or geom.stride != (1, 1, 1):
        return None
    span = tuple(d * (k - 1) for d, k in zip(geom.dilation, geom.kernel))
    if any(p > s for p, s in zip(geom.padding, span)):
        return None
    return replace(geom, in_channels=geom.out_channels, out_channels=geom.in_channels,
                   in_size=geom.out_size, out_size=geom.in_size,
                   padding=tuple(s - p for s, p in zip(span, geom.padding)))


def rows_input_grad_ok(geom, nd, rules):
    """The row kernel for the input gradient: as for a forward (wide maps, and Winograd not
    ahead: at most 16 input channels where Winograd applies), with at least
    rows_input_grad_min_channels input channels, on maps at least rows_input_grad_min_width
    wide."""
    as_conv = input_grad_as_conv(geom, nd)
    if rules.rows_input_grad_min_width is not None:
        rules = replace(rules, rows_min_width=rules.rows_input_grad_min_width)
    return (as_conv is not None and rules.rows_input_grad
            and geom.in_channels >= rules.rows_input_grad_min_channels
            and rows_ok(as_conv, nd, rules)
            and not (winograd_ok(geom, nd, rules, "input gradient")
                     and geom.in_channels > rules.rows_over_winograd_max_out_channels))


def direct_input_grad_ok(geom, nd, rules):
    """The channel kernel for the input gradient of a stride-1 convolution (dy by the flipped
    kernels) where, as that convolution, it is ahead of Winograd (direct_over_winograd)."""
    as_conv = input_grad_as_conv(geom, nd)
    return as_conv is not None and direct_over_winograd(as_conv, nd, rules)


def dw_rows_ok(geom, nd, rules):
    """The direct weight gradient: few channels on one side, or a large kernel."""
    return (rules.dw_rows and _direct_kernels_apply(geom, nd) and geom.kernel != (1, 1, 1)
            and geom.out_channels <= rules.dw_rows_max_out_channels
            and geom.out_size[-1] >= rules.dw_rows_min_width
            and (min(geom.in_channels, geom.out_channels) <= rules.dw_rows_max_channels
                 or (rules.dw_rows_min_kernel_area is not None
                     and geom.kernel[1] * geom.kernel[2] >= rules.dw_rows_min_kernel_area)))


def dw_channels_ok(geom, nd, rules):
    """The weight gradient with the output channels in the vector lanes: enough taps, few
    enough output channels, and where Winograd applies, fewer still (or small maps); not 1x1
    (a plain GEMM on the input: 16 x 256 -> 64 on 14x14 0.51 ms against 0.61, ResNet's
    stride-2 1x1s 0.11 against 0.17-0.20)."""
    if not (rules.dw_channels and _direct_kernels_apply(geom, nd) and geom.kernel != (1, 1, 1)
            and tap_count(geom) >= rules.dw_channels_min_taps
            and geom.out_channels <= rules.dw_channels_max_out_channels):
        return False
    if not (winograd_possible(geom, nd)
            and min(geom.in_channels, geom.out_channels) >= rules.winograd_min_channels):
        return True
    outputs = math.prod(geom.out_size)
    return any(geom.out_channels <= most_channels and outputs >= fewest
               and (most is None or outputs <= most)
               for most_channels, fewest, most in rules.dw_channels_over_winograd)


def subpixel_by_rows(sub, nd, rules):
    """Which direct kernel runs one phase ``sub`` of a transposed convolution by phases: the
    channel kernel where it has the taps and channels to fill its blocks (as direct_ok: at
    least direct_taps[0] taps; at least subpixel_channels_min_out_channels), else the row
    kernel."""
    return not (tap_count(sub) >= rules.direct_taps[0]
                and sub.out_channels >= rules.subpixel_channels_min_out_channels)


def subpixel_ok(geom, nd, rules):
    """A transposed convolution by phases where a direct kernel suits every phase: the channel
    kernel (subpixel_by_rows false), or the row kernel where rows_ok."""
    phases = subpixel_phases(geom, nd) if rules.subpixel else None
    return phases is not None and all(not subpixel_by_rows(sub, nd, rules)
                                      or (rules.subpixel_rows and rows_ok(sub, nd, rules))
                                      for _, _, sub, _, _ in phases)


# Where each algorithm can compute a problem at all (is_usable_for), whatever its speed.
_USABLE = {
    "depthwise": lambda direction, geom, nd: is_depthwise(geom),
    "pointwise": lambda direction, geom, nd: is_pointwise(geom),
    "winograd": lambda direction, geom, nd: winograd_possible(geom, nd),
    "winograd4": lambda direction, geom, nd: winograd_possible(geom, nd),
    "winograd_s2": lambda direction, geom, nd: (direction == "forward"
                                                and winograd_s2_possible(geom, nd)),
    "rows": lambda direction, geom, nd: (_direct_kernels_apply(geom, nd) if direction == "forward"
                                         else input_grad_as_conv(geom, nd) is not None),
    "direct": lambda direction, geom, nd: (input_grad_as_conv(geom, nd) is not None
                                           if direction == "input gradient"
                                           else _direct_kernels_apply(geom, nd)),
    "channels": lambda direction, geom, nd: _direct_kernels_apply(geom, nd),
    "subpixel": lambda direction, geom, nd: subpixel_phases(geom, nd) is not None,
    "im2col": lambda direction, geom, nd: True,
}

# Whether the rules of a level prefer each algorithm, in ALGORITHMS' order.
_PREFERRED = {
    ("forward", "depthwise"): lambda geom, nd, r: is_depthwise(geom),
    ("forward", "pointwise"): pointwise_ok,
    ("forward", "winograd4"): lambda geom, nd, r: winograd4_ok(geom, nd, r, "forward"),
    ("forward", "winograd"): lambda geom, nd, r: winograd_ok(geom, nd, r, "forward"),
    ("forward", "winograd_s2"): winograd_s2_ok,
    ("forward", "rows"): lambda geom, nd, r: (rows_ok(geom, nd, r)
                                              and not direct_over_winograd(geom, nd, r)),
    ("forward", "direct"): direct_ok,
    ("input gradient", "depthwise"): lambda geom, nd, r: is_depthwise(geom),
    ("input gradient", "pointwise"): lambda geom, nd, r: pointwise_ok(geom, nd, r,
                                                                      "input gradient"),
    ("input gradient", "direct"): lambda geom, nd, r: direct_input_grad_ok(geom, nd, r),
    ("input gradient", "rows"): rows_input_grad_ok,
    ("input gradient", "winograd4"): lambda geom, nd, r: winograd4_ok(geom, nd, r,
                                                                      "input gradient"),
    ("input gradient", "winograd"): lambda geom, nd, r: winograd_ok(geom, nd, r,
                                                                    "input gradient"),
    ("weight gradient", "depthwise"): lambda geom, nd, r: is_depthwise(geom),
    ("weight gradient", "winograd4"): lambda geom, nd, r: winograd4_ok(geom, nd, r,
                                                                       "weight gradient"),
    ("weight gradient", "winograd"): lambda geom, nd, r: winograd_ok(geom, nd, r,
                                                                     "weight gradient"),
    ("weight gradient", "channels"): lambda geom, nd, r: dw_channels_ok(geom, nd, r),
    ("weight gradient", "direct"): dw_rows_ok,
    ("transposed forward", "subpixel"): subpixel_ok,
}


def _check_direction(direction):
    if direction not in ALGORITHMS:
        raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}, got "
                         f"{direction!r}")


def usable(algorithm, direction, geom, nd):
    """Whether ``algorithm`` can compute this problem (its shape, not its speed)."""
    _check_direction(direction)
    return algorithm in ALGORITHMS[direction] and _USABLE[algorithm](direction, geom, nd)


def choose(direction, geom, nd, isa, exclude=()):
    """The algorithm the measured rules of level ``isa`` pick for one direction of a
    convolution (geometry ``geom``, ``nd`` spatial axes): the first of ALGORITHMS[direction]
    (leaving out ``exclude``) that the rules prefer, im2col + GEMM otherwise. A pure function
    of its arguments: the same answer on every machine."""
    _check_direction(direction)
    if isa not in RULES:
        raise ValueError(f"isa must be one of {', '.join(map(repr, ISAS))}, got {isa!r}")
    return _choose(direction, geom, nd, RULES[isa], tuple(exclude))


@functools.lru_cache(maxsize=1024)
def _choose(direction, geom, nd, rules, exclude):
    """choose() for one Rules table, cached (every convolution call asks; the rules and the
    geometry are frozen dataclasses: LeNet's second layer 37 -> 32 us a call at batch 1)."""
    for algorithm in ALGORITHMS[direction]:
        if algorithm == "im2col" or algorithm in exclude:
            continue
        if _PREFERRED[direction, algorithm](geom, nd, rules):
            return algorithm
    return "im2col"


# Forced choices (conv_algorithms), per context: a thread or task sees only its own.
_forced = contextvars.ContextVar("fastcnn_conv_algorithms", default={})
_KEYWORDS = {"forward": "forward", "input_grad": "input gradient",
             "weight_grad": "weight gradient", "transposed": "transposed forward"}


@contextlib.contextmanager
def conv_algorithms(*, forward=None, input_grad=None, weight_grad=None, transposed=None):
    """Force the algorithm of convolutions run inside the ``with`` block, per direction:
    ``forward`` one of "pointwise" (1x1 at stride 1 without padding: the GEMM kernel of
    _ops/pointwise.pyx), "winograd4" (Winograd F(4x4, 3x3)), "winograd" (F(2x2, 3x3)),
    "winograd_s2" (3x3 or 4x4 stride 2: Winograd F(4, 2) on the polyphase components), "rows" (the
    direct kernel along output rows), "direct" (the direct kernel along output channels),
    "im2col"; ``input_grad`` one of "pointwise", "direct", "rows" (either direct kernel on dy,
    stride-1 layers), "winograd4", "winograd", "im2col"; ``weight_grad`` one of "channels" (the
    output channels in the vector lanes; also a transposed convolution's), "winograd4",
    "winograd", "direct" (along output rows), "im2col"; ``transposed`` (a
    transposed convolution's forward) "subpixel" or "im2col". None keeps the rules. A problem
    the forced algorithm cannot compute (Winograd on a 5x5 kernel, a direct kernel on a 1-D or
    grouped convolution) keeps the rules' choice; depthwise layers keep their own loops. The
    setting is local to the calling thread (a context variable) and nests.

        with F.conv_algorithms(forward="rows", input_grad="im2col"):
            y = F.conv2d(x, w, padding=1)
    """
    forced = dict(_forced.get())
    for keyword, value in (("forward", forward), ("input_grad", input_grad),
                           ("weight_grad", weight_grad), ("transposed", transposed)):
        if value is None:
            continue
        direction = _KEYWORDS[keyword]
        choices = [a for a in ALGORITHMS[direction] if a != "depthwise"]
        if value not in choices:
            raise ValueError(f"conv_algorithms: {keyword} must be one of "
                             f"{', '.join(map(repr, choices))} or None, got {value!r}")
        forced[direction] = value
    token = _forced.set(forced)
    try:
        yield
    finally:
        _forced.reset(token)


# Autotuning (as torch.backends.cudnn.benchmark): with it on, the first call of each shape
# times Winograd against the rules' other choice and keeps the faster one for that shape.
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


def select(direction, geom, nd, dtype, runners=None):
    """The algorithm to run: the one forced by conv_algorithms where it can compute this
    problem, else choose() for this machine's level; with autotuning on, Winograd against the
    rules' other choice, each run and timed once per shape (``runners``: algorithm -> a
    function running it)."""
    forced = _forced.get().get(direction)
    if forced is not None and not is_depthwise(geom) and usable(forced, direction, geom, nd):
        return forced
    isa = machine_isa()
    choice = choose(direction, geom, nd, isa)
    if not (_autotune["enabled"] and runners and winograd_possible(geom, nd)):
        return choice
    winograd = choice if choice in WINOGRAD_TILE else "winograd"
    other = choose(direction, geom, nd, isa, exclude=tuple(WINOGRAD_TILE))
    key = (direction, geom.n, geom.in_channels, geom.out_channels, geom.in_size, geom.padding,
           np.dtype(dtype).name, get_num_threads())
    with _tuned_lock:
        choice = _tuned.get(key)
    if choice is None:
        timings = {}
        for algorithm in (winograd, other):
            runners[algorithm]()                    # warm: workspaces, caches
            start = time.perf_counter()
            runners[algorithm]()
            timings[algorithm] = time.perf_counter() - start
        choice = min(timings, key=timings.get)
        with _tuned_lock:
            _tuned[key] = choice
    return choice


def fastest(direction, geom, nd, runners, repeat=3):
    """The algorithm that ran fastest (best of ``repeat`` timed runs after a warm one; 5 when a
    round of all of them takes under a millisecond) among those that can compute the problem
    (``usable``; a depthwise problem keeps its own loops). The candidates run in turns, round
    after round, so that a burst of load on the machine hits them alike rather than the one
    timed during it (ResNet's stem at batch 32 on a busy machine went to im2col, 20% slower).
    ``runners``: algorithm -> a function running it. For plans made once and run many times:
    an InferenceSession's. The rules' own choice wins ties, so that the measurement only moves
    a problem where it pays."""
    if is_depthwise(geom):
        return "depthwise"
    ruled = choose(direction, geom, nd, machine_isa())
    candidates = [a for a in ALGORITHMS[direction]
                  if a != "depthwise" and usable(a, direction, geom, nd)]
    if not candidates:
        return ruled
    for algorithm in candidates:
        runners[algorithm]()                        # warm: workspaces, caches
    spent = dict.fromkeys(candidates, math.inf)
    rounds, done = repeat, 0
    while done < rounds:
        start_round = time.perf_counter()
        for algorithm in candidates:
            start = time.perf_counter()
            runners[algorithm]()
            spent[algorithm] = min(spent[algorithm], time.perf_counter() - start)
        if done == 0 and time.perf_counter() - start_round < 1e-3:
            rounds = max(rounds, 5)
        done += 1
    if ruled in spent:
        spent[ruled] *= 0.97                        # within 3%: keep the rules' choice
    return min(candidates, key=spent.get)


# --------------------------------------------------------------------------------------------
# Runners: each kernel's operands and workspace
# --------------------------------------------------------------------------------------------

def _axis_phases(size_in, size_out, k, s, p):
    """Along one axis, the output phases r of a transposed convolution (outputs s*q + r) as
    stride-1 convolutions of the input: y[s*q + r] = sum_u x[q - pad + u] * w[taps[u]], u < m
    (the taps t = r + p mod s, in reverse order). (r, outputs, pad, taps) per phase, or None
    when a phase has no tap or would need negative padding."""
    phases = []
    for r in range(s):
        t0 = (r + p) % s
        m = -(-(k - t0) // s) if t0 < k else 0
        pad = (m - 1) - (r + p - t0) // s
        count = -(-(size_out - r) // s)
        if m == 0 or pad < 0:
            return None
        phases.append((r, count, pad, [t0 + s * (m - 1 - u) for u in range(m)]))
    return phases


def subpixel_phases(geom, nd):
    """A 2-D transposed convolution (one group, no dilation; ``geom`` as _conv_transpose.py
    makes it) as stride-1 convolutions, one per output phase (ra, rb), each run by the row
    kernel and stored into its interleaved outputs: no GEMM into columns and no col2im. (ra,
    rb, geometry, taps_h, taps_w) per phase, or None where some phase has no tap."""
    if nd != 2 or geom.groups != 1 or geom.dilation != (1, 1, 1):
        return None
    per_axis = [_axis_phases(i, o, k, s, p) for i, o, k, s, p in zip(
        geom.in_size, geom.out_size, geom.kernel[1:], geom.stride[1:], geom.padding[1:])]
    if None in per_axis:
        return None
    phases = []
    for ra, count_h, pad_h, taps_h in per_axis[0]:
        for rb, count_w, pad_w, taps_w in per_axis[1]:
            sub = _ConvGeometry(geom.batched, geom.n, geom.in_channels, geom.out_channels, 1,
                                geom.in_size, (count_h, count_w), (1, len(taps_h), len(taps_w)),
                                (1, 1, 1), (0, pad_h, pad_w), (1, 1, 1))
            phases.append((ra, rb, sub, taps_h, taps_w))
    return phases


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


@functools.lru_cache(maxsize=256)
def direct_layout(weight_shape, geom, dtype, by_rows):
    """What DirectOperands holds besides the weight's values, for a weight of ``weight_shape``
    (C_out, C_in, kH, kW) on ``geom``: (cpad, panel or 0, offsets, scalars, workspace), made
    once per problem (every convolution call of a training step asks for the same ones)."""
    c_out, c_in, kh, kw = weight_shape
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = padded_plane(geom)
    unit = _direct.CO_PAD if by_rows else max(_direct.CO_PAD, _direct.channel_panel(dtype))
    cpad = -(-c_out // unit) * unit
    panel = 0 if by_rows else _direct.channel_panel(dtype)
    offsets = direct_offsets(c_in, kh, kw, dh, dw, hp, wp, sw)
    scalars = (c_in, *geom.in_size, ph, pw, hp, wp, oh, ow, sh, sw)
    workspace = _direct.direct_workspace_size(c_in, hp, wp, sh, sw, by_rows)
    return cpad, panel, offsets, scalars, workspace


class DirectOperands:
    """A convolution's weight and bias as the direct kernels read them, prepared once: the
    weight transposed to (K, C_out padded to _direct.CO_PAD) for the row kernel, or in the
    channel kernel's panels (_direct.channel_panel: (C_out padded / panel) blocks of (K, panel),
    held in a (K, cpad) array); the bias padded alike, the taps' offsets in the padded planes,
    and the geometry's scalars (direct_layout: made once per problem; the weight's layout per
    call of a layer's forward, once per plan of an InferenceSession)."""
    __slots__ = ("wt", "bias", "offsets", "scalars", "by_rows", "workspace")

    def __init__(self, w, b1, geom, dtype, by_rows=False, layout=None):
        c_out = w.shape[0]
        cpad, panel, self.offsets, self.scalars, self.workspace = (
            layout or direct_layout(w.shape, geom, np.dtype(dtype), by_rows))
        taps = w.size // c_out
        wt = np.zeros((taps, cpad), dtype=dtype)
        wt[:, :c_out] = w.reshape(c_out, -1).T
        if panel:
            wt = np.ascontiguousarray(
                wt.reshape(taps, cpad // panel, panel).transpose(1, 0, 2)).reshape(taps, cpad)
        self.wt = wt
        self.bias = np.zeros(cpad, dtype=dtype)
        if b1.size:
            self.bias[:c_out] = b1
        self.by_rows = by_rows

    def run(self, x2, out2, dtype, relu=False, threads=None):
        """out2 (N, C_out*L) = the convolution of x2 (N, C_in*H*W) (see
        _direct.direct_forward), on ``threads`` threads (default get_num_threads())."""
        threads = threads or get_num_threads()
        ws = scratch(self.workspace * threads, dtype)
        _direct.direct_forward(x2, self.wt, self.bias, out2, ws, self.offsets, *self.scalars,
                               self.by_rows, relu, threads)


@functools.lru_cache(maxsize=64)
def subpixel_layout(geom, dtype, rules):
    """What SubpixelOperands holds besides the weight's values, for a transposed convolution
    ``geom`` (as _conv_transpose.py makes it; subpixel_phases not None) on level ``rules``,
    made once per problem: (gather, cpad, offsets, table, scalars, workspace).

    The phases (subpixel_phases) read one common zero-bordered plane per input channel, Hp x
    Wp, the input at (top, left) = the largest of the phases' paddings; phase p's own padded
    plane starts at (top - pad_h, left - pad_w) in it, which its offsets include. Each phase
    runs the kernel subpixel_by_rows picks, storing output (co, i, j) at (ra + sh*i, rb + sw*j)
    of plane co. ``gather`` (sum of K times cpad) indexes the flattened weight (C_in, C_out,
    kH, kW) for _direct.gather: element (k, co) of the phases' stacked (K, cpad) weights
    (each phase's in the channel kernel's panels where it runs it; channels past C_out
    -1: zero). ``table`` is _direct.subpixel_forward's phase table; ``scalars`` its (C, H, W, top,
    left, Hp, Wp, C_out); ``workspace`` its per-thread scratch."""
    # the phases with outputs (a 1-wide output of stride 2 has an empty phase)
    phases = [ph for ph in subpixel_phases(geom, 2) if min(ph[2].out_size) > 0]
    c_in, c_out = geom.in_channels, geom.out_channels
    _, kh, kw = geom.kernel
    oh, ow = geom.out_size
    sh, sw = geom.stride[1:]
    top = max(sub.padding[1] for _, _, sub, _, _ in phases)
    left = max(sub.padding[2] for _, _, sub, _, _ in phases)
    hp = wp = 0
    for _, _, sub, _, _ in phases:
        php, pwp = padded_plane(sub)
        hp, wp = max(hp, top - sub.padding[1] + php), max(wp, left - sub.padding[2] + pwp)
    by_rows = [subpixel_by_rows(sub, 2, rules) for _, _, sub, _, _ in phases]
    panel = _direct.channel_panel(dtype)
    unit = _direct.CO_PAD if all(by_rows) else max(_direct.CO_PAD, panel)
    cpad = -(-c_out // unit) * unit
    co = np.arange(cpad)
    gathers, offsets, table, k0 = [], [], [], 0
    for (ra, rb, sub, taps_h, taps_w), rows in zip(phases, by_rows):
        ci, th, tw = np.meshgrid(np.arange(c_in), taps_h, taps_w, indexing="ij")
        tap = (ci * c_out * kh * kw + th * kw + tw).reshape(-1, 1)      # (K, 1): co = 0
        gather = np.where(co < c_out, tap + co * kh * kw, -1)            # (K, cpad)
        if not rows:                                    # (cpad / panel) blocks of (K, panel)
            gather = gather.reshape(len(tap), cpad // panel, panel).transpose(1, 0, 2)
        gathers.append(gather.ravel())
        shift = (top - sub.padding[1]) * wp + left - sub.padding[2]
        offsets.append(direct_offsets(c_in, len(taps_h), len(taps_w), 1, 1, hp, wp) + shift)
        table.append((len(tap), k0, k0, int(rows), *sub.out_size, ra * ow + rb, oh * ow,
                      sh * ow, sw))
        k0 += len(tap)
    gather, offsets = np.concatenate(gathers).astype(np.intp), np.concatenate(offsets)
    table = np.array(table, dtype=np.intp).reshape(-1, _direct.PHASE_COLUMNS)
    for a in (gather, offsets, table):
        a.flags.writeable = False
    scalars = (c_in, *geom.in_size, top, left, hp, wp, c_out)
    return gather, cpad, offsets, table, scalars, _direct.subpixel_workspace_size(c_in, hp, wp)


class SubpixelOperands:
    """A transposed convolution by output phases (subpixel_layout), prepared: every phase's
    weights gathered from the weight w4 (C_in, C_out, kH, kW) in one indexing, the bias padded
    to cpad, the phase table. ``run(x2, out2)``: out2 (N, C_out*prod(out)) from x2 (N,
    C_in*H*W) by _direct.subpixel_forward; ``step(x2, out2, workspace, max_threads)``: the
    same as one compiled plan step (_direct.SubpixelStep), ``workspace`` holding max_threads
    * ``self.workspace`` elements."""
    __slots__ = ("wt", "bias", "offsets", "table", "scalars", "workspace")

    def __init__(self, w4, b1, geom, dtype, rules):
        dtype = np.dtype(dtype)
        gather, cpad, self.offsets, self.table, self.scalars, self.workspace = (
            subpixel_layout(geom, dtype, rules))
        self.wt = np.empty((gather.size // cpad, cpad), dtype)
        _direct.gather(np.ascontiguousarray(w4, dtype=dtype).ravel(), gather, self.wt.ravel())
        self.bias = np.zeros(cpad, dtype)
        if b1.size:
            self.bias[:geom.out_channels] = b1

    def run(self, x2, out2, threads=None):
        threads = threads or get_num_threads()
        ws = scratch(self.workspace * threads, self.wt.dtype)
        _direct.subpixel_forward(x2, self.wt, self.bias, out2, ws, self.offsets, self.table,
                                 *self.scalars, threads)

    def step(self, x2, out2, workspace, max_threads):
        return _direct.SubpixelStep(x2, self.wt, self.bias, out2, workspace, self.offsets,
                                    self.table, *self.scalars, max_threads)


def direct_conv2d(x2, w, b1, out2, geom, dtype, relu=False, by_rows=False):
    """out2 (N, C_out*L) by _direct.direct_forward (DirectOperands prepared for this call);
    ``by_rows``: the kernel vectorized along output rows."""
    DirectOperands(w, b1, geom, dtype, by_rows).run(x2, out2, dtype, relu)


def direct_weight_grad(x2, dy2, geom, dtype, by_channels=False, forward=None):
    """dW (C_out, C_in, kH, kW) of a 2-D one-group convolution by a direct kernel (no im2col):
    _direct.direct_weight_grad (along the output rows), or with ``by_channels``
    _direct.direct_weight_grad_channels (the output channels in the vector lanes); partials
    over fixed sample chunks, added in chunk order in double by the driver. ``forward`` (with
    ``by_channels``): (ops, out2), the convolution's forward by the channel kernel (ops: its
    DirectOperands, not by rows) computed into out2 (N, C_out*L) in the same pass, each sample
    padded once for both (_direct.direct_forward_and_weight_grad_channels)."""
    n, c_in, c_out = geom.n, geom.in_channels, geom.out_channels
    _, kh, kw = geom.kernel
    (_, dh, dw), (_, ph, pw), (_, sh, sw) = geom.dilation, geom.padding, geom.stride
    oh, ow = geom.out_size
    hp, wp = padded_plane(geom)
    taps = c_in * kh * kw
    threads = get_num_threads()
    chunks = max(1, min(n, _WEIGHT_GRAD_CHUNKS))
    if by_channels:                 # each chunk's accumulators (kpad, cpad) are its partial
        cpad, kpad = _direct.channels_weight_grad_layout(c_out, taps)
        size, kernel = (_direct.channels_weight_grad_workspace_size,
                        _direct.direct_weight_grad_channels)
        parts = _memory.empty((chunks, kpad * cpad), dtype)
    else:                           # a double partial (C_out*K) per chunk
        kpad = _direct.direct_weight_grad_layout(c_out, taps, ow)[1]
        size, kernel = _direct.direct_weight_grad_workspace_size, _direct.direct_weight_grad
        parts = _memory.empty((chunks, taps * c_out), np.float64)
    offsets = np.zeros(kpad, np.intp)
    offsets[:taps] = direct_offsets(c_in, kh, kw, dh, dw, hp, wp, sw)
    ws = scratch(size(c_in, hp, wp, sh, sw, c_out, taps, oh, ow) * threads, dtype)
    grad_w = np.empty((c_out, taps), dtype)
    scalars = (c_in, *geom.in_size, ph, pw, hp, wp, oh, ow, sh, sw, threads)
    if forward is not None:
        ops, out2 = forward
        _direct.direct_forward_and_weight_grad_channels(x2, dy2, ops.wt, ops.bias, out2, grad_w,
                                                        parts, ws, offsets, *scalars)
    else:
        kernel(x2, dy2, grad_w, parts, ws, offsets, *scalars)
    return grad_w.reshape(c_out, c_in, kh, kw)


class WinogradOperands:
    """A 3x3 stride-1 convolution's transformed kernels U = G g G^T ((m + 2)^2, C_out, C_in),
    one GEMM operand per xi, prepared once, for Winograd F(m x m, 3x3) (m = 2 or 4); with
    ``flip``, of the kernels of w (C, C_out, 3, 3) transposed and rotated (the input
    gradient's)."""
    __slots__ = ("u", "m", "bias", "in_size", "pad", "out_size")

    def __init__(self, w, bias, in_size, pad, out_size, dtype, flip=False, m=2):
        k, c = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
        self.u = np.empty(((m + 2) ** 2, k, c), dtype=dtype)
        _winograd.weight_transform(w, self.u, flip, get_num_threads())
        self.m, self.bias, self.in_size, self.pad, self.out_size = m, bias, in_size, pad, out_size

    def _layout(self, n):
        """(block, per-thread workspace, own GEMM kernel) for a batch of n samples."""
        (oh, ow), m = self.out_size, self.m
        k, c = self.u.shape[1:]
        tiles = -(-oh // m) * -(-ow // m)
        block = _winograd.block_size(n, tiles)
        rules = machine_rules()
        own_gemm = rules.winograd_own_gemm and min(block, n) * tiles >= rules.rows_lanes
        return block, _winograd.workspace_size(c, k, oh, ow, block, m), own_gemm

    def run(self, x2, out2, dtype, relu=False, threads=None):
        """out2 (N, C_out*OH*OW) = the convolution of x2 (N, C*H*W), plus bias, then max(., 0)
        if relu."""
        threads = threads or get_num_threads()
        (h, w), (oh, ow) = self.in_size, self.out_size
        block, per_thread, own_gemm = self._layout(x2.shape[0])
        ws = scratch(per_thread * threads, dtype)
        with single_threaded_blas:
            _winograd.forward(x2, self.u, self.bias, out2, ws, h, w, self.pad, oh, ow, block,
                              relu, threads, own_gemm)

    def step_scratch(self, n):
        """Elements of workspace per thread of ``step`` on batches of n samples."""
        return self._layout(n)[1]

    def step(self, x2, out2, workspace, relu, max_threads, residual=None):
        """run's work as a compiled step of an inference plan (_winograd.WinogradStep) on fixed
        arrays, on up to max_threads threads (workspace: max_threads * step_scratch(N)); with
        ``residual`` (out2's shape), out2 = relu?(conv + bias + residual): a residual block's
        add fused into its convolution (the same operations in the same order)."""
        (h, w), (oh, ow) = self.in_size, self.out_size
        block, _, own_gemm = self._layout(x2.shape[0])
        return _winograd.WinogradStep(x2, self.u, self.bias, out2, workspace, h, w, self.pad,
                                      oh, ow, block, relu, own_gemm, max_threads, residual)


class WinogradS2Operands:
    """A 3x3 stride-2 convolution's kernels transformed for Winograd on the polyphase
    components (_winograd.weight_transform_s2: 36 GEMM operands (36, C_out, C_in); a 4x4
    one's: 25 (25, C_out, 4 C_in), its four phases side by side), prepared once, with its bias
    and geometry. ``run(x2, out2)`` and ``step(...)`` as WinogradOperands'."""
    __slots__ = ("u", "bias", "in_size", "pad", "out_size", "kernel", "in_channels")

    def __init__(self, w, bias, in_size, pad, out_size, dtype):
        self.kernel, self.in_channels = w.shape[2], w.shape[1]
        shape = ((25, w.shape[0], 4 * w.shape[1]) if self.kernel == 4
                 else (36, w.shape[0], w.shape[1]))
        self.u = np.empty(shape, dtype=dtype)
        _winograd.weight_transform_s2(w, self.u, get_num_threads())
        self.bias, self.in_size, self.pad, self.out_size = bias, in_size, pad, out_size

    def _layout(self, n):
        """(block, per-thread workspace, own GEMM kernel) for a batch of n samples."""
        oh, ow = self.out_size
        k, c = self.u.shape[1], self.in_channels
        block = _winograd.block_size(n, -(-oh // 4) * -(-ow // 4))
        return (block, _winograd.workspace_size_s2(c, k, oh, ow, block, self.kernel),
                machine_rules().winograd_s2_own_gemm)

    def run(self, x2, out2, dtype, relu=False, threads=None):
        """out2 (N, C_out*OH*OW) = the convolution of x2 (N, C*H*W), plus bias, then max(., 0)
        if relu."""
        threads = threads or get_num_threads()
        h, w = self.in_size
        block, per_thread, own_gemm = self._layout(x2.shape[0])
        ws = scratch(per_thread * threads, dtype)
        with single_threaded_blas:
            _winograd.forward_s2(x2, self.u, self.bias, out2, ws, h, w, self.pad, block, relu,
                                 threads, own_gemm)

    def step_scratch(self, n):
        """Elements of workspace per thread of ``step`` on batches of n samples."""
        return self._layout(n)[1]

    def step(self, x2, out2, workspace, relu, max_threads, residual=None):
        """run's work as a compiled step of an inference plan (_winograd.WinogradStep with
        stride 2), as WinogradOperands.step."""
        h, w = self.in_size
        oh, ow = self.out_size
        block, _, own_gemm = self._layout(x2.shape[0])
        return _winograd.WinogradStep(x2, self.u, self.bias, out2, workspace, h, w, self.pad,
                                      oh, ow, block, relu, own_gemm, max_threads, residual,
                                      stride=2)


def winograd_conv2d(x2, w, bias, out2, in_size, pad, out_size, dtype, flip=False,
                    relu=False, m=2):
    """out2 (N, C_out*OH*OW) = 3x3 stride-1 convolution of x2 (N, C*H*W) by w (C_out, C, 3, 3),
    or with ``flip`` by the kernels of w (C, C_out, 3, 3) transposed and rotated (the input
    gradient's); plus bias, then max(., 0) if relu; by Winograd F(m x m, 3x3)."""
    WinogradOperands(w, bias, in_size, pad, out_size, dtype, flip, m).run(x2, out2, dtype,
                                                                          relu)


# The Winograd weight gradient sums over samples in fixed chunks (one dU partial each, added in
# chunk order: the same bits for any number of threads). Each chunk gets at least about this
# many tiles, at least 2 and at most _WEIGHT_GRAD_CHUNKS chunks: on small maps, 8 chunks of a
# batch of 32 left GEMMs too short (8x8 maps: 64 tiles; 2 chunks ran 1.43 -> 0.81 ms).
_WINOGRAD_TILES_PER_CHUNK = 2048
# Tiles per GEMM within a chunk: the GEMMs' inner dimension (longer than the forward's 128,
# measured: VGG 32-channel dW 6.1 -> 5.7 ms).
_WINOGRAD_WEIGHT_BLOCK_TILES = 256


def winograd_weight_grad(x2, dy2, geom, dtype, m=2):
    """dW (C_out, C, 3, 3) of a 3x3 stride-1 convolution by Winograd F(m x m, 3x3): the dU
    partials of fixed sample chunks from the kernel, added in chunk order, then dW = G^T dU G."""
    n, c, k = geom.n, geom.in_channels, geom.out_channels
    (h, w), (oh, ow) = geom.in_size, geom.out_size
    tiles2 = ((oh + 1) // 2) * ((ow + 1) // 2)          # the chunks: as many for either m
    chunks = min(n, _WEIGHT_GRAD_CHUNKS, max(2, n * tiles2 // _WINOGRAD_TILES_PER_CHUNK))
    tiles = -(-oh // m) * -(-ow // m)
    threads = get_num_threads()
    block = max(1, min(n, _WINOGRAD_WEIGHT_BLOCK_TILES // tiles))
    ws = scratch(_winograd.workspace_size(c, k, oh, ow, block, m) * threads, dtype)
    du = _memory.empty((chunks, (m + 2) ** 2, k * c), dtype)
    with single_threaded_blas:
        _winograd.weight_grad(x2, dy2, du, ws, h, w, geom.padding[1], oh, ow, block, threads)
    grad_w = np.empty((k, c, 3, 3), dtype=dtype)
    _winograd.weight_grad_finish(du, grad_w, threads)
    return grad_w
