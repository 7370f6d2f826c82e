"""Mini-batches over ``(x, y)``, in order or shuffled by a seeded generator."""
from __future__ import annotations

import numbers

import numpy as np


def batches(x, y, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
            drop_last: bool = False):
    """Yield ``(xb, yb)`` mini-batches covering ``x`` ``(N, ...)`` and ``y`` ``(N,)`` once.

    In order, the batches are views of ``x`` and ``y``; shuffled (``rng``, a
    ``numpy.random.Generator``, is then required, so a seed reproduces the order), copies.
    The last batch is smaller when ``batch_size`` does not divide N, or left out with
    ``drop_last``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batches: batch_size must be an int >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"batches: {len(x)} samples but {len(y)} labels")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"batches: shuffle=True needs rng=numpy.random.Generator, got {rng!r}")
    n = len(x)
    order = rng.permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            picked = order[start:end]
            yield x[picked], y[picked]
