"""conv_transpose1d/2d/3d forward and backward: torch agreement, finite differences, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from fastcnn.functional import _conv_algorithms as algorithms
from fastcnn.functional._conv_transpose import _conv_transpose_geometry
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

CONVT = {1: (F.conv_transpose1d, F.conv_transpose1d_backward),
         2: (F.conv_transpose2d, F.conv_transpose2d_backward),
         3: (F.conv_transpose3d, F.conv_transpose3d_backward)}


def torch_conv_transpose(th, nd, x, w, b, dy, **kw):
    xt = th.tensor(x, requires_grad=True)
    wt = th.tensor(w, requires_grad=True)
    bt = None if b is None else th.tensor(b, requires_grad=True)
    yt = getattr(th.nn.functional, f"conv_transpose{nd}d")(xt, wt, bt, **kw)
    yt.backward(th.tensor(dy))
    return (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def check_against_torch(th, rng, nd, n, c_in, c_out, size, kernel, dtype=np.float64, bias=True,
                        **kw):
    groups = kw.get("groups", 1)
    x = rng.standard_normal((n, c_in) + tuple(size)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups) + tuple(kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    fwd, bwd = CONVT[nd]
    y = fwd(x, w, b, **kw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y_ref, gx_ref, gw_ref, gb_ref = torch_conv_transpose(th, nd, x, w, b, dy, **kw)
    assert y.shape == y_ref.shape and y.dtype == dtype
    tol = TOL[dtype]
    np.testing.assert_allclose(y, y_ref, **tol)
    gx, gw, gb = bwd(dy, x, w, **kw)
    np.testing.assert_allclose(gx, gx_ref, **tol)
    np.testing.assert_allclose(gw, gw_ref, **tol)
    if bias:
        np.testing.assert_allclose(gb, gb_ref, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [
    dict(), dict(stride=2, padding=1), dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(2, 0), output_padding=(2, 1), groups=2),
    dict(stride=1, padding=3, dilation=2), dict(stride=1, dilation=2, output_padding=1),
    dict(groups=4), dict(stride=2, padding=(0, 1), dilation=(2, 1), groups=2),
])
def test_conv_transpose2d_matches_torch(th, rng, dtype, kw):
    check_against_torch(th, rng, 2, 3, 4, 8, (5, 6), (3, 2), dtype, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,kw", [
    ((1, 1), dict()), ((1, 1), dict(groups=2)), ((1, 1), dict(stride=2)),
    ((4, 4), dict(stride=2, padding=1)), ((2, 2), dict(stride=2)),
    ((1, 1), dict(dilation=(1, 2), output_padding=(0, 1))),   # 1x1, output larger than input
])
def test_conv_transpose2d_common_shapes(th, rng, dtype, kernel, kw):
    check_against_torch(th, rng, 2, 2, 4, 6, (5, 7), kernel, dtype, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_convolution_by_phases_matches_torch(th, rng, dtype):
    """The forward by output phases (forced: every phase a stride-1 direct convolution on one
    padded copy of each sample) against torch: kernels 2-5, strides 1-3, paddings from 0 to
    kernel-1, output_padding, odd sizes, channels for the row kernel and for the channel
    kernel, batch 1 and more samples than threads."""
    tested = by_channels = 0
    rules = algorithms.machine_rules()
    for k in range(2, 6):
        for s in range(1, 4):
            for p in sorted({0, k // 2, k - 1}):
                for op in sorted({0, s - 1}):
                    c_in, c_out = ((3, 5), (20, 18))[tested % 2]
                    n = (1, 5)[tested // 2 % 2]
                    x = rng.standard_normal((n, c_in, 5, 7)).astype(dtype)
                    w = rng.standard_normal((c_in, c_out, k, k + (tested % 3 == 0))).astype(dtype)
                    b = rng.standard_normal(c_out).astype(dtype)
                    sw = max(1, s - tested % 2)
                    kw = dict(stride=(s, sw), padding=p, output_padding=(op, min(op, sw - 1)))
                    geom = _conv_transpose_geometry("t", 2, x, w, kw["stride"], p,
                                                    kw["output_padding"], 1, 1)
                    if not algorithms.usable("subpixel", "transposed forward", geom, 2):
                        continue
                    by_channels += not all(algorithms.subpixel_by_rows(sub, 2, rules) for _, _, sub,
                                           _, _ in algorithms.subpixel_phases(geom, 2))
                    with F.conv_algorithms(transposed="subpixel"):
                        y = F.conv_transpose2d(x, w, b, **kw)
                    want = th.nn.functional.conv_transpose2d(
                        th.tensor(x), th.tensor(w), th.tensor(b), **kw).numpy()
                    np.testing.assert_allclose(y, want, **TOL[dtype])
                    tested += 1
    assert tested >= 30 and by_channels >= 5        # both direct kernels were tried


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(stride=2, padding=1,
                                                                output_padding=1),
                                dict(stride=1, padding=1, dilation=2)])
def test_conv_transpose2d_input_gradient_by_the_direct_convolution(th, rng, dtype, kw):
    """U-Net-sized layers: the input gradient is the convolution of dy by the same weight,
    small enough for the direct kernel where it runs (16 x 16 taps, 8 output channels)."""
    from fastcnn.functional import _conv
    check_against_torch(th, rng, 2, 3, 8, 16, (7, 6), (4, 4), dtype, **kw)
    dy = np.zeros((3, 16, 14, 12))
    geom = _conv._conv_geometry("t", 2, dy, np.zeros((8, 16, 4, 4)), 2, 1, 1, 1)
    assert algorithms.direct_ok(geom, 2, algorithms.RULES["x86-64-v4"])


@pytest.mark.parametrize("kw", [dict(), dict(stride=3, padding=1, output_padding=2, groups=2),
                                dict(dilation=3, padding=2)])
def test_conv_transpose1d_matches_torch(th, rng, kw):
    check_against_torch(th, rng, 1, 2, 4, 6, (9,), (3,), **kw)


@pytest.mark.parametrize("kw", [dict(), dict(stride=(2, 1, 2), padding=1, output_padding=(1, 0, 0)),
                                dict(groups=2, dilation=(1, 2, 1))])
def test_conv_transpose3d_matches_torch(th, rng, kw):
    check_against_torch(th, rng, 3, 2, 4, 4, (3, 4, 5), (2, 3, 2), np.float32, **kw)


@st.composite
def problems(draw, nd):
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 6)) for _ in range(nd))
    # keep the output non-empty: padding at most what the un-padded output allows
    padding = tuple(draw(st.integers(0, ((i - 1) * s + d * (k - 1) + op) // 2))
                    for i, s, d, k, op in zip(size, stride, dilation, kernel, out_pad))
    n = draw(st.integers(1, 3))
    return n, c_in, c_out, size, kernel, dict(stride=stride, padding=padding,
                                              output_padding=out_pad, dilation=dilation,
                                              groups=groups)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems(2), dtype=st.sampled_from([np.float32, np.float64]))
def test_conv_transpose2d_hypothesis(th, problem, dtype):
    n, c_in, c_out, size, kernel, kw = problem
    check_against_torch(th, np.random.default_rng(0), 2, n, c_in, c_out, size, kernel, dtype,
                        **kw)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems(3))
def test_conv_transpose3d_hypothesis(th, problem):
    n, c_in, c_out, size, kernel, kw = problem
    check_against_torch(th, np.random.default_rng(0), 3, n, c_in, c_out, size, kernel, **kw)


@pytest.mark.parametrize("nd,size,kernel,kw", [
    (1, (5,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2)),
    (2, (3, 4), (3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    (2, (3, 3), (1, 1), dict()),
    (3, (2, 3, 2), (2, 2, 2), dict(stride=2, groups=2)),
])
def test_conv_transpose_finite_differences(rng, nd, size, kernel, kw):
    groups = kw.get("groups", 1)
    x = rng.standard_normal((2, 4) + size)
    w = rng.standard_normal((4, 4 // groups) + kernel)
    b = rng.standard_normal(4)
    fwd, bwd = CONVT[nd]
    y = fwd(x, w, b, **kw)
    dy = rng.standard_normal(y.shape)
    gx, gw, gb = bwd(dy, x, w, **kw)
    assert_grad_close(gx, numerical_grad(lambda v: fwd(v, w, b, **kw), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: fwd(x, v, b, **kw), w, dy))
    assert_grad_close(gb, numerical_grad(lambda v: fwd(x, w, v, **kw), b, dy))


def test_is_adjoint_of_conv(rng):
    """<conv_transpose(x, W), z> == <x, conv(z, W)>: the defining property."""
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    y = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    z = rng.standard_normal(y.shape)
    np.testing.assert_allclose(np.sum(y * z), np.sum(x * F.conv2d(z, w, stride=2, padding=1)))


def test_noncontiguous_unbatched_and_dtypes(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((3, 4, 3, 3))
    ref = F.conv_transpose2d(x, w, stride=2)
    big = np.zeros((2, 6, 5, 12))
    big[:, ::2, :, ::2] = x
    np.testing.assert_array_equal(F.conv_transpose2d(big[:, ::2, :, ::2], np.asfortranarray(w),
                                                     stride=2), ref)
    np.testing.assert_array_equal(F.conv_transpose2d(x[1], w, stride=2), ref[1])
    dy = rng.standard_normal(ref.shape)
    full = F.conv_transpose2d_backward(dy, x, w, stride=2)
    got = F.conv_transpose2d_backward(dy[:, :, ::-1].copy()[:, :, ::-1], big[:, ::2, :, ::2], w,
                                      stride=2)
    for a, b in zip(got, full):
        np.testing.assert_array_equal(a, b)
    gx, gw, gb = F.conv_transpose2d_backward(dy[1], x[1], w, stride=2)
    assert gx.shape == x.shape[1:] and gw.shape == w.shape and gb.shape == (4,)
    assert F.conv_transpose2d(x.astype(np.int32), w.astype(np.float32)).dtype == np.float32
    with pytest.raises(TypeError, match="conv_transpose2d: input must hold real numbers"):
        F.conv_transpose2d(x.astype(complex), w)


def test_output_mask(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    dy = rng.standard_normal((2, 2, 6, 6))
    full = F.conv_transpose2d_backward(dy, x, w)
    gx, gw, gb = F.conv_transpose2d_backward(dy, x, w, output_mask=(True, False, False))
    assert gw is None and gb is None
    np.testing.assert_array_equal(gx, full[0])
    gx, gw, gb = F.conv_transpose2d_backward(dy, x, w, output_mask=(False, True, True))
    assert gx is None
    np.testing.assert_array_equal(gw, full[1])
    np.testing.assert_array_equal(gb, full[2])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(rng, nd):
    fwd, bwd = CONVT[nd]
    x = np.zeros((0, 3) + (4,) * nd, dtype=np.float32)
    w = rng.standard_normal((3, 2) + (3,) * nd).astype(np.float32)
    y = fwd(x, w, np.zeros(2, np.float32), stride=2)
    assert y.shape == (0, 2) + (9,) * nd and y.dtype == np.float32
    gx, gw, gb = bwd(y, x, w, stride=2)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0)
    np.testing.assert_array_equal(gb, 0)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (1, 1, 0), (3, 1, 1)])
@pytest.mark.parametrize("n", [1, 13])
def test_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads, kernel, stride,
                                           padding, n):
    x = rng.standard_normal((n, 8, 7, 7)).astype(np.float32)
    w = rng.standard_normal((8, 6, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)

    def compute():
        y = F.conv_transpose2d(x, w, b, stride, padding, groups=2)
        return (y,) + F.conv_transpose2d_backward(np.cos(y), x, w, stride, padding, groups=2)
    same_bits_for_1_and_2_threads(compute)


X = np.zeros((2, 4, 5, 5), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input=np.zeros((4, 8)), weight=W), ValueError, r"input must be 3 or 4-D"),
    (dict(input=X, weight=np.zeros((4, 3, 3))), ValueError, r"weight must be 4-D"),
    (dict(input=X, weight=np.zeros((3, 3, 3, 3))), ValueError, r"input has 4 channels"),
    (dict(input=X, weight=W, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(input=X, weight=W, groups=3), ValueError, r"divisible by groups = 3"),
    (dict(input=X, weight=W, stride=0), ValueError, r"stride must be a positive int"),
    (dict(input=X, weight=W, dilation=(1, 0)), ValueError, r"dilation must be"),
    (dict(input=X, weight=W, padding=-1), ValueError, r"padding must be"),
    (dict(input=X, weight=W, output_padding=1), ValueError,
     r"output_padding must be smaller than either stride or dilation"),
    (dict(input=X, weight=W, stride=2, output_padding=(1, 2)), ValueError,
     r"output_padding must be smaller"),
    (dict(input=X, weight=W, padding=4), ValueError, r"gives output size \(-1, -1\)"),
    (dict(input=X, weight=W, bias=np.zeros(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(input=X, weight=np.zeros((4, 0, 3, 3))), ValueError, r"no zero-size axis"),
    (dict(input=X.astype(object), weight=W), TypeError, r"input must hold real numbers"),
])
def test_conv_transpose2d_invalid_arguments(kwargs, exc, match):
    with pytest.raises(exc, match="conv_transpose2d: .*" + match):
        F.conv_transpose2d(**kwargs)


def test_backward_invalid_arguments():
    with pytest.raises(ValueError, match=r"conv_transpose2d_backward: grad_output must have"):
        F.conv_transpose2d_backward(np.zeros((2, 3, 6, 6)), X, W)
    with pytest.raises(TypeError, match=r"output_mask must be 3 booleans"):
        F.conv_transpose2d_backward(np.zeros((2, 3, 7, 7)), X, W, output_mask=None)


def test_subpixel_forward_is_used_for_unet_upsampling_and_agrees_with_torch(th, rng):
    from fastcnn.functional import _conv_transpose
    x = rng.standard_normal((2, 8, 16, 16))
    w = rng.standard_normal((8, 5, 4, 4))
    geom = _conv_transpose._conv_transpose_geometry("t", 2, x, w, 2, 1, 0, 1, 1)
    assert algorithms.choose("transposed forward", geom, 2, "x86-64-v4") == "subpixel"
    b = rng.standard_normal(5)
    y = F.conv_transpose2d(x, w, b, 2, 1)
    ref = th.nn.functional.conv_transpose2d(th.tensor(x), th.tensor(w), th.tensor(b), 2, 1)
    np.testing.assert_allclose(y, ref.numpy(), **TOL[np.float64])
