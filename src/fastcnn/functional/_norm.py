"""Normalization: batch, layer, group and instance norm."""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype
from fastcnn._ops import norm as _norm
from fastcnn._threads import get_num_threads
from fastcnn.functional._common import _fused_activation, _mask3, _rows

__all__ = [
    "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward", "group_norm",
    "group_norm_backward", "instance_norm", "instance_norm_backward",
]


# --------------------------------------------------------------------------------------------
# Normalization (kernels in _ops/norm.pyx)
# --------------------------------------------------------------------------------------------

# Rows are cut into at most this many fixed chunks for the affine-gradient partials of the row
# norms (see norm.pyx): a function of the row count only, so any thread count gives the same bits.
_NORM_GRAD_CHUNKS = 16


def _positive_float(fname, name, value) -> float:
    if type(value) is float and 0.0 < value < math.inf:     # the common case, without the ABC
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a float > 0, got {_checks._describe(value)}")
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{fname}: {name} must be a finite float > 0, got {value!r}")
    return value


def _unit_float(fname, name, value) -> float:
    """A float in [0, 1] (momentum, dropout probability)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a float in [0, 1], got "
                        f"{_checks._describe(value)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{fname}: {name} must be in [0, 1], got {value!r}")
    return value


def _running_stat(fname, name, value, channels):
    """A caller-owned buffer updated in place: a writable float ndarray of shape (channels,)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{fname}: {name} must be a numpy array (it is updated in place), got "
                        f"{_checks._describe(value)}")
    if value.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{fname}: {name} must be float32 or float64 (it is updated in place), "
                        f"got dtype {value.dtype}")
    if value.shape != (channels,):
        raise ValueError(f"{fname}: {name} must have shape ({channels},) (one entry per "
                         f"channel), got {value.shape}")
    return value


def _writable(fname, name, value):
    if not value.flags.writeable:
        raise ValueError(f"{fname}: {name} must be writable (it is updated in place in "
                         f"training), got a read-only array")


