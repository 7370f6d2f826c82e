"""conv1d/2d/3d forward and backward: torch agreement, finite differences, layouts, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from fastcnn.functional import _conv_algorithms as algorithms
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

CONV = {1: (F.conv1d, F.conv1d_backward), 2: (F.conv2d, F.conv2d_backward),
        3: (F.conv3d, F.conv3d_backward)}


def torch_conv(th, nd, x, w, b, dy, **kw):
    """torch's output and gradients (input, weight, bias) for the same call."""
    xt = th.tensor(x, requires_grad=True)
    wt = th.tensor(w, requires_grad=True)
    bt = None if b is None else th.tensor(b, requires_grad=True)
    yt = getattr(th.nn.functional, f"conv{nd}d")(xt, wt, bt, **kw)
    yt.backward(th.tensor(dy))
    return (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def check_against_torch(th, rng, nd, n, c_in, c_out, size, kernel, dtype=np.float64, bias=True,
                        tol=None, **kw):
    """fastcnn's convolution and its three gradients against torch's, on standard normal data;
    within TOL[dtype] unless ``tol`` says otherwise."""
    groups = kw.get("groups", 1)
    x = rng.standard_normal((n, c_in) + tuple(size)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups) + tuple(kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    fwd, bwd = CONV[nd]
    y = fwd(x, w, b, **kw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y_ref, gx_ref, gw_ref, gb_ref = torch_conv(th, nd, x, w, b, dy, **kw)
    assert y.shape == y_ref.shape and y.dtype == dtype
    tol = TOL[dtype] if tol is None else tol
    np.testing.assert_allclose(y, y_ref, **tol)
    gx, gw, gb = bwd(dy, x, w, **kw)
    np.testing.assert_allclose(gx, gx_ref, **tol)
    np.testing.assert_allclose(gw, gw_ref, **tol)
    if bias:
        np.testing.assert_allclose(gb, gb_ref, **tol)


# ---- torch agreement on a grid ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (3, 0, 1, 2), ((2, 1), (1, 0), (1, 2), 1),
    (1, "same", 1, 1), (1, "same", (2, 1), 2), (2, "valid", 1, 4), (1, 1, 1, 4),
])
def test_conv2d_matches_torch(th, rng, dtype, stride, padding, dilation, groups):
    check_against_torch(th, rng, 2, 3, 4, 8, (9, 10), (3, 2), dtype,
                        stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride,padding,groups", [
    ((1, 1), 1, 0, 1), ((1, 1), 1, 0, 2), ((1, 1), 2, 0, 1), ((1, 1), 1, 1, 1), ((5, 5), 1, 2, 1),
])
def test_conv2d_pointwise_and_lenet_shapes(th, rng, dtype, kernel, stride, padding, groups):
    check_against_torch(th, rng, 2, 4, 6, 4, (7, 6), kernel, dtype,
                        stride=stride, padding=padding, groups=groups)


def test_conv2d_depthwise(th, rng):
    check_against_torch(th, rng, 2, 2, 6, 12, (8, 8), (3, 3), np.float32, padding=1, groups=6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 3, 1, 2), (1, "same", 3, 1), (3, 1, 2, 4),
])
def test_conv1d_matches_torch(th, rng, dtype, stride, padding, dilation, groups):
    check_against_torch(th, rng, 1, 2, 4, 8, (17,), (3,), dtype,
                        stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 2), ((1, 2, 1), (1, 0, 2), (2, 1, 1), 1), (1, "same", 1, 1),
])
def test_conv3d_matches_torch(th, rng, dtype, stride, padding, dilation, groups):
    check_against_torch(th, rng, 3, 2, 4, 6, (5, 6, 7), (3, 2, 3), dtype,
                        stride=stride, padding=padding, dilation=dilation, groups=groups)


def test_conv2d_without_bias_and_unbatched(th, rng):
    check_against_torch(th, rng, 2, 1, 3, 5, (6, 6), (3, 3), bias=False, padding=1)
    x = rng.standard_normal((3, 6, 6))
    w = rng.standard_normal((5, 3, 3, 3))
    y = F.conv2d(x, w, padding=1)
    assert y.shape == (5, 6, 6)
    np.testing.assert_allclose(y, F.conv2d(x[None], w, padding=1)[0])
    gx, gw, gb = F.conv2d_backward(np.ones_like(y), x, w, padding=1)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (5,)


