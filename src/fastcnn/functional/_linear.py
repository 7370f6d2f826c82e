"""Linear (fully connected) layer op."""
from __future__ import annotations

import math

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, check_ndim, contiguous, float_dtype
from fastcnn._ops import gemm as _gemm
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn.functional._common import _mask3

__all__ = ["linear", "linear_backward"]


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------

def _linear_args(fname, input, weight):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    check_ndim(fname, "weight", w, (2,), "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{fname}: input must have in_features = weight.shape[1] = {w.shape[1]} "
                         f"as its last dim, got input of shape {x.shape}")
    _checks.check_extent(fname, "weight shape", w.shape)
    _checks.check_extent(fname, "input rows x in_features", (x.size // max(x.shape[-1], 1),
                                                           x.shape[-1]))
    return x, w


def _matmul(a, b, trans_a, trans_b):
    """op(a) @ op(b) for C-contiguous 2-D arrays of one float dtype, on the OpenMP team."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    out = _memory.empty((m, n), a.dtype)
    with single_threaded_blas:
        _gemm.matmul(a, b, out, trans_a, trans_b, get_num_threads())
    return out


def linear(input, weight, bias=None):
    """``y = x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) ->
    (*, out_features). One GEMM over all leading dims at once, split over the OpenMP team
    (_ops/gemm.pyx).
    """
    fname = "linear"
    x, w = _linear_args(fname, input, weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    dtype = float_dtype(x, w, b)
    out_f, in_f = w.shape
    rows = math.prod(x.shape[:-1])       # explicit: reshape(-1, 0) is ambiguous
    x2 = contiguous(x, dtype).reshape(rows, in_f)
    out = _matmul(x2, contiguous(w, dtype), trans_a=False, trans_b=True)
    if b is not None:
        out += _checks.optional_vector(fname, "bias", b, out_f, dtype)
    return out.reshape(x.shape[:-1] + (out_f,))


def linear_backward(grad_output, input, weight, output_mask=(True, True, True)):
    """Gradients of :func:`linear`: ``(grad_input, grad_weight, grad_bias)``.

    With the leading dims flattened (x2 (B, in), dy2 (B, out)):
    grad_input = dy @ weight, grad_weight = dy2.T @ x2, grad_bias = dy2.sum(0). Entries whose
    output_mask flag is False are None.
    """
    fname = "linear_backward"
    x, w = _linear_args(fname, input, weight)
    dy = as_array(fname, "grad_output", grad_output)
    out_f, in_f = w.shape
    if dy.shape != x.shape[:-1] + (out_f,):
        raise ValueError(f"{fname}: grad_output must have shape {x.shape[:-1] + (out_f,)}, got "
                         f"{dy.shape}")
    need_x, need_w, need_b = _mask3(fname, output_mask)
    dtype = float_dtype(x, w, dy)
    rows = math.prod(x.shape[:-1])       # explicit: reshape(-1, 0) is ambiguous
    dy2 = contiguous(dy, dtype).reshape(rows, out_f)
    gx = gw = gb = None
    if need_x:
        gx = _matmul(dy2, contiguous(w, dtype), trans_a=False, trans_b=False).reshape(x.shape)
    if need_w:
        gw = _matmul(dy2, contiguous(x, dtype).reshape(rows, in_f), trans_a=True,
                     trans_b=False)
    if need_b:
        gb = dy2.sum(axis=0)
    return gx, gw, gb
