"""batch/layer/group/instance norm: torch agreement (values, gradients, running stats), finite
differences, numerical edge cases, thread determinism, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

SHAPES = [(5, 3), (4, 3, 7), (2, 3, 5, 6), (2, 3, 3, 4, 2)]


def _t(th, a, grad=True):
    return None if a is None else th.tensor(a, requires_grad=grad)


def _grads(*tensors):
    return [None if t is None else t.grad.numpy() for t in tensors]


def _close(got, ref, dtype):
    if ref is None:
        assert got is None
    else:
        np.testing.assert_allclose(got, ref, **TOL[dtype])


# ---- batch norm -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_torch(th, rng, dtype, shape, training, affine):
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype) * 3 + 1
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm = rng.standard_normal(c).astype(dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    trm, trv = th.tensor(rm), th.tensor(rv)     # copies: both sides update their own
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
    ty = th.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=0.3)
    ty.backward(th.tensor(dy))
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3)
    assert y.dtype == dtype and y.shape == shape
    _close(y, ty.detach().numpy(), dtype)
    _close(rm, trm.numpy(), dtype)
    _close(rv, trv.numpy(), dtype)
    if training:   # running stats were updated: use the pre-update ones for nothing below
        grads = F.batch_norm_backward(dy, x, w, training=True)
    else:
        grads = F.batch_norm_backward(dy, x, w, rm, rv, training=False)
    for got, ref in zip(grads, _grads(tx, tw, tb)):
        _close(got, ref, dtype)


def test_batch_norm_saved_stats_skip_a_pass(rng):
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal(x.shape)
    w = rng.standard_normal(3)
    y, mean, invstd = F.batch_norm(x, None, None, w, None, training=True, return_stats=True)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(invstd, 1 / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5))
    ref = F.batch_norm_backward(dy, x, w)
    got = F.batch_norm_backward(dy, x, w, save_mean=mean, save_invstd=invstd)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_batch_norm_cumulative_moving_average(th, rng):
    c = 4
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    count = np.zeros((), np.int64)
    bn = th.nn.BatchNorm2d(c, momentum=None)
    for _ in range(3):
        x = rng.standard_normal((3, c, 4, 4)).astype(np.float32) * 2 + 5
        F.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=count)
        bn(th.tensor(x))
    assert int(count) == 3 == int(bn.num_batches_tracked)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    count2 = np.zeros(1, np.int32)
    F.batch_norm(x, rm, rv, training=True, momentum=0.1, num_batches_tracked=count2)
    assert count2[0] == 1
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        F.batch_norm(x, rm, rv, training=True, momentum=None)


def test_batch_norm_large_mean_float32(rng):
    """1e4 + unit noise in float32: the statistics (double, shifted) lose nothing."""
    x = (1e4 + rng.standard_normal((8, 3, 16, 16))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    ref = (x64 - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    y = F.batch_norm(x, None, None, training=True)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5)
    rm, rv = np.full(3, 1e4, np.float32), np.ones(3, np.float32)
    y = F.batch_norm(x, rm, rv, training=False)
    np.testing.assert_allclose(y, (x64 - 1e4) / np.sqrt(1 + 1e-5), atol=2e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gx, gw, gb = F.batch_norm_backward(dy, x, np.ones(3, np.float32))
    gx64, gw64, gb64 = F.batch_norm_backward(dy.astype(np.float64), x64, np.ones(3))
    np.testing.assert_allclose(gx, gx64, rtol=0, atol=1e-4)
    np.testing.assert_allclose(gw, gw64, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_batch_norm_finite_differences(rng, training, activation):
    x = rng.standard_normal((3, 2, 3, 2))
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    rm, rv = rng.standard_normal(2), rng.random(2) + 0.5
    dy = rng.standard_normal(x.shape)

    def f(xv=x, wv=w, bv=b):
        return F.batch_norm(xv, rm.copy(), rv.copy(), wv, bv, training=training,
                            activation=activation)

    gx, gw, gb = F.batch_norm_backward(dy, x, w, rm, rv, training=training, bias=b,
                                       activation=activation)
    assert_grad_close(gx, numerical_grad(lambda v: f(xv=v), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: f(wv=v), w, dy))
    assert_grad_close(gb, numerical_grad(lambda v: f(bv=v), b, dy))


# ---- batch norm with a fused ReLU ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 5, 7, 6), (3, 6), (2, 3, 9), (2, 4, 3, 2, 5)])
def test_batch_norm_relu_is_relu_of_batch_norm_bit_for_bit(rng, dtype, training, affine, shape):
    """activation="relu": the same bits as batch norm then relu, forward and every gradient
    (the mask recomputed from x in the backward agrees exactly with the forward's y > 0)."""
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, mean, invstd = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training,
                                   return_stats=True, activation="relu")
    z = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training)
    np.testing.assert_array_equal(y, F.relu(z))
    saved = dict(save_mean=mean, save_invstd=invstd) if training else {}
    fused = F.batch_norm_backward(dy, x, w, rm, rv, training=training, bias=b,
                                  activation="relu", **saved)
    plain = F.batch_norm_backward(F.relu_backward(dy, z), x, w, rm, rv, training=training,
                                  **saved)
    for got, want in zip(fused, plain):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)
    only_w = F.batch_norm_backward(dy, x, w, rm, rv, training=training, bias=b,
                                   activation="relu", output_mask=(False, True, True), **saved)
    for got, want in zip(only_w[1:], plain[1:]):
        if want is not None:
            np.testing.assert_array_equal(got, want)