# ---- property-based shapes --------------------------------------------------------------------

def draw_windows(draw, nd, max_kernel, max_extra):
    """kernel, size and the window keywords (stride, padding, dilation) of a random problem:
    an input at least as large as the dilated kernel minus the padding, plus up to max_extra
    (3 in 3-D)."""
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(nd))
    extra = max_extra if nd < 3 else 3
    size = tuple(max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, extra))
                 for k, d, p in zip(kernel, dilation, padding))
    return kernel, size, dict(stride=stride, padding=padding, dilation=dilation)


@st.composite
def conv_problems(draw, nd):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel, size, kw = draw_windows(draw, nd, 4, 7)
    n = draw(st.integers(1, 3))
    return n, c_in, c_out, size, kernel, dict(kw, groups=groups)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems(2), dtype=st.sampled_from([np.float32, np.float64]))
def test_conv2d_hypothesis(th, problem, dtype):
    n, c_in, c_out, size, kernel, kw = problem
    check_against_torch(th, np.random.default_rng(0), 2, n, c_in, c_out, size, kernel, dtype, **kw)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems(1))
def test_conv1d_hypothesis(th, problem):
    n, c_in, c_out, size, kernel, kw = problem
    check_against_torch(th, np.random.default_rng(0), 1, n, c_in, c_out, size, kernel, **kw)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems(3))
def test_conv3d_hypothesis(th, problem):
    n, c_in, c_out, size, kernel, kw = problem
    check_against_torch(th, np.random.default_rng(0), 3, n, c_in, c_out, size, kernel, **kw)



# ---- depthwise (groups = C_in): direct loops, _ops/depthwise.pyx ------------------------------

@st.composite
def depthwise_problems(draw, nd):
    c_in = draw(st.integers(2, 5))
    multiplier = draw(st.integers(1, 3))
    kernel, size, kw = draw_windows(draw, nd, 5, 6)
    n = draw(st.integers(1, 3))
    return n, c_in, c_in * multiplier, size, kernel, dict(kw, groups=c_in)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nd=st.sampled_from([1, 2, 2, 3]), data=st.data(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_depthwise_hypothesis(th, nd, data, dtype):
    n, c_in, c_out, size, kernel, kw = data.draw(depthwise_problems(nd))
    check_against_torch(th, np.random.default_rng(0), nd, n, c_in, c_out, size, kernel, dtype,
                        **kw)


@pytest.mark.parametrize("padding", [1, "same", "valid"])
def test_depthwise_mobilenet_shapes_match_torch(th, rng, padding):
    check_against_torch(th, rng, 2, 4, 32, 32, (14, 13), (3, 3), np.float32, padding=padding,
                        groups=32)
    check_against_torch(th, rng, 2, 2, 16, 16, (15, 15), (3, 3), np.float64, padding=1,
                        stride=2, groups=16)


def test_depthwise_gradients_by_finite_differences(rng):
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((6, 1, 3, 2))
    kw = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=3)
    dy = rng.standard_normal(F.conv2d(x, w, **kw).shape)
    gx, gw, _ = F.conv2d_backward(dy, x, w, **kw)
    assert_grad_close(gx, numerical_grad(lambda v: F.conv2d(v, w, **kw), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: F.conv2d(x, v, **kw), w, dy))


def test_depthwise_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads):
    x = rng.standard_normal((5, 8, 11, 9)).astype(np.float32)
    w = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)

    def compute():
        y = F.conv2d(x, w, padding=1, groups=8)
        return (y,) + F.conv2d_backward(np.cos(y), x, w, padding=1, groups=8)[:2]
    same_bits_for_1_and_2_threads(compute)


# ---- finite differences (no torch needed) -----------------------------------------------------

