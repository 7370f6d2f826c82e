"""Batch-norm folding for inference."""
from __future__ import annotations

import numpy as np

from fastcnn import _checks
from fastcnn._checks import as_array, float_dtype
from fastcnn.functional._norm import _positive_float

__all__ = ["fuse_conv_bn"]


# --------------------------------------------------------------------------------------------
# Batch-norm folding (inference)
# --------------------------------------------------------------------------------------------

def fuse_conv_bn(weight, bias, running_mean, running_var, bn_weight=None, bn_bias=None,
                 eps=1e-5):
    """Fold an eval-mode batch norm into the conv or linear layer before it.

    weight (C_out, ...) (conv (C_out, C_in/groups, *kernel) or linear (out, in)), bias (C_out,)
    or None; the batch norm's running statistics and affine parameters (C_out,). With
    s = bn_weight / sqrt(running_var + eps):

        fused_weight = weight * s (per output channel)
        fused_bias   = (bias - running_mean) * s + bn_bias

    so that ``conv(x, fused_weight, fused_bias) == batch_norm(conv(x, weight, bias), ...)``
    in eval mode. Returns ``(fused_weight, fused_bias)`` in weight's float dtype.
    """
    fname = "fuse_conv_bn"
    w = as_array(fname, "weight", weight)
    if w.ndim < 2:
        raise ValueError(f"{fname}: weight must be (C_out, ...) with at least 2 dims, got shape "
                         f"{w.shape}")
    c = w.shape[0]
    eps = _positive_float(fname, "eps", eps)
    dtype = float_dtype(w)
    vec = {}
    for name, value, default in (("bias", bias, 0.0), ("running_mean", running_mean, None),
                                 ("running_var", running_var, None),
                                 ("bn_weight", bn_weight, 1.0), ("bn_bias", bn_bias, 0.0)):
        if value is None:
            if default is None:
                raise TypeError(f"{fname}: {name} must be an array, got None")
            vec[name] = np.full(c, default)
        else:
            vec[name] = np.asarray(_checks.optional_vector(fname, name, value, c, np.float64))
    if (vec["running_var"] < 0).any():
        raise ValueError(f"{fname}: running_var must be non-negative")
    s = vec["bn_weight"] / np.sqrt(vec["running_var"] + eps)
    fused_w = (w.astype(np.float64) * s.reshape((c,) + (1,) * (w.ndim - 1))).astype(dtype)
    fused_b = ((vec["bias"] - vec["running_mean"]) * s + vec["bn_bias"]).astype(dtype)
    return fused_w, fused_b