def _affine_vector(fname, name, value, shape, dtype):
    """weight/bias of a norm: None, or an array of ``shape`` -> flat contiguous (or empty)."""
    if value is None:
        return np.empty(0, dtype=dtype)
    if (type(value) is np.ndarray and value.dtype == dtype and value.shape == shape
            and len(shape) == 1 and value.flags.c_contiguous):
        return value            # the common case: already a contiguous vector of the dtype
    arr = as_array(fname, name, value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{fname}: {name} must have shape {tuple(shape)}, got {arr.shape}")
    return contiguous(arr, dtype).reshape(-1)


def _grad_like(fname, grad_output, x):
    dy = as_array(fname, "grad_output", grad_output)
    if dy.shape != x.shape:
        raise ValueError(f"{fname}: grad_output must have the input's shape {x.shape}, got "
                         f"{dy.shape}")
    return dy


def _update_running(running, batch_value, factor):
    """running = (1 - factor) * running + factor * batch_value, in place in running's dtype."""
    new = (1.0 - factor) * running.astype(np.float64) + factor * batch_value
    running[...] = new


def _momentum_factor(fname, momentum, num_batches_tracked, training):
    """torch's exponential_average_factor; increments num_batches_tracked in training."""
    if num_batches_tracked is not None:
        if (not isinstance(num_batches_tracked, np.ndarray)
                or num_batches_tracked.dtype.kind not in "iu" or num_batches_tracked.size != 1):
            raise TypeError(f"{fname}: num_batches_tracked must be an integer numpy array of "
                            f"one element (updated in place), got "
                            f"{_checks._describe(num_batches_tracked)}")
        _writable(fname, "num_batches_tracked", num_batches_tracked)
    if momentum is None:
        if training and num_batches_tracked is None:
            raise ValueError(f"{fname}: momentum=None (cumulative moving average) needs "
                             f"num_batches_tracked, an integer array counting the batches seen")
        if training:
            num_batches_tracked += 1
            return 1.0 / float(num_batches_tracked.reshape(-1)[0])
        return 0.0
    momentum = _unit_float(fname, "momentum", momentum)
    if training and num_batches_tracked is not None:
        num_batches_tracked += 1
    return momentum


def _bn_layout(fname, x):
    check_ndim(fname, "input", x, (2, 3, 4, 5), "(N, C), (N, C, L), (N, C, H, W) or "
                                                "(N, C, D, H, W)")
    n, c = x.shape[:2]
    return n, c, math.prod(x.shape[2:])


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_batches_tracked=None, return_stats=False,
               activation=None):
    """Batch normalization over the channel axis 1, as ``torch.nn.functional.batch_norm``.

    input (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); running_mean, running_var,
    weight, bias (C,). With M = N * prod(spatial) values per channel c:

        y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

    training=True: mean_c and the biased var_c are the batch's (two passes -- shifted mean, then
    squared deviations -- with block sums carried in double: stable for a large mean), and the
    running statistics, when given, are updated IN PLACE (they are the caller's float arrays)
    with torch's convention

        running_mean = (1 - momentum) * running_mean + momentum * mean_c
        running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)  (unbiased)

    momentum=None uses a cumulative moving average, factor 1/num_batches_tracked: pass the
    counter as keyword-only ``num_batches_tracked`` (an integer numpy array of one element, as
    torch's buffer), which training increments in place (also when momentum is a float).
    training=False normalizes with running_mean and running_var (both required).

    ``return_stats=True`` (keyword-only) returns ``(y, save_mean, save_invstd)``: float64 (C,)
    arrays of the statistics used, which :func:`batch_norm_backward` accepts to skip a pass.

    ``activation="relu"`` (keyword-only) returns ``max(y, 0)`` from the same sweep (NaN kept),
    as ``relu(batch_norm(...))`` without the ReLU's own pass over the activation; its backward
    is :func:`batch_norm_backward` with the same ``activation`` and ``bias``.
    """
    fname = "batch_norm"
    x = as_array(fname, "input", input)
    n, c, s = _bn_layout(fname, x)
    eps = _positive_float(fname, "eps", eps)
    relu = _fused_activation(fname, activation) == "relu"
    training = bool(training)
    factor = _momentum_factor(fname, momentum, num_batches_tracked, training)
    if running_mean is not None:
        _running_stat(fname, "running_mean", running_mean, c)
    if running_var is not None:
        _running_stat(fname, "running_var", running_var, c)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fname}: running_mean and running_var must be both given or both "
                         f"None")
    if not training and running_mean is None:
        raise ValueError(f"{fname}: running_mean and running_var are required when "
                         f"training=False (evaluation normalizes with them)")
    if training and running_mean is not None:
        _writable(fname, "running_mean", running_mean)
        _writable(fname, "running_var", running_var)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), np.float64)
    b = _affine_vector(fname, "bias", bias, (c,), np.float64)
    m = n * s
    if training and m <= 1:
        raise ValueError(f"{fname}: expected more than 1 value per channel when training, got "
                         f"input of shape {x.shape}")
    x3 = contiguous(x, dtype).reshape(n, c, s)
    out = _memory.empty(x.shape, dtype)
    threads = get_num_threads()
    if training:
        mean, var, invstd = np.empty(c), np.empty(c), np.empty(c)
        _norm.channel_train_forward(x3, w, b, eps, out.reshape(n, c, s), mean, var, invstd,
                                    relu, threads)
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        scale = invstd * w if w.size else invstd
        shift = b if b.size else np.zeros(c)
        if m:
            _norm.channel_affine(x3, mean, scale, shift, out.reshape(n, c, s), relu, threads)
    if training and running_mean is not None:
        _update_running(running_mean, mean, factor)
        _update_running(running_var, var * (m / (m - 1)), factor)
    if return_stats:
        return out, mean, invstd
    return out


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5, *, save_mean=None, save_invstd=None,
                        output_mask=(True, True, True), bias=None, activation=None):
    """Gradients of :func:`batch_norm`: ``(grad_input, grad_weight, grad_bias)``.

    grad_output is dL/dy (the input's shape). Per channel, with M values, xhat the normalized
    input and invstd = 1/sqrt(var + eps):

        training:  dx = (invstd / M) * (M * dy * w - sum(dy) * w - xhat * sum(dy * xhat) * w)
        eval:      dx = dy * w * invstd_running          (the statistics are constants)
        grad_weight = sum(dy * xhat),   grad_bias = sum(dy)

    (w = 1 without weight). In training the batch statistics are recomputed from ``input``
    unless keyword-only ``save_mean`` and ``save_invstd`` (from ``batch_norm(...,
    return_stats=True)``) are given; in eval running_mean and running_var are required.
    grad_weight and grad_bias are None when weight is None (no affine transform), and any
    entry is None when its ``output_mask`` flag is False.

    With keyword-only ``activation="relu"``, grad_output is the gradient of
    ``batch_norm(..., activation="relu")``'s output: it is masked by that output's sign, which
    is recomputed from ``input`` (with the statistics, ``weight`` and keyword-only ``bias`` the
    forward used: give the same ones) by the forward's own expression, so exactly y > 0.
    """
    fname = "batch_norm_backward"
    x = as_array(fname, "input", input)
    n, c, s = _bn_layout(fname, x)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    relu = _fused_activation(fname, activation) == "relu"
    need_x, need_w, need_b = _mask3(fname, output_mask)
    if weight is None:
        need_w = need_b = False
    w = _affine_vector(fname, "weight", weight, (c,), np.float64)
    dtype = float_dtype(x, dy)
    x3 = contiguous(x, dtype).reshape(n, c, s)
    dy3 = contiguous(dy, dtype).reshape(n, c, s)
    m = n * s
    threads = get_num_threads()
    if training:
        if (save_mean is None) != (save_invstd is None):
            raise ValueError(f"{fname}: save_mean and save_invstd must be both given or both "
                             f"None")
        if save_mean is not None:
            mean = _affine_vector(fname, "save_mean", save_mean, (c,), np.float64)
            invstd = _affine_vector(fname, "save_invstd", save_invstd, (c,), np.float64)
        else:
            if m <= 1:
                raise ValueError(f"{fname}: expected more than 1 value per channel when "
                                 f"training, got input of shape {x.shape}")
            mean, var = np.empty(c), np.empty(c)
            _norm.channel_stats(x3, mean, var, threads)
            invstd = 1.0 / np.sqrt(var + eps)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"training=False")
        mean = _affine_vector(fname, "running_mean", running_mean, (c,), np.float64)
        var = _affine_vector(fname, "running_var", running_var, (c,), np.float64)
        invstd = 1.0 / np.sqrt(var + eps)
    wv = w if w.size else np.ones(c)
    none = np.empty(0)
    fscale = fshift = none
    if relu:        # the forward's scale and shift, formed as it formed them
        b = _affine_vector(fname, "bias", bias, (c,), np.float64)
        fscale = invstd * w if w.size else invstd
        fshift = b if b.size else np.zeros(c)
    sum_dy = np.zeros(c)
    sum_dy_xmu = np.zeros(c)
    grad_x = None
    if training and need_x:
        # one fused kernel: the sums, then dx, channel by channel (cache-friendly)
        grad_x = _memory.empty(x.shape, dtype)
        if m:
            _norm.channel_train_backward(dy3, x3, mean, invstd, w, fscale, fshift,
                                         grad_x.reshape(n, c, s), sum_dy, sum_dy_xmu, threads)
        need_x = False
    elif m and (need_w or need_b):
        _norm.channel_grad_sums(dy3, x3, mean, fscale, fshift, sum_dy, sum_dy_xmu, threads)
    if need_x:
        # eval: the statistics are constants, dx = dy * w * invstd
        grad_x = _memory.empty(x.shape, dtype)
        zeros = np.zeros(c)
        if m:
            _norm.channel_grad_apply(dy3, x3, mean, wv * invstd, zeros, zeros, fscale, fshift,
                                     grad_x.reshape(n, c, s), threads)
    grad_w = (sum_dy_xmu * invstd).astype(dtype) if need_w else None
    grad_b = sum_dy.astype(dtype) if need_b else None
    return grad_x, grad_w, grad_b


