"""Max / average / adaptive pooling and max unpooling: torch agreement (values, indices and
autograd gradients), finite differences, ties and NaN, layouts, threads, invalid arguments."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

FN = lambda name, nd: getattr(F, name.format(nd=nd))     # noqa: E731


def torch_run(th, fn, x, dy, *args, **kw):
    """torch's output (and indices if a tuple) and dL/dx for L = sum(out * dy)."""
    xt = th.tensor(x, requires_grad=True)
    res = fn(xt, *args, **kw)
    out = res[0] if isinstance(res, tuple) else res
    out.backward(th.tensor(dy))
    extra = res[1].numpy() if isinstance(res, tuple) else None
    return out.detach().numpy(), extra, xt.grad.numpy()


# ---- max pooling ------------------------------------------------------------------------------

def check_max_pool(th, x, nd, **kw):
    y, ind = FN("max_pool{nd}d", nd)(x, return_indices=True, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    tf = getattr(th.nn.functional, f"max_pool{nd}d")
    y_ref, i_ref, g_ref = torch_run(th, tf, x, dy, return_indices=True, **kw)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and ind.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(ind, i_ref)
    g = FN("max_pool{nd}d_backward", nd)(dy, x, ind, **kw)
    np.testing.assert_allclose(g, g_ref, **TOL[x.dtype.type])
    np.testing.assert_array_equal(FN("max_pool{nd}d", nd)(x, **kw), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=(3, 2), stride=(1, 2)),
    dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
    dict(kernel_size=(2, 4), stride=3, padding=(1, 2), dilation=(3, 1)),
    dict(kernel_size=2, stride=3, ceil_mode=True), dict(kernel_size=5, stride=1, padding=2),
])
def test_max_pool2d_matches_torch(th, rng, dtype, kw):
    check_max_pool(th, rng.standard_normal((2, 3, 9, 10)).astype(dtype), 2, **kw)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1,
                                                          ceil_mode=True, dilation=2)])
def test_max_pool1d_and_3d_match_torch(th, rng, kw):
    check_max_pool(th, rng.standard_normal((2, 3, 11)), 1, **kw)
    check_max_pool(th, rng.standard_normal((2, 2, 5, 6, 7)).astype(np.float32), 3, **kw)


def test_max_pool_ties_pick_first_index_as_torch(th, rng):
    x = rng.integers(0, 3, size=(2, 3, 8, 8)).astype(np.float32)
    check_max_pool(th, x, 2, kernel_size=3, stride=1, padding=1)
    check_max_pool(th, np.full((1, 1, 6), -np.inf), 1, kernel_size=2, padding=1)


def test_max_pool_nan_propagates_as_torch(th, rng):
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    x[0, 0, 1, 1] = x[1, 1, 5, 2] = x[1, 1, 5, 3] = np.nan
    y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    y_ref, i_ref = th.nn.functional.max_pool2d(th.tensor(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, y_ref.numpy())     # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(ind, i_ref.numpy())
    assert np.isnan(y).sum() == 8        # overlapping 3x3 windows: each NaN reaches 4 outputs


def test_max_pool_window_without_taps(th):
    """Dilation 2, padding 1 on a size-1 axis: taps at -1 and 1, none inside. torch gives -inf
    and an index one past the plane; the backward sends such an output's gradient nowhere."""
    x = np.arange(10.0).reshape(1, 2, 1, 5)
    kw = dict(kernel_size=(2, 3), stride=2, padding=(1, 0), dilation=2, ceil_mode=True)
    y, ind = F.max_pool2d(x, return_indices=True, **kw)
    y_ref, i_ref = th.nn.functional.max_pool2d(th.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(y, y_ref.numpy())
    np.testing.assert_array_equal(ind, i_ref.numpy())
    assert np.isneginf(y).all()
    np.testing.assert_array_equal(F.max_pool2d_backward(np.ones_like(y), x, ind, **kw), 0)


@st.composite
def pool_problems(draw, nd):
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    # at least the dilated kernel: smaller inputs can have windows with no tap inside
    # (see test_max_pool_window_without_taps)
    size = tuple(d * (k - 1) + 1 + draw(st.integers(0, 6)) for k, d in zip(kernel, dilation))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + size
    return shape, dict(kernel_size=kernel, stride=stride, padding=padding,
                       ceil_mode=draw(st.booleans())), dilation


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=pool_problems(2), dtype=st.sampled_from([np.float32, np.float64]))
def test_max_pool2d_hypothesis(th, problem, dtype):
    shape, kw, dilation = problem
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    check_max_pool(th, x, 2, dilation=dilation, **kw)


# ---- average pooling --------------------------------------------------------------------------

def check_avg_pool(th, x, nd, **kw):
    y = FN("avg_pool{nd}d", nd)(x, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    y_ref, _, g_ref = torch_run(th, getattr(th.nn.functional, f"avg_pool{nd}d"), x, dy, **kw)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    tol = TOL[x.dtype.type]
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(FN("avg_pool{nd}d_backward", nd)(dy, x, **kw), g_ref, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1), ceil_mode=True,
         count_include_pad=False),
    dict(kernel_size=3, padding=1, divisor_override=5), dict(kernel_size=(1, 5), stride=1),
])
def test_avg_pool2d_matches_torch(th, rng, dtype, kw):
    check_avg_pool(th, rng.standard_normal((2, 3, 9, 10)).astype(dtype), 2, **kw)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1,
                                                          ceil_mode=True,
                                                          count_include_pad=False)])
