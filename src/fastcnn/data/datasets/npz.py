"""``npz``: arrays ``x``, ``y`` (optionally ``x_test``, ``y_test``) from a ``.npz`` file."""
from __future__ import annotations

import os

import numpy as np

from fastcnn.data.arrays import images_and_labels
from fastcnn.data.splits import DataSplits, make_splits
from fastcnn.registry import register_dataset


@register_dataset("npz")
def npz(path=None, num_classes=None) -> DataSplits:
    """Arrays from a ``.npz`` file ``path`` (read with ``allow_pickle=False``): ``x`` and ``y``,
    optionally ``x_test`` and ``y_test`` (both or neither).

    ``x`` is ``(N, H, W)`` (a channel axis is added) or ``(N, C, H, W)``; uint8 is divided by
    255, other real dtypes are used as they are. ``y`` is integer ``(N,)``. ``num_classes``
    defaults to the largest label + 1. Returns float32 x ``(N, C, H, W)``, int64 y ``(N,)``.
    """
    if path is None:
        raise ValueError("npz: the option 'path' (the .npz file) is required")
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        missing = {"x", "y"} - keys
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)} (has {sorted(keys)}); "
                             "expected 'x' and 'y', optionally 'x_test' and 'y_test'")
        if ("x_test" in keys) != ("y_test" in keys):
            raise ValueError(f"{path}: 'x_test' and 'y_test' must be given together "
                             f"(has {sorted(keys)})")
        train = images_and_labels(f"{path} (x, y)", archive["x"], archive["y"])
        test = None
        if "x_test" in keys:
            test = images_and_labels(f"{path} (x_test, y_test)", archive["x_test"], archive["y_test"])
    return make_splits("npz", train, test, num_classes=num_classes)