@pytest.mark.parametrize("nd,size,kernel,kw", [
    (1, (9,), (3,), dict(stride=2, padding=1, dilation=2, groups=2)),
    (2, (6, 5), (3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=1, groups=1)),
    (2, (5, 5), (3, 3), dict(padding="same", dilation=2, groups=2)),
    (2, (4, 4), (1, 1), dict()),
    (3, (4, 3, 4), (2, 2, 3), dict(stride=1, padding=1, dilation=(1, 2, 1), groups=2)),
])
def test_conv_finite_differences(rng, nd, size, kernel, kw):
    groups = kw.get("groups", 1)
    x = rng.standard_normal((2, 4) + size)
    w = rng.standard_normal((4, 4 // groups) + kernel)
    b = rng.standard_normal(4)
    fwd, bwd = CONV[nd]
    y = fwd(x, w, b, **kw)
    dy = rng.standard_normal(y.shape)
    gx, gw, gb = bwd(dy, x, w, **kw)
    assert_grad_close(gx, numerical_grad(lambda v: fwd(v, w, b, **kw), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: fwd(x, v, b, **kw), w, dy))
    assert_grad_close(gb, numerical_grad(lambda v: fwd(x, w, v, **kw), b, dy))


# ---- layouts, dtypes, batch sizes, threads ----------------------------------------------------

def test_noncontiguous_and_fortran_inputs(rng):
    x = rng.standard_normal((2, 3, 8, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    expected = F.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(F.conv2d(np.asfortranarray(x), np.asfortranarray(w), padding=1),
                                  expected)
    big = np.zeros((2, 6, 8, 18))
    big[:, ::2, :, ::2] = x
    np.testing.assert_array_equal(F.conv2d(big[:, ::2, :, ::2], w, padding=1), expected)
    flipped = x[:, :, ::-1].copy()[:, :, ::-1]          # a negative-stride view equal to x
    np.testing.assert_array_equal(F.conv2d(flipped, w, padding=1), expected)
    dy = rng.standard_normal(expected.shape)
    ref = F.conv2d_backward(dy, x, w, padding=1)
    got = F.conv2d_backward(np.asfortranarray(dy), big[:, ::2, :, ::2], w, padding=1)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def test_dtype_rules(rng):
    x = rng.integers(0, 255, size=(2, 3, 6, 6), dtype=np.uint8)
    w32 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w32)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, F.conv2d(x.astype(np.float32), w32), rtol=1e-6)
    assert F.conv2d(x.astype(np.float32), w32.astype(np.float64)).dtype == np.float64
    assert F.conv2d(x.astype(np.float16), w32.astype(np.float16)).dtype == np.float32
    with pytest.raises(TypeError, match="input must hold real numbers"):
        F.conv2d(x.astype(np.complex64), w32)
    with pytest.raises(TypeError, match="weight must hold real numbers"):
        F.conv2d(x, w32.astype(object))
    with pytest.raises(TypeError, match="input must hold real numbers"):
        F.conv2d(np.array([["a"]]), w32)


def test_read_only_inputs(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    x.flags.writeable = False
    w.flags.writeable = False
    y = F.conv2d(x, w)
    gx, gw, gb = F.conv2d_backward(np.ones_like(y), x, w)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(rng, nd):
    fwd, bwd = CONV[nd]
    x = np.zeros((0, 3) + (6,) * nd, dtype=np.float32)
    w = rng.standard_normal((4, 3) + (3,) * nd).astype(np.float32)
    y = fwd(x, w, np.zeros(4, np.float32), padding=1)
    assert y.shape == (0, 4) + (6,) * nd and y.dtype == np.float32
    gx, gw, gb = bwd(y, x, w, padding=1)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0)
    np.testing.assert_array_equal(gb, 0)


def test_output_mask(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 4, 4))
    full = F.conv2d_backward(dy, x, w)
    gx, gw, gb = F.conv2d_backward(dy, x, w, output_mask=(True, False, False))
    assert gw is None and gb is None
    np.testing.assert_array_equal(gx, full[0])
    gx, gw, gb = F.conv2d_backward(dy, x, w, output_mask=(False, True, True))
    assert gx is None
    np.testing.assert_array_equal(gw, full[1])
    np.testing.assert_array_equal(gb, full[2])


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (1, 1, 0), (5, 2, 2)])
@pytest.mark.parametrize("n", [1, 3, 13])
def test_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads, kernel, stride,
                                           padding, n):
    x = rng.standard_normal((n, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 4, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)

    def compute():
        y = F.conv2d(x, w, b, stride, padding, groups=2)
        return (y,) + F.conv2d_backward(np.cos(y), x, w, stride, padding, groups=2)
    same_bits_for_1_and_2_threads(compute)


# ---- invalid arguments ------------------------------------------------------------------------

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input=np.zeros((4, 8)), weight=W), ValueError, r"input must be 3 or 4-D"),
    (dict(input=X, weight=np.zeros((6, 4, 3))), ValueError, r"weight must be 4-D"),
    (dict(input=X, weight=np.zeros((6, 3, 3, 3))), ValueError, r"input has 4 channels"),
    (dict(input=X, weight=W, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(input=X, weight=W, groups=4), ValueError, r"divisible by groups = 4"),
    (dict(input=X, weight=W, groups=1.5), TypeError, r"groups must be an int"),
    (dict(input=X, weight=W, stride=0), ValueError, r"stride must be a positive int"),
    (dict(input=X, weight=W, stride=(1, 2, 3)), TypeError, r"stride must be .* tuple of 2"),
    (dict(input=X, weight=W, stride=1.0), TypeError, r"stride must be"),
    (dict(input=X, weight=W, stride=True), TypeError, r"stride must be"),
    (dict(input=X, weight=W, dilation=-1), ValueError, r"dilation must be"),
    (dict(input=X, weight=W, padding=-1), ValueError, r"padding must be"),
    (dict(input=X, weight=W, padding="full"), ValueError, r"padding must be 'same', 'valid'"),
    (dict(input=X, weight=W, padding="same", stride=2), ValueError, r"'same' needs stride 1"),
    (dict(input=X, weight=np.zeros((6, 4, 9, 9))), ValueError, r"smaller than the dilated kernel"),
    (dict(input=X, weight=W, dilation=5), ValueError, r"smaller than the dilated kernel"),
    (dict(input=X, weight=np.zeros((0, 4, 3, 3))), ValueError, r"no zero-size axis"),
    (dict(input=X, weight=W, bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\)"),
    (dict(input=None, weight=W), TypeError, r"input must be an array, got None"),
    (dict(input=[[1, 2], [3]], weight=W), TypeError, r"input could not be converted"),
    (dict(input=X, weight=W, activation="tanh"), ValueError,
     r"activation must be None or 'relu', got 'tanh'"),
])
def test_conv2d_invalid_arguments(kwargs, exc, match):
    with pytest.raises(exc, match="conv2d: .*" + match):
        F.conv2d(**kwargs)


