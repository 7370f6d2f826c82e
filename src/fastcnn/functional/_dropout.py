"""Dropout and dropout2d."""
from __future__ import annotations

import numpy as np

from fastcnn import _checks
from fastcnn._checks import as_array, check_ndim, float_dtype
from fastcnn.functional._activation import _float
from fastcnn.functional._norm import _unit_float

__all__ = ["dropout", "dropout2d", "dropout_backward"]


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------

def _dropout(fname, input, p, training, rng, return_mask, mask_shape_of):
    x = as_array(fname, "input", input)
    p = _unit_float(fname, "p", p)
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fname}: rng must be a numpy.random.Generator or None, got "
                        f"{_checks._describe(rng)}")
    dtype = float_dtype(x)
    x = np.asarray(x, dtype=dtype)
    if not training:
        return (x, None) if return_mask else x
    mask = rng.random(mask_shape_of(x), dtype=np.float32) >= p   # keep with probability 1-p
    out = np.multiply(x, mask, dtype=dtype)
    if p < 1.0:
        out *= dtype.type(1.0 / (1.0 - p))
    return (out, mask) if return_mask else out


def dropout(input, p=0.5, training=True, rng=None, *, return_mask=False):
    """Zero each element with probability p, scale the others by 1/(1-p) (inverted dropout).

    ``rng`` is a numpy.random.Generator (None: a fresh unseeded one). training=False returns
    the input unchanged (as a float array). p=1 gives zeros. With keyword-only
    ``return_mask=True`` returns ``(output, mask)``, mask a bool array of the input's shape
    (None when not training), for :func:`dropout_backward`.
    """
    return _dropout("dropout", input, p, training, rng, return_mask, lambda x: x.shape)


def dropout2d(input, p=0.5, training=True, rng=None, *, return_mask=False):
    """Channel dropout: zero whole (H, W) planes with probability p, scale the others by
    1/(1-p). input (N, C, H, W) or (C, H, W); the mask is (N, C, 1, 1) or (C, 1, 1) and
    broadcasts in :func:`dropout_backward`."""
    x = as_array("dropout2d", "input", input)
    check_ndim("dropout2d", "input", x, (3, 4), "(N, C, H, W) or (C, H, W)")
    return _dropout("dropout2d", x, p, training, rng, return_mask,
                    lambda a: a.shape[:-2] + (1, 1))


def dropout_backward(grad_output, mask, p):
    """``dx = dy * mask / (1 - p)`` (zeros for p = 1); mask from ``dropout(..., return_mask=True)``
    (or dropout2d's, broadcast); mask None (not training) passes dy through."""
    fname = "dropout_backward"
    dy = _float(fname, "grad_output", grad_output)
    p = _unit_float(fname, "p", p)
    if mask is None:
        return dy
    m = _checks.to_array(fname, "mask", mask)
    try:
        ok = np.broadcast_shapes(m.shape, dy.shape) == dy.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{fname}: mask of shape {m.shape} does not broadcast to grad_output's "
                         f"shape {dy.shape}")
    out = np.multiply(dy, m, dtype=dy.dtype)
    if p < 1.0:
        out *= dy.dtype.type(1.0 / (1.0 - p))
    return out
