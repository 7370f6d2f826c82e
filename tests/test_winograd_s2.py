"""3x3 stride-2 convolutions by Winograd on the polyphase components (_ops/winograd.pyx
forward_s2, F.conv_algorithms(forward="winograd_s2")): agreement with torch and with the other
algorithms over shapes, paddings, epilogues and dtypes; the same bits for any thread count and
either GEMM; bad buffers refused."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastcnn.functional as F
from fastcnn._ops import winograd as _winograd
from fastcnn.functional import _conv_algorithms as algorithms
from conftest import TOL


@st.composite
def stride2_problems(draw, kernel=3):
    """(x, w, b, padding, relu) of kernel x kernel stride-2 convolutions: 1-3 samples, 1-20
    channels each side (not multiples of the GEMM's blocks), odd and even maps from the
    smallest the padding allows (one output) to 2 * kernel + 13, padding 0 to kernel - 1, bias or
    none, float32 or float64."""
    pad = draw(st.integers(0, kernel - 1))
    h, w = (draw(st.integers(max(1, kernel - 2 * pad), 2 * kernel + 13)) for _ in range(2))
    n, c, k = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, kernel, kernel)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if draw(st.booleans()) else None
    return x, wt, b, pad, draw(st.booleans())


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=stride2_problems())
def test_stride2_winograd_agrees_with_torch_and_the_channel_kernel(th, problem):
    _agrees_with_torch_and_the_channel_kernel(th, problem)


def _agrees_with_torch_and_the_channel_kernel(th, problem):
    """winograd_s2 forced against torch (in float64) and the channel kernel, to TOL."""
    x, w, b, pad, relu = problem
    activation = "relu" if relu else None
    with F.conv_algorithms(forward="winograd_s2"):
        y = F.conv2d(x, w, b, 2, pad, activation=activation)
    with F.conv_algorithms(forward="direct"):
        direct = F.conv2d(x, w, b, 2, pad, activation=activation)
    ref = th.nn.functional.conv2d(th.tensor(x, dtype=th.float64), th.tensor(w, dtype=th.float64),
                                  None if b is None else th.tensor(b, dtype=th.float64), 2, pad)
    ref = (th.relu(ref) if relu else ref).numpy()
    tol = TOL[x.dtype.type]
    np.testing.assert_allclose(y, ref, **tol)
    np.testing.assert_allclose(y, direct, **tol)
    assert y.dtype == x.dtype


def _problem(rng, n, c, k, h, w, dtype):
    return (rng.standard_normal((n, c, h, w)).astype(dtype),
            rng.standard_normal((k, c, 3, 3)).astype(dtype),
            rng.standard_normal(k).astype(dtype))


def test_forcing_it_runs_forward_s2_and_the_rules_keep_it_to_stride_2(monkeypatch):
    """conv_algorithms(forward="winograd_s2") runs forward_s2 on a 3x3 stride-2 layer (a spy
    counts the calls); on a layer it cannot compute (stride 1, 5x5, dilation, unequal
    paddings) the rules' choice runs, with the same results as without forcing."""
    calls = []
    real = _winograd.forward_s2
    monkeypatch.setattr(_winograd, "forward_s2", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    x, w, b = _problem(rng, 2, 5, 6, 13, 12, np.float64)
    with F.conv_algorithms(forward="winograd_s2"):
        F.conv2d(x, w, b, 2, 1)
        assert len(calls) == 1
        others = [F.conv2d(x, w, b, 1, 1), F.conv2d(x, w, b, 2, (1, 0)),
                  F.conv2d(x, w, b, 2, 1, dilation=2),
                  F.conv2d(x, rng.standard_normal((6, 5, 5, 5)), None, 2, 2)]
    assert len(calls) == 1
    np.testing.assert_array_equal(others[0], F.conv2d(x, w, b, 1, 1))
    np.testing.assert_array_equal(others[2], F.conv2d(x, w, b, 2, 1, dilation=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_same_bits_for_1_and_2_threads_and_either_gemm(dtype, threads,
                                                           same_bits_for_1_and_2_threads):
    """forward_s2 at batch 1 (at 2 threads one block's phases cut over the team: its input
    transform by channels, its GEMMs by cost, its output transform by output channels) and
    batch 3 (blocks over threads): the same bits at 1 and 2 threads, with fc_wino_gemm and
    with BLAS; the two GEMMs agree to rounding. 40 output channels: GEMM calls of 32 rows and
    a remainder; 9 -> 40 from 30x23: tiles of 4x4 past both edges."""
    rng = np.random.default_rng(11)
    for n in (1, 3):
        x, w, b = _problem(rng, n, 9, 40, 30, 23, dtype)
        oh, ow = _winograd.s2_out_size(30, 1), _winograd.s2_out_size(23, 1)
        u = np.empty((36, 40, 9), dtype)
        _winograd.weight_transform_s2(w, u, 2)
        block = _winograd.block_size(n, -(-oh // 4) * -(-ow // 4))
        per = _winograd.workspace_size_s2(9, 40, oh, ow, block)

        def compute():
            from fastcnn import get_num_threads
            outs = []
            for own in (True, False):
                out = np.full((n, 40 * oh * ow), np.nan, dtype)
                ws = np.full(per * get_num_threads(), np.nan, dtype)
                _winograd.forward_s2(x.reshape(n, -1), u, b, out, ws, 30, 23, 1, block, True,
                                     get_num_threads(), own)
                outs.append(out)
            np.testing.assert_allclose(outs[0], outs[1], **TOL[dtype])
            return outs
        same_bits_for_1_and_2_threads(compute)
        with F.conv_algorithms(forward="im2col"):
            want = F.conv2d(x, w, b, 2, 1, activation="relu")
        np.testing.assert_allclose(compute()[0].reshape(want.shape), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_add_is_the_add_after_the_convolution(dtype):
    """forward_s2 with a residual (a block's add fused, with and without the ReLU) gives the
    bits of the convolution, then the add, then the ReLU."""
    rng = np.random.default_rng(5)
    x, w, b = _problem(rng, 2, 7, 10, 15, 16, dtype)
    u = np.empty((36, 10, 7), dtype)
    _winograd.weight_transform_s2(w, u, 1)
    with F.conv_algorithms(forward="winograd_s2"):
        conv = F.conv2d(x, w, b, 2, 1)
    res = rng.standard_normal(conv.shape).astype(dtype)
    ws = np.empty(2 * _winograd.workspace_size_s2(7, 10, 8, 8, 2), dtype)
    for relu in (False, True):
        out = np.empty((2, conv[0].size), dtype)
        _winograd.forward_s2(x.reshape(2, -1), u, b, out, ws, 15, 16, 1, 2, relu, 2, True,
                             res.reshape(2, -1))
        want = conv + res
        np.testing.assert_array_equal(out.reshape(conv.shape), F.relu(want) if relu else want)


def test_forward_s2_and_its_plan_step_refuse_buffers_that_do_not_fit():
    from fastcnn._ops.winograd import WinogradStep
    u = np.zeros((36, 4, 3), np.float32)
    x, out = np.zeros((2, 3 * 9 * 9), np.float32), np.zeros((2, 4 * 5 * 5), np.float32)
    b = np.zeros(4, np.float32)
    ws = np.zeros(2 * _winograd.workspace_size_s2(3, 4, 5, 5, 1), np.float32)
    _winograd.forward_s2(x, u, b, out, ws, 9, 9, 1, 1, False, 2)              # fits
    WinogradStep(x, u, b, out, ws, 9, 9, 1, 5, 5, 1, True, False, 2, stride=2)
    bad = [((x, u[:35], b, out, ws, 9, 9, 1, 1, False, 2), "36 matrices"),
           ((x, u, b, out, ws, 9, 8, 1, 1, False, 2), "do not match"),       # x of 9x8 maps
           ((x, u, b, out, ws, 9, 9, 0, 1, False, 2), "do not match"),       # out 4x4
           ((x, u, b, out, ws, 9, 9, 3, 1, False, 2), "do not match"),       # padding 3
           ((x, u, b[:3], out, ws, 9, 9, 1, 1, False, 2), "do not match"),
           ((x, u, b, out[:1], ws, 9, 9, 1, 1, False, 2), "do not match"),
           ((x, u, b, out, ws, 9, 9, 1, 0, False, 2), "do not match"),       # block 0
           ((x, u, b, out, ws, 9, 9, 1, 1, False, 3), "too small")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            _winograd.forward_s2(*args)
    with pytest.raises(ValueError, match="residual"):
        _winograd.forward_s2(x, u, b, out, ws, 9, 9, 1, 1, False, 2, True, x)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        WinogradStep(x, u, b, out, ws, 9, 9, 1, 5, 5, 1, True, False, 2, stride=3)
    with pytest.raises(ValueError, match="not a 3x3 stride-2"):
        WinogradStep(x, u, b, out, ws, 9, 9, 1, 5, 4, 1, True, False, 2, stride=2)
    with pytest.raises(ValueError, match="do not match"):
        WinogradStep(x, u, b, out, ws, 9, 9, 2, 5, 5, 1, True, False, 2, stride=2)
    with pytest.raises(ValueError, match="too small"):
        WinogradStep(x, u, b, out, ws, 9, 9, 1, 5, 5, 1, True, False, 3, stride=2)
    with pytest.raises(ValueError, match="u must have shape"):
        _winograd.weight_transform_s2(np.zeros((4, 3, 3, 3), np.float32),
                                      np.zeros((36, 4, 2), np.float32), 1)


def test_the_rules_take_it_where_it_was_measured_to_win():
    """Where each level's rules take it (the measurements are beside RULES)."""
    from test_conv_algorithms import conv
    V4, V3, BASE = algorithms.ISAS
    wins = {V4: [conv(64, 128, 112, 3, stride=2, n=8), conv(256, 512, 14, 3, stride=2)],
            V3: [conv(32, 64, 56, 3, stride=2, n=16), conv(64, 128, 56, 3, stride=2, n=1)],
            BASE: [conv(16, 32, 32, 3, stride=2), conv(32, 64, 16, 3, stride=2)]}
    losses = {V4: [conv(64, 128, 56, 3, stride=2, n=16), conv(32, 64, 112, 3, stride=2)],
              V3: [conv(16, 32, 56, 3, stride=2), conv(128, 256, 28, 3, stride=2)],
              BASE: [conv(8, 16, 32, 3, stride=2)]}
    for isa in algorithms.ISAS:
        for geom in wins[isa] + (wins[V3] if isa == BASE else []):
            assert algorithms.choose("forward", geom, 2, isa) == "winograd_s2", (isa, geom)
        for geom in losses[isa]:
            assert algorithms.choose("forward", geom, 2, isa) != "winograd_s2", (isa, geom)
        for direction in ("input gradient", "weight gradient"):
            assert not algorithms.usable("winograd_s2", direction, wins[V4][0], 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sample_gives_the_same_bits_in_any_batch(dtype):
    """A sample's output does not depend on the batch around it: alone, its 12 tiles are fewer
    than a vector and fc_wino_gemm takes them one at a time; in a block of two samples (24
    tiles) by vectors, one overlapping. Both are the same sums with the same multiply-adds
    (GCC once turned the one-at-a-time loop into products and an in-order sum: other bits)."""
    rng = np.random.default_rng(9)
    x, w, b = _problem(rng, 3, 9, 40, 30, 23, dtype)
    with F.conv_algorithms(forward="winograd_s2"):
        batch = F.conv2d(x, w, b, 2, 1)
        for i in range(3):
            np.testing.assert_array_equal(F.conv2d(x[i:i + 1], w, b, 2, 1)[0], batch[i])


# ---- 4x4 stride-2 kernels (F(4, 2) on both axes of all four phases) ------------------------

@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=stride2_problems(kernel=4))
def test_k4_stride2_winograd_agrees_with_torch_and_the_channel_kernel(th, problem):
    _agrees_with_torch_and_the_channel_kernel(th, problem)


def _k4_problem(rng, n, c, k, h, w, dtype):
    return (rng.standard_normal((n, c, h, w)).astype(dtype),
            rng.standard_normal((k, c, 4, 4)).astype(dtype),
            rng.standard_normal(k).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k4_the_same_bits_for_1_and_2_threads_either_gemm_and_any_batch(
        dtype, threads, same_bits_for_1_and_2_threads):
    """The 4x4 kernels' forward_s2 (u of 25 matrices of 4 C columns) at batch 1 (the parts
    path) and 3 (blocks): the same bits at 1 and 2 threads with fc_wino_gemm and BLAS, the
    GEMMs agreeing to rounding, a sample alone the same bits as in the batch, and the residual
    epilogue the bits of the convolution, then the add, then the ReLU. 7 -> 40 channels from
    31x22 padded by 1: GEMM calls of 32 rows and a remainder, tiles past both edges."""
    rng = np.random.default_rng(13)
    oh, ow = _winograd.s2_out_size(31, 1, 4), _winograd.s2_out_size(22, 1, 4)
    assert (oh, ow) == (15, 11)
    for n in (1, 3):
        x, w, b = _k4_problem(rng, n, 7, 40, 31, 22, dtype)
        u = np.empty((25, 40, 28), dtype)
        _winograd.weight_transform_s2(w, u, 2)
        block = _winograd.block_size(n, -(-oh // 4) * -(-ow // 4))
        per = _winograd.workspace_size_s2(7, 40, oh, ow, block, 4)

        def compute(residual=None, relu=True):
            from fastcnn import get_num_threads
            outs = []
            for own in (True, False):
                out = np.full((n, 40 * oh * ow), np.nan, dtype)
                ws = np.full(per * get_num_threads(), np.nan, dtype)
                _winograd.forward_s2(x.reshape(n, -1), u, b, out, ws, 31, 22, 1, block, relu,
                                     get_num_threads(), own, residual)
                outs.append(out)
            np.testing.assert_allclose(outs[0], outs[1], **TOL[dtype])
            return outs
        same_bits_for_1_and_2_threads(compute)
        with F.conv_algorithms(forward="im2col"):
            want = F.conv2d(x, w, b, 2, 1, activation="relu")
        np.testing.assert_allclose(compute()[0].reshape(want.shape), want, **TOL[dtype])
        conv = compute(relu=False)[0]
        res = rng.standard_normal(conv.shape).astype(dtype)
        for relu in (False, True):
            got = compute(res, relu)[0]
            np.testing.assert_array_equal(got, np.maximum(conv + res, 0) if relu else conv + res)
    with F.conv_algorithms(forward="winograd_s2"):
        batch = F.conv2d(x, w, b, 2, 1)
        for i in range(3):
            np.testing.assert_array_equal(F.conv2d(x[i:i + 1], w, b, 2, 1)[0], batch[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k4_transposed_convolution_input_gradient_by_it(th, monkeypatch, dtype):
    """The input gradient of a k4 s2 transposed convolution (the convolution of dy by the same
    weight, stride 2) runs forward_s2 when forced (a spy counts the calls), with or without the
    weight gradient, and agrees with torch's; odd and even maps."""
    calls = []
    real = _winograd.forward_s2
    monkeypatch.setattr(_winograd, "forward_s2", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(17)
    for n, c_in, c_out, size, pad, out_pad in ((2, 12, 9, 7, 1, 1), (1, 5, 6, 8, 1, 0),
                                               (3, 9, 4, 6, 2, 0)):
        x = rng.standard_normal((n, c_in, size, size)).astype(dtype)
        w = rng.standard_normal((c_in, c_out, 4, 4)).astype(dtype)
        y = F.conv_transpose2d(x, w, None, 2, pad, out_pad)
        dy = rng.standard_normal(y.shape).astype(dtype)
        tx = th.tensor(x, dtype=th.float64, requires_grad=True)
        tw = th.tensor(w, dtype=th.float64, requires_grad=True)
        th.nn.functional.conv_transpose2d(tx, tw, None, 2, pad, out_pad).backward(
            th.tensor(dy, dtype=th.float64))
        for mask in ((True, False, False), (True, True, False)):
            before = len(calls)
            with F.conv_algorithms(forward="winograd_s2"):
                gx, gw, _ = F.conv_transpose2d_backward(dy, x, w, 2, pad, out_pad,
                                                        output_mask=mask)
            assert len(calls) == before + 1
            np.testing.assert_allclose(gx, tx.grad.numpy(), **TOL[dtype])
            if mask[1]:
                np.testing.assert_allclose(gw, tw.grad.numpy(), **TOL[dtype])


def test_k4_buffers_that_do_not_fit_are_refused():
    from fastcnn._ops.winograd import WinogradStep
    u = np.zeros((25, 4, 12), np.float32)
    x, out = np.zeros((2, 3 * 9 * 9), np.float32), np.zeros((2, 4 * 4 * 4), np.float32)
    b = np.zeros(4, np.float32)
    ws = np.zeros(2 * _winograd.workspace_size_s2(3, 4, 4, 4, 1, 4), np.float32)
    _winograd.forward_s2(x, u, b, out, ws, 9, 9, 1, 1, False, 2)              # fits
    WinogradStep(x, u, b, out, ws, 9, 9, 1, 4, 4, 1, True, False, 2, stride=2)
    bad = [((x, np.zeros((25, 4, 8), np.float32), b, out, ws, 9, 9, 1, 1, False, 2),
            "do not match"),                                                # 2 channels
           ((x, np.zeros((25, 4, 11), np.float32), b, out, ws, 9, 9, 1, 1, False, 2),
            r"25 \(25, C_out, 4 C\)"),
           ((x, u, b, out, ws, 9, 9, 0, 1, False, 2), "do not match"),       # out 3x3
           ((x, u, b, out, ws, 9, 9, 4, 1, False, 2), "do not match"),       # padding 4
           ((x, u, b, out, ws[:-1], 9, 9, 1, 1, False, 2), "too small")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            _winograd.forward_s2(*args)
    with pytest.raises(ValueError, match="not a 4x4 stride-2"):
        WinogradStep(x, u, b, out, ws, 9, 9, 1, 4, 3, 1, True, False, 2, stride=2)
    with pytest.raises(ValueError, match=r"u must have shape \(25, 4, 12\)"):
        _winograd.weight_transform_s2(np.zeros((4, 3, 4, 4), np.float32),
                                      np.zeros((36, 4, 3), np.float32), 1)


def test_k4_the_rules_take_it_where_it_was_measured_to_win():
    """Where each level's rules take 4x4 stride-2 forwards, among them the k4 s2 transposed
    convolutions' input gradients (the measurements are beside RULES)."""
    from test_conv_algorithms import conv
    V4, V3, BASE = algorithms.ISAS

    def k4(c_in, c_out, size, n=16):
        return conv(c_in, c_out, size, 4, stride=2, n=n, padding=1)
    grad = k4(32, 64, 32)                   # U-Net's 64 -> 32 upsampling's input gradient
    wins = {V4: [grad, k4(64, 128, 32), k4(32, 64, 64, n=8), k4(128, 256, 16)],
            V3: [k4(16, 32, 32), k4(64, 64, 16), k4(64, 128, 32, n=1), k4(128, 128, 16)],
            BASE: [k4(8, 16, 32), k4(32, 64, 32, n=1)]}
    losses = {V4: [k4(16, 32, 32), k4(64, 64, 16), k4(32, 64, 32, n=1), k4(128, 128, 32, n=1),
                   k4(256, 512, 16, n=4)],
              V3: [k4(8, 16, 32), k4(256, 512, 16, n=4)],
              BASE: [k4(4, 16, 32)]}
    for isa in algorithms.ISAS:
        for geom in wins[isa] + [grad]:
            assert algorithms.choose("forward", geom, 2, isa) == "winograd_s2", (isa, geom)
        for geom in losses[isa]:
            assert algorithms.choose("forward", geom, 2, isa) != "winograd_s2", (isa, geom)
    assert not algorithms.usable("winograd_s2", "forward", conv(8, 8, 16, 4, stride=2,
                                                                padding=4), 2)
    assert not algorithms.usable("winograd_s2", "forward", conv(8, 8, 16, 4, stride=1), 2)