def test_conv_backward_invalid_arguments():
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape"):
        F.conv2d_backward(np.zeros((2, 6, 5, 5)), X, W)
    with pytest.raises(TypeError, match=r"output_mask must be 3 booleans"):
        F.conv2d_backward(np.zeros((2, 6, 6, 6)), X, W, output_mask=True)


@pytest.mark.parametrize("n,size,groups", [(13, (5, 6), 2), (64, (4, 4), 1), (7, (1, 1), 3)])
def test_many_small_samples_share_a_gemm(th, rng, n, size, groups):
    """Small outputs put several samples' columns side by side in one GEMM (conv.pyx
    sample_block); batch sizes that do not divide evenly into blocks and chunks included."""
    check_against_torch(th, rng, 2, n, 3 * groups, 2 * groups, size, (3, 3), np.float64,
                        padding=1, groups=groups)


# ---- Winograd F(2x2, 3x3) and F(4x4, 3x3): 3x3 stride-1 convolutions with >= 16 channels ---

@pytest.mark.parametrize("winograd", ["winograd", "winograd4"])
@pytest.mark.parametrize("n,c_in,c_out,size,padding", [
    (3, 16, 20, (9, 7), 1), (2, 17, 16, (8, 8), 0), (5, 32, 16, (5, 6), 2), (1, 16, 16, (1, 1), 1),
    (9, 16, 24, (3, 4), "same"), (2, 24, 16, (2, 2), 2), (2, 40, 48, (13, 18), 1),
])
def test_winograd_shapes_match_torch(th, rng, n, c_in, c_out, size, padding, winograd):
    from fastcnn.functional._conv import _conv_geometry
    geom = _conv_geometry("t", 2, np.zeros((n, c_in) + size), np.zeros((c_out, c_in, 3, 3)), 1,
                          padding, 1, 1)
    for isa in algorithms.ISAS:                       # Winograd on every level
        assert algorithms.choose("forward", geom, 2, isa) in algorithms.WINOGRAD_TILE
    # F(4x4, 3x3) rounds float32 to about 1e-5 of the largest output (outputs reach ~90 here,
    # from 40 channels of unit data: errors up to ~4e-4, beyond TOL's 2e-4)
    tol32 = dict(rtol=1e-3, atol=1e-3) if winograd == "winograd4" else None
    with F.conv_algorithms(forward=winograd, input_grad=winograd, weight_grad=winograd):
        check_against_torch(th, rng, 2, n, c_in, c_out, size, (3, 3), np.float64,
                            padding=padding)
        check_against_torch(th, rng, 2, n, c_in, c_out, size, (3, 3), np.float32, tol=tol32,
                            padding=padding)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_own_gemm_and_blas_agree_with_float64(rng, m, dtype):
    """The Winograd forward with its GEMMs by BLAS and by its own kernel (fc_wino_gemm, the copy
    of this level), on shapes with row and tile tails (channels not a multiple of 4, blocks
    shorter than a vector, odd maps; maps wide enough for whole vectors of tiles in the
    transforms at every level, and rows of 4 and 8 tiles), with and without the ReLU, against
    the float64 convolution."""
    from fastcnn._ops import winograd as W
    from fastcnn._threads import single_threaded_blas
    for n, c, k, h, w_ in ((3, 17, 19, 9, 7), (1, 8, 5, 4, 4), (5, 32, 36, 16, 13),
                           (2, 3, 1, 1, 2), (1, 3, 5, 9, 70), (2, 4, 6, 5, 32), (2, 4, 3, 6, 16),
                           (3, 4, 3, 5, 8)):
        x = rng.standard_normal((n, c, h, w_))
        wt = rng.standard_normal((k, c, 3, 3))
        bias = rng.standard_normal(k)
        exact = F.conv2d(x, wt, bias, padding=1)
        u = np.empty(((m + 2) ** 2, k, c), dtype)
        W.weight_transform(wt.astype(dtype), u, False, 2)
        tiles = -(-h // m) * -(-w_ // m)
        block = W.block_size(n, tiles)
        for own, relu in ((False, False), (True, False), (True, True)):
            out = np.full((n, k * h * w_), np.nan, dtype)
            ws = np.empty(W.workspace_size(c, k, h, w_, block, m) * 2, dtype)
            with single_threaded_blas:
                W.forward(x.astype(dtype).reshape(n, -1), u, bias.astype(dtype), out, ws, h, w_,
                          1, h, w_, block, relu, 2, own)
            want = np.maximum(exact, 0) if relu else exact
            scale = np.abs(exact).max()
            limit = 3e-5 if dtype == np.float32 else 1e-12
            assert np.abs(out.reshape(exact.shape) - want).max() / scale < limit


@pytest.mark.parametrize("winograd,limit", [("winograd", 1e-6), ("winograd4", 3e-5)])
def test_winograd_forward_float32_error_is_small(rng, winograd, limit):
    """Relative error (to the largest output) of float32 F(2x2, 3x3) and F(4x4, 3x3) against
    float64, for 64 and 256 channels. F(4x4, 3x3)'s larger transform coefficients cost about
    15-30x F(2x2, 3x3)'s rounding: measured 5e-6 against 3e-7 (64 channels), 1.0e-5 (256)."""
    for c in (64, 256):
        x = rng.standard_normal((2, c, 16, 16))
        w = rng.standard_normal((32, c, 3, 3))
        exact = F.conv2d(x, w, padding=1)
        with F.conv_algorithms(forward=winograd):
            single = F.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)
        assert np.abs(single - exact).max() / np.abs(exact).max() < limit


