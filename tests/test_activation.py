"""Activations, softmax/log_softmax, linear, dropout and pad: torch agreement (values and
autograd gradients), finite differences, numerical edge cases, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F
from conftest import TOL
from gradcheck import numerical_grad, assert_grad_close

# name -> (ours, our backward taking (dy, saved), torch fn, backward wants output?)
ELEMENTWISE = {
    "relu": (F.relu, F.relu_backward, lambda t, x: t.relu(x), False),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda dy, x: F.leaky_relu_backward(dy, x, 0.2),
                   lambda t, x: t.nn.functional.leaky_relu(x, 0.2), False),
    "elu": (lambda x: F.elu(x, 0.7), lambda dy, x: F.elu_backward(dy, x, 0.7),
            lambda t, x: t.nn.functional.elu(x, 0.7), False),
    "selu": (F.selu, F.selu_backward, lambda t, x: t.nn.functional.selu(x), False),
    "gelu": (F.gelu, F.gelu_backward, lambda t, x: t.nn.functional.gelu(x), False),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), lambda dy, x: F.gelu_backward(dy, x, "tanh"),
                  lambda t, x: t.nn.functional.gelu(x, approximate="tanh"), False),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, lambda t, x: t.sigmoid(x), True),
    "tanh": (F.tanh, F.tanh_backward, lambda t, x: t.tanh(x), True),
}


def _torch_value_and_grad(th, fn, arrays, dy):
    ts = [th.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(th.tensor(dy))
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_matches_torch(th, rng, dtype, name):
    fwd, bwd, ref, wants_output = ELEMENTWISE[name]
    x = (rng.standard_normal((3, 4, 5)) * 3).astype(dtype)
    x.flat[:3] = [0.0, 30.0, -30.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    y_ref, (gx_ref,) = _torch_value_and_grad(th, lambda t: ref(th, t), [x], dy)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(bwd(dy, y if wants_output else x), gx_ref, **TOL[dtype])


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_finite_differences(rng, name):
    fwd, bwd, _, wants_output = ELEMENTWISE[name]
    x = rng.standard_normal((2, 7)) * 2
    x[np.abs(x) < 1e-3] = 0.5                      # stay away from the kinks
    dy = rng.standard_normal(x.shape)
    saved = fwd(x) if wants_output else x
    assert_grad_close(bwd(dy, saved), numerical_grad(fwd, x, dy), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,wshape", [((2, 3, 4), (3,)), ((2, 3, 4, 4), (1,)), ((5,), (1,)),
                                          ((4, 6), (6,))])
def test_prelu_matches_torch(th, rng, dtype, shape, wshape):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_ref, (gx_ref, gw_ref) = _torch_value_and_grad(th, th.nn.functional.prelu, [x, w], dy)
    np.testing.assert_allclose(F.prelu(x, w), y_ref, **TOL[dtype])
    gx, gw = F.prelu_backward(dy, x, w)
    assert gw.shape == w.shape and gw.dtype == dtype
    np.testing.assert_allclose(gx, gx_ref, **TOL[dtype])
    np.testing.assert_allclose(gw, gw_ref, **TOL[dtype])


def test_prelu_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    gx, gw = F.prelu_backward(dy, x, w)
    assert_grad_close(gx, numerical_grad(lambda v: F.prelu(v, w), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: F.prelu(x, v), w, dy))


# ---- softmax / log_softmax --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,dim", [((4, 7), 1), ((4, 7), 0), ((4, 7), -1), ((2, 3, 300), 1),
                                       ((2, 5, 3, 3), 1), ((3, 4, 5), -3), ((9,), 0)])
@pytest.mark.parametrize("take_log", [False, True])
def test_softmax_matches_torch(th, rng, dtype, shape, dim, take_log):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = (F.log_softmax, F.log_softmax_backward) if take_log else (F.softmax,
                                                                         F.softmax_backward)
    ref = th.log_softmax if take_log else th.softmax
    y_ref, (gx_ref,) = _torch_value_and_grad(th, lambda t: ref(t, dim), [x], dy)
    y = fwd(x, dim)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(bwd(dy, y, dim), gx_ref, **TOL[dtype])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_softmax_hypothesis(th, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape) * 5
    dy = rng.standard_normal(shape)
    for fwd, bwd, ref in ((F.softmax, F.softmax_backward, th.softmax),
                          (F.log_softmax, F.log_softmax_backward, th.log_softmax)):
        y_ref, (gx_ref,) = _torch_value_and_grad(th, lambda t: ref(t, dim), [x], dy)
        y = fwd(x, dim)
        np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
        np.testing.assert_allclose(bwd(dy, y, dim), gx_ref, **TOL[np.float64])


@pytest.mark.parametrize("dim", [0, 1])
def test_softmax_finite_differences(rng, dim):
    x = rng.standard_normal((3, 4))
    dy = rng.standard_normal(x.shape)
    assert_grad_close(F.softmax_backward(dy, F.softmax(x, dim), dim),
                      numerical_grad(lambda v: F.softmax(v, dim), x, dy))
    assert_grad_close(F.log_softmax_backward(dy, F.log_softmax(x, dim), dim),
                      numerical_grad(lambda v: F.log_softmax(v, dim), x, dy))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_huge_logits_stay_finite(th, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 9999.0]], dtype)
    y = F.softmax(x, 1)
    ly = F.log_softmax(x, 1)
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    np.testing.assert_allclose(y, th.softmax(th.tensor(x), 1).numpy(), **TOL[dtype])
    np.testing.assert_allclose(ly, th.log_softmax(th.tensor(x), 1).numpy(), **TOL[dtype])
    np.testing.assert_allclose(F.softmax(x.T.copy(), 0), y.T, **TOL[dtype])


def test_softmax_bit_identical_for_1_and_2_threads(rng, same_bits_for_1_and_2_threads):
    x = rng.standard_normal((6, 50, 37)).astype(np.float32)
    same_bits_for_1_and_2_threads(
        lambda: [F.softmax(x, 1), F.log_softmax(x, -1), F.softmax_backward(x, x, 0)])


# ---- linear -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(th, rng, dtype, shape, bias):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if bias else None
    y = F.linear(x, w, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    arrays = [x, w] + ([b] if bias else [])
    y_ref, grads = _torch_value_and_grad(th, th.nn.functional.linear, arrays, dy)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    gx, gw, gb = F.linear_backward(dy, x, w)
    np.testing.assert_allclose(gx, grads[0], **TOL[dtype])
    np.testing.assert_allclose(gw, grads[1], **TOL[dtype])
    if bias:
        np.testing.assert_allclose(gb, grads[2], **TOL[dtype])
    assert F.linear_backward(dy, x, w, output_mask=(False, True, False))[::2] == (None, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_single_row_products_by_gemv(rng, same_bits_for_1_and_2_threads, dtype, trans_a,
                                     trans_b):
    """A one-row product (a linear layer at batch 1) runs as GEMVs over column blocks: the
    product of every operand layout, over several blocks, any thread count."""
    from fastcnn import get_num_threads
    from fastcnn._ops.gemm import matmul
    k, n = 70, 150
    a = rng.standard_normal((k, 1) if trans_a else (1, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)

    def product():
        c = np.full((1, n), np.nan, dtype)
        matmul(a, b, c, trans_a, trans_b, get_num_threads())
        return [c]
    np.testing.assert_allclose(product()[0], want, **TOL[dtype])
    same_bits_for_1_and_2_threads(product)


def test_linear_finite_differences(rng):
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    dy = rng.standard_normal((3, 2))
    gx, gw, gb = F.linear_backward(dy, x, w)
    assert_grad_close(gx, numerical_grad(lambda v: F.linear(v, w, b), x, dy))
    assert_grad_close(gw, numerical_grad(lambda v: F.linear(x, v, b), w, dy))
    assert_grad_close(gb, numerical_grad(lambda v: F.linear(x, w, v), b, dy))


# ---- dropout ----------------------------------------------------------------------------------

def test_dropout_scaling_mask_and_backward():
    x = np.ones((200, 100), np.float32)
    y, mask = F.dropout(x, 0.3, rng=np.random.default_rng(0), return_mask=True)
    assert y.dtype == np.float32 and mask.dtype == bool
    kept = y[mask]
    np.testing.assert_allclose(kept, 1 / 0.7, rtol=1e-6)
    assert (y[~mask] == 0).all()
    assert abs(mask.mean() - 0.7) < 0.01
    dy = np.full(x.shape, 2.0, np.float32)
    np.testing.assert_allclose(F.dropout_backward(dy, mask, 0.3), 2 * mask / 0.7, rtol=1e-6)
    y2 = F.dropout(x, 0.3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y, y2)                 # same generator state, same mask


def test_dropout_edge_probabilities_and_eval():
    x = np.arange(12.0).reshape(3, 4)
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(F.dropout(x, 1.0, rng=rng), 0)
    np.testing.assert_array_equal(F.dropout(x, 0.0, rng=rng), x)
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False), x)
    y, m = F.dropout(x, 0.5, training=False, return_mask=True)
    assert m is None
    np.testing.assert_array_equal(F.dropout_backward(x, None, 0.5), x)
    y, m = F.dropout(x, 1.0, rng=rng, return_mask=True)
    np.testing.assert_array_equal(F.dropout_backward(x, m, 1.0), 0)


def test_dropout2d_drops_whole_channels():
    x = np.ones((8, 16, 5, 5))
    y, mask = F.dropout2d(x, 0.5, rng=np.random.default_rng(3), return_mask=True)
    assert mask.shape == (8, 16, 1, 1)
    per_channel = y.reshape(8, 16, -1)
    assert ((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all()
    np.testing.assert_array_equal(F.dropout_backward(np.ones_like(x), mask, 0.5), y)
    assert F.dropout2d(np.ones((4, 3, 3)), 0.5, rng=np.random.default_rng(0),
                       return_mask=True)[1].shape == (4, 1, 1)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.dropout(np.ones(3), 1.5), ValueError, r"dropout: p must be in \[0, 1\], got 1.5"),
    (lambda: F.dropout(np.ones(3), -0.1), ValueError, r"p must be in \[0, 1\]"),
    (lambda: F.dropout(np.ones(3), "a"), TypeError, r"p must be a float"),
    (lambda: F.dropout(np.ones(3), rng=0), TypeError, r"rng must be a numpy.random.Generator"),
    (lambda: F.dropout2d(np.ones((3, 3)), 0.5), ValueError, r"dropout2d: input must be 3 or 4-D"),
    (lambda: F.dropout_backward(np.ones((2, 3)), np.ones(4, bool), 0.5), ValueError,
     r"does not broadcast"),
])
def test_dropout_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- pad --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,pads", [
    ((2, 3, 6), (2, 1)), ((2, 3, 5, 6), (1, 2, 3, 0)), ((1, 2, 4, 4, 5), (1, 1, 0, 2, 3, 1)),
    ((3, 5, 6), (2, 3, 1, 1)),
])
def test_pad_matches_torch(th, rng, mode, shape, pads):
    x = rng.standard_normal(shape)
    kw = dict(value=0.5) if mode == "constant" else {}   # torch refuses a value otherwise
    y = F.pad(x, pads, mode, **kw)
    dy = rng.standard_normal(y.shape)
    y_ref, (gx_ref,) = _torch_value_and_grad(
        th, lambda t: th.nn.functional.pad(t, pads, mode=mode, **kw), [x], dy)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    np.testing.assert_allclose(F.pad_backward(dy, x.shape, pads, mode), gx_ref,
                               **TOL[np.float64])


@pytest.mark.parametrize("pads", [(-1, 2), (-2, -1, 1, 0), (0, 0, 0, 0, 1, 1), (-2, -3)])
def test_pad_constant_negative_crops(th, rng, pads):
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(F.pad(x, pads, value=None), F.pad(x, pads))
    y = F.pad(x, pads, value=-1.0)
    y_ref = th.nn.functional.pad(th.tensor(x), pads, value=-1.0).numpy()
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    tx = th.tensor(x, requires_grad=True)
    th.nn.functional.pad(tx, pads, value=-1.0).backward(th.tensor(dy))
    np.testing.assert_array_equal(F.pad_backward(dy, x.shape, pads), tx.grad.numpy())


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_finite_differences(rng, mode):
    x = rng.standard_normal((1, 2, 3, 4))
    pads = (2, 1, 1, 2)
    dy = rng.standard_normal(F.pad(x, pads, mode).shape)
    assert_grad_close(F.pad_backward(dy, x.shape, pads, mode),
                      numerical_grad(lambda v: F.pad(v, pads, mode), x, dy))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.pad(np.ones((2, 3)), (1,)), ValueError, r"pad: pad must have an even length"),
    (lambda: F.pad(np.ones((2, 3)), (1, 1, 1, 1, 1, 1)), ValueError, r"even length of at most 2 \* input.ndim = 4"),
    (lambda: F.pad(np.ones((2, 3)), (1.5, 1)), TypeError, r"pad must be a tuple of ints"),
    (lambda: F.pad(np.ones((2, 3)), 1), TypeError, r"pad must be a tuple of ints"),
    (lambda: F.pad(np.ones((2, 3)), (1, 1), mode="mirror"), ValueError, r"mode must be one of"),
    (lambda: F.pad(np.ones((1, 2, 3)), (3, 0), mode="reflect"), ValueError,
     r"reflect padding must be smaller"),
    (lambda: F.pad(np.ones((1, 2, 3)), (4, 0), mode="circular"), ValueError,
     r"circular padding must be at most"),
    (lambda: F.pad(np.ones((1, 2, 3)), (-1, 0), mode="replicate"), ValueError, r"non-negative"),
    (lambda: F.pad(np.ones(3), (1, 1), mode="reflect"), ValueError, r"pads the last 1 to 3"),
    (lambda: F.pad(np.ones((2, 3)), (-2, -2)), ValueError, r"negative size"),
    (lambda: F.pad_backward(np.ones((2, 3)), (2, 3), (1, 1)), ValueError,
     r"grad_output must have the padded shape \(2, 5\)"),
])
def test_pad_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- invalid arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.relu(np.ones(3, complex)), TypeError, r"relu: input must hold real numbers"),
    (lambda: F.relu_backward(np.ones(3), np.ones(4)), ValueError,
     r"relu_backward: grad_output must have the shape of input \(4,\)"),
    (lambda: F.sigmoid_backward(np.ones(3), np.ones(3, object)), TypeError, r"output must hold"),
    (lambda: F.leaky_relu(np.ones(3), "0.1"), TypeError, r"negative_slope must be a real"),
    (lambda: F.gelu(np.ones(3), "erf"), ValueError, r"approximate must be 'none' or 'tanh'"),
    (lambda: F.prelu(np.ones((2, 3)), np.ones(2)), ValueError, r"weight must have shape \(1,\)"),
    (lambda: F.softmax(np.ones((2, 3)), 2), ValueError, r"softmax: dim must be in \[-2, 1\]"),
    (lambda: F.softmax(np.ones((2, 3)), None), TypeError, r"dim must be an int"),
    (lambda: F.log_softmax(np.float64(1.0), 0), ValueError, r"at least 1 dim"),
    (lambda: F.linear(np.ones((2, 3)), np.ones((4, 2))), ValueError, r"in_features"),
    (lambda: F.linear(np.ones((2, 3)), np.ones(3)), ValueError, r"weight must be 2-D"),
    (lambda: F.linear(np.ones((2, 3)), np.ones((4, 3)), np.ones(3)), ValueError,
     r"bias must have shape \(4,\)"),
    (lambda: F.linear_backward(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 3))), ValueError,
     r"grad_output must have shape \(2, 4\)"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_int_inputs_are_float32():
    x = np.arange(-3, 3)
    for f in (F.relu, F.sigmoid, F.tanh, F.gelu, F.selu):
        assert f(x).dtype == np.float32
    assert F.softmax(x, 0).dtype == np.float32
    assert F.linear(np.ones((2, 3), int), np.ones((4, 3), np.float32)).dtype == np.float32


def test_relu_inplace_as_torch():
    import fastcnn.functional as F
    x = np.array([[-1.0, 2.0], [np.nan, -0.0]], dtype=np.float32)
    y = F.relu(x, inplace=True)
    assert y is x and np.isnan(x[1, 0]) and x[0, 0] == 0 and x[0, 1] == 2
    view = np.arange(-3.0, 3.0)[::2]                 # not contiguous: a new array, input kept
    out = F.relu(view, inplace=True)
    assert out is not view and view[0] == -3.0 and out[0] == 0
    frozen = np.array([-1.0, 1.0])
    frozen.flags.writeable = False
    assert F.relu(frozen, inplace=True).tolist() == [0.0, 1.0] and frozen[0] == -1.0


def test_add_relu_is_relu_of_the_sum(rng):
    a = rng.standard_normal((3, 4, 50, 70)).astype(np.float32)
    b = rng.standard_normal(a.shape).astype(np.float32)
    a[0, 0, 0, :3] = (np.nan, -0.0, 0.0)
    b[0, 0, 0, :3] = 0.0
    y = F.add_relu(a, b)
    np.testing.assert_array_equal(y, F.relu(a + b))
    assert np.isnan(y[0, 0, 0, 0]) and not np.signbit(y[0, 0, 0, 1])
    np.testing.assert_array_equal(F.add_relu(a[..., ::2], b[..., ::2].astype(np.float64)),
                                  np.maximum(a[..., ::2] + b[..., ::2].astype(np.float64), 0))
    with pytest.raises(ValueError, match=r"add_relu: other must have the shape of input"):
        F.add_relu(a, b[0])
    with pytest.raises(TypeError, match=r"add_relu: other must hold real numbers"):
        F.add_relu(a, b.astype(np.complex64))
