"""``synthetic``: a small generated set a CNN learns in seconds, for tests and smoke runs."""
from __future__ import annotations

import numpy as np

from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset


def _class_templates(num_classes: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """One smooth pattern per class: a Gaussian blob at a class-specific place, per channel.
    ``(num_classes, C, H, W)`` in [0, 1]."""
    channels, height, width = shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    centres = rng.uniform(0.2, 0.8, size=(num_classes, channels, 2)) * (height, width)
    radius = max(1.0, min(height, width) / 6)
    dist2 = ((rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2)
    return np.exp(-dist2 / (2 * radius ** 2))


@register_dataset("synthetic")
def synthetic(n=1000, num_classes=4, shape=(1, 16, 16), seed=0, test_size=None) -> DataSplits:
    """A generated, deterministic classification set for tests and smoke runs.

    Each class is a Gaussian blob at its own position (per channel); a sample is its class's
    blob, scaled by a random brightness and shifted by up to one pixel, plus uniform noise,
    clipped to [0, 1]. Classes are balanced. ``n`` training samples and ``test_size`` test
    samples (default ``n // 5``) of ``shape`` ``(C, H, W)`` (or ``(H, W)``, one channel).
    x: float32 ``(N, C, H, W)``; y: int64 ``(N,)``.
    """
    n = int(n)
    num_classes = int(num_classes)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic: shape must be (C, H, W) or (H, W), got {shape}")
    if num_classes < 2 or n < 1:
        raise ValueError(f"synthetic: need n >= 1 and num_classes >= 2, got {n}, {num_classes}")
    test_size = n // 5 if test_size is None else int(test_size)
    rng = np.random.default_rng(seed)
    templates = _class_templates(num_classes, shape, rng)

    def draw(count):
        labels = rng.permutation(np.arange(count) % num_classes)
        brightness = rng.uniform(0.6, 1.0, size=(count, 1, 1, 1))
        images = templates[labels] * brightness
        # A shift of up to one pixel per sample: one roll per distinct (dy, dx), at most 9.
        shifts = rng.integers(-1, 2, size=(count, 2))
        for dy, dx in np.unique(shifts, axis=0):
            same = np.all(shifts == (dy, dx), axis=1)
            images[same] = np.roll(images[same], (int(dy), int(dx)), axis=(2, 3))
        images = images + rng.uniform(0.0, 0.3, size=images.shape)
        return np.clip(images, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)

    train = draw(n)
    test = draw(test_size) if test_size > 0 else None
    return make_splits("synthetic", train, test, num_classes=num_classes)