def test_winograd_float32_error_is_measured_and_small(rng):
    """Relative error of the float32 Winograd result against float64, next to im2col's."""
    x = rng.standard_normal((4, 64, 16, 16))
    w = rng.standard_normal((64, 64, 3, 3)) * 0.05
    exact = F.conv2d(x, w, padding=1)
    wino = F.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)
    cols = F.unfold(x.astype(np.float32), 3, padding=1)
    im2col = np.einsum("ok,nkl->nol", w.reshape(64, -1).astype(np.float32), cols).reshape(exact.shape)
    scale = np.abs(exact).max()
    err_wino = np.abs(wino - exact).max() / scale
    err_im2col = np.abs(im2col - exact).max() / scale
    assert err_wino < 1e-5 and err_wino < 20 * max(err_im2col, 1e-7)


@pytest.mark.parametrize("winograd,limit", [("winograd", 1e-5), ("winograd4", 3e-5)])
def test_winograd_weight_gradient_float32_error_is_small(rng, winograd, limit):
    """dW = G^T (sum over tiles of dM . V) G in float32, against float64 (VGG-like sizes: long
    sums over 32 samples x 256 tiles)."""
    x = rng.standard_normal((32, 16, 32, 32))
    w = rng.standard_normal((16, 16, 3, 3))
    dy = rng.standard_normal((32, 16, 32, 32))
    mask = (False, True, False)
    exact = F.conv2d_backward(dy, x, w, padding=1, output_mask=mask)[1]
    with F.conv_algorithms(weight_grad=winograd):
        single = F.conv2d_backward(dy.astype(np.float32), x.astype(np.float32),
                                   w.astype(np.float32), padding=1, output_mask=mask)[1]
    assert single.dtype == np.float32
    assert np.abs(single - exact).max() / np.abs(exact).max() < limit


