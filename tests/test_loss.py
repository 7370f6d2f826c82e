"""Losses and BN folding: torch agreement (values and autograd gradients), finite differences,
extreme logits, target validation, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

REDUCTIONS = ["mean", "sum", "none"]


def _upstream(rng, reduction, shape):
    return 1.0 if reduction != "none" else rng.standard_normal(shape)


def _torch_loss(th, fn, x, upstream, *args, **kw):
    tx = th.tensor(x, requires_grad=True)
    loss = fn(tx, *args, **kw)
    loss.backward(th.tensor(upstream, dtype=loss.dtype))
    return loss.detach().numpy(), tx.grad.numpy()


def _targets(rng, shape, c, ignore_index=None, frac=0.25):
    t = rng.integers(0, c, size=shape)
    if ignore_index is not None:
        t[rng.random(shape) < frac] = ignore_index
    return t


# ---- cross entropy / nll ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 7), (2, 3, 4, 5), (5,)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,ignore,smoothing", [
    (False, False, 0.0), (True, False, 0.0), (True, True, 0.0), (False, True, 0.1),
    (True, True, 0.3), (False, False, 1.0),
])
def test_cross_entropy_matches_torch(th, rng, dtype, shape, reduction, weighted, ignore,
                                     smoothing):
    c = shape[1] if len(shape) > 1 else shape[0]
    tshape = (shape[:1] + shape[2:]) if len(shape) > 1 else ()
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    ignore_index = 1 if ignore else -100
    t = _targets(rng, tshape, c, ignore_index if ignore else None)
    w = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    up = _upstream(rng, reduction, tshape)
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=smoothing)
    ref, gref = _torch_loss(th, th.nn.functional.cross_entropy, x, up, th.tensor(t),
                            **dict(kw, weight=None if w is None else th.tensor(w)))
    loss = F.cross_entropy(x, t, **kw)
    if reduction == "none":
        assert loss.shape == tshape and loss.dtype == dtype
    else:
        assert np.ndim(loss) == 0 and loss.dtype == dtype
    np.testing.assert_allclose(loss, ref, **TOL[dtype])
    np.testing.assert_allclose(F.cross_entropy_backward(up, x, t, **kw), gref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_torch(th, rng, dtype, shape, reduction, weighted):
    c = shape[1]
    tshape = shape[:1] + shape[2:]
    x = F.log_softmax(rng.standard_normal(shape).astype(dtype), 1)
    t = _targets(rng, tshape, c, 0)
    w = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    up = _upstream(rng, reduction, tshape)
    ref, gref = _torch_loss(th, th.nn.functional.nll_loss, x, up, th.tensor(t),
                            weight=None if w is None else th.tensor(w), ignore_index=0,
                            reduction=reduction)
    kw = dict(weight=w, ignore_index=0, reduction=reduction)
    np.testing.assert_allclose(F.nll_loss(x, t, **kw), ref, **TOL[dtype])
    np.testing.assert_allclose(F.nll_loss_backward(up, x, t, **kw), gref, **TOL[dtype])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), c=st.integers(1, 6), extra=st.lists(st.integers(1, 4), max_size=2),
       smoothing=st.sampled_from([0.0, 0.2]), weighted=st.booleans(),
       reduction=st.sampled_from(REDUCTIONS))
def test_cross_entropy_hypothesis(th, n, c, extra, smoothing, weighted, reduction):
    rng = np.random.default_rng(n * 7 + c)
    shape = (n, c) + tuple(extra)
    tshape = (n,) + tuple(extra)
    x = rng.standard_normal(shape) * 4
    t = _targets(rng, tshape, c, -100, frac=0.2)
    w = rng.random(c) + 0.1 if weighted else None
    up = _upstream(rng, reduction, tshape)
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    ref, gref = _torch_loss(th, th.nn.functional.cross_entropy, x, up, th.tensor(t),
                            **dict(kw, weight=None if w is None else th.tensor(w)))
    np.testing.assert_allclose(F.cross_entropy(x, t, **kw), ref, rtol=1e-9, atol=1e-9,
                               equal_nan=True)
    np.testing.assert_allclose(F.cross_entropy_backward(up, x, t, **kw), gref, rtol=1e-9,
                               atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_finite_differences(rng, reduction):
    x = rng.standard_normal((3, 4, 2))
    t = np.array([[0, 3], [-100, 1], [2, 2]])
    w = rng.random(4) + 0.5
    up = _upstream(rng, reduction, t.shape)
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.15)
    g = F.cross_entropy_backward(up, x, t, **kw)
    assert_grad_close(g, numerical_grad(lambda v: F.cross_entropy(v, t, **kw), x, up))
    g = F.nll_loss_backward(up, x, t, weight=w, reduction=reduction)
    assert_grad_close(g, numerical_grad(
        lambda v: F.nll_loss(v, t, weight=w, reduction=reduction), x, up))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_huge_logits_finite(th, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    t = np.array([1, 2, 0])
    for smoothing in (0.0, 0.1):
        loss = F.cross_entropy(x, t, label_smoothing=smoothing)
        g = F.cross_entropy_backward(1.0, x, t, label_smoothing=smoothing)
        assert np.isfinite(loss) and np.isfinite(g).all()
        ref, gref = _torch_loss(th, th.nn.functional.cross_entropy, x, 1.0, th.tensor(t),
                                label_smoothing=smoothing)
        np.testing.assert_allclose(loss, ref, rtol=1e-6)
        np.testing.assert_allclose(g, gref, **TOL[dtype])


def test_cross_entropy_all_ignored_mean_is_nan(th):
    x = np.zeros((2, 3))
    t = np.array([-100, -100])
    ref = th.nn.functional.cross_entropy(th.tensor(x), th.tensor(t))
    assert np.isnan(F.cross_entropy(x, t)) and bool(th.isnan(ref))
    assert F.cross_entropy(x, t, reduction="sum") == 0


def test_cross_entropy_bit_identical_for_1_and_2_threads(rng, threads):
    x = rng.standard_normal((5, 10, 9, 31)).astype(np.float32)
    t = rng.integers(0, 10, (5, 9, 31))
    res = []
    for n in (1, 2):
        threads(n)
        res.append([F.cross_entropy(x, t, label_smoothing=0.1),
                    F.cross_entropy_backward(1.0, x, t, label_smoothing=0.1)])
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss])
@pytest.mark.parametrize("target,exc,match", [
    (np.array([0, 3]), ValueError, r"target values must be class indices in \[0, 3\) or "
                                   r"ignore_index=-100, got 3"),
    (np.array([-1, 0]), ValueError, r"got -1"),
    (np.array([0.0, 1.0]), TypeError, r"target must hold integer class indices"),
    (np.array([0, 1, 2]), ValueError, r"target must have shape \(2,\)"),
])
def test_class_target_validation(fn, target, exc, match):
    with pytest.raises(exc, match=match):
        fn(np.zeros((2, 3)), target)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), reduction="avg"), ValueError,
     r"reduction must be 'mean', 'sum' or 'none'"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), weight=np.ones(2)), ValueError,
     r"weight must have shape \(3,\)"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), label_smoothing=1.5),
     ValueError, r"label_smoothing must be in \[0, 1\]"),
    (lambda: F.cross_entropy(np.zeros((2, 3), complex), np.zeros(2, int)), TypeError,
     r"cross_entropy: input must hold real numbers"),
    (lambda: F.cross_entropy_backward(np.ones(2), np.zeros((2, 3)), np.zeros(2, int)),
     ValueError, r"grad_output must be a scalar"),
    (lambda: F.cross_entropy_backward(np.ones(3), np.zeros((2, 3)), np.zeros(2, int),
                                      reduction="none"), ValueError,
     r"grad_output must have the loss's shape \(2,\)"),
    (lambda: F.mse_loss(np.zeros(3), np.zeros(4)), ValueError, r"target must have the input's"),
    (lambda: F.binary_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((2, 3)),
                                                pos_weight=np.ones(2)), ValueError,
     r"pos_weight of shape \(2,\) must broadcast"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- regression losses and BCE ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse", "l1"])
def test_regression_losses_match_torch(th, rng, dtype, reduction, name):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    t = rng.standard_normal((3, 4, 5)).astype(dtype)
    t[0, 0, 0] = x[0, 0, 0]                           # l1 at the kink: sign 0, as torch
    ours, back = {"mse": (F.mse_loss, F.mse_loss_backward),
                  "l1": (F.l1_loss, F.l1_loss_backward)}[name]
    ref_fn = getattr(th.nn.functional, f"{name}_loss")
    up = _upstream(rng, reduction, x.shape)
    ref, gref = _torch_loss(th, ref_fn, x, up, th.tensor(t), reduction=reduction)
    loss = ours(x, t, reduction)
    assert np.asarray(loss).dtype == dtype
    np.testing.assert_allclose(loss, ref, **TOL[dtype])
    np.testing.assert_allclose(back(up, x, t, reduction), gref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,pos", [(False, False), (True, False), (False, True),
                                          (True, True)])
def test_bce_with_logits_matches_torch(th, rng, dtype, reduction, weighted, pos):
    x = (rng.standard_normal((4, 6)) * 5).astype(dtype)
    x[0, :3] = [1e4, -1e4, 0.0]
    t = rng.random((4, 6)).astype(dtype)
    w = (rng.random((4, 1)) + 0.5).astype(dtype) if weighted else None
    pw = (rng.random(6) * 3).astype(dtype) if pos else None
    up = _upstream(rng, reduction, x.shape)
    ref, gref = _torch_loss(th, th.nn.functional.binary_cross_entropy_with_logits, x, up,
                            th.tensor(t), weight=None if w is None else th.tensor(w),
                            reduction=reduction, pos_weight=None if pw is None else th.tensor(pw))
    kw = dict(weight=w, reduction=reduction, pos_weight=pw)
    loss = F.binary_cross_entropy_with_logits(x, t, **kw)
    assert np.isfinite(loss).all()
    np.testing.assert_allclose(loss, ref, **TOL[dtype])
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits_backward(up, x, t, **kw), gref,
                               **TOL[dtype])


def test_regression_and_bce_finite_differences(rng):
    x, t = rng.standard_normal((3, 4)), rng.random((3, 4))
    pw, w = rng.random(4) + 0.5, rng.random((3, 4))
    for fwd, bwd, kw in ((F.mse_loss, F.mse_loss_backward, {}),
                         (F.l1_loss, F.l1_loss_backward, {}),
                         (F.binary_cross_entropy_with_logits,
                          F.binary_cross_entropy_with_logits_backward,
                          dict(weight=w, pos_weight=pw))):
        for reduction in REDUCTIONS:
            up = _upstream(rng, reduction, x.shape)
            g = bwd(up, x, t, reduction=reduction, **kw)
            assert_grad_close(g, numerical_grad(lambda v: fwd(v, t, reduction=reduction, **kw),
                                                x, up))


# ---- BN folding -------------------------------------------------------------------------------

@pytest.mark.parametrize("conv_bias,affine", [(True, True), (False, True), (True, False)])
def test_fuse_conv_bn_matches_conv_then_eval_batch_norm(rng, conv_bias, affine):
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5) if conv_bias else None
    rm, rv = rng.standard_normal(5), rng.random(5) + 0.2
    bw = rng.standard_normal(5) if affine else None
    bb = rng.standard_normal(5) if affine else None
    ref = F.batch_norm(F.conv2d(x, w, b, padding=1), rm, rv, bw, bb, training=False, eps=1e-3)
    fw, fb = F.fuse_conv_bn(w, b, rm, rv, bw, bb, eps=1e-3)
    np.testing.assert_allclose(F.conv2d(x, fw, fb, padding=1), ref, rtol=1e-10, atol=1e-10)


def test_fuse_linear_bn(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    rm, rv = rng.standard_normal(3).astype(np.float32), (rng.random(3) + 0.2).astype(np.float32)
    bw, bb = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    ref = F.batch_norm(F.linear(x, w, b), rm, rv, bw, bb)
    fw, fb = F.fuse_conv_bn(w, b, rm, rv, bw, bb)
    assert fw.dtype == np.float32
    np.testing.assert_allclose(F.linear(x, fw, fb), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"fuse_conv_bn: running_mean must have shape \(3,\)"):
        F.fuse_conv_bn(w, b, np.zeros(4), rv)
    with pytest.raises(TypeError, match=r"running_var must be an array"):
        F.fuse_conv_bn(w, b, rm, None)


@pytest.mark.parametrize("shape", [(2, 3, 20, 15), (1, 4, 257)])
def test_cross_entropy_many_positions_per_sample(th, rng, shape):
    """More positions than one kernel task holds (blocks of 128): every block right."""
    x = rng.standard_normal(shape)
    t = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    t[..., ::7] = -100
    w = rng.random(shape[1]) + 0.5
    up = rng.standard_normal(t.shape)
    kw = dict(weight=w, reduction="none", label_smoothing=0.2)
    ref, gref = _torch_loss(th, th.nn.functional.cross_entropy, x, up, th.tensor(t),
                            **dict(kw, weight=th.tensor(w)))
    np.testing.assert_allclose(F.cross_entropy(x, t, **kw), ref, **TOL[np.float64])
    np.testing.assert_allclose(F.cross_entropy_backward(up, x, t, **kw), gref, **TOL[np.float64])
