"""Activations: relu and friends, sigmoid, tanh, prelu, softmax, log_softmax."""
from __future__ import annotations

import math
import numbers

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, contiguous, float_dtype
from fastcnn._ops import activation as _act
from fastcnn._threads import get_num_threads
from fastcnn.functional._common import _delegate

__all__ = [
    "relu", "relu_backward", "add_relu", "leaky_relu", "leaky_relu_backward", "elu", "elu_backward",
    "selu", "selu_backward", "gelu", "gelu_backward", "sigmoid", "sigmoid_backward", "tanh",
    "tanh_backward", "prelu", "prelu_backward", "softmax", "log_softmax", "softmax_backward",
    "log_softmax_backward",
]


# --------------------------------------------------------------------------------------------
# Activations (elementwise ones are single numpy expressions: already at memory speed;
# softmax / log_softmax reduce, kernels in _ops/activation.pyx)
# --------------------------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _float(fname, name, value, *others):
    """``value`` as a float array (ints -> float32, float64 wins when mixed with ``others``)."""
    arr = as_array(fname, name, value)
    return np.asarray(arr, dtype=float_dtype(arr, *others))


def _grad_pair(fname, grad_output, saved, saved_name):
    """(dy, saved) as arrays of one float dtype, same shape."""
    dy = as_array(fname, "grad_output", grad_output)
    s = as_array(fname, saved_name, saved)
    if dy.shape != s.shape:
        raise ValueError(f"{fname}: grad_output must have the shape of {saved_name} {s.shape}, "
                         f"got {dy.shape}")
    dtype = float_dtype(dy, s)
    return np.asarray(dy, dtype=dtype), np.asarray(s, dtype=dtype)


def _real(fname, name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a real number, got "
                        f"{_checks._describe(value)}")
    return float(value)