@pytest.mark.parametrize("winograd", ["winograd", "winograd4"])
@pytest.mark.parametrize("n", [7, 1])
def test_winograd_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads, winograd,
                                                    n):
    """7 samples: blocks over the threads; 1 sample: one block, its transforms and GEMMs cut
    over the threads (by channels, by xi, by output channels)."""
    x = rng.standard_normal((n, 16, 10, 9)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)

    def compute():
        with F.conv_algorithms(forward=winograd, input_grad=winograd, weight_grad=winograd):
            y = F.conv2d(x, w, padding=1)
            return (y,) + F.conv2d_backward(np.cos(y), x, w, padding=1)[:2]
    same_bits_for_1_and_2_threads(compute)


@pytest.mark.parametrize("winograd", ["winograd", "winograd4"])
def test_winograd_weight_gradient_is_bit_identical_for_1_and_2_threads(rng, threads, winograd):
    """Sample chunks (a function of the shapes) each sum their own dU partial, added in chunk
    order: repeated 2-thread runs over several chunks and blocks equal 1 thread's."""
    x = rng.standard_normal((24, 16, 12, 12)).astype(np.float32)    # 36 tiles each: 7 per block
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((24, 16, 12, 12)).astype(np.float32)
    mask = (False, True, False)
    with F.conv_algorithms(weight_grad=winograd):
        threads(1)
        expected = F.conv2d_backward(dy, x, w, padding=1, output_mask=mask)[1]
        threads(2)
        for _ in range(20):
            np.testing.assert_array_equal(
                F.conv2d_backward(dy, x, w, padding=1, output_mask=mask)[1], expected)


def test_autotune_picks_per_shape_and_keeps_results(rng, monkeypatch):
    """With autotuning on, the first call of a shape times Winograd against im2col, caches the
    choice, and both choices give the same answer (to rounding)."""
    monkeypatch.setattr(algorithms, "_tuned", {})
    x = rng.standard_normal((4, 8, 9, 9))                 # 8 channels: the rule says im2col
    w = rng.standard_normal((8, 8, 3, 3))
    reference = F.conv2d(x, w, padding=1)
    dy = rng.standard_normal(reference.shape)
    ref_grads = F.conv2d_backward(dy, x, w, padding=1)
    fastcnn_set = __import__("fastcnn").set_conv_autotune
    try:
        fastcnn_set(True)
        y = F.conv2d(x, w, padding=1)
        grads = F.conv2d_backward(dy, x, w, padding=1)
        assert {k[0] for k in algorithms._tuned} == {"forward", "input gradient", "weight gradient"}
        for key, choice in algorithms._tuned.items():           # force the other choice: same answer
            algorithms._tuned[key] = "im2col" if choice == "winograd" else "winograd"
        y2 = F.conv2d(x, w, padding=1)
        grads2 = F.conv2d_backward(dy, x, w, padding=1)
    finally:
        fastcnn_set(False)
    for a, b in [(y, reference), (y2, reference)] + list(zip(grads, ref_grads)) + list(
            zip(grads2, ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="set_conv_autotune: enabled must be True or False"):
        fastcnn_set("yes")


@pytest.mark.parametrize("nd", [1, 3])
def test_activation_relu_in_1d_and_3d(rng, nd):
    conv = F.conv1d if nd == 1 else F.conv3d
    x = rng.standard_normal((2, 3) + (6,) * nd)
    w = rng.standard_normal((4, 3) + (3,) * nd)
    b = rng.standard_normal(4)
    np.testing.assert_array_equal(conv(x, w, b, stride=2, activation="relu"),
                                  F.relu(conv(x, w, b, stride=2)))




def test_checked_geometries_are_cached_by_argument_types():
    """A geometry checked once is reused (the checks cost ~10 us a call), keyed by the
    arguments with their types: stride=True or 1.0 after stride=1 still fail, a list is
    checked every time, and an input of another shape or dtype gets its own checks."""
    from fastcnn.functional import _conv
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    first = _conv._conv_geometry("conv2d", 2, x, w, 1, 1, 1, 1)
    assert _conv._conv_geometry("conv2d", 2, x, w, 1, 1, 1, 1) is first
    F.conv2d(x, w, stride=1)
    for bad in (dict(stride=True), dict(stride=1.0), dict(groups=True), dict(dilation=(1, 0))):
        with pytest.raises((TypeError, ValueError), match="conv2d: "):
            F.conv2d(x, w, **bad)
    assert F.conv2d(x, w, padding=[1, 1]).shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="input has 4 channels"):
        F.conv2d(np.zeros((1, 4, 5, 5), np.float32), w)