# A batch norm layer's own calls in training (layers/norm.py): its operands are checked once,
# when it is built, so these skip batch_norm's and batch_norm_backward's checks and run the same
# kernels (the same bits). In a train step every one of batch_norm's small numpy calls and
# checks runs with cold caches: ResNet-18-like resnet_small at batch 32, 9 batch norms, spent
# 71 us a forward and 62 us a backward around kernels of 93 and 130 us.

def _layer_ready(x, c, dtype):
    """Whether a layer's input can take the fast path: a C-contiguous, aligned array of the
    layer's dtype with c channels and more than one value per channel."""
    return (type(x) is np.ndarray and x.dtype == dtype and dtype in _FLOATS
            and 2 <= x.ndim <= 5 and x.shape[1] == c and x.flags.c_contiguous
            and x.flags.aligned and x.size > c)


def _batch_norm_train(x, running_mean, running_var, weight, bias, factor, eps, relu):
    """batch_norm(x, ..., training=True, return_stats=True, activation="relu" if relu) for a
    layer's own operands: x passed _layer_ready; weight, bias (C,) of x's dtype or None;
    running_mean, running_var writable (C,) or both None; factor the resolved momentum."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    out = _memory.empty(x.shape, x.dtype)
    stats = np.empty((3, c))
    mean, var, invstd = stats
    w = _NONE if weight is None else weight.astype(np.float64)
    b = _NONE if bias is None else bias.astype(np.float64)
    _norm.channel_train_forward(x3, w, b, eps, out.reshape(x3.shape), mean, var, invstd, relu,
                                get_num_threads())
    if running_mean is not None:
        m = n * x3.shape[2]
        _norm.running_update(running_mean, mean, 1.0, factor)
        _norm.running_update(running_var, var, m / (m - 1), factor)
    return out, mean, invstd


def _batch_norm_train_backward(dy, x, weight, bias, mean, invstd, relu):
    """batch_norm_backward(dy, x, weight, training=True, save_mean=mean, save_invstd=invstd,
    bias=bias, activation="relu" if relu) for a layer's own operands (those of
    _batch_norm_train; dy passed _layer_ready with x's shape): (grad_input, grad_weight,
    grad_bias), the last two None without weight."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    w = _NONE if weight is None else weight.astype(np.float64)
    fscale = fshift = _NONE
    if relu:        # the forward's scale and shift, formed as it formed them
        fscale = invstd * w if w.size else invstd
        fshift = np.zeros(c) if bias is None else bias.astype(np.float64)
    sums = np.zeros((2, c))
    grad_x = _memory.empty(x.shape, x.dtype)
    _norm.channel_train_backward(dy.reshape(x3.shape), x3, mean, invstd, w, fscale, fshift,
                                 grad_x.reshape(x3.shape), sums[0], sums[1], get_num_threads())
    if weight is None:
        return grad_x, None, None
    return grad_x, (sums[1] * invstd).astype(x.dtype), sums[0].astype(x.dtype)


