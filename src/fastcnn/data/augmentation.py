"""Random training-time augmentation (:class:`Augmenter`) from the ``data.augment`` config."""
from __future__ import annotations

import numbers

import numpy as np

from fastcnn.registry import suggest


# Each augmentation's options and their defaults; `true` in a config means "all defaults".
_AUGMENTATIONS = {
    "random_crop": {"padding": 4, "fill": 0.0},
    "horizontal_flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "gaussian_noise": {"std": 0.05},
}


def _augmentation_options(name: str, value) -> dict | None:
    """The options of one augmentation from its config value (true / false / null / dict)."""
    if value is None or value is False:
        return None
    defaults = _AUGMENTATIONS[name]
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict):
        raise ValueError(f"augment.{name}: expected true, false or a dict of options "
                         f"{sorted(defaults)}, got {value!r}")
    for key in value:
        if key not in defaults:
            raise ValueError(f"augment.{name}.{key}: unknown option{suggest(key, defaults)} "
                             f"(options: {', '.join(defaults)})")
    options = {**defaults, **value}
    for key, number in options.items():
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise ValueError(f"augment.{name}.{key}: must be a number, got {number!r}")
    if "p" in options and not 0 <= options["p"] <= 1:
        raise ValueError(f"augment.{name}.p: must be in [0, 1], got {options['p']}")
    if name == "random_crop" and (options["padding"] != int(options["padding"]) or
                                  options["padding"] < 0):
        raise ValueError(f"augment.random_crop.padding: must be an int >= 0, "
                         f"got {options['padding']!r}")
    if name == "gaussian_noise" and options["std"] < 0:
        raise ValueError(f"augment.gaussian_noise.std: must be >= 0, got {options['std']}")
    return options


def _random_crop(batch, rng, padding, fill):
    """Pad by ``padding`` on each side, then crop back to (H, W) at a random offset per sample."""
    padding = int(padding)
    if padding == 0:
        return batch
    n = len(batch)
    padded = np.pad(batch, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                    constant_values=fill)
    height, width = batch.shape[2:]
    # windows[n, c, dy, dx] is the (H, W) crop at offset (dy, dx): a view, nothing copied yet.
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
    dy = rng.integers(0, 2 * padding + 1, size=n)
    dx = rng.integers(0, 2 * padding + 1, size=n)
    # The advanced indices (n, dy, dx) are split by a slice, so their axis comes first:
    # the result is (N, C, H, W).
    return windows[np.arange(n), :, dy, dx]


def _flip(batch, rng, p, axis):
    flip = rng.random(len(batch)) < p
    batch[flip] = np.flip(batch[flip], axis=axis)
    return batch


def _gaussian_noise(batch, rng, std):
    noise = rng.standard_normal(batch.shape, dtype=np.float32)
    batch += (noise * np.float32(std)).astype(batch.dtype, copy=False)
    return batch


class Augmenter:
    """Random training-time augmentation from a config dict, e.g.
    ``{"random_crop": {"padding": 4}, "horizontal_flip": true, "gaussian_noise": {"std": 0.05}}``.

    Augmentations (applied in this order, whatever the dict's order):

    - ``random_crop``: ``padding`` (default 4) pixels of ``fill`` (default 0.0) on every side,
      then a random (H, W) window per sample;
    - ``horizontal_flip`` / ``vertical_flip``: each sample flipped with probability ``p``
      (default 0.5);
    - ``gaussian_noise``: adds normal noise of standard deviation ``std`` (default 0.05).

    ``true`` means the defaults, ``false`` / ``null`` leaves it out. Calling the augmenter
    on a batch ``(N, C, H, W)`` with a ``numpy.random.Generator`` returns an augmented copy of
    the same shape (float32 unless the batch is float64); the same generator state gives the
    same result.
    """

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        for name in config:
            if name not in _AUGMENTATIONS:
                raise ValueError(f"augment.{name}: unknown augmentation"
                                 f"{suggest(name, _AUGMENTATIONS)} "
                                 f"(known: {', '.join(_AUGMENTATIONS)})")
        self.steps = {}
        for name in _AUGMENTATIONS:
            options = _augmentation_options(name, config.get(name))
            if options is not None:
                self.steps[name] = options

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Augmenter({self.steps!r})"

    def to_config(self) -> dict:
        """The enabled augmentations with every option spelled out (JSON-able)."""
        return {name: dict(options) for name, options in self.steps.items()}

    def __call__(self, batch, rng: np.random.Generator) -> np.ndarray:
        """An augmented copy of ``batch`` ``(N, C, H, W)``; ``batch`` itself is not modified."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"Augmenter: batch must be (N, C, H, W), got shape {batch.shape}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"Augmenter: rng must be a numpy.random.Generator, got {rng!r}")
        dtype = np.float64 if batch.dtype == np.float64 else np.float32
        out = np.array(batch, dtype=dtype)  # the copy every step below may write into
        if "random_crop" in self.steps:
            out = _random_crop(out, rng, **self.steps["random_crop"])
        if "horizontal_flip" in self.steps:
            out = _flip(out, rng, self.steps["horizontal_flip"]["p"], axis=3)
        if "vertical_flip" in self.steps:
            out = _flip(out, rng, self.steps["vertical_flip"]["p"], axis=2)
        if "gaussian_noise" in self.steps:
            out = _gaussian_noise(out, rng, self.steps["gaussian_noise"]["std"])
        return out