def test_batch_norm_relu_matches_torch(th, rng):
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    w, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    tx = th.tensor(x, requires_grad=True)
    tw, tb = th.tensor(w, requires_grad=True), th.tensor(b, requires_grad=True)
    ty = th.relu(th.nn.functional.batch_norm(tx, None, None, tw, tb, training=True))
    ty.backward(th.tensor(dy))
    y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True,
                                   activation="relu")
    gx, gw, gb = F.batch_norm_backward(dy, x, w, save_mean=mean, save_invstd=invstd, bias=b,
                                       activation="relu")
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[np.float32])
    for got, want in ((gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_batch_norm_relu_keeps_nan():
    x = np.ones((2, 1, 3), np.float32)
    x[0, 0, 1] = np.nan
    y = F.batch_norm(x, np.zeros(1, np.float32), np.ones(1, np.float32), activation="relu")
    assert np.isnan(y[0, 0, 1]) and not np.isnan(y[1]).any()


# ---- layer / group / instance norm --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,normalized", [
    ((4, 10), 10), ((2, 3, 8), (8,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4, 5), (3, 4, 5)),
    ((7,), (7,)),
])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, True), (False, False)])
def test_layer_norm_matches_torch(th, rng, dtype, shape, normalized, affine):
    ns = (normalized,) if isinstance(normalized, int) else normalized
    x = rng.standard_normal(shape).astype(dtype) * 2 - 1
    w = rng.standard_normal(ns).astype(dtype) if affine[0] else None
    b = rng.standard_normal(ns).astype(dtype) if affine[1] else None
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
    ty = th.nn.functional.layer_norm(tx, ns, tw, tb, eps=1e-4)
    ty.backward(th.tensor(dy))
    _close(F.layer_norm(x, normalized, w, b, eps=1e-4), ty.detach().numpy(), dtype)
    for got, ref in zip(F.layer_norm_backward(dy, x, normalized, w, b, eps=1e-4),
                        _grads(tx, tw, tb)):
        _close(got, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,groups", [
    ((2, 6), 3), ((2, 6, 5), 2), ((3, 8, 4, 4), 4), ((2, 8, 3, 3), 8), ((2, 4, 3, 2, 2), 1),
])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(th, rng, dtype, shape, groups, affine):
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype) + 2
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
    ty = th.nn.functional.group_norm(tx, groups, tw, tb)
    ty.backward(th.tensor(dy))
    _close(F.group_norm(x, groups, w, b), ty.detach().numpy(), dtype)
    for got, ref in zip(F.group_norm_backward(dy, x, groups, w, b), _grads(tx, tw, tb)):
        _close(got, ref, dtype)