def test_avg_pool1d_and_3d_match_torch(th, rng, kw):
    check_avg_pool(th, rng.standard_normal((2, 3, 11)), 1, **kw)
    check_avg_pool(th, rng.standard_normal((2, 2, 5, 6, 7)).astype(np.float32), 3, **kw)
    check_avg_pool(th, rng.standard_normal((2, 2, 5, 6, 7)), 3, divisor_override=7, **kw)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=pool_problems(2), include_pad=st.booleans())
def test_avg_pool2d_hypothesis(th, problem, include_pad):
    shape, kw, _ = problem
    x = np.random.default_rng(0).standard_normal(shape)
    check_avg_pool(th, x, 2, count_include_pad=include_pad, **kw)


# ---- adaptive and global pooling --------------------------------------------------------------

@pytest.mark.parametrize("nd,size,out", [
    (1, (10,), 3), (1, (5,), 7), (2, (9, 10), (3, 4)), (2, (7, 7), 1), (2, (5, 6), (5, 6)),
    (2, (4, 13), (None, 5)), (2, (3, 4), (6, 9)), (3, (5, 6, 7), (2, 3, 4)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_pools_match_torch(th, rng, nd, size, out, dtype):
    x = rng.standard_normal((2, 3) + size).astype(dtype)
    tol = TOL[dtype]
    y = FN("adaptive_avg_pool{nd}d", nd)(x, out)
    dy = rng.standard_normal(y.shape).astype(dtype)
    tf = getattr(th.nn.functional, f"adaptive_avg_pool{nd}d")
    y_ref, _, g_ref = torch_run(th, tf, x, dy, out)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(FN("adaptive_avg_pool{nd}d_backward", nd)(dy, x), g_ref, **tol)
    y, ind = FN("adaptive_max_pool{nd}d", nd)(x, out, return_indices=True)
    tf = getattr(th.nn.functional, f"adaptive_max_pool{nd}d")
    y_ref, i_ref, g_ref = torch_run(th, tf, x, dy, out, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(ind, i_ref)
    np.testing.assert_allclose(FN("adaptive_max_pool{nd}d_backward", nd)(dy, x, ind), g_ref,
                               **tol)


def test_global_avg_pool2d(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    y = F.global_avg_pool2d(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3), keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(y, F.adaptive_avg_pool2d(x, 1))
    g = F.global_avg_pool2d_backward(np.ones_like(y), x)
    np.testing.assert_allclose(g, np.full(x.shape, 1 / 30), rtol=1e-12)


# ---- max unpooling ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,kw,output_size", [
    ((10, 12), dict(kernel_size=2), None), ((9, 11), dict(kernel_size=3, stride=2, padding=1), None),
    ((9, 11), dict(kernel_size=3, stride=2, padding=1), (10, 11)),
    ((9, 11), dict(kernel_size=3, stride=2), (2, 3, 10, 11)),
    ((10,), dict(kernel_size=2), None), ((6, 6, 8), dict(kernel_size=2), (7, 7, 8)),
])
def test_max_unpool_matches_torch(th, rng, size, kw, output_size):
    nd = len(size)
    x = rng.standard_normal((2, 3) + size)
    y, ind = FN("max_pool{nd}d", nd)(x, return_indices=True, **kw)
    u = FN("max_unpool{nd}d", nd)(y, ind, output_size=output_size, **kw)
    du = rng.standard_normal(u.shape)
    tf = getattr(th.nn.functional, f"max_unpool{nd}d")
    u_ref, _, g_ref = torch_run(th, tf, y, du, th.tensor(ind), output_size=output_size, **kw)
    np.testing.assert_array_equal(u, u_ref)
    g = FN("max_unpool{nd}d_backward", nd)(du, y, ind, output_size=output_size, **kw)
    np.testing.assert_array_equal(g, g_ref)


def test_max_unpool_bad_indices_raise_not_crash():
    x = np.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"max_unpool2d: indices hold 2 value\(s\) outside "
                                         r"\[0, 16\)"):
        F.max_unpool2d(x, np.array([[[[0, 16], [-1, 3]]]]), 2)
    with pytest.raises(ValueError, match=r"max_unpool2d_backward: indices hold 1 value"):
        F.max_unpool2d_backward(np.ones((1, 1, 4, 4)), x, np.array([[[[0, 1], [99, 3]]]]), 2)
    # max_pool's backward skips indices outside the plane (see the test above), no crash
    g = F.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 4, 4)),
                              np.array([[[[0, 1], [2**40, -3]]]]), 2)
    np.testing.assert_array_equal(g.reshape(-1), [1, 1] + [0] * 14)
    with pytest.raises(TypeError, match=r"max_unpool2d: indices must hold integers"):
        F.max_unpool2d(x, np.zeros((1, 1, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match=r"max_unpool2d: indices must have the input's shape"):
        F.max_unpool2d(x, np.zeros((1, 1, 2, 3), np.int64), 2)
    with pytest.raises(ValueError, match=r"output_size \(6, 4\) must be within stride"):
        F.max_unpool2d(x, np.zeros((1, 1, 2, 2), np.int64), 2, output_size=(6, 4))


# ---- finite differences (float64, no torch) ---------------------------------------------------

def _distinct(rng, shape):
    """Values far apart (no near-ties), so that the max is differentiable at them."""
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.1 + 0.01 * rng.random(shape)


@pytest.mark.parametrize("name,nd,kw", [
    ("max_pool{nd}d", 2, dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
    ("max_pool{nd}d", 1, dict(kernel_size=2, dilation=2)),
    ("max_pool{nd}d", 3, dict(kernel_size=2, stride=1)),
    ("avg_pool{nd}d", 2, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                              count_include_pad=False)),
    ("avg_pool{nd}d", 2, dict(kernel_size=2, divisor_override=3)),
    ("avg_pool{nd}d", 1, dict(kernel_size=3, padding=1)),
    ("avg_pool{nd}d", 3, dict(kernel_size=2, ceil_mode=True)),
])
def test_pool_finite_differences(rng, name, nd, kw):
    x = _distinct(rng, (2, 2) + (5, 6, 4)[:nd])
    fwd = FN(name, nd)
    y = fwd(x, **kw)
    dy = rng.standard_normal(y.shape)
    if name.startswith("max"):
        _, ind = fwd(x, return_indices=True, **kw)
        g = FN(name + "_backward", nd)(dy, x, ind, **kw)
    else:
        g = FN(name + "_backward", nd)(dy, x, **kw)
    assert_grad_close(g, numerical_grad(lambda v: fwd(v, **kw), x, dy, eps=1e-4))


@pytest.mark.parametrize("nd,out", [(1, 3), (2, (3, 4)), (3, 2)])
def test_adaptive_and_unpool_finite_differences(rng, nd, out):
    x = _distinct(rng, (2, 2) + (5, 7, 6)[:nd])
    y = FN("adaptive_avg_pool{nd}d", nd)(x, out)
    dy = rng.standard_normal(y.shape)
    assert_grad_close(FN("adaptive_avg_pool{nd}d_backward", nd)(dy, x),
                      numerical_grad(lambda v: FN("adaptive_avg_pool{nd}d", nd)(v, out), x, dy))
    y, ind = FN("adaptive_max_pool{nd}d", nd)(x, out, return_indices=True)
    assert_grad_close(FN("adaptive_max_pool{nd}d_backward", nd)(dy, x, ind),
                      numerical_grad(lambda v: FN("adaptive_max_pool{nd}d", nd)(v, out), x, dy,
                                     eps=1e-4))
    p, ind = FN("max_pool{nd}d", nd)(x, 2, return_indices=True)
    size = x.shape[2:]                  # odd sizes: the default unpooled size is smaller
    u = FN("max_unpool{nd}d", nd)(p, ind, 2, output_size=size)
    du = rng.standard_normal(u.shape)
    assert_grad_close(FN("max_unpool{nd}d_backward", nd)(du, p, ind, 2, output_size=size),
                      numerical_grad(lambda v: FN("max_unpool{nd}d", nd)(v, ind, 2,
                                                                         output_size=size),
                                     p, du))
    assert_grad_close(F.global_avg_pool2d_backward(np.ones((2, 2, 1, 1)), x.reshape(2, 2, -1, 1)
                                                   if nd == 1 else x[..., 0] if nd == 3 else x),
                      numerical_grad(F.global_avg_pool2d, x.reshape(2, 2, -1, 1) if nd == 1
                                     else x[..., 0] if nd == 3 else x, np.ones((2, 2, 1, 1))))


# ---- layouts, empty batch, threads ------------------------------------------------------------

ALL_OPS = [
    ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True)),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 5))),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (3, 5), return_indices=True)),
]


