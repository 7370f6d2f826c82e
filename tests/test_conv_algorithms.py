"""Which algorithm computes a convolution: the rules per x86-64 level as a table that holds on
any machine, F.conv_algorithms (forcing a choice), and every algorithm and every compiled level
of the direct kernels agreeing with im2col + GEMM."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn._ops import parallel as _par
from fastcnn.functional import _conv_algorithms as algorithms
from fastcnn.functional._conv import _conv_geometry
from fastcnn.functional._conv_transpose import _conv_transpose_geometry
from conftest import TOL
from test_conv import check_against_torch

V4, V3, BASE = algorithms.ISAS


def conv(c_in, c_out, size, k, stride=1, n=2, groups=1, padding=None):
    """The geometry of a 2-D convolution of n samples (C_in, size, size), k x k kernels,
    padding k // 2 unless given."""
    return _conv_geometry("t", 2, np.zeros((n, c_in, size, size)),
                          np.zeros((c_out, c_in // groups, k, k)), stride,
                          k // 2 if padding is None else padding, 1, groups)


def conv_transpose(c_in, c_out, size, k, stride, padding):
    return _conv_transpose_geometry("t", 2, np.zeros((2, c_in, size, size)),
                                    np.zeros((c_in, c_out, k, k)), stride, padding, 0, 1, 1)


# (what, direction, geometry, {level: algorithm}): the rules' choices, the same on every
# machine (choose() is a pure function of the problem and the level).
ROUTES = [
    ("LeNet's first layer", "forward", conv(1, 6, 28, 5), {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("LeNet's second layer", "forward", conv(6, 16, 14, 5, padding=0),
     {V4: "direct", V3: "direct", BASE: "im2col"}),
    ("a 3-channel 3x3 stem", "forward", conv(3, 16, 32, 3),
     {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("16 -> 16 3x3 on 32x32", "forward", conv(16, 16, 32, 3),
     {V4: "rows", V3: "winograd4", BASE: "winograd4"}),
    ("16 -> 16 3x3 input gradient on 32x32", "input gradient", conv(16, 16, 32, 3),
     {V4: "rows", V3: "winograd4", BASE: "winograd4"}),
    ("32 -> 32 3x3 on 32x32", "forward", conv(32, 32, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("64 -> 64 3x3 on 32x32", "forward", conv(64, 64, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("16 -> 16 3x3 on 8x8 maps (8 tiles of 4x4)", "forward", conv(16, 16, 8, 3),
     {V4: "winograd", V3: "winograd", BASE: "winograd"}),
    ("64 -> 64 3x3 on 16x16, batch 1 (16 tiles of 4x4)", "forward", conv(64, 64, 16, 3, n=1),
     {V4: "winograd", V3: "winograd4", BASE: "winograd4"}),
    ("128 -> 128 3x3 on 8x8, batch 1 (4 tiles of 4x4)", "forward", conv(128, 128, 8, 3, n=1),
     {V4: "winograd", V3: "winograd", BASE: "winograd"}),
    ("128 -> 128 3x3 on 8x8, batch 32", "forward", conv(128, 128, 8, 3, n=32),
     {V4: "winograd", V3: "winograd4", BASE: "winograd4"}),
    ("64 -> 64 3x3 on 16x16, batch 8", "forward", conv(64, 64, 16, 3, n=8),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("32 -> 32 3x3 on 16x16 (8,192 outputs a sample)", "forward", conv(32, 32, 16, 3, n=8),
     {V4: "direct", V3: "winograd4", BASE: "winograd4"}),
    ("64 -> 64 3x3 on 8x8", "forward", conv(64, 64, 8, 3, n=32),
     {V4: "direct", V3: "winograd4", BASE: "winograd4"}),
    ("16 -> 16 3x3 stride 2 (144 taps)", "forward", conv(16, 16, 32, 3, stride=2),
     {V4: "direct", V3: "direct", BASE: "winograd_s2"}),
    ("64 -> 128 3x3 stride 2 on 56x56", "forward", conv(64, 128, 56, 3, stride=2),
     {V4: "direct", V3: "winograd_s2", BASE: "winograd_s2"}),
    ("64 -> 128 3x3 stride 2 on 112x112 (196 tiles of 4x4 a sample)", "forward",
     conv(64, 128, 112, 3, stride=2), {V4: "winograd_s2", V3: "winograd_s2", BASE: "winograd_s2"}),
    ("256 -> 512 3x3 stride 2 on 14x14 (im2col's: more than 128 output channels)", "forward",
     conv(256, 512, 14, 3, stride=2), {V4: "winograd_s2", V3: "im2col", BASE: "winograd_s2"}),
    ("32 -> 64 3x3 stride 2 on 56x56", "forward", conv(32, 64, 56, 3, stride=2),
     {V4: "direct", V3: "winograd_s2", BASE: "winograd_s2"}),
    ("64 -> 128 3x3 stride 2 on 32x32 (16 tiles of 4x4 a sample)", "forward",
     conv(64, 128, 32, 3, stride=2), {V4: "direct", V3: "direct", BASE: "winograd_s2"}),
    ("U-Net's k4 s2 upsampling's input gradient: 32 -> 64 4x4 stride 2 from 32x32", "forward",
     conv(32, 64, 32, 4, stride=2, n=16, padding=1),
     {V4: "winograd_s2", V3: "winograd_s2", BASE: "winograd_s2"}),
    ("16 -> 32 4x4 stride 2 from 32x32", "forward", conv(16, 32, 32, 4, stride=2, padding=1),
     {V4: "direct", V3: "winograd_s2", BASE: "winograd_s2"}),
    ("32 -> 32 5x5 on 32x32", "forward", conv(32, 32, 32, 5),
     {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("3 -> 16 3x3 stride 2 (27 taps)", "forward", conv(3, 16, 64, 3, stride=2),
     {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("1x1", "forward", conv(16, 16, 32, 1), {V4: "pointwise", V3: "pointwise",
                                               BASE: "im2col"}),
    ("1x1 256 -> 64 on 14x14", "forward", conv(256, 64, 14, 1),
     {V4: "pointwise", V3: "pointwise", BASE: "im2col"}),
    ("its input gradient", "input gradient", conv(256, 64, 14, 1),
     {V4: "pointwise", V3: "pointwise", BASE: "im2col"}),
    ("1x1 on 4x4 maps", "forward", conv(128, 128, 4, 1),
     {V4: "im2col", V3: "pointwise", BASE: "im2col"}),
    ("1x1 with a 4 MB weight", "forward", conv(512, 2048, 7, 1),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("1x1 64 -> 256 on 56x56 (800 KB a sample)", "forward", conv(64, 256, 56, 1),
     {V4: "pointwise", V3: "im2col", BASE: "im2col"}),
    ("its input gradient (3.2 MB of dy a sample)", "input gradient", conv(64, 256, 56, 1),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("a strided 1x1 (not pointwise)", "forward", conv(64, 128, 28, 1, stride=2),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("depthwise", "forward", conv(8, 8, 16, 3, groups=8),
     {V4: "depthwise", V3: "depthwise", BASE: "depthwise"}),
    ("8 -> 8 3x3 input gradient", "input gradient", conv(8, 8, 32, 3),
     {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("LeNet's first layer, input gradient (1 channel)", "input gradient", conv(1, 6, 28, 5),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("32 -> 32 3x3 input gradient", "input gradient", conv(32, 32, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("64 -> 64 3x3 input gradient on 8x8 maps", "input gradient", conv(64, 64, 8, 3),
     {V4: "direct", V3: "winograd", BASE: "winograd"}),
    ("128 -> 128 3x3 input gradient on 8x8 maps", "input gradient", conv(128, 128, 8, 3),
     {V4: "winograd", V3: "winograd", BASE: "winograd"}),
    ("LeNet's second layer, input gradient (6 channels, 14 wide)", "input gradient",
     conv(6, 16, 14, 5, padding=0), {V4: "rows", V3: "rows", BASE: "im2col"}),
    ("4 -> 16 5x5 input gradient, 14 wide", "input gradient", conv(4, 16, 14, 5, padding=0),
     {V4: "im2col", V3: "rows", BASE: "im2col"}),
    ("3 -> 16 3x3 input gradient", "input gradient", conv(3, 16, 32, 3),
     {V4: "im2col", V3: "rows", BASE: "im2col"}),
    ("LeNet's first layer, weight gradient", "weight gradient", conv(1, 6, 28, 5),
     {V4: "direct", V3: "direct", BASE: "im2col"}),
    ("LeNet's second layer, weight gradient (10 wide)", "weight gradient",
     conv(6, 16, 14, 5, padding=0), {V4: "channels", V3: "channels", BASE: "channels"}),
    ("16 -> 16 3x3 weight gradient", "weight gradient", conv(16, 16, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("32 -> 32 3x3 weight gradient on 16x16", "weight gradient", conv(32, 32, 16, 3),
     {V4: "channels", V3: "winograd4", BASE: "winograd4"}),
    ("32 -> 32 3x3 weight gradient on 32x32", "weight gradient", conv(32, 32, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("16 -> 32 3x3 stride 2 weight gradient", "weight gradient", conv(16, 32, 32, 3, stride=2),
     {V4: "channels", V3: "channels", BASE: "channels"}),
    ("a k4 s2 upsampling's weight gradient, as the convolution of dy (32 -> 64, stride 2)",
     "weight gradient", conv(32, 64, 32, 4, stride=2, padding=1),
     {V4: "channels", V3: "channels", BASE: "channels"}),
    ("32 -> 32 5x5 weight gradient", "weight gradient", conv(32, 32, 32, 5),
     {V4: "channels", V3: "channels", BASE: "channels"}),
    ("a 3-channel stem's weight gradient (27 taps)", "weight gradient", conv(3, 16, 32, 3),
     {V4: "direct", V3: "direct", BASE: "im2col"}),
    ("64 -> 64 3x3 weight gradient on 16x16", "weight gradient", conv(64, 64, 16, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("64 -> 64 3x3 weight gradient on 8x8", "weight gradient", conv(64, 64, 8, 3),
     {V4: "channels", V3: "winograd", BASE: "winograd"}),
    ("128 -> 128 3x3 weight gradient on 8x8", "weight gradient", conv(128, 128, 8, 3),
     {V4: "winograd", V3: "winograd", BASE: "winograd"}),
    ("64 -> 64 3x3 weight gradient on 32x32", "weight gradient", conv(64, 64, 32, 3),
     {V4: "winograd4", V3: "winograd4", BASE: "winograd4"}),
    ("stride 2, 64 -> 128 weight gradient", "weight gradient", conv(64, 128, 56, 3, stride=2),
     {V4: "channels", V3: "channels", BASE: "im2col"}),
    ("1x1 weight gradient", "weight gradient", conv(256, 64, 14, 1),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("stride 2, 128 -> 256 weight gradient", "weight gradient", conv(128, 256, 28, 3, stride=2),
     {V4: "im2col", V3: "im2col", BASE: "im2col"}),
    ("a k4 s2 upsampling, few channels (row kernel phases)", "transposed forward",
     conv_transpose(8, 5, 16, 4, 2, 1), {V4: "subpixel", V3: "im2col", BASE: "im2col"}),
    ("U-Net's k4 s2 upsampling 64 -> 32 (channel kernel phases)", "transposed forward",
     conv_transpose(64, 32, 16, 4, 2, 1), {V4: "subpixel", V3: "subpixel", BASE: "im2col"}),
]


@pytest.mark.parametrize("isa", algorithms.ISAS)
@pytest.mark.parametrize("what,direction,geom,expected", ROUTES, ids=[r[0] for r in ROUTES])
def test_the_rules_route_each_problem_on_each_level(what, direction, geom, expected, isa):
    assert algorithms.choose(direction, geom, 2, isa) == expected[isa]


def test_every_route_is_usable_and_the_machine_follows_its_own_level():
    for _, direction, geom, expected in ROUTES:
        for choice in expected.values():
            assert algorithms.usable(choice, direction, geom, 2)
        machine = algorithms.select(direction, geom, 2, np.float32)
        assert machine == expected[algorithms.machine_isa()]


def test_choose_and_conv_algorithms_reject_unknown_names():
    geom = conv(3, 8, 16, 3)
    with pytest.raises(ValueError, match=r"isa must be one of 'x86-64-v4'.*got 'avx2'"):
        algorithms.choose("forward", geom, 2, "avx2")
    with pytest.raises(ValueError, match=r"direction must be one of .*got 'backward'"):
        algorithms.choose("backward", geom, 2, V4)
    with pytest.raises(ValueError, match=r"conv_algorithms: forward must be one of 'pointwise', "
                                         r"'winograd4', 'winograd', 'winograd_s2', 'rows', "
                                         r"'direct', 'im2col' or None, got 'gemm'"):
        with F.conv_algorithms(forward="gemm"):
            pass
    with pytest.raises(ValueError, match=r"weight_grad must be one of .*got 'rows'"):
        with F.conv_algorithms(weight_grad="rows"):
            pass


def test_conv_algorithms_nests_restores_and_is_local_to_a_thread():
    geom = conv(16, 16, 32, 3)
    native = algorithms.select("forward", geom, 2, np.float32)
    seen = {}
    with F.conv_algorithms(forward="im2col"):
        assert algorithms.select("forward", geom, 2, np.float32) == "im2col"
        with F.conv_algorithms(forward="winograd", weight_grad="im2col"):
            assert algorithms.select("forward", geom, 2, np.float32) == "winograd"
            assert algorithms.select("weight gradient", geom, 2, np.float32) == "im2col"
            other = threading.Thread(
                target=lambda: seen.update(t=algorithms.select("forward", geom, 2, np.float32)))
            other.start()
            other.join()
        assert algorithms.select("forward", geom, 2, np.float32) == "im2col"
        # a problem the forced algorithm cannot compute keeps the rules' choice
        assert algorithms.select("forward", conv(3, 8, 16, 5), 2, np.float32) == "im2col"
    with F.conv_algorithms(forward="winograd"):
        assert algorithms.select("forward", conv(3, 8, 16, 5), 2, np.float32) == \
            algorithms.choose("forward", conv(3, 8, 16, 5), 2, algorithms.machine_isa())
    assert algorithms.select("forward", geom, 2, np.float32) == native
    assert seen["t"] == native


# ---- every algorithm agrees with im2col + GEMM ------------------------------------------------

def random_direct_problem(rng, case, max_c_in, max_c_out, max_n, max_extra_width):
    """A random 2-D convolution for forcing a direct kernel onto: (x, w, b, stride, padding,
    dilation), channel counts that are not a multiple of the kernels' blocks, odd maps (widths
    up to max_extra_width beyond the dilated kernel), kernels 1 to 5, dilation 1-2, padding
    0-2; float64 for odd cases, no bias for every third, stride 1 for even cases."""
    c_in, c_out = int(rng.integers(1, max_c_in)), int(rng.integers(1, max_c_out))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    h = dilation[0] * (kh - 1) + int(rng.integers(1, 12))
    w_ = dilation[1] * (kw - 1) + int(rng.integers(1, max_extra_width))
    dtype = np.float64 if case % 2 else np.float32
    x = rng.standard_normal((int(rng.integers(1, max_n)), c_in, h, w_)).astype(dtype)
    w = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if case % 3 else None
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if case % 2 else 1
    return x, w, b, stride, padding, dilation


def test_channel_kernel_matches_im2col_on_random_shapes():
    """The direct kernel along output channels, forced onto random shapes (channel counts that
    are not a multiple of its vector, odd maps, strides, dilation, uneven 'same' padding),
    equals im2col + GEMM; float64 and float32."""
    rng = np.random.default_rng(3)
    for case in range(60):
        x, w, b, stride, padding, dilation = random_direct_problem(rng, case, 9, 40, 4, 12)
        if case % 5 == 0:
            stride, padding = 1, "same"
        results = []
        for forced in ("direct", "im2col"):
            with F.conv_algorithms(forward=forced):
                results.append(F.conv2d(x, w, b, stride, padding=padding, dilation=dilation))
        np.testing.assert_allclose(results[0], results[1], **TOL[x.dtype.type])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in,c_out,size,stride,k", [
    (130, 40, (9, 37), 1, 3),   # taps in several chunks (1,170) on every level, 3 blocks a row
    (70, 17, (12, 5), 2, 3),    # one channel past a vector; rows taken in pairs, an odd last
    (64, 128, (30, 30), 2, 3),  # the speed table's strided layer, smaller: 4 panels
    (3, 5, (40, 61), 1, 3),     # few taps, rows cut into many blocks
    # runs of taps with consecutive inputs (AVX-512, one vector of channels: 16 floats, 8
    # doubles): LeNet's second layer (runs of 5, rows in pairs); 300 taps in chunks of whole
    # runs, rows 26 wide in two blocks; runs of 3 over 360 taps, 7 channels
    (6, 16, (14, 14), 1, 5),
    (12, 16, (10, 28), 1, 5),
    (40, 7, (9, 20), 1, 3),
])
def test_channel_kernel_blocks_match_im2col(dtype, c_in, c_out, size, stride, k):
    """The channel kernel's block shapes (one or two vectors of channels by one or two rows of
    positions, rows cut into near-equal blocks, runs of taps), and its taps in chunks with
    partial sums kept between them, forced onto layers that need each, with ReLU, equal
    im2col + GEMM."""
    rng = np.random.default_rng(c_in)
    x = rng.standard_normal((2, c_in) + size).astype(dtype)
    w = rng.standard_normal((c_out, c_in, k, k)).astype(dtype) / np.sqrt(k * k * c_in)
    b = rng.standard_normal(c_out).astype(dtype)
    results = []
    for forced in ("direct", "im2col"):
        with F.conv_algorithms(forward=forced):
            results.append(F.conv2d(x, w, b, stride, padding=1, activation="relu"))
    assert (results[1] > 0).mean() > 0.3        # the ReLU keeps and clears outputs
    np.testing.assert_allclose(results[0], results[1], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_kernel_matches_im2col_on_random_shapes(dtype):
    """The pointwise kernel, forced onto 1x1 convolutions of 1 to 3 spatial axes (channel
    counts that are not a multiple of its blocks of 12, 8, 6 or 4; positions that are not a
    multiple of its two-vector blocks, or fewer than one vector; batches of 1 to 4, which cut
    samples into ranges between the threads; with and without bias, ReLU), forward and input
    gradient, equals im2col + GEMM."""
    rng = np.random.default_rng(11)
    for case in range(36):
        nd = 1 + case % 3
        spatial = tuple(int(rng.integers(1, 70 if nd == 1 else 12)) for _ in range(nd))
        n, c_in, c_out = (int(rng.integers(1, 5)), int(rng.integers(1, 70)),
                          int(rng.integers(1, 40)))
        x = rng.standard_normal((n, c_in) + spatial).astype(dtype)
        w = rng.standard_normal((c_out, c_in) + (1,) * nd).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype) if case % 3 else None
        dy = rng.standard_normal((n, c_out) + spatial).astype(dtype)
        conv, backward = getattr(F, f"conv{nd}d"), getattr(F, f"conv{nd}d_backward")
        results = []
        for forced in ("pointwise", "im2col"):
            with F.conv_algorithms(forward=forced, input_grad=forced):
                results.append((conv(x, w, b, activation="relu" if case % 2 else None),
                                backward(dy, x, w, output_mask=(True, False, False))[0]))
        for ours, reference in zip(*results):
            np.testing.assert_allclose(ours, reference, **TOL[dtype])


def test_pointwise_kernel_cuts_samples_between_threads_with_the_same_bits(
        rng, same_bits_for_1_and_2_threads):
    """Batch 1 and 3 cut samples into ranges of positions per thread (each output still one
    sum in one order): the same bits as one thread computing all, forward and input gradient."""
    x = rng.standard_normal((1, 37, 13, 11)).astype(np.float32)
    x3 = rng.standard_normal((3, 20, 9, 9)).astype(np.float64)
    w = rng.standard_normal((29, 37, 1, 1)).astype(np.float32)
    w3 = rng.standard_normal((12, 20, 1, 1))
    b = rng.standard_normal(29).astype(np.float32)

    def compute():
        with F.conv_algorithms(forward="pointwise", input_grad="pointwise"):
            y = F.conv2d(x, w, b, activation="relu")
            return [y, F.conv2d_backward(y, x, w)[0], F.conv2d(x3, w3),
                    F.conv2d_backward(F.conv2d(x3, w3), x3, w3)[0]]
    same_bits_for_1_and_2_threads(compute)


def test_pointwise_kernel_refuses_mismatched_buffers():
    """_ops.pointwise checks its buffers before its nogil loops: a message naming what does
    not match, never a read or write out of bounds."""
    from fastcnn._ops import pointwise
    x = np.zeros((2, 6 * 10), np.float32)
    wt, bias = pointwise.layout(np.zeros((5, 6), np.float32), np.zeros(5, np.float32),
                                np.float32)
    out = np.zeros((2, 5 * 10), np.float32)
    ws = np.zeros(pointwise.workspace_size(6) * 2, np.float32)
    pointwise.forward(x, wt, bias, out, ws, 6, False, 2)
    with pytest.raises(ValueError, match="is not"):
        pointwise.forward(x, wt, bias, out, ws, 7, False, 2)      # 60 values are not 7 * P
    with pytest.raises(ValueError, match="do not match"):
        pointwise.forward(x, np.ascontiguousarray(wt[:, :8]), bias[:8], out, ws, 6, False,
                          2)                                    # too few columns
    with pytest.raises(ValueError, match="do not match"):
        pointwise.forward(x, wt, bias, out[:1], ws, 6, False, 2)
    with pytest.raises(ValueError, match="too small"):
        pointwise.forward(x, wt, bias, out, ws[:10], 6, False, 2)
    with pytest.raises(ValueError, match="too small"):
        pointwise.PointwiseStep(x, wt, bias, out, ws, 6, False, 3)
    with pytest.raises(ValueError, match="do not match"):
        pointwise.PointwiseStep(x, wt[:5], bias, out, ws, 6, False, 2)


def test_row_kernel_matches_im2col_on_random_shapes():
    """The direct kernel along output rows, forced onto random shapes (widths that are not a
    multiple of its vectors, including narrower than one; channel counts that are not a
    multiple of its blocks; strides (along the width: the column-phase layout), dilation,
    padding, ReLU), equals im2col + GEMM; float64 and float32. With stride 1 it also computes
    the input gradient (dy by the flipped kernels), which must equal col2im's."""
    rng = np.random.default_rng(11)
    for case in range(60):
        x, w, b, stride, padding, dilation = random_direct_problem(rng, case, 7, 30, 4, 40)
        relu = "relu" if case % 4 == 0 else None
        results = []
        for forced in ("rows", "im2col"):
            with F.conv_algorithms(forward=forced, input_grad=forced):
                y = F.conv2d(x, w, b, stride, padding=padding, dilation=dilation,
                             activation=relu)
                dx = F.conv2d_backward(np.cos(y), x, w, stride, padding=padding,
                                       dilation=dilation, output_mask=(True, False, False))[0]
            results.append((y, dx))
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, **TOL[x.dtype.type])


def test_direct_weight_gradient_matches_im2col_on_random_shapes():
    """The weight gradients without im2col (fc_dw_rows, and fc_dw_channels with the channels in
    the lanes), forced onto random shapes (widths that are not a multiple of their vectors,
    channel and tap counts that are not a multiple of their blocks, strides, dilation, padding)
    equal im2col + GEMM's; float64 and float32. Infinities in the input stay where they
    belong: fc_dw_rows clears the lanes past a row's end before they meet dy's zero padding,
    and fc_dw_channels' padded channels and taps are never read back."""
    rng = np.random.default_rng(17)
    for case in range(60):
        x, w, _, stride, padding, dilation = random_direct_problem(rng, case, 7, 19, 11, 40)
        if case % 5 == 0:
            x[0, :, 1:, 0] = np.inf        # what the lanes past the row above would read
        y = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
        dy = rng.standard_normal(y.shape).astype(x.dtype)
        results = []
        for forced in ("direct", "channels", "im2col"):
            with F.conv_algorithms(weight_grad=forced):
                results.append(F.conv2d_backward(dy, x, w, stride, padding, dilation,
                                                 output_mask=(False, True, False))[1])
        for result in results[:2]:
            np.testing.assert_allclose(result, results[2], **TOL[x.dtype.type])


def test_winograd_on_every_possible_shape_matches_im2col():
    """Winograd (F(2x2, 3x3) and F(4x4, 3x3)) forced onto random small shapes (few channels, odd
    and tiny maps, padding 0-2): output, input and weight gradients equal im2col's. Caught a race in the weight transform
    that the >= 16-channel shapes missed."""
    rng = np.random.default_rng(7)
    cases = 0
    while cases < 60:
        n, c, k = (int(v) for v in rng.integers(1, 20, 3))
        h, w_, p = int(rng.integers(1, 12)), int(rng.integers(1, 12)), int(rng.integers(0, 3))
        if min(h, w_) + 2 * p < 3:
            continue
        cases += 1
        x = rng.standard_normal((n % 5 + 1, c, h, w_))
        w = rng.standard_normal((k, c, 3, 3))
        results = []
        for forward, weight_grad in (("winograd", "winograd"), ("winograd4", "winograd4"),
                                     ("im2col", "im2col")):
            with F.conv_algorithms(forward=forward, input_grad=forward, weight_grad=weight_grad):
                y = F.conv2d(x, w, padding=p)
                results.append((y,) + F.conv2d_backward(np.cos(y), x, w, padding=p)[:2])
        for wino in results[:2]:
            for a, b in zip(wino, results[2]):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_subpixel_forward_matches_the_gemm_path_on_random_shapes():
    """The transposed convolution's forward as one stride-1 convolution per output phase (the
    row kernel or the channel kernel storing into the interleaved outputs), forced onto random
    shapes (strides 1-3,
    kernels from the stride up, paddings, output_padding, odd sizes, bias or not), equals
    GEMM + col2im; float64 and float32."""
    rng = np.random.default_rng(23)
    cases = by_channels = 0
    while cases < 50:
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        k = tuple(int(v + rng.integers(0, 3)) for v in s)
        p = tuple(int(rng.integers(0, kk)) for kk in k)
        op = tuple(int(rng.integers(0, ss)) for ss in s)
        c_in, c_out = int(rng.integers(1, 7)), int(rng.integers(1, 20))
        if cases % 4 == 1:              # phases with the taps and channels of the channel kernel
            c_in, c_out = int(rng.integers(16, 40)), int(rng.integers(16, 40))
        dtype = np.float64 if cases % 2 else np.float32
        x = rng.standard_normal((int(rng.integers(1, 4)), c_in, int(rng.integers(1, 9)),
                                 int(rng.integers(1, 12)))).astype(dtype)
        w = rng.standard_normal((c_in, c_out) + k).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype) if cases % 3 else None
        try:
            geom = _conv_transpose_geometry("t", 2, x, w, s, p, op, 1, 1)
        except ValueError:             # an output size below 1
            continue
        if not algorithms.usable("subpixel", "transposed forward", geom, 2):
            continue
        cases += 1
        by_channels += not all(algorithms.subpixel_by_rows(sub, 2, algorithms.machine_rules())
                               for _, _, sub, _, _ in algorithms.subpixel_phases(geom, 2))
        results = []
        for forced in ("subpixel", "im2col"):
            with F.conv_algorithms(transposed=forced):
                results.append(F.conv_transpose2d(x, w, b, s, p, op))
        np.testing.assert_allclose(results[0], results[1], **TOL[dtype])
    assert by_channels >= 5             # both direct kernels were tried


def test_subpixel_forward_is_the_same_bits_for_1_and_2_threads(
        rng, same_bits_for_1_and_2_threads):
    """All phases on one padded copy per sample, in one team: prange over samples (3, more
    than the threads, odd), or at batch 1 (sample, phase, channel block) parts after padding
    (stride 1: one phase, its channel blocks cut between the threads, or with one block of
    the row kernel, its rows);
    every output by the same code on the same planes, so the same bits; phases with different
    tap counts (k3 s2), either direct kernel, float32 and float64."""
    problems = []
    for dtype in (np.float32, np.float64):
        for n in (1, 3):
            for c_in, c_out, k, s, p, op in ((24, 40, 4, 2, 1, 0), (20, 18, 3, 2, 1, 1),
                                             (3, 5, 5, 3, 1, 2), (17, 33, 2, 2, 0, 0),
                                             (20, 40, 3, 1, 1, 0), (3, 40, 2, 1, 0, 0),
                                             (3, 8, 3, 1, 1, 0)):
                problems.append((rng.standard_normal((n, c_in, 7, 9)).astype(dtype),
                                 rng.standard_normal((c_in, c_out, k, k)).astype(dtype),
                                 rng.standard_normal(c_out).astype(dtype), s, p, op))

    def compute():
        with F.conv_algorithms(transposed="subpixel"):
            return [F.conv_transpose2d(x, w, b, s, p, op) for x, w, b, s, p, op in problems]
    same_bits_for_1_and_2_threads(compute)


def test_transposed_backward_in_one_pass_is_the_same_bits_as_two(
        th, rng, monkeypatch, same_bits_for_1_and_2_threads):
    """A transposed convolution's input and weight gradients by the channel kernels (forced,
    so on every level) in one pass over the samples, dy padded once for both
    (direct_forward_and_weight_grad_channels): the same bits as each gradient alone (two
    passes) and, batch 1 taking the two passes at 2 threads, for 1 and 2 threads; against
    torch too, float32 and float64."""
    problems = [((3, 24, 8, 8), (24, 16, 4, 4), 2, 1, 0), ((5, 32, 7, 6), (32, 20, 4, 4), 2, 1, 1),
                ((1, 40, 9, 9), (40, 24, 3, 3), 2, 1, 1), ((4, 17, 5, 7), (17, 40, 5, 5), 3, 2, 0)]
    # (batch 1 takes the two passes at 2 threads: the same bits)
    cases = []
    for dtype in (np.float32, np.float64):
        for xs, ws, s, p, op in problems:
            x = rng.standard_normal(xs).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            y = F.conv_transpose2d(x, w, None, s, p, op)
            cases.append((rng.standard_normal(y.shape).astype(dtype), x, w, s, p, op))

    one_pass = algorithms._direct.direct_forward_and_weight_grad_channels
    calls = []
    monkeypatch.setattr(algorithms._direct, "direct_forward_and_weight_grad_channels",
                        lambda *a: calls.append(1) or one_pass(*a))

    def compute():
        out = []
        with F.conv_algorithms(forward="direct", weight_grad="channels"):
            for dy, x, w, s, p, op in cases:
                gx, gw, _ = F.conv_transpose2d_backward(dy, x, w, s, p, op)
                alone_x = F.conv_transpose2d_backward(dy, x, w, s, p, op,
                                                      output_mask=(True, False, False))[0]
                alone_w = F.conv_transpose2d_backward(dy, x, w, s, p, op,
                                                      output_mask=(False, True, False))[1]
                np.testing.assert_array_equal(gx, alone_x)
                np.testing.assert_array_equal(gw, alone_w)
                out += [gx, gw]
        return out
    same_bits_for_1_and_2_threads(compute)
    assert len(calls) >= 12                 # one pass: every batch at 1 thread, 3 of 4 at 2
    for dy, x, w, s, p, op in cases:
        with F.conv_algorithms(forward="direct", weight_grad="channels"):
            gx, gw, _ = F.conv_transpose2d_backward(dy, x, w, s, p, op)
        xt, wt = th.tensor(x, requires_grad=True), th.tensor(w, requires_grad=True)
        th.nn.functional.conv_transpose2d(xt, wt, None, s, p, op).backward(th.tensor(dy))
        np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL[x.dtype.type])
        np.testing.assert_allclose(gw, wt.grad.numpy(), **TOL[x.dtype.type])


def test_subpixel_forward_refuses_buffers_that_do_not_fit():
    """subpixel_forward and SubpixelStep check every phase of their table against their
    arrays before taking a pointer: a clear ValueError (TypeError for the wrong kind of
    array), never a read or write outside the buffers."""
    from fastcnn._ops.conv_direct import SubpixelStep, subpixel_forward
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    w = rng.standard_normal((6, 4, 4, 4)).astype(np.float32)
    geom = _conv_transpose_geometry("t", 2, x, w, 2, 1, 0, 1, 1)
    ops = algorithms.SubpixelOperands(w, np.empty(0, np.float32), geom, np.float32,
                                      algorithms.machine_rules())
    x2, out2 = x.reshape(2, -1), np.empty((2, 4 * 10 * 10), np.float32)
    ws = np.empty(ops.workspace * 2, np.float32)
    args = (ops.wt, ops.bias, out2, ws, ops.offsets, ops.table)
    subpixel_forward(x2, *args, *ops.scalars, 2)                   # fits
    np.testing.assert_allclose(out2.reshape(2, 4, 10, 10),
                               F.conv_transpose2d(x, w, None, 2, 1), rtol=1e-5, atol=1e-5)
    SubpixelStep(x2, *args, *ops.scalars, 2)()
    table, offsets = ops.table.copy(), ops.offsets.copy()
    bad = []
    t = table.copy()
    t[1, 6] += 200                                                  # an output past the row
    bad.append((x2, ops.wt, ops.bias, out2, ws, offsets, t))
    t = table.copy()
    t[3, 1] = len(ops.wt)                                           # weights past wt
    bad.append((x2, ops.wt, ops.bias, out2, ws, offsets, t))
    t = table.copy()
    t[0, 2] = len(offsets) - 1                                      # offsets past the array
    bad.append((x2, ops.wt, ops.bias, out2, ws, offsets, t))
    o = offsets.copy()
    o[5] = ops.workspace                                            # a tap past the planes
    bad.append((x2, ops.wt, ops.bias, out2, ws, o, table))
    bad.append((x2, ops.wt, ops.bias, out2, ws[:ops.workspace], offsets, table))  # 1 thread's
    bad.append((x2[:1], ops.wt, ops.bias, out2, ws, offsets, table))             # N differs
    bad.append((x2, ops.wt, ops.bias[:8], out2, ws, offsets, table))              # bias
    bad.append((x2, ops.wt, ops.bias, out2, ws, offsets, table[:, :9].copy()))   # columns
    for arrays in bad:
        with pytest.raises(ValueError, match="subpixel_forward"):
            subpixel_forward(*arrays, *ops.scalars, 2)
        with pytest.raises(ValueError, match="SubpixelStep"):
            SubpixelStep(*arrays, *ops.scalars, 2)
    with pytest.raises(TypeError, match="table"):
        SubpixelStep(x2, *args[:5], table.astype(np.int32), *ops.scalars, 2)
    with pytest.raises(TypeError, match="C-contiguous"):
        SubpixelStep(x2, *args[:2], out2[:, ::2], *args[3:], *ops.scalars, 2)


@pytest.mark.parametrize("path", ["im2col", "winograd", "winograd4", "direct", "rows",
                                  "depthwise", "pointwise"])
def test_activation_relu_is_applied_in_the_epilogue_of_every_path(path):
    """conv2d(..., activation="relu") == relu(conv2d(...)) bit for bit, on each algorithm, with
    and without bias, float32 and float64 (NaN kept, -0 turned into 0 as relu does)."""
    rng = np.random.default_rng(5)
    c_in, groups, kernel = {"depthwise": (6, 6, 3), "pointwise": (5, 1, 1)}.get(path, (5, 1, 3))
    forced = path if path in ("im2col", "winograd", "winograd4", "direct", "rows") else None
    with F.conv_algorithms(forward=forced):
        for dtype in (np.float32, np.float64):
            for n, size in ((1, 7), (4, 10), (33, 5)):     # odd maps, several samples per GEMM
                x = rng.standard_normal((n, c_in, size, size + 1)).astype(dtype)
                x[0, 0, 0, 0] = np.nan
                w = rng.standard_normal((18, c_in // groups, kernel, kernel)).astype(dtype)
                pad = kernel // 2
                for b in (None, rng.standard_normal(18).astype(dtype)):
                    y = F.conv2d(x, w, b, padding=pad, groups=groups, activation="relu")
                    np.testing.assert_array_equal(
                        y, F.relu(F.conv2d(x, w, b, padding=pad, groups=groups)))
                    assert np.isnan(y).any() and not np.signbit(y).any()


@pytest.mark.parametrize("path", ["rows", "direct"])
def test_windows_that_read_padding_only_give_the_bias(th, path):
    """Outputs whose windows fall in the padding alone (a large stride past a padded border)
    are the bias: the direct kernels once returned early there and left the output unwritten."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 1, 40)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for _ in range(3):                      # leave garbage in the pooled buffers
        F.relu(rng.standard_normal((2, 4, 1, 40)).astype(np.float32) * 1e30)
    with F.conv_algorithms(forward=path):
        for stride, padding in (((20, 1), (5, 1)), ((1, 20), (1, 5)), (20, 5)):
            y = F.conv2d(x, w, b, stride, padding)
            ref = th.nn.functional.conv2d(th.tensor(x), th.tensor(w), th.tensor(b), stride,
                                          padding)
            np.testing.assert_allclose(y, ref.numpy(), **TOL[np.float32])


def test_transposed_weight_gradient_by_channels_matches_the_gemm_path(th):
    """A transposed convolution's weight gradient as the weight gradient of the convolution of
    dy (x as its output's gradient) with the channels in the lanes, forced onto random shapes
    (strides 1-3, kernels from the stride up, paddings, output_padding, dilation, odd sizes),
    equals GEMM + im2col's and torch's; float64 and float32."""
    rng = np.random.default_rng(31)
    for case in range(40):
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        k = tuple(int(v + rng.integers(0, 3)) for v in s)
        p = tuple(int(rng.integers(0, kk)) for kk in k)
        op = tuple(int(rng.integers(0, ss)) for ss in s)
        d = int(rng.integers(1, 3)) if case % 4 == 3 else 1
        if d > 1:
            op = (0, 0)
        dtype = np.float64 if case % 2 else np.float32
        c_in, c_out = int(rng.integers(1, 24)), int(rng.integers(1, 40))
        x = rng.standard_normal((int(rng.integers(1, 5)), c_in, int(rng.integers(1, 9)),
                                 int(rng.integers(1, 12)))).astype(dtype)
        w = rng.standard_normal((c_in, c_out) + k).astype(dtype)
        y = F.conv_transpose2d(x, w, None, s, p, op, dilation=d)
        dy = rng.standard_normal(y.shape).astype(dtype)
        results = []
        for forced in ("channels", "im2col"):
            with F.conv_algorithms(weight_grad=forced):
                results.append(F.conv_transpose2d_backward(dy, x, w, s, p, op, dilation=d,
                                                           output_mask=(False, True, False))[1])
        np.testing.assert_allclose(results[0], results[1], **TOL[dtype])
        tx, tw = th.tensor(x, requires_grad=True), th.tensor(w, requires_grad=True)
        th.nn.functional.conv_transpose2d(tx, tw, None, s, p, op, dilation=d).backward(
            th.tensor(dy))
        np.testing.assert_allclose(results[0], tw.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("forward,input_grad,weight_grad", [
    ("rows", "rows", "direct"), ("direct", "im2col", "direct"), ("direct", "direct", "im2col"),
    ("direct", "direct", "channels"),
    ("winograd", "winograd", "winograd"), ("winograd4", "winograd4", "winograd4")])
def test_each_algorithm_agrees_with_torch(th, rng, forward, input_grad, weight_grad):
    with F.conv_algorithms(forward=forward, input_grad=input_grad, weight_grad=weight_grad):
        check_against_torch(th, rng, 2, 3, 3, 20, (21, 33), (3, 3), np.float32, padding=1)
        check_against_torch(th, rng, 2, 2, 16, 16, (18, 32), (3, 3), np.float64, padding=1)
        check_against_torch(th, rng, 2, 5, 6, 16, (14, 14), (5, 5), np.float32)
        check_against_torch(th, rng, 2, 3, 6, 20, (11, 9), (5, 3), np.float64, padding=(2, 1))


def test_direct_weight_gradient_is_bit_identical_for_1_and_2_threads(
        rng, same_bits_for_1_and_2_threads):
    x = rng.standard_normal((13, 3, 20, 30)).astype(np.float32)
    w = rng.standard_normal((10, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((13, 10, 16, 26)).astype(np.float32)
    up = rng.standard_normal((11, 6, 7, 9)).astype(np.float32)
    up_w = rng.standard_normal((6, 5, 4, 4)).astype(np.float32)
    up_dy = rng.standard_normal((11, 5, 14, 18)).astype(np.float32)

    def compute():
        out = []
        for forced in ("direct", "channels"):
            with F.conv_algorithms(weight_grad=forced):
                out.append(F.conv2d_backward(dy, x, w, output_mask=(False, True, False))[1])
        with F.conv_algorithms(weight_grad="channels"):       # a transposed convolution's
            out.append(F.conv_transpose2d_backward(up_dy, up, up_w, stride=2, padding=1,
                                                   output_mask=(False, True, False))[1])
        return out
    same_bits_for_1_and_2_threads(compute)


@pytest.mark.parametrize("forced", ["direct", "rows"])
def test_direct_kernels_clear_the_borders_a_previous_problem_wrote(forced):
    """Each thread zeroes its scratch once per call and then copies only the inputs of its
    samples (the borders stay as the first copy left them): a call after one that filled the
    same scratch with NaN at other offsets (another geometry) must still read zero padding,
    for every sample of each thread, and the column-phase split of stride 2 and 3 (odd and
    even padding) must place every input."""
    rng = np.random.default_rng(8)
    with F.conv_algorithms(forward=forced):
        F.conv2d(np.full((5, 6, 41, 43), np.nan, np.float32),
                 np.ones((8, 6, 3, 3), np.float32), stride=1, padding=0)
        for stride, padding in [(2, 1), (2, 2), (3, 1), (1, 2)]:
            x = rng.standard_normal((7, 6, 37, 35)).astype(np.float32)
            w = rng.standard_normal((20, 6, 3, 3)).astype(np.float32)
            got = F.conv2d(x, w, stride=stride, padding=padding)
            with F.conv_algorithms(forward="im2col"):
                want = F.conv2d(x, w, stride=stride, padding=padding)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, **TOL[np.float32])


def test_transposed_phases_clear_the_borders_a_previous_problem_wrote():
    """The same for the transposed convolution by phases (one padded copy per sample for all
    its phases): after a call that left NaN in the scratch, every sample of each thread reads
    zero padding."""
    rng = np.random.default_rng(9)
    with F.conv_algorithms(forward="direct"):
        F.conv2d(np.full((5, 8, 41, 43), np.nan, np.float32),
                 np.ones((8, 8, 3, 3), np.float32), stride=1, padding=0)
    for kernel, stride, padding in [(4, 2, 1), (3, 2, 1), (5, 3, 2)]:
        x = rng.standard_normal((7, 8, 13, 11)).astype(np.float32)
        w = rng.standard_normal((8, 12, kernel, kernel)).astype(np.float32)
        with F.conv_algorithms(transposed="subpixel"):
            got = F.conv_transpose2d(x, w, stride=stride, padding=padding)
        with F.conv_algorithms(transposed="im2col"):
            want = F.conv_transpose2d(x, w, stride=stride, padding=padding)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, **TOL[np.float32])


def test_direct_kernels_cut_a_sample_between_threads_with_the_same_bits(
        rng, same_bits_for_1_and_2_threads):
    """With fewer samples than threads (batch 1) the direct kernels cut each sample's outputs
    by channel blocks, then (row kernel) by rows: the same bits as one thread computing all."""
    x = rng.standard_normal((1, 5, 19, 37)).astype(np.float32)
    w = rng.standard_normal((40, 5, 3, 3)).astype(np.float32)
    narrow = rng.standard_normal((6, 5, 5, 5)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    up = rng.standard_normal((1, 24, 9, 11)).astype(np.float32)
    wt = rng.standard_normal((24, 20, 4, 4)).astype(np.float32)

    def compute():
        out = []
        for forced in ("rows", "direct"):
            with F.conv_algorithms(forward=forced):
                out.append(F.conv2d(x, w, b, padding=1, activation="relu"))
                out.append(F.conv2d(x, w, b, stride=2, dilation=(1, 2)))
                out.append(F.conv2d(x, narrow, None, padding=2))     # one channel block
        with F.conv_algorithms(transposed="subpixel"):
            out.append(F.conv_transpose2d(up, wt, None, stride=2, padding=1))
        return out
    same_bits_for_1_and_2_threads(compute)


# ---- every compiled level this CPU can run ------------------------------------------------

_LEVEL_SCRIPT = r"""
import json, sys
import numpy as np
import fastcnn.functional as F
from fastcnn._ops import parallel

rng = np.random.default_rng(29)
out = {"path": parallel.simd_path(), "results": []}
problems = [((3, 5, 23, 37), (11, 5, 5, 5), 1, 2), ((2, 9, 14, 14), (19, 9, 3, 3), 1, 1),
            ((2, 6, 17, 30), (21, 6, 3, 3), 2, 1), ((3, 2, 9, 50), (13, 2, 3, 7), (1, 3), 2),
            ((2, 40, 9, 11), (13, 40, 1, 1), 1, 0)]
for dtype in (np.float32, np.float64):
    for xs, ws, stride, pad in problems:
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        for fwd, gx, gw in (("direct", "direct", "direct"), ("rows", "rows", "channels"),
                            ("winograd", "winograd", "winograd"),
                            ("winograd_s2", "im2col", "im2col"), ("im2col", "im2col", "im2col")):
            with F.conv_algorithms(forward=fwd, input_grad=gx, weight_grad=gw):
                y = F.conv2d(x, w, b, stride, pad, activation="relu")
                grads = F.conv2d_backward(np.cos(y), x, w, stride, pad)
            out["results"].append([a.astype(np.float64).ravel().tolist() for a in (y,) + grads])
    x = rng.standard_normal((2, 7, 9, 11)).astype(dtype)
    w = rng.standard_normal((7, 12, 4, 4)).astype(dtype)
    for forced in ("subpixel", "im2col"):
        with F.conv_algorithms(transposed=forced):
            out["results"].append([F.conv_transpose2d(x, w, None, 2, 1).ravel().tolist()])
json.dump(out, sys.stdout)
"""

_LEVELS = {V4: 2, V3: 1, BASE: 0}


def _levels_this_cpu_runs():
    cpu = _par.simd_cpu_path()
    if cpu == "portable":
        return []
    return [level for level in algorithms.ISAS if _LEVELS[level] <= _LEVELS[cpu]]


def _run_at(level):
    env = dict(os.environ, FASTCNN_SIMD=level)
    res = subprocess.run([sys.executable, "-c", _LEVEL_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_every_level_this_cpu_runs_gives_the_same_results():
    """Each compiled copy of the direct kernels (AVX-512, AVX2, baseline: as many as this CPU
    can run, forced with FASTCNN_SIMD) and each algorithm, forward (with ReLU) and all three
    gradients, float32 and float64, agree with the same computation at the CPU's own level
    (each algorithm is checked against im2col + GEMM by the tests above, at every level when
    .ci/run repeats them under FASTCNN_SIMD)."""
    levels = _levels_this_cpu_runs()
    if not levels:
        pytest.skip("built without dispatch: one copy of each kernel, tested by the rest")
    runs = {level: _run_at(level) for level in levels}
    reference = runs[levels[0]]["results"]
    for level, run in runs.items():
        assert run["path"] == level
        assert len(run["results"]) == len(reference)
        for i, (got, want) in enumerate(zip(run["results"], reference)):
            # results come in groups of five algorithms (the last one im2col) per problem
            tol = dict(rtol=2e-4, atol=2e-4) if i < len(reference) // 2 else dict(rtol=1e-9,
                                                                                   atol=1e-9)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, err_msg=f"{level}, result {i}", **tol)


def test_forcing_a_level_is_checked_at_import():
    """An unknown FASTCNN_SIMD is a clear error at import; a level above the CPU's runs the
    CPU's own level with a warning (never an illegal instruction)."""
    env = dict(os.environ, FASTCNN_SIMD="avx2")
    res = subprocess.run([sys.executable, "-c", "import fastcnn"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert ("FASTCNN_SIMD='avx2' in the environment: expected one of x86-64-v4, x86-64-v3, "
            "baseline") in res.stderr
    env["FASTCNN_SIMD"] = "x86-64-v4"
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c",
                          "import fastcnn; from fastcnn._ops import parallel; "
                          "print(parallel.simd_path())"], env=env, capture_output=True, text=True)
    cpu = _par.simd_cpu_path()
    if cpu in (V4, "portable"):
        assert res.returncode == 0 and res.stdout.strip() == cpu
    else:
        assert res.returncode == 1
        assert f"this CPU runs at most {cpu}" in res.stderr


def test_fastest_times_the_candidates_in_turns_and_keeps_the_fastest(monkeypatch):
    """An InferenceSession's autotuning: every usable algorithm warmed once, then timed round
    after round in turns (a burst of load hits them alike); the clearly fastest is kept. The
    runners advance a fake clock instead of sleeping, so that the machine's load cannot change
    the rounds counted (it did: a round of no-op runners took over a millisecond once)."""
    import types
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(algorithms, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    geom = conv(16, 16, 32, 3)
    ruled = algorithms.choose("forward", geom, 2, algorithms.machine_isa())
    usable = [a for a in algorithms.ALGORITHMS["forward"]
              if a != "depthwise" and algorithms.usable(a, "forward", geom, 2)]
    calls = []

    def runner(name, seconds):
        def run():
            calls.append(name)
            clock.now += seconds
        return run
    winner = next(a for a in usable if a != ruled)
    runners = {a: runner(a, 1e-6 if a == winner else 0.004) for a in usable}
    assert algorithms.fastest("forward", geom, 2, runners) == winner
    assert calls == usable + usable * 3                 # warm, then 3 rounds in turns
    calls.clear()
    runners = {a: runner(a, 1e-5) for a in usable}
    assert algorithms.fastest("forward", geom, 2, runners) == ruled   # ties: the rules' choice
    assert calls == usable + usable * 5                 # rounds under a millisecond: 5
    calls.clear()
    runners = {a: runner(a, 0.001 if a == ruled else 0.00102) for a in usable}
    assert algorithms.fastest("forward", geom, 2, runners) == ruled   # within 3%: kept


def test_channels_weight_gradient_kernel_refuses_mismatched_buffers():
    """The kernel's driver checks its buffers before the nogil loop: a workspace too short for
    the threads (which overran the heap before the check), offsets not padded to its blocks,
    or x and dy rows that do not match the geometry are a ValueError."""
    from fastcnn._ops import conv_direct as direct
    c, h, w, k, c_out, n = 3, 5, 5, 3, 4, 2
    cpad, kpad = direct.channels_weight_grad_layout(c_out, c * k * k)
    size = direct.channels_weight_grad_workspace_size(c, h, w, 1, 1, c_out, c * k * k, 3, 3)
    x = np.zeros((n, c * h * w), np.float32)
    dy = np.zeros((n, c_out * 9), np.float32)
    grad_w = np.zeros((c_out, c * k * k), np.float32)
    parts = np.zeros((n, kpad * cpad), np.float32)
    good = dict(workspace=np.zeros(2 * size, np.float32), offsets=np.zeros(kpad, np.intp), x=x,
                dy=dy)
    bad = [dict(workspace=np.zeros(size, np.float32)), dict(offsets=np.zeros(kpad - 1, np.intp)),
           dict(x=np.zeros((n, c * h * w - 1), np.float32)), dict(dy=dy[:1])]
    for change in bad:
        a = {**good, **change}
        with pytest.raises(ValueError, match="direct_weight_grad_channels"):
            direct.direct_weight_grad_channels(a["x"], a["dy"], grad_w, parts, a["workspace"],
                                               a["offsets"], c, h, w, 0, 0, h, w, 3, 3, 1, 1, 2)
    a = good
    direct.direct_weight_grad_channels(a["x"], a["dy"], grad_w, parts, a["workspace"],
                                       a["offsets"], c, h, w, 0, 0, h, w, 3, 3, 1, 1, 2)
    assert not grad_w.any()
    # with the forward in the same pass: its weight (K, C_out in whole panels), bias and out too
    panel = direct.channel_panel(np.float32)
    fwd = dict(wt=np.zeros((c * k * k, panel), np.float32), bias=np.zeros(panel, np.float32),
               out=np.ones((n, c_out * 9), np.float32))
    for change in bad + [dict(wt=np.zeros((c * k * k, panel + 1), np.float32)),
                         dict(wt=np.zeros((c * k * k - 1, panel), np.float32)),
                         dict(bias=np.zeros(panel - 1, np.float32)),
                         dict(out=np.zeros((n, c_out * 9 - 1), np.float32))]:
        a = {**good, **fwd, **change}
        with pytest.raises(ValueError, match="direct_forward_and_weight_grad_channels"):
            direct.direct_forward_and_weight_grad_channels(
                a["x"], a["dy"], a["wt"], a["bias"], a["out"], grad_w, parts, a["workspace"],
                a["offsets"], c, h, w, 0, 0, h, w, 3, 3, 1, 1, 2)
    a = {**good, **fwd}
    direct.direct_forward_and_weight_grad_channels(
        a["x"], a["dy"], a["wt"], a["bias"], a["out"], grad_w, parts, a["workspace"],
        a["offsets"], c, h, w, 0, 0, h, w, 3, 3, 1, 1, 2)
    assert not grad_w.any() and not a["out"].any()


def test_rows_weight_gradient_kernel_refuses_mismatched_buffers():
    """fc_dw_rows' driver shares the checks: a short workspace or a wrong dy is a ValueError."""
    from fastcnn._ops import conv_direct as direct
    c, h, w, k, c_out, n = 3, 5, 5, 3, 4, 2
    kpad = direct.direct_weight_grad_layout(c_out, c * k * k, 3)[1]
    size = direct.direct_weight_grad_workspace_size(c, h, w, 1, 1, c_out, c * k * k, 3, 3)
    x = np.zeros((n, c * h * w), np.float32)
    grad_w = np.zeros((c_out, c * k * k), np.float32)
    parts = np.zeros((n, c * k * k * c_out))
    offsets = np.zeros(kpad, np.intp)
    for dy, workspace in ((np.zeros((n, c_out * 9), np.float32), np.zeros(size, np.float32)),
                          (np.zeros((n, c_out * 8), np.float32), np.zeros(2 * size, np.float32))):
        with pytest.raises(ValueError, match="direct_weight_grad"):
            direct.direct_weight_grad(x, dy, grad_w, parts, workspace, offsets, c, h, w, 0, 0,
                                      h, w, 3, 3, 1, 1, 2)