def test_group_norm_common_case_and_checked_path_give_the_same_bits(rng):
    """group_norm's one-pass check of the common case (contiguous arrays of one float dtype, an
    int, a float) and the general checks it falls back on run the same kernel: the same bits
    for the same values in Fortran order, as a strided view, a list (of float32 values), a
    numpy int or a numpy float."""
    x = rng.standard_normal((3, 8, 5, 4)).astype(np.float32)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    fast = F.group_norm(x, 4, w, b, eps=1e-3)
    strided = np.empty((3, 16, 5, 4), np.float32)[:, ::2]
    strided[...] = x
    for args, kwargs in [((np.asfortranarray(x), 4, w, b), {"eps": 1e-3}),
                         ((strided, 4, w.tolist(), b), {"eps": 1e-3}),
                         ((x, np.int64(4), w, b), {"eps": 1e-3}),
                         ((x, 4, w, b[None, :][0][::1].copy()), {"eps": np.float64(1e-3)})]:
        np.testing.assert_array_equal(F.group_norm(*args, **kwargs), fast)
    np.testing.assert_array_equal(F.group_norm(x, 4), F.group_norm(x, 4, None, None, 1e-5))
    with pytest.raises(TypeError, match="num_groups"):
        F.group_norm(x, 4.0, w, b)
    with pytest.raises(ValueError, match="must divide"):
        F.group_norm(x, 3, w, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
@pytest.mark.parametrize("use_input_stats,running", [(True, True), (True, False), (False, True)])
def test_instance_norm_matches_torch(th, rng, dtype, shape, use_input_stats, running):
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype) if running else None
    rv = (rng.random(c) + 0.5).astype(dtype) if running else None
    trm = None if rm is None else th.tensor(rm)
    trv = None if rv is None else th.tensor(rv)
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
    ty = th.nn.functional.instance_norm(tx, trm, trv, tw, tb, use_input_stats, momentum=0.2)
    ty.backward(th.tensor(dy))
    if rm is not None:
        rm0, rv0 = rm.copy(), rv.copy()
    y = F.instance_norm(x, rm, rv, w, b, use_input_stats, momentum=0.2)
    _close(y, ty.detach().numpy(), dtype)
    if rm is not None:
        _close(rm, trm.numpy(), dtype)
        _close(rv, trv.numpy(), dtype)
        rm, rv = rm0, rv0
    grads = F.instance_norm_backward(dy, x, rm, rv, w, b, use_input_stats)
    for got, ref in zip(grads, _grads(tx, tw, tb)):
        _close(got, ref, dtype)


@st.composite
def norm_problems(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(1, 2))))
    return (n, c) + spatial, groups


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=norm_problems(), dtype=st.sampled_from([np.float32, np.float64]))
def test_norms_hypothesis(th, problem, dtype):
    shape, groups = problem
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == np.float32 else TOL[dtype]
    if np.prod(shape) // groups > 1:   # torch refuses a single value per (batch, group)
        tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
        ty = th.nn.functional.group_norm(tx, groups, tw, tb)
        ty.backward(th.tensor(dy))
        np.testing.assert_allclose(F.group_norm(x, groups, w, b), ty.detach(), **tol)
        for got, ref in zip(F.group_norm_backward(dy, x, groups, w, b), _grads(tx, tw, tb)):
            np.testing.assert_allclose(got, ref, **tol)
    if np.prod(shape) // c > 1:
        tx, tw, tb = _t(th, x), _t(th, w), _t(th, b)
        ty = th.nn.functional.batch_norm(tx, None, None, tw, tb, training=True)
        ty.backward(th.tensor(dy))
        np.testing.assert_allclose(F.batch_norm(x, None, None, w, b, training=True),
                                   ty.detach(), **tol)
        for got, ref in zip(F.batch_norm_backward(dy, x, w), _grads(tx, tw, tb)):
            np.testing.assert_allclose(got, ref, **tol)


@pytest.mark.parametrize("which", ["layer", "group", "instance"])
def test_row_norms_finite_differences(rng, which):
    x = rng.standard_normal((2, 4, 3, 2))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    dy = rng.standard_normal(x.shape)
    if which == "layer":
        w, b = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))

        def f(xv=x, wv=w, bv=b):
            return F.layer_norm(xv, (3, 2), wv, bv)
        grads = F.layer_norm_backward(dy, x, (3, 2), w, b)
    elif which == "group":
        def f(xv=x, wv=w, bv=b):
            return F.group_norm(xv, 2, wv, bv)
        grads = F.group_norm_backward(dy, x, 2, w, b)
    else:
        def f(xv=x, wv=w, bv=b):
            return F.instance_norm(xv, None, None, wv, bv)
        grads = F.instance_norm_backward(dy, x, None, None, w, b)
    assert_grad_close(grads[0], numerical_grad(lambda v: f(xv=v), x, dy))
    assert_grad_close(grads[1], numerical_grad(lambda v: f(wv=v), w, dy))
    assert_grad_close(grads[2], numerical_grad(lambda v: f(bv=v), b, dy))