def relu(input, inplace=False):
    """``max(x, 0)`` elementwise (NaN stays NaN). With ``inplace=True`` (as torch) the result
    overwrites ``input`` when it is a writable C-contiguous float32/float64 array, and is
    returned; otherwise a new array is returned as without it."""
    x = _float("relu", "input", input)
    writable_here = (inplace and x is input and x.flags.c_contiguous and x.flags.writeable
                     and x.flags.aligned)
    x = contiguous(x, x.dtype)
    out = x if writable_here else _memory.empty(x.shape, x.dtype)
    _act.relu_forward(x.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def relu_backward(grad_output, input):
    """``dx = dy where x > 0 else 0``; takes relu's input (its output works as well)."""
    dy, x = _grad_pair("relu_backward", grad_output, input, "input")
    dy, x = contiguous(dy, dy.dtype), contiguous(x, x.dtype)
    out = _memory.empty(dy.shape, dy.dtype)
    _act.relu_backward(dy.reshape(-1), x.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def add_relu(input, other):
    """``max(input + other, 0)`` in one pass (a residual sum and its ReLU); both of one shape.
    Its backward is :func:`relu_backward` of its output, the same gradient for both inputs."""
    a = _float("add_relu", "input", input)
    b = _float("add_relu", "other", other, a)
    if a.shape != b.shape:
        raise ValueError(f"add_relu: other must have the shape of input {a.shape}, got "
                         f"{b.shape}")
    return _add(a, b, relu=True)


def _add(a, b, relu=False):
    """a + b (or its ReLU) for two float arrays of one shape, into a new pooled array, on the
    OpenMP team: the model's sums (residual adds, gradients meeting where a graph branches)."""
    dtype = float_dtype(a, b)
    a, b = contiguous(a, dtype), contiguous(b, dtype)
    out = _memory.empty(a.shape, dtype)
    _act.add(a.reshape(-1), b.reshape(-1), out.reshape(-1), relu, get_num_threads())
    return out


def leaky_relu(input, negative_slope=0.01):
    """``x if x > 0 else negative_slope * x``."""
    x = _float("leaky_relu", "input", input)
    s = _real("leaky_relu", "negative_slope", negative_slope)
    return np.where(x > 0, x, x * x.dtype.type(s))


def leaky_relu_backward(grad_output, input, negative_slope=0.01):
    """``dx = dy if x > 0 else negative_slope * dy``; takes the input."""
    dy, x = _grad_pair("leaky_relu_backward", grad_output, input, "input")
    s = _real("leaky_relu_backward", "negative_slope", negative_slope)
    return np.where(x > 0, dy, dy * dy.dtype.type(s))


def elu(input, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)`` (expm1: exact near 0)."""
    x = _float("elu", "input", input)
    a = _real("elu", "alpha", alpha)
    neg = np.expm1(np.minimum(x, 0))       # min: no overflow warning for large positive x
    neg *= x.dtype.type(a)
    return np.where(x > 0, x, neg)


def elu_backward(grad_output, input, alpha=1.0):
    """``dx = dy if x > 0 else dy * alpha * exp(x)``; takes the input."""
    dy, x = _grad_pair("elu_backward", grad_output, input, "input")
    a = _real("elu_backward", "alpha", alpha)
    neg = np.exp(np.minimum(x, 0))
    neg *= dy
    neg *= dy.dtype.type(a)
    return np.where(x > 0, dy, neg)


def selu(input):
    """``scale * elu(x, alpha)``, torch's constants alpha = 1.6732632..., scale = 1.0507009..."""
    y = _delegate("selu", elu, input, _SELU_ALPHA)
    y *= y.dtype.type(_SELU_SCALE)
    return y


def selu_backward(grad_output, input):
    """``scale * elu_backward(dy, x, alpha)``; takes the input."""
    dx = _delegate("selu_backward", elu_backward, grad_output, input, _SELU_ALPHA)
    dx *= dx.dtype.type(_SELU_SCALE)
    return dx


def _approximate(fname, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{fname}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate="none"):
    """GELU, as torch: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``, or with
    approximate='tanh' ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    from scipy.special import erf
    x = _float("gelu", "input", input)
    if _approximate("gelu", approximate) == "none":
        y = erf(x * x.dtype.type(1 / math.sqrt(2.0)))
    else:
        y = np.tanh(x.dtype.type(_SQRT_2_OVER_PI) * (x + x.dtype.type(0.044715) * x * x * x))
    y += 1
    y *= x
    y *= x.dtype.type(0.5)
    return y


def gelu_backward(grad_output, input, approximate="none"):
    """Takes the input. ``dx = dy * (Phi(x) + x * phi(x))`` (phi the normal density), or for
    'tanh' with t = tanh(u), u = sqrt(2/pi)(x + 0.044715 x^3):
    ``dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2))``."""
    from scipy.special import erf
    fname = "gelu_backward"
    dy, x = _grad_pair(fname, grad_output, input, "input")
    f = x.dtype.type
    if _approximate(fname, approximate) == "none":
        cdf = 0.5 * (1 + erf(x * f(1 / math.sqrt(2.0))))
        pdf = np.exp(-0.5 * x * x) * f(1 / math.sqrt(2 * math.pi))
        return dy * (cdf + x * pdf)
    x2 = x * x
    t = np.tanh(f(_SQRT_2_OVER_PI) * (x + f(0.044715) * x2 * x))
    d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * f(_SQRT_2_OVER_PI) * (1 + f(3 * 0.044715) * x2)
    return dy * d


def sigmoid(input):
    """``1 / (1 + exp(-x))``, computed without overflow (scipy's expit)."""
    from scipy.special import expit
    x = _float("sigmoid", "input", input)
    return expit(x)


def sigmoid_backward(grad_output, output):
    """``dx = dy * y * (1 - y)``; takes sigmoid's OUTPUT y."""
    dy, y = _grad_pair("sigmoid_backward", grad_output, output, "output")
    dx = np.subtract(1, y, dtype=y.dtype)
    dx *= y
    dx *= dy
    return dx


def tanh(input):
    """``tanh(x)``."""
    return np.tanh(_float("tanh", "input", input))


def tanh_backward(grad_output, output):
    """``dx = dy * (1 - y^2)``; takes tanh's OUTPUT y."""
    dy, y = _grad_pair("tanh_backward", grad_output, output, "output")
    dx = np.multiply(y, y, out=np.empty_like(y))    # an array even for 0-d inputs
    np.subtract(1, dx, out=dx)
    dx *= dy
    return dx


def _prelu_weight(fname, x, weight, dtype):
    w = as_array(fname, "weight", weight)
    channels = x.shape[1] if x.ndim >= 2 else 1
    if w.ndim != 1 or w.shape[0] not in (1, channels):
        raise ValueError(f"{fname}: weight must have shape (1,) or (C,) = ({channels},) (C the "
                         f"channels on dim 1 of input {x.shape}), got {w.shape}")
    w = np.asarray(w, dtype=dtype)
    if w.shape[0] == 1 or x.ndim < 2:
        return w.reshape(()) if w.shape[0] == 1 else w
    return w.reshape((channels,) + (1,) * (x.ndim - 2))


def prelu(input, weight):
    """``x if x > 0 else weight * x``, as torch: weight (1,) shared, or (C,) per channel on
    dim 1 (inputs with fewer than 2 dims have one channel)."""
    x = as_array("prelu", "input", input)
    dtype = float_dtype(x, as_array("prelu", "weight", weight))
    x = np.asarray(x, dtype=dtype)
    w = _prelu_weight("prelu", x, weight, dtype)
    return np.where(x > 0, x, w * x)


def prelu_backward(grad_output, input, weight):
    """Gradients of :func:`prelu`: ``(grad_input, grad_weight)``; takes the input.

    grad_input = dy if x > 0 else weight * dy; grad_weight sums dy * x over x <= 0, over all
    dims but the channel dim (over everything for a single weight), weight's shape.
    """
    fname = "prelu_backward"
    dy, x = _grad_pair(fname, grad_output, input, "input")
    wa = as_array(fname, "weight", weight)
    dtype = float_dtype(dy, x, wa)
    dy, x = dy.astype(dtype, copy=False), x.astype(dtype, copy=False)
    w = _prelu_weight(fname, x, weight, dtype)
    pos = x > 0
    gx = np.where(pos, dy, w * dy)
    contrib = np.where(pos, dtype.type(0), dy * x)
    if wa.shape[0] == 1 or x.ndim < 2:
        gw = contrib.sum(dtype=np.float64).reshape(1)
    else:
        gw = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)), dtype=np.float64)
    return gx, gw.astype(dtype)