_NONE = np.empty(0)
_NONE.flags.writeable = False
# an absent weight or bias as the kernels take it, per float dtype (read-only: shared)
_EMPTY = {np.dtype(t).char: np.empty(0, dtype=t) for t in (np.float32, np.float64)}
for _e in _EMPTY.values():
    _e.flags.writeable = False
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _rows_forward(fname, x, rows, groups, k, weight, bias, eps):
    """out, (mean, rstd) of the row norm of x viewed as (rows, M); affine indexed by g*k + kk;
    weight and bias as _affine_vector gives them (contiguous, x's float dtype, or empty)."""
    dtype = float_dtype(x)
    return _rows_forward_checked(contiguous(x, dtype), rows, groups, k, weight, bias, eps,
                                 dtype)


def _rows_forward_checked(x, rows, groups, k, weight, bias, eps, dtype):
    """_rows_forward once x is a C-contiguous aligned array of the float ``dtype``."""
    out = _memory.empty(x.shape, dtype)
    stats = np.empty((2, rows))
    if x.size:
        _norm.rows_forward(x.reshape(rows, -1), weight, bias, groups, k, eps,
                           out.reshape(rows, -1), stats, get_num_threads())
    return out, stats


def _rows_backward(fname, dy, x, rows, groups, k, weight, eps, need_x, need_wb, affine_shape):
    """(grad_input, sum dy*xhat, sum dy) of the row norm; the sums reshaped to affine_shape."""
    dtype = float_dtype(x, dy)
    x2 = _rows(contiguous(x, dtype), rows)
    dy2 = contiguous(dy, dtype).reshape(x2.shape)
    threads = get_num_threads()
    gx = _memory.empty(x.shape, dtype) if need_x else None
    chunks = max(1, min(rows, _NORM_GRAD_CHUNKS))
    width = groups * k
    gw_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    gb_parts = np.zeros((chunks, width) if need_wb else (0, 0))
    if x.size:
        _norm.rows_backward(dy2, x2, eps, contiguous(weight, dtype), groups, k,
                            gx.reshape(x2.shape) if need_x else np.empty((0, 0), dtype),
                            gw_parts, gb_parts, threads)
    elif need_x:
        gx[...] = 0
    sums = None
    if need_wb:
        # partials added in chunk order: the same bits for any number of threads
        sums = (gw_parts.sum(axis=0).astype(dtype).reshape(affine_shape),
                gb_parts.sum(axis=0).astype(dtype).reshape(affine_shape))
    return gx, sums