# ---- edge cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_input_has_zero_variance(dtype):
    x = np.full((3, 4, 5, 5), 7.25, dtype)
    dy = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    w = np.ones(4, dtype)
    for y in (F.batch_norm(x, None, None, training=True), F.layer_norm(x, (4, 5, 5)),
              F.group_norm(x, 2), F.instance_norm(x)):
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, 0)
    for gx, *_ in (F.batch_norm_backward(dy, x, w), F.layer_norm_backward(dy, x, (5, 5)),
                   F.group_norm_backward(dy, x, 2, w), F.instance_norm_backward(dy, x)):
        assert np.isfinite(gx).all()
    rv = np.ones(4, dtype)
    F.batch_norm(x, np.zeros(4, dtype), rv, training=True, momentum=1.0)
    np.testing.assert_array_equal(rv, 0)


def test_large_mean_row_norms_float32(rng):
    x = (1e4 + rng.standard_normal((4, 6, 8, 8))).astype(np.float32)
    x64 = x.astype(np.float64)
    m, v = x64.mean(axis=(1, 2, 3), keepdims=True), x64.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(F.layer_norm(x, (6, 8, 8)), (x64 - m) / np.sqrt(v + 1e-5),
                               atol=2e-5)
    g = x64.reshape(4, 3, -1)
    ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5))
    np.testing.assert_allclose(F.group_norm(x, 3), ref.reshape(x.shape), atol=2e-5)


def test_unusual_layouts_and_dtypes(rng):
    x = rng.standard_normal((4, 6, 5))
    ref = F.group_norm(x, 3)
    np.testing.assert_array_equal(F.group_norm(np.asfortranarray(x), 3), ref)
    big = np.zeros((8, 6, 10))
    big[::2, :, ::2] = x
    np.testing.assert_array_equal(F.group_norm(big[::2, :, ::2], 3), ref)
    xi = rng.integers(0, 9, (4, 3, 5))
    assert F.batch_norm(xi, None, None, training=True).dtype == np.float32
    assert F.layer_norm(xi, 5).dtype == np.float32
    assert F.batch_norm(x.astype(np.float32), None, None, training=True).dtype == np.float32


def test_empty_batch_row_norms():
    for empty in (np.zeros((2, 4, 0), np.float32), np.zeros((2, 4, 0, 3))):
        assert F.group_norm(empty, 2).shape == empty.shape
        assert F.group_norm_backward(empty, empty, 2)[0].shape == empty.shape
        assert F.batch_norm(empty, np.zeros(4), np.ones(4)).shape == empty.shape
    x = np.zeros((0, 4, 3), np.float32)
    assert F.layer_norm(x, 3).shape == x.shape
    assert F.group_norm(x, 2).shape == x.shape
    gx, gw, gb = F.group_norm_backward(x, x, 2, np.ones(4), np.ones(4))
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0)


@pytest.mark.parametrize("n", [1, 3, 17])
def test_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads, n):
    x = (rng.standard_normal((n, 8, 9, 7)) * 3 + 2).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)

    def compute():
        rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
        return [F.batch_norm(x, rm, rv, w, b, training=True), rm, rv,
                *F.batch_norm_backward(dy, x, w),
                *F.batch_norm_backward(dy, x, w, rm, rv, training=False),
                F.batch_norm(x, None, None, w, b, training=True, activation="relu"),
                *F.batch_norm_backward(dy, x, w, bias=b, activation="relu"),
                F.layer_norm(x, (9, 7)), *F.layer_norm_backward(dy, x, (9, 7), x[0, 0], x[0, 1]),
                F.group_norm(x, 4, w, b), *F.group_norm_backward(dy, x, 4, w, b),
                F.instance_norm(x, None, None, w, b),
                *F.instance_norm_backward(dy, x, None, None, w, b)]
    same_bits_for_1_and_2_threads(compute)


