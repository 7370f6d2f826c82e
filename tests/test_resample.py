"""interpolate / interpolate_backward: torch agreement (values and autograd gradients) for
nearest, nearest-exact, (bi/tri)linear and area, by size and by non-integer scale factors;
finite differences, layouts, threads, invalid arguments."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_interpolate(th, x, exact=False, **kw):
    y = F.interpolate(x, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    xt = th.tensor(x, requires_grad=True)
    yt = th.nn.functional.interpolate(xt, **kw)
    yt.backward(th.tensor(dy))
    assert y.shape == tuple(yt.shape) and y.dtype == x.dtype
    tol = TOL[x.dtype.type]
    if exact:                  # nearest: the same source cells, so the same bits
        np.testing.assert_array_equal(y, yt.detach().numpy())
    else:
        np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    g = F.interpolate_backward(dy, x.shape, **kw)
    np.testing.assert_allclose(g, xt.grad.numpy(), **tol)


SIZES = {1: (11,), 2: (7, 9), 3: (4, 5, 6)}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("how", [dict(scale_factor=2), dict(scale_factor=1.7),
                                 dict(scale_factor=0.55), dict(scale_factor=3.3),
                                 dict(size=13), dict(size=4), dict(scale_factor=1.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_matches_torch(th, rng, nd, mode, how, dtype):
    x = rng.standard_normal((2, 3) + SIZES[nd]).astype(dtype)
    check_interpolate(th, x, exact=True, mode=mode, **how)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("how", [dict(scale_factor=2), dict(scale_factor=1.7),
                                 dict(scale_factor=0.45), dict(size=13), dict(size=1),
                                 dict(size=5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch(th, rng, nd, align_corners, how, dtype):
    x = rng.standard_normal((2, 3) + SIZES[nd]).astype(dtype)
    check_interpolate(th, x, mode=LINEAR[nd], align_corners=align_corners, **how)


@pytest.mark.parametrize("kw", [dict(size=(3, 13)), dict(scale_factor=(0.6, 2.5)),
                                dict(scale_factor=(1.3, 0.8), recompute_scale_factor=True)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "area"])
def test_per_axis_sizes_and_recompute(th, rng, kw, mode):
    check_interpolate(th, rng.standard_normal((2, 2, 7, 9)), exact=mode == "nearest", mode=mode,
                      **kw)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 12), w=st.integers(1, 12),
       sh=st.floats(0.3, 4.0), sw=st.floats(0.3, 4.0),
       mode=st.sampled_from(["nearest", "nearest-exact", "bilinear", "bilinear-corners"]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_interpolate2d_hypothesis(th, h, w, sh, sw, mode, dtype):
    if int(h * sh) < 1 or int(w * sw) < 1:
        return
    x = np.random.default_rng(0).standard_normal((1, 2, h, w)).astype(dtype)
    kw = dict(scale_factor=(sh, sw), mode=mode.split("-c")[0])
    if mode.startswith("bilinear"):
        kw["align_corners"] = mode.endswith("corners")
    check_interpolate(th, x, exact=mode.startswith("nearest"), **kw)


@pytest.mark.parametrize("nd,kw", [
    (1, dict(scale_factor=2.5, mode="linear")),
    (2, dict(size=(5, 7), mode="bilinear", align_corners=True)),
    (2, dict(scale_factor=0.7, mode="bilinear")),
    (3, dict(size=(3, 5, 4), mode="trilinear")),
    (2, dict(scale_factor=1.5, mode="nearest")), (3, dict(size=(2, 7, 3), mode="nearest")),
    (1, dict(size=9, mode="nearest-exact")), (2, dict(size=(2, 3), mode="area")),
])
def test_interpolate_finite_differences(rng, nd, kw):
    x = rng.standard_normal((2, 2) + SIZES[nd][:nd])
    if nd == 3:
        x = rng.standard_normal((1, 2, 3, 4, 3))
    y = F.interpolate(x, **kw)
    dy = rng.standard_normal(y.shape)
    assert_grad_close(F.interpolate_backward(dy, x.shape, **kw),
                      numerical_grad(lambda v: F.interpolate(v, **kw), x, dy))


def test_layouts_dtypes_and_empty_batch(rng):
    x = rng.standard_normal((2, 3, 6, 7))
    ref = F.interpolate(x, scale_factor=2, mode="bilinear")
    big = np.zeros((2, 6, 6, 14))
    big[:, ::2, :, ::2] = x
    np.testing.assert_array_equal(F.interpolate(big[:, ::2, :, ::2], scale_factor=2,
                                                mode="bilinear"), ref)
    np.testing.assert_array_equal(F.interpolate(np.asfortranarray(x), scale_factor=2,
                                                mode="bilinear"), ref)
    dy = np.ones_like(ref)
    np.testing.assert_array_equal(
        F.interpolate_backward(np.asfortranarray(dy), x.shape, scale_factor=2, mode="bilinear"),
        F.interpolate_backward(dy, x.shape, scale_factor=2, mode="bilinear"))
    assert F.interpolate(x.astype(np.uint8), size=3).dtype == np.float32
    assert F.interpolate(x.astype(np.float16), size=3).dtype == np.float32
    e = np.zeros((0, 3, 4, 4), np.float32)
    assert F.interpolate(e, scale_factor=2).shape == (0, 3, 8, 8)
    assert F.interpolate_backward(np.zeros((0, 3, 8, 8), np.float32), e.shape, scale_factor=2,
                                  mode="bilinear").shape == e.shape


def test_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads):
    x = rng.standard_normal((3, 5, 9, 8)).astype(np.float32)

    def compute():
        y = F.interpolate(x, scale_factor=1.7, mode="bilinear")
        z = F.interpolate(x, scale_factor=2.3)
        return [y, z,
                F.interpolate_backward(np.cos(y), x.shape, scale_factor=1.7, mode="bilinear"),
                F.interpolate_backward(np.cos(z), x.shape, scale_factor=2.3)]
    same_bits_for_1_and_2_threads(compute)


X = np.zeros((2, 3, 4, 4), np.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.interpolate(np.zeros((4, 4)), size=2), ValueError,
     r"interpolate: input must be 3 or 4 or 5-D"),
    (lambda: F.interpolate(X), ValueError, r"exactly one of size and scale_factor"),
    (lambda: F.interpolate(X, size=2, scale_factor=2), ValueError, r"exactly one of size"),
    (lambda: F.interpolate(X, size=(2, 2, 2)), TypeError, r"interpolate: size must be"),
    (lambda: F.interpolate(X, size=0), ValueError, r"interpolate: size must be a positive"),
    (lambda: F.interpolate(X, scale_factor=0), ValueError, r"scale_factor must be positive"),
    (lambda: F.interpolate(X, scale_factor=float("nan")), ValueError, r"scale_factor must be"),
    (lambda: F.interpolate(X, scale_factor="2"), TypeError, r"scale_factor must be a number"),
    (lambda: F.interpolate(X, scale_factor=(2, 2, 2)), TypeError, r"tuple of 2 numbers"),
    (lambda: F.interpolate(X, scale_factor=0.1), ValueError, r"gives output size \(0, 0\)"),
    (lambda: F.interpolate(X, size=2, mode="bicubic"), ValueError, r"mode must be one of"),
    (lambda: F.interpolate(X, size=2, mode="linear"), ValueError,
     r"got 4-D input, but linear mode needs 3-D input"),
    (lambda: F.interpolate(X, size=2, align_corners=True), ValueError,
     r"align_corners can only be set with the interpolating modes"),
    (lambda: F.interpolate(X, size=2, mode="bilinear", align_corners=1), TypeError,
     r"align_corners must be None or a bool"),
    (lambda: F.interpolate(X.astype(complex), size=2), TypeError, r"input must hold real"),
    (lambda: F.interpolate(np.zeros((2, 3, 0, 4)), size=2), ValueError, r"non-zero channel"),
    (lambda: F.interpolate_backward(np.zeros((2, 3, 3, 3)), X.shape, size=2), ValueError,
     r"interpolate_backward: grad_output must have the forward output's shape \(2, 3, 2, 2\)"),
    (lambda: F.interpolate_backward(np.zeros((2, 3, 2, 2)), 5, size=2), TypeError,
     r"interpolate_backward: input_size must be the forward input's shape"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
