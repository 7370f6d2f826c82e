"""Losses: cross-entropy, nll, mse, l1, binary cross-entropy with logits."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, contiguous, float_dtype
from fastcnn._ops import loss as _loss
from fastcnn._threads import get_num_threads
from fastcnn.functional._norm import _unit_float

__all__ = [
    "cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward", "mse_loss",
    "mse_loss_backward", "l1_loss", "l1_loss_backward", "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
]


# --------------------------------------------------------------------------------------------
# Losses (cross-entropy fused with its log-softmax in _ops/loss.pyx; the others are numpy
# expressions). A loss returns a numpy scalar of the input's float dtype ('mean', 'sum') or an
# array ('none'); its backward takes grad_output = dL/dloss (1.0 for a scalar loss) and
# returns dL/dinput.
# --------------------------------------------------------------------------------------------

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(fname, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fname}: reduction must be 'mean', 'sum' or 'none', got "
                         f"{reduction!r}")
    return reduction


def _class_problem(fname, input, target, weight, ignore_index):
    """Checked (x3 (N, C, inner), t2 (N, inner) int64, w (C,) float64, out_shape, dtype)."""
    x = as_array(fname, "input", input)
    if x.ndim < 1:
        raise ValueError(f"{fname}: input must be (C,), (N, C) or (N, C, d1, ...), got a 0-d "
                         f"array")
    t = _checks.to_array(fname, "target", target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{fname}: target must hold integer class indices, got dtype "
                        f"{t.dtype} (probability targets are not supported)")
    batched = x.ndim >= 2
    c = x.shape[1] if batched else x.shape[0]
    expected = (x.shape[:1] + x.shape[2:]) if batched else ()
    if t.shape != expected:
        raise ValueError(f"{fname}: target must have shape {expected} (input's shape without "
                         f"the class dim 1), got {t.shape} for input {x.shape}")
    ignore_index = as_int(fname, "ignore_index", ignore_index)
    bad = ((t < 0) | (t >= c)) & (t != ignore_index)
    if bad.any():
        value = t[bad].reshape(-1)[0]
        raise ValueError(f"{fname}: target values must be class indices in [0, {c}) or "
                         f"ignore_index={ignore_index}, got {value}")
    if weight is None:
        w = np.ones(c)
    else:
        w = np.asarray(_checks.optional_vector(fname, "weight", weight, c, np.float64))
    dtype = float_dtype(x)
    n = x.shape[0] if batched else 1
    inner = math.prod(x.shape[2:]) if batched else 1
    x3 = contiguous(x, dtype).reshape(n, c, inner)
    t2 = np.ascontiguousarray(t, dtype=np.int64).reshape(n, inner)
    return x3, t2, w, expected, dtype, ignore_index


def _grad_per_item(fname, grad_output, reduction, shape, denom):
    """dL/d(per-item loss) as float64 of ``shape``: grad_output (scalar for mean/sum, an
    array of ``shape`` for 'none'), divided by ``denom`` for 'mean'."""
    g = np.asarray(as_array(fname, "grad_output", grad_output), dtype=np.float64)
    if reduction == "none":
        if g.shape != tuple(shape):
            raise ValueError(f"{fname}: grad_output must have the loss's shape {tuple(shape)} "
                             f"for reduction='none', got {g.shape}")
        return g
    if g.size != 1:
        raise ValueError(f"{fname}: grad_output must be a scalar for reduction={reduction!r}, "
                         f"got shape {g.shape}")
    value = float(g.reshape(-1)[0])
    if reduction == "mean":
        value = value / denom if denom else math.nan
    return np.full(shape, value)


def _reduce(per_item, reduction, dtype, denom=None):
    if reduction == "none":
        return per_item.astype(dtype)
    total = per_item.sum()
    if reduction == "mean":
        total = total / denom if denom else math.nan   # torch: nan when nothing counts
    return dtype.type(total)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Cross-entropy of class logits, as ``torch.nn.functional.cross_entropy`` (class-index
    targets).

    input (N, C), (N, C, d1, ...) or (C,); target (N,), (N, d1, ...) or () integers in [0, C)
    or ignore_index; weight (C,) per-class weights. With log p = log_softmax(input, 1), eps the
    label smoothing and w_t the target's weight, each non-ignored position contributes

        l = (1 - eps) * w_t * (-log p_t) + (eps / C) * sum_c w_c * (-log p_c)

    reduction 'none' -> l per position (0 where ignored), 'sum' -> sum l, 'mean' -> sum l /
    sum of w_t over non-ignored positions (torch's weighted mean; nan if all are ignored).
    Logits of +-1e4 give finite results (log-sum-exp after subtracting the max).
    """
    fname = "cross_entropy"
    reduction = _reduction(fname, reduction)
    eps = _unit_float(fname, "label_smoothing", label_smoothing)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    loss = np.zeros(t2.shape)
    wt = np.zeros(t2.shape)
    _loss.cross_entropy_forward(x3, t2, w, ignore_index, eps, loss, wt, get_num_threads())
    return _reduce(loss.reshape(shape), reduction, dtype, wt.sum())