def _softmax_view(fname, x, dim):
    if x.ndim == 0:
        raise ValueError(f"{fname}: input must have at least 1 dim, got a 0-d array")
    dim = as_int(fname, "dim", dim)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{fname}: dim must be in [{-x.ndim}, {x.ndim - 1}] for input of "
                         f"shape {x.shape}, got {dim}")
    dim %= x.ndim
    return (math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:]))


def _softmax(fname, input, dim, take_log):
    x = as_array(fname, "input", input)
    view = _softmax_view(fname, x, dim)
    dtype = float_dtype(x)
    out = _memory.empty(x.shape, dtype)
    if x.size:
        _act.softmax_forward(contiguous(x, dtype).reshape(view), out.reshape(view), take_log,
                             get_num_threads())
    return out


def _softmax_back(fname, grad_output, output, dim, take_log):
    dy, y = _grad_pair(fname, grad_output, output, "output")
    view = _softmax_view(fname, y, dim)
    dtype = y.dtype
    dx = _memory.empty(y.shape, dtype)
    if y.size:
        _act.softmax_backward(contiguous(dy, dtype).reshape(view),
                              contiguous(y, dtype).reshape(view), dx.reshape(view), take_log,
                              get_num_threads())
    return dx


def softmax(input, dim):
    """``exp(x - max) / sum(exp(x - max))`` along ``dim`` (any axis; the max is subtracted,
    so huge logits do not overflow)."""
    return _softmax("softmax", input, dim, False)


def log_softmax(input, dim):
    """``x - max - log(sum(exp(x - max)))`` along ``dim`` (finite for logits of +-1e4)."""
    return _softmax("log_softmax", input, dim, True)


def softmax_backward(grad_output, output, dim):
    """``dx = y * (dy - sum(dy * y, dim))``; takes softmax's OUTPUT y."""
    return _softmax_back("softmax_backward", grad_output, output, dim, False)


def log_softmax_backward(grad_output, output, dim):
    """``dx = dy - exp(y) * sum(dy, dim)``; takes log_softmax's OUTPUT y."""
    return _softmax_back("log_softmax_backward", grad_output, output, dim, True)