def test_batch_norm_channel_blocks_match_float64_for_any_thread_count(rng, threads):
    """Training's batch norm runs blocks of channels (about 512 KiB of input each, at most
    C / threads channels): here 9 + 4 channels forward and 4 + 4 + 4 + 1 backward on 1 thread,
    7 + 6 and 4 + 3 + 3 + 3 on 2, 5 + 5 + 3 and 4 + 4 + 4 + 1 on 3. Each blocking must give the
    same bits, within float32 rounding of the float64 formulas."""
    n, c, h, w_ = 3, 13, 48, 100
    x = (rng.standard_normal((n, c, h, w_)) * 2 + rng.standard_normal((1, c, 1, 1))).astype(
        np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    runs = []
    for t in (1, 2, 3):
        threads(t)
        y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True,
                                       activation="relu")
        grads = F.batch_norm_backward(dy, x, w, save_mean=mean, save_invstd=invstd, bias=b,
                                      activation="relu")
        runs.append([y, mean, invstd, *grads])
    for other in runs[1:]:
        for a, o in zip(runs[0], other):
            np.testing.assert_array_equal(a, o)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    axes, m = (0, 2, 3), n * h * w_
    mu = x64.mean(axis=axes, keepdims=True)
    rs = 1 / np.sqrt(x64.var(axis=axes, keepdims=True) + 1e-5)
    xhat = (x64 - mu) * rs
    pre = xhat * w.reshape(1, c, 1, 1) + b.reshape(1, c, 1, 1)
    g = np.where(pre > 0, dy64, 0.0)
    gsum, gxhat = g.sum(axis=axes, keepdims=True), (g * xhat).sum(axis=axes, keepdims=True)
    dx = w.reshape(1, c, 1, 1) * rs * (g - gsum / m - xhat * gxhat / m)
    y, mean, invstd, gx, gw, gb = runs[0]
    assert 0.1 < (y > 0).mean() < 0.9          # the ReLU both keeps and clears outputs
    np.testing.assert_allclose(mean, mu.ravel(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(invstd, rs.ravel(), rtol=1e-5)
    np.testing.assert_allclose(y, np.maximum(pre, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, dx, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(gw, gxhat.ravel(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gb, gsum.ravel(), rtol=1e-4, atol=1e-3)


# ---- invalid arguments ------------------------------------------------------------------------

X = np.zeros((2, 4, 3, 3), np.float32)
C4 = np.zeros(4, np.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.batch_norm(np.zeros(4), C4, C4), ValueError, r"batch_norm: input must be 2 or 3"),
    (lambda: F.batch_norm(X, np.zeros(3), C4), ValueError, r"running_mean must have shape \(4,\)"),
    (lambda: F.batch_norm(X, C4, C4, np.ones(5)), ValueError, r"weight must have shape \(4,\)"),
    (lambda: F.batch_norm(X, C4, C4, eps=0), ValueError, r"eps must be a finite float > 0"),
    (lambda: F.batch_norm(X, C4, C4, eps=-1e-5), ValueError, r"eps must be"),
    (lambda: F.batch_norm(X, C4, C4, momentum=1.5, training=True), ValueError,
     r"momentum must be in \[0, 1\], got 1.5"),
    (lambda: F.batch_norm(X, [0.] * 4, C4), TypeError, r"running_mean must be a numpy array"),
    (lambda: F.batch_norm(X, np.zeros(4, int), C4), TypeError, r"running_mean must be float32"),
    (lambda: F.batch_norm(X, None, None), ValueError, r"required when training=False"),
    (lambda: F.batch_norm(X, C4, None, training=True), ValueError, r"both given or both None"),
    (lambda: F.batch_norm(np.zeros((1, 4)), None, None, training=True), ValueError,
     r"more than 1 value per channel"),
    (lambda: F.batch_norm(X.astype(np.complex64), C4, C4), TypeError,
     r"batch_norm: input must hold real numbers"),
    (lambda: F.batch_norm(X, C4, C4, np.ones(4, object)), TypeError, r"weight must hold real"),
    (lambda: F.layer_norm(X, (4, 4)), ValueError, r"normalized_shape \(4, 4\) must match"),
    (lambda: F.layer_norm(X, ()), ValueError, r"normalized_shape must be non-empty"),
    (lambda: F.layer_norm(X, "3"), TypeError, r"normalized_shape must be an int"),
    (lambda: F.layer_norm(X, 3, np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
    (lambda: F.group_norm(X, 3), ValueError, r"num_groups = 3 must divide .* C = 4"),
    (lambda: F.group_norm(X, 0), ValueError, r"num_groups must be >= 1"),
    (lambda: F.group_norm(X, 2.0), TypeError, r"num_groups must be an int"),
    (lambda: F.group_norm(np.zeros(4), 2), ValueError, r"group_norm: input must be"),
    (lambda: F.instance_norm(np.zeros((2, 4)), None, None), ValueError,
     r"instance_norm: input must be 3 or 4 or 5-D"),
    (lambda: F.instance_norm(X, use_input_stats=False), ValueError, r"required when"),
    (lambda: F.instance_norm(np.zeros((2, 4, 1))), ValueError, r"more than 1 spatial"),
    (lambda: F.instance_norm(X, momentum=-0.1), ValueError, r"momentum must be in"),
    (lambda: F.instance_norm(X, C4, C4, np.ones(3), use_input_stats=False), ValueError,
     r"instance_norm: weight must have shape \(4,\)"),
    (lambda: F.instance_norm_backward(X, X, C4, np.ones(2), use_input_stats=False), ValueError,
     r"instance_norm_backward: running_var must have shape \(4,\)"),
    (lambda: F.batch_norm_backward(np.zeros((2, 4)), X), ValueError,
     r"grad_output must have the input's shape"),
    (lambda: F.batch_norm_backward(X, X, training=False), ValueError, r"required when"),
    (lambda: F.batch_norm(X, C4, C4, activation="gelu"), ValueError,
     r"batch_norm: activation must be None or 'relu', got 'gelu'"),
    (lambda: F.batch_norm_backward(X, X, activation="tanh"), ValueError,
     r"batch_norm_backward: activation must be None or 'relu'"),
    (lambda: F.batch_norm_backward(X, X, C4, bias=np.ones(3), activation="relu"), ValueError,
     r"batch_norm_backward: bias must have shape \(4,\)"),
    (lambda: F.layer_norm_backward(X, X, 3, output_mask=True), TypeError, r"output_mask"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_running_stats_rejected_in_training():
    rm = np.zeros(4, np.float32)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean must be writable"):
        F.batch_norm(X, rm, np.ones(4, np.float32), training=True)
    F.batch_norm(X, rm, np.ones(4, np.float32), training=False)   # eval only reads them


def test_read_only_and_strided_inputs_everywhere(rng):
    """Kernels take const views: read-only arrays work; strided views are copied first."""
    x = rng.standard_normal((3, 4, 5, 6))
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    rm, rv = rng.standard_normal(4), rng.random(4) + 0.5
    t = rng.integers(0, 4, (3, 5, 6))
    calls = [
        lambda x, dy: F.batch_norm(x, None, None, w, b, training=True),
        lambda x, dy: F.batch_norm(x, rm, rv, w, b),
        lambda x, dy: F.batch_norm_backward(dy, x, w)[0],
        lambda x, dy: F.batch_norm_backward(dy, x, w, rm, rv, training=False)[0],
        lambda x, dy: F.layer_norm(x, (5, 6)),
        lambda x, dy: F.layer_norm_backward(dy, x, (5, 6), x[0, 0], x[0, 1])[0],
        lambda x, dy: F.group_norm_backward(dy, x, 2, w, b)[0],
        lambda x, dy: F.instance_norm_backward(dy, x, None, None, w, b)[0],
        lambda x, dy: F.softmax_backward(dy, F.softmax(x, 1), 1),
        lambda x, dy: F.log_softmax(x, -1),
        lambda x, dy: F.cross_entropy(x, t, reduction="none"),
        lambda x, dy: F.cross_entropy_backward(1.0, x, t, label_smoothing=0.1),
    ]
    ro_x, ro_dy = x.copy(), dy.copy()
    ro_x.flags.writeable = ro_dy.flags.writeable = False
    big_x = np.zeros((3, 8, 5, 12))
    big_x[:, ::2, :, ::2] = x
    big_dy = np.zeros((3, 8, 5, 12))
    big_dy[:, ::2, :, ::2] = dy
    for call in calls:
        ref = call(x, dy)
        np.testing.assert_array_equal(call(ro_x, ro_dy), ref)
        np.testing.assert_array_equal(call(big_x[:, ::2, :, ::2], big_dy[:, ::2, :, ::2]), ref)
        np.testing.assert_array_equal(call(np.asfortranarray(x), np.asfortranarray(dy)), ref)