def test_cached_plans_honor_forced_algorithms_and_keep_the_bits(rng):
    """Forward plans and backward choices are cached per problem, yet a conv_algorithms()
    block entered after the first (cached) call still runs its algorithm: each forced forward
    gives the bits of a ConvForward made for that call (the uncached path), and the forced
    algorithms give different bits from each other (so the cached rules' choice did not run);
    a layer built and run before the block follows it too."""
    from fastcnn.functional import _conv
    import fastcnn
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dy = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    ruled = F.conv2d(x, w, b, padding=1)                 # the rules' plan, cached
    ruled_grads = F.conv2d_backward(dy, x, w, padding=1)
    geom = _conv._conv_geometry("conv2d", 2, x, w, 1, 1, 1, 1)
    forward = {}
    for algorithm in ("winograd4", "winograd", "rows", "direct", "im2col"):
        with F.conv_algorithms(forward=algorithm):
            reference = _conv.ConvForward(geom, 2, w, b, np.dtype(np.float32))
            assert reference.algorithm == algorithm
            expected = np.empty_like(ruled)
            reference.run(x.reshape(2, -1), expected.reshape(2, -1))
            for _ in range(2):                              # planned, then from the cache
                np.testing.assert_array_equal(F.conv2d(x, w, b, padding=1), expected)
                np.testing.assert_array_equal(
                    F.conv2d(x, w, b, padding=1, activation="relu"), np.maximum(expected, 0))
        forward[algorithm] = expected
        np.testing.assert_allclose(expected, ruled, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(forward["winograd4"], forward["im2col"])
    assert not np.array_equal(forward["winograd"], forward["im2col"])
    np.testing.assert_array_equal(F.conv2d(x, w, b, padding=1), ruled)   # the rules again

    input_grads = {}
    for algorithm in ("direct", "rows", "winograd4", "winograd", "im2col"):
        with F.conv_algorithms(input_grad=algorithm, weight_grad=algorithm
                               if algorithm != "rows" else "channels"):
            chosen = _conv._backward_algorithms(geom, 2, np.dtype(np.float32), True, True)
            assert chosen == (algorithm, algorithm if algorithm != "rows" else "channels")
            first = F.conv2d_backward(dy, x, w, padding=1)
            again = F.conv2d_backward(dy, x, w, padding=1)
        for got, twice, want in zip(first, again, ruled_grads):
            np.testing.assert_array_equal(got, twice)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        input_grads[algorithm] = first[0]
    assert not np.array_equal(input_grads["winograd4"], input_grads["im2col"])

    layer = fastcnn.build_model({"input_shape": [16, 12, 12], "layers": [
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1}]})
    layer.layers[next(iter(layer.layers))].weight.data[...] = w
    layer.layers[next(iter(layer.layers))].bias.data[...] = b
    np.testing.assert_array_equal(layer(x), ruled)
    for algorithm in ("winograd4", "im2col"):
        with F.conv_algorithms(forward=algorithm):
            np.testing.assert_array_equal(layer(x), forward[algorithm])