@pytest.mark.parametrize("name,op", ALL_OPS)
def test_noncontiguous_unbatched_and_dtypes(rng, name, op):
    x = rng.standard_normal((2, 3, 9, 10))
    ref = op(x)
    big = np.zeros((2, 6, 9, 20))
    big[:, ::2, :, ::2] = x
    for variant in (big[:, ::2, :, ::2], np.asfortranarray(x), x[:, :, ::-1].copy()[:, :, ::-1]):
        got = op(variant)
        for a, b in zip(got if isinstance(got, tuple) else [got],
                        ref if isinstance(ref, tuple) else [ref]):
            np.testing.assert_array_equal(a, b)
    unb = op(x[1])
    for a, b in zip(unb if isinstance(unb, tuple) else [unb],
                    ref if isinstance(ref, tuple) else [ref]):
        np.testing.assert_array_equal(a, b[1])
    y = op(x.astype(np.int16))
    assert (y[0] if isinstance(y, tuple) else y).dtype == np.float32
    with pytest.raises(TypeError, match=f"{name}: input must hold real numbers"):
        op(x.astype(np.complex64))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(nd):
    x = np.zeros((0, 3) + (6,) * nd, np.float32)
    y, ind = FN("max_pool{nd}d", nd)(x, 2, return_indices=True)
    assert y.shape == ind.shape == (0, 3) + (3,) * nd and y.dtype == np.float32
    assert FN("max_pool{nd}d_backward", nd)(y, x, ind, 2).shape == x.shape
    assert FN("avg_pool{nd}d_backward", nd)(y, x, 2).shape == x.shape
    assert FN("adaptive_avg_pool{nd}d_backward", nd)(y, x).shape == x.shape
    assert FN("adaptive_max_pool{nd}d", nd)(x, 2).shape == (0, 3) + (2,) * nd
    assert FN("max_unpool{nd}d", nd)(y, ind, 2).shape == x.shape
    assert FN("max_unpool{nd}d_backward", nd)(x, y, ind, 2).shape == y.shape


