"""Per-channel statistics of the training images and the normalization they define."""
from __future__ import annotations

import numpy as np


def channel_stats(x, chunk: int = 1024) -> tuple:
    """Per-channel mean and (population) standard deviation of ``x`` ``(N, C, ...)``.

    Computed from the training split only, in float64, in chunks of ``chunk`` samples (no
    float64 copy of the whole set). Returns ``(mean (C,), std (C,))`` as float64 arrays;
    ``mean.tolist()`` is what a checkpoint stores.
    """
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"channel_stats: x must be (N, C, ...) with N >= 1, got {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = x.size // x.shape[1]
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        total += x[start:start + chunk].sum(axis=axes, dtype=np.float64)
    mean = total / per_channel
    # Second pass on the centred values: sum of squares minus squared sum cancels badly.
    squares = np.zeros(x.shape[1])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    for start in range(0, len(x), chunk):
        centred = x[start:start + chunk] - mean.reshape(shape)
        flat = centred.reshape(len(centred), x.shape[1], -1)
        squares += np.einsum("ncp,ncp->c", flat, flat)
    return mean, np.sqrt(squares / per_channel)


def normalize(x, mean, std, out=None) -> np.ndarray:
    """``(x - mean) / std`` per channel, as float32.

    x: ``(N, C, ...)``; mean, std: ``(C,)`` (arrays or lists). A channel with ``std == 0``
    (constant in the training data) is only centred. The caller's ``x`` is left unchanged unless
    it is passed as ``out`` (a float32 array of x's shape, written and returned).
    """
    x = np.asarray(x)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if x.ndim < 2 or mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
        raise ValueError(f"normalize: x (N, C, ...) with mean and std of shape (C,), got "
                         f"x {x.shape}, mean {mean.shape}, std {std.shape}")
    if np.any(std < 0):
        raise ValueError(f"normalize: std must be >= 0, got {std.tolist()}")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = (1.0 / np.where(std > 0, std, 1.0)).astype(np.float32).reshape(shape)
    shift = mean.astype(np.float32).reshape(shape)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    elif not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != np.float32:
        raise ValueError(f"normalize: out must be a float32 array of shape {x.shape}")
    np.subtract(x, shift, out=out, casting="unsafe")
    np.multiply(out, scale, out=out)
    return out


def normalization_option(value):
    """The ``data.normalize`` option, checked: ``True`` (the default; also ``None``): the
    per-channel mean and std of the training images; ``False``: none, the model sees the pixels
    as loaded (in [0, 1]); ``{"mean": [...], "std": [...]}``: these values, one per channel
    (std > 0). Returns True, False or a dict of two float lists."""
    if value is None or value is True:
        return True
    if value is False:
        return False
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        out = {}
        for key in ("mean", "std"):
            numbers = value[key] if isinstance(value[key], (list, tuple)) else [value[key]]
            try:
                floats = [float(v) for v in numbers if not isinstance(v, bool)]
            except (TypeError, ValueError):
                floats = []
            if not floats or len(floats) != len(numbers) or not np.all(np.isfinite(floats)):
                raise ValueError(f"data.normalize.{key}: expected a list of finite numbers (one "
                                 f"per channel), got {value[key]!r}")
            out[key] = floats
        if min(out["std"]) <= 0:
            raise ValueError(f"data.normalize.std: must be > 0, got {out['std']}")
        return out
    raise ValueError(f"data.normalize: expected true (the training images' per-channel mean and "
                     f"std), false (no normalization) or {{\"mean\": [...], \"std\": [...]}}, "
                     f"got {value!r}")


def normalization_stats(value, x_train) -> tuple | None:
    """``(mean (C,), std (C,))`` that the ``data.normalize`` option ``value`` asks for, for the
    training images ``x_train`` ``(N, C, H, W)``; None for ``false``."""
    option = normalization_option(value)
    if option is False:
        return None
    if option is True:
        return channel_stats(x_train)
    channels = x_train.shape[1]
    for key in ("mean", "std"):
        if len(option[key]) != channels:
            raise ValueError(f"data.normalize.{key}: the images have {channels} channel(s), "
                             f"got {len(option[key])} values {option[key]}")
    return np.array(option["mean"]), np.array(option["std"])
