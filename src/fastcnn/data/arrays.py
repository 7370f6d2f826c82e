"""Checks that turn a user's arrays into what every dataset returns: images float32
``(N, C, H, W)`` and labels int64 ``(N,)``, with errors that name the source and say what to do."""
from __future__ import annotations

import numpy as np


def as_images(where: str, x) -> np.ndarray:
    """``x`` as float32 ``(N, C, H, W)``: ``(N, H, W)`` gets a channel axis; integer pixels
    (uint8, or any integer dtype holding 0..255) are divided by 255; floats are cast unchanged.
    Channel-last arrays ``(N, H, W, C)`` with C of 1, 3 or 4 are refused with the transpose
    that fixes them (training them as H channels of W x C images would silently go wrong)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: images must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{where}: images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4) and x.shape[1] > x.shape[-1]:
        raise ValueError(
            f"{where}: images of shape {x.shape} look channel-last (N, H, W, C = "
            f"{x.shape[-1]}); fastcnn takes (N, C, H, W): save x.transpose(0, 3, 1, 2) instead")
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    if x.dtype.kind in "iu":
        low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(f"{where}: integer images must hold pixels 0..255 (scaled by 1/255, "
                             f"as uint8), got values {low}..{high}: convert them to float32 in "
                             f"the scale you want")
        return np.divide(x, np.float32(255), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def as_labels(where: str, y) -> np.ndarray:
    """``y`` as int64 ``(N,)`` of non-negative class indices."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return y


def images_and_labels(where: str, x, y) -> tuple:
    x, y = as_images(where, x), as_labels(where, y)
    if len(x) != len(y):
        raise ValueError(f"{where}: {len(x)} images but {len(y)} labels")
    return x, y