def test_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads):
    x = rng.standard_normal((5, 7, 13, 12)).astype(np.float32)
    dy = rng.standard_normal((5, 7, 7, 6)).astype(np.float32)
    dy2 = rng.standard_normal((5, 7, 6, 6)).astype(np.float32)

    def compute():
        y, ind = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        y2, ind2 = F.max_pool2d(x, 2, return_indices=True)            # the 2x2 loops
        return [y, ind, F.max_pool2d_backward(dy, x, ind, 3, 2, 1), y2, ind2,
                F.max_pool2d_backward(dy2, x, ind2, 2), F.avg_pool2d(x, 2),
                F.avg_pool2d_backward(dy2, x, 2), F.avg_pool2d(x, 3, 2, 1),
                F.avg_pool2d_backward(dy, x, 3, 2, 1), F.adaptive_avg_pool2d_backward(dy, x),
                F.max_unpool2d(y, ind, 3, 2, 1, (13, 12)), F.adaptive_max_pool2d(x, (7, 6))]
    same_bits_for_1_and_2_threads(compute)


# ---- invalid arguments ------------------------------------------------------------------------

X = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.max_pool2d(np.zeros((8, 8)), 2), ValueError,
     r"max_pool2d: input must be 3 or 4-D"),
    (lambda: F.max_pool2d(np.zeros((2, 0, 8, 8)), 2), ValueError,
     r"max_pool2d: input must have non-zero channel and spatial sizes"),
    (lambda: F.max_pool2d(X, 0), ValueError, r"max_pool2d: kernel_size must be a positive"),
    (lambda: F.max_pool2d(X, (2, 2, 2)), TypeError, r"max_pool2d: kernel_size must be"),
    (lambda: F.max_pool2d(X, 2, stride=0), ValueError, r"max_pool2d: stride must be"),
    (lambda: F.max_pool2d(X, 2, dilation=-1), ValueError, r"max_pool2d: dilation must be"),
    (lambda: F.max_pool2d(X, 2, padding=2), ValueError,
     r"max_pool2d: padding must be at most half of kernel_size.*padding=\(2, 2\)"),
    (lambda: F.max_pool2d(X, 9), ValueError, r"max_pool2d: input spatial size \(8, 8\) is too "
                                             r"small.*would be \(0, 0\)"),
    (lambda: F.max_pool2d(X, 2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    (lambda: F.max_pool2d(X.astype(object), 2), TypeError, r"input must hold real numbers"),
    (lambda: F.avg_pool2d(X, 3, padding=2), ValueError, r"avg_pool2d: padding must be at most"),
    (lambda: F.avg_pool2d(X, 3, divisor_override=0), ValueError,
     r"avg_pool2d: divisor_override must be >= 1, got 0"),
    (lambda: F.avg_pool1d(X, 2), ValueError, r"avg_pool1d: input must be 2 or 3-D"),
    (lambda: F.adaptive_avg_pool2d(X, 0), ValueError, r"adaptive_avg_pool2d: output_size"),
    (lambda: F.adaptive_max_pool2d(X, (2, 2, 2)), TypeError, r"adaptive_max_pool2d: output_size"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 3, 3)), X, np.zeros((2, 3, 4, 4), int), 2),
     ValueError, r"max_pool2d_backward: grad_output must have the forward output's shape"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4)), X, np.zeros((2, 3, 4, 4)), 2),
     TypeError, r"max_pool2d_backward: indices must hold integers"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4)), X, None, 2),
     TypeError, r"max_pool2d_backward: indices must be an int64 array"),
    (lambda: F.avg_pool2d_backward(np.zeros((2, 3, 3, 4)), X, 2), ValueError,
     r"avg_pool2d_backward: grad_output must have"),
    (lambda: F.adaptive_max_pool2d_backward(np.zeros((2, 4, 3, 3)), X, np.zeros((2, 4, 3, 3),
                                                                                int)),
     ValueError, r"adaptive_max_pool2d_backward: grad_output must have shape"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 10, 10), (2, 3, 7, 9), (1, 1, 2, 2), (2, 5, 28, 28),
                                   (2, 6, 8, 8), (1, 3, 6, 26), (1, 2, 4, 32)])