def cross_entropy_backward(grad_output, input, target, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0):
    """dL/dinput of :func:`cross_entropy` (input's shape), grad_output = dL/dloss.

    With p = softmax(input, 1), W = sum_c w_c and g the gradient reaching a position's loss
    (grad_output, divided by sum w_t for 'mean'):

        dx_c = g * ((1 - eps) * w_t * (p_c - [c == t]) + (eps / C) * (W * p_c - w_c))

    and 0 at ignored positions.
    """
    fname = "cross_entropy_backward"
    reduction = _reduction(fname, reduction)
    eps = _unit_float(fname, "label_smoothing", label_smoothing)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    denom = w[np.where(valid, t2, 0)][valid].sum() if reduction == "mean" else None
    g = _grad_per_item(fname, grad_output, reduction, shape, denom)
    dx = _memory.empty(x3.shape, dtype)
    _loss.cross_entropy_backward(x3, t2, w, ignore_index, eps,
                                 np.ascontiguousarray(g).reshape(t2.shape), dx,
                                 get_num_threads())
    return dx.reshape(np.shape(input))


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities, as ``torch.nn.functional.nll_loss``.

    Shapes as :func:`cross_entropy`; per position ``l = -w_t * input[t]`` (0 where ignored);
    'mean' divides the sum by the sum of w_t over non-ignored positions.
    """
    fname = "nll_loss"
    reduction = _reduction(fname, reduction)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    safe = np.where(valid, t2, 0)
    picked = np.take_along_axis(x3, safe[:, None, :], axis=1)[:, 0, :].astype(np.float64)
    wt = np.where(valid, w[safe], 0.0)
    loss = -wt * picked
    return _reduce(loss.reshape(shape), reduction, dtype, wt.sum())


def nll_loss_backward(grad_output, input, target, weight=None, ignore_index=-100,
                      reduction="mean"):
    """dL/dinput of :func:`nll_loss`: ``-g * w_t`` at each target class, 0 elsewhere."""
    fname = "nll_loss_backward"
    reduction = _reduction(fname, reduction)
    x3, t2, w, shape, dtype, ignore_index = _class_problem(fname, input, target, weight,
                                                           ignore_index)
    valid = t2 != ignore_index
    safe = np.where(valid, t2, 0)
    wt = np.where(valid, w[safe], 0.0)
    g = _grad_per_item(fname, grad_output, reduction, shape, wt.sum()).reshape(t2.shape)
    dx = _memory.zeros(x3.shape, dtype)
    np.put_along_axis(dx, safe[:, None, :], (-g * wt)[:, None, :].astype(dtype), axis=1)
    return dx.reshape(np.shape(input))


def _pair(fname, input, target):
    x = as_array(fname, "input", input)
    t = as_array(fname, "target", target)
    if x.shape != t.shape:
        raise ValueError(f"{fname}: target must have the input's shape {x.shape}, got {t.shape}")
    dtype = float_dtype(x, t)
    return np.asarray(x, dtype=dtype), np.asarray(t, dtype=dtype), dtype


def mse_loss(input, target, reduction="mean"):
    """``(input - target)^2``, averaged / summed / per element (input and target same shape)."""
    fname = "mse_loss"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    d = x - t
    d *= d
    return _reduce(d.astype(np.float64, copy=False) if reduction != "none" else d, reduction,
                   dtype, x.size)


def mse_loss_backward(grad_output, input, target, reduction="mean"):
    """``dx = 2 * (input - target) * g`` (g = grad_output, / numel for 'mean')."""
    fname = "mse_loss_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    return (2.0 * (x - t) * g).astype(dtype)


def l1_loss(input, target, reduction="mean"):
    """``|input - target|``, averaged / summed / per element."""
    fname = "l1_loss"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    d = np.abs(x - t)
    return _reduce(d.astype(np.float64, copy=False) if reduction != "none" else d, reduction,
                   dtype, x.size)


def l1_loss_backward(grad_output, input, target, reduction="mean"):
    """``dx = sign(input - target) * g`` (0 where equal, as torch)."""
    fname = "l1_loss_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype = _pair(fname, input, target)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    return (np.sign(x - t) * g).astype(dtype)


def _bce_args(fname, input, target, weight, pos_weight):
    x, t, dtype = _pair(fname, input, target)
    extra = []
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is None:
            extra.append(None)
            continue
        arr = as_array(fname, name, value)
        try:
            ok = np.broadcast_shapes(arr.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{fname}: {name} of shape {arr.shape} must broadcast to the "
                             f"input's shape {x.shape}")
        extra.append(np.asarray(arr, dtype=np.float64))
    return x.astype(np.float64), t.astype(np.float64), dtype, extra[0], extra[1]


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid + binary cross-entropy in one stable expression, as torch's.

    With lw = 1 + (pos_weight - 1) * target (lw = 1 without pos_weight) and
    softplus(z) = log(1 + exp(z)) computed as max(z, 0) + log1p(exp(-|z|)):

        l = weight * ((1 - target) * x + lw * softplus(-x))

    (= -weight * (pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))). weight
    broadcasts to the input; pos_weight too (typically (C,) along the last dim).
    """
    fname = "binary_cross_entropy_with_logits"
    reduction = _reduction(fname, reduction)
    x, t, dtype, w, pw = _bce_args(fname, input, target, weight, pos_weight)
    softplus_neg = np.maximum(-x, 0) + np.log1p(np.exp(-np.abs(x)))
    lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    loss = (1.0 - t) * x + lw * softplus_neg
    if w is not None:
        loss = loss * w
    return _reduce(loss, reduction, dtype, x.size)


def binary_cross_entropy_with_logits_backward(grad_output, input, target, weight=None,
                                              reduction="mean", pos_weight=None):
    """``dx = g * weight * ((1 - target) - lw * sigmoid(-x))`` (= g * weight * (sigmoid(x) -
    target) without pos_weight); g = grad_output, / numel for 'mean'."""
    from scipy.special import expit
    fname = "binary_cross_entropy_with_logits_backward"
    reduction = _reduction(fname, reduction)
    x, t, dtype, w, pw = _bce_args(fname, input, target, weight, pos_weight)
    g = _grad_per_item(fname, grad_output, reduction, x.shape, x.size)
    lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
    dx = (1.0 - t) - lw * expit(-x)
    if w is not None:
        dx = dx * w
    return (dx * g).astype(dtype)