def _normalized_shape(fname, x, normalized_shape):
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    else:
        try:
            shape = tuple(operator.index(v) for v in normalized_shape)
        except TypeError:
            raise TypeError(f"{fname}: normalized_shape must be an int or a tuple of ints, got "
                            f"{normalized_shape!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"{fname}: normalized_shape must be non-empty with positive sizes, got "
                         f"{normalized_shape!r}")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"{fname}: normalized_shape {shape} must match the trailing dims of "
                         f"input, got input of shape {x.shape}")
    return shape


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization over the trailing dims, as ``torch.nn.functional.layer_norm``.

    input (*, *normalized_shape); weight, bias of shape normalized_shape. Each of the
    R = prod(*) rows of M = prod(normalized_shape) values is normalized on its own:

        y = (x - mean_row) / sqrt(var_row + eps) * weight + bias      (biased variance)
    """
    fname = "layer_norm"
    x = as_array(fname, "input", input)
    shape = _normalized_shape(fname, x, normalized_shape)
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, shape, dtype)
    b = _affine_vector(fname, "bias", bias, shape, dtype)
    m = math.prod(shape)
    rows = x.size // m
    # without an affine transform, a row is one "channel" of m values (one tight loop)
    k = m if (w.size or b.size) else 1
    return _rows_forward(fname, x, rows, 1, k, w, b, eps)[0]


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None,
                        eps=1e-5, output_mask=(True, True, True)):
    """Gradients of :func:`layer_norm`: ``(grad_input, grad_weight, grad_bias)``.

    Per row of M values, with xhat the normalized input and g = grad_output * weight:

        dx = invstd / M * (M * g - sum(g) - xhat * sum(g * xhat))
        grad_weight = sum over rows of grad_output * xhat,   grad_bias = sum of grad_output

    grad_weight is None when weight is None, grad_bias when bias is None (and any entry whose
    output_mask flag is False).
    """
    fname = "layer_norm_backward"
    x = as_array(fname, "input", input)
    shape = _normalized_shape(fname, x, normalized_shape)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, shape, dtype)
    _affine_vector(fname, "bias", bias, shape, dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    m = math.prod(shape)
    rows = x.size // m
    gx, sums = _rows_backward(fname, dy, x, rows, 1, m, w, eps, need_x, need_w or need_b,
                              shape)
    return gx, sums[0] if need_w else None, sums[1] if need_b else None


def _group_layout(fname, x, num_groups):
    if not 2 <= x.ndim <= 32:
        raise ValueError(f"{fname}: input must be (N, C, *spatial), 2-D to 32-D, got shape "
                         f"{x.shape}")
    n, c = x.shape[:2]
    g = (num_groups if type(num_groups) is int and num_groups >= 1
         else as_int(fname, "num_groups", num_groups, minimum=1))
    if c % g:
        raise ValueError(f"{fname}: num_groups = {g} must divide the number of channels "
                         f"C = {c} (input shape {x.shape})")
    return n, c, g


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization, as ``torch.nn.functional.group_norm``.

    input (N, C, *spatial), C divisible by num_groups = G; weight, bias (C,). Each sample's
    channels are split into G groups of C/G consecutive channels; each group's
    M = C/G * prod(spatial) values are normalized together, then scaled per channel:

        y[n, c] = (x[n, c] - mean_{n,g}) / sqrt(var_{n,g} + eps) * weight[c] + bias[c]
    """
    fname = "group_norm"
    x = input
    # The common case (a contiguous float array, an int, a float, weight and bias None or
    # contiguous vectors of its dtype) checked in one pass: every call pays the checks, and on
    # a 16x64x28x28 batch (0.12 ms, at the rate of a copy) their function calls cost more than
    # the kernel's lead over torch. Anything else goes through the checks below.
    if (type(x) is np.ndarray and type(num_groups) is int and type(eps) is float
            and 2 <= x.ndim <= 32 and num_groups >= 1 and 0.0 < eps < math.inf
            and x.dtype in _FLOATS and x.shape[1] % num_groups == 0
            and x.flags.c_contiguous and x.flags.aligned):
        dtype, c = x.dtype, x.shape[1]
        if ((weight is None or (type(weight) is np.ndarray and weight.dtype == dtype
                                and weight.shape == (c,) and weight.flags.c_contiguous))
                and (bias is None or (type(bias) is np.ndarray and bias.dtype == dtype
                                      and bias.shape == (c,) and bias.flags.c_contiguous))):
            empty = _EMPTY[dtype.char]
            return _rows_forward_checked(x, x.shape[0] * num_groups, num_groups,
                                         c // num_groups, empty if weight is None else weight,
                                         empty if bias is None else bias, eps, dtype)[0]
    x = as_array(fname, "input", input)
    n, c, g = _group_layout(fname, x, num_groups)
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    b = _affine_vector(fname, "bias", bias, (c,), dtype)
    return _rows_forward(fname, x, n * g, g, c // g, w, b, eps)[0]


def group_norm_backward(grad_output, input, num_groups, weight=None, bias=None, eps=1e-5,
                        output_mask=(True, True, True)):
    """Gradients of :func:`group_norm`: ``(grad_input, grad_weight, grad_bias)``.

    The layer-norm formula per (sample, group) of M values, with g = grad_output * weight[c]:
    dx = invstd / M * (M * g - sum(g) - xhat * sum(g * xhat)); grad_weight[c] and grad_bias[c]
    sum grad_output * xhat and grad_output over the batch and spatial axes. grad_weight is None
    when weight is None, grad_bias when bias is None.
    """
    fname = "group_norm_backward"
    x = as_array(fname, "input", input)
    n, c, g = _group_layout(fname, x, num_groups)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    _affine_vector(fname, "bias", bias, (c,), dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    gx, sums = _rows_backward(fname, dy, x, n * g, g, c // g, w, eps, need_x,
                              need_w or need_b, (c,))
    return gx, sums[0] if need_w else None, sums[1] if need_b else None


def _instance_layout(fname, x):
    check_ndim(fname, "input", x, (3, 4, 5), "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
    n, c = x.shape[:2]
    return n, c, math.prod(x.shape[2:])


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Instance normalization, as ``torch.nn.functional.instance_norm``.

    input (N, C, *spatial) with 1 to 3 spatial dims; running_mean, running_var, weight, bias
    (C,). use_input_stats=True: each (sample, channel) plane of S = prod(spatial) values is
    normalized with its own mean and biased variance,

        y[n, c] = (x[n, c] - mean_{n,c}) / sqrt(var_{n,c} + eps) * weight[c] + bias[c]

    and the running statistics, when given, are updated in place with the batch average of the
    plane statistics (unbiased variance), torch's momentum convention:
    running = (1 - momentum) * running + momentum * mean_n(stat_{n,c}).
    use_input_stats=False normalizes every plane with running_mean and running_var (required).
    """
    fname = "instance_norm"
    x = as_array(fname, "input", input)
    n, c, s = _instance_layout(fname, x)
    eps = _positive_float(fname, "eps", eps)
    momentum = _unit_float(fname, "momentum", momentum)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fname}: running_mean and running_var must be both given or both "
                         f"None")
    if running_mean is not None:
        _running_stat(fname, "running_mean", running_mean, c)
        _running_stat(fname, "running_var", running_var, c)
        if use_input_stats:
            _writable(fname, "running_mean", running_mean)
            _writable(fname, "running_var", running_var)
    dtype = float_dtype(x)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    b = _affine_vector(fname, "bias", bias, (c,), dtype)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"use_input_stats=False")
        # every plane normalized with the channel's running statistics: eval batch norm
        return batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    if s <= 1:
        raise ValueError(f"{fname}: expected more than 1 spatial element per channel, got "
                         f"input of shape {x.shape}")
    out, (mean, rstd) = _rows_forward(fname, x, n * c, c, 1, w, b, eps)
    if running_mean is not None and n:
        # the plane variances back from rstd (exact to ~1e-16 * eps, clamped: never < 0)
        var = np.maximum(1.0 / (rstd * rstd) - eps, 0.0) * (s / (s - 1))
        _update_running(running_mean, mean.reshape(n, c).mean(axis=0), momentum)
        _update_running(running_var, var.reshape(n, c).mean(axis=0), momentum)
    return out


def instance_norm_backward(grad_output, input, running_mean=None, running_var=None,
                           weight=None, bias=None, use_input_stats=True, eps=1e-5,
                           output_mask=(True, True, True)):
    """Gradients of :func:`instance_norm`: ``(grad_input, grad_weight, grad_bias)``.

    use_input_stats=True: the layer-norm formula per (sample, channel) plane;
    use_input_stats=False: dx = grad_output * weight / sqrt(running_var + eps). grad_weight and
    grad_bias sum grad_output * xhat and grad_output over batch and space; None when weight
    (resp. bias) is None.
    """
    fname = "instance_norm_backward"
    x = as_array(fname, "input", input)
    n, c, s = _instance_layout(fname, x)
    dy = _grad_like(fname, grad_output, x)
    eps = _positive_float(fname, "eps", eps)
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, dy)
    w = _affine_vector(fname, "weight", weight, (c,), dtype)
    _affine_vector(fname, "bias", bias, (c,), dtype)
    need_w = need_w and weight is not None
    need_b = need_b and bias is not None
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fname}: running_mean and running_var are required when "
                             f"use_input_stats=False")
        _affine_vector(fname, "running_mean", running_mean, (c,), np.float64)
        _affine_vector(fname, "running_var", running_var, (c,), np.float64)
        gx, gw, gb = batch_norm_backward(dy, x, weight if weight is not None else np.ones(c),
                                         running_mean, running_var, training=False, eps=eps,
                                         output_mask=(need_x, need_w, need_b))
        return gx, gw, gb
    if s <= 1:
        raise ValueError(f"{fname}: expected more than 1 spatial element per channel, got "
                         f"input of shape {x.shape}")
    gx, sums = _rows_backward(fname, dy, x, n * c, c, 1, w, eps, need_x, need_w or need_b,
                              (c,))
    return gx, sums[0] if need_w else None, sums[1] if need_b else None