def test_max_pool_2x2_fast_path_equals_the_general_kernel(monkeypatch, dtype, shape):
    """The branch-free 2x2 stride-2 kernel (integer keys of the bit patterns) gives the general
    kernel's maxima bit for bit (the sign of a zero maximum included) and its offsets: ties
    (the first maximum), -0 against +0, infinities, all -inf windows, NaNs (the last one) and
    odd sizes (the last row and column left out); rows of every part of the kernel's loop (a
    multiple of 8 outputs, groups of 4, one by one: 16, 13 = 8 + 4 + 1, 5, 4, 1 outputs);
    the maxima alone (without the offsets) the same bits."""
    from fastcnn.functional import _pool
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, shape).astype(dtype)          # many ties
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    mask = rng.random(shape) < 0.15
    x[mask] = rng.choice(specials, mask.sum())
    x[0, 0, :2, :2] = -np.inf                              # a window of -inf only
    if shape[-1] >= 4:
        x[0, 0, :2, 2:4] = ((-0.0, 0.0), (0.0, -0.0))      # equal zeros: the first one
    fast = F.max_pool2d(x, 2, return_indices=True)
    assert F.max_pool2d(x, 2).tobytes() == fast[0].tobytes()
    monkeypatch.setattr(_pool, "_two_by_two", lambda *args: False)
    slow = F.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(fast[1], slow[1])
    assert fast[0].tobytes() == slow[0].tobytes()
    assert np.isnan(fast[0]).any() or x.size == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd,kw", [(2, dict(kernel_size=3, stride=2, padding=1)),
                                   (2, dict(kernel_size=(2, 3), stride=(1, 2), dilation=2)),
                                   (3, dict(kernel_size=2, stride=1, padding=1)),
                                   (1, dict(kernel_size=4, stride=3, padding=2))])
def test_max_pool_row_sweeps_equal_window_by_window(monkeypatch, dtype, nd, kw):
    """The interior rows' branch-free sweeps (_pool.h fc_max_row) give the maxima and offsets
    of the one-window-at-a-time path, bit for bit, with ties, zeros, infinities and NaNs."""
    from fastcnn.functional import _pool
    rng = np.random.default_rng(8)
    shape = (2, 3) + (9, 11, 13)[3 - nd:]
    x = rng.integers(-2, 3, shape).astype(dtype)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    mask = rng.random(shape) < 0.1
    x[mask] = rng.choice(specials, mask.sum())
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    rows = pool(x, return_indices=True, **kw)
    monkeypatch.setattr(_pool, "_interior", lambda *args: _pool._NO_INTERIOR)
    windows = pool(x, return_indices=True, **kw)
    np.testing.assert_array_equal(rows[1], windows[1])
    assert rows[0].tobytes() == windows[0].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 10, 10), (2, 3, 7, 9), (1, 1, 2, 2)])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_avg_pool_2x2_fast_path_equals_the_general_kernel(monkeypatch, dtype, shape,
                                                          divisor_override):
    """The 2x2 stride-2 loops of _pool.h give the general kernel's bits, forward and backward
    (odd sizes: the uncovered row and column get no gradient), and nearest upsampling's
    backward (a sum pool) too."""
    from fastcnn.functional import _pool
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 0, :2] = -0.0
    dy = rng.standard_normal(shape[:2] + (shape[2] // 2, shape[3] // 2)).astype(dtype)
    up = rng.standard_normal(shape[:2] + (shape[2] * 2, shape[3] * 2)).astype(dtype)
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(_pool, "_two_by_two", lambda *args: False)
        runs.append([F.avg_pool2d(x, 2, divisor_override=divisor_override),
                     F.avg_pool2d_backward(dy, x, 2, divisor_override=divisor_override),
                     F.interpolate_backward(up, shape, scale_factor=2)])
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7, 8, 8), (2, 8, 3, 5), (1, 1, 1, 1), (0, 3, 4, 4),
                                   (13, 6, 6), (3, 24, 17, 2)])
def test_global_avg_pool_direct_loop_equals_the_adaptive_pooling(dtype, shape):
    """global_avg_pool2d's own loop (several planes' sums at once) gives adaptive_avg_pool2d's
    bits forward and backward (a -0 gradient included: 0 + g), for any thread count, and
    plane counts that are and are not multiples of its block; errors name the function."""
    from fastcnn._threads import set_num_threads, get_num_threads
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3, shape)).astype(dtype)
    dy = rng.standard_normal(shape[:-2] + (1, 1)).astype(dtype)
    if dy.size:
        dy.flat[0] = -0.0
    want = F.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d_backward(dy, x)
    before = get_num_threads()
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            got = F.global_avg_pool2d(x), F.global_avg_pool2d_backward(dy, x)
            for a, b in zip(got, want):
                assert a.shape == b.shape and a.dtype == b.dtype
                assert a.tobytes() == b.tobytes()
    finally:
        set_num_threads(before)
    if dy.size:
        assert not np.signbit(F.global_avg_pool2d_backward(dy, x).reshape(-1)[0])
    with pytest.raises(ValueError, match="global_avg_pool2d_backward: grad_output must have"):
        F.global_avg_pool2d_backward(np.zeros(shape[:-2] + (2, 1), dtype), x)
    with pytest.raises(ValueError, match="global_avg_pool2d: input must be"):
        F.global_avg_pool2d(np.zeros((2, 3), dtype))
