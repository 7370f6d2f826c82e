"""Resize (and Upsample, upgraded to Resize): the upsample layer."""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx.handlers._common import _axis, _spatial_rank
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _output_sizes_above_1(node, cx, x):
    """pytorch_half_pixel is half_pixel but for outputs of length 1 (which sample 0)."""
    nd = len(x.shape) - 1
    sizes = cx.const(node, 3, optional=True) if len(node.input) > 3 else None
    if sizes is not None and sizes.size:
        return all(int(v) > 1 for v in np.asarray(sizes).reshape(-1)[-nd:])
    scales = cx.const(node, 2, optional=True)
    if scales is None:
        return True
    spatial_scales = np.asarray(scales, dtype=np.float64).reshape(-1)[-nd:]
    return all(math.floor(n * s) > 1 for n, s in zip(x.shape[1:], spatial_scales))


@handler("Resize", 13)
def _resize(node, cx):
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    nd = _spatial_rank(cx, x)
    rank = x.rank
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    if a.get("antialias", 0):
        raise Unsupported("antialias=1")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported(f"keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r}")
    if mode == "nearest":
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if transform == "asymmetric" and nearest == "floor":
            fc_mode, corners = "nearest", None
        elif transform in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            fc_mode, corners = "nearest-exact", None
        else:
            raise Unsupported(f"nearest with coordinate_transformation_mode={transform!r}, "
                              f"nearest_mode={nearest!r} (fastcnn: asymmetric + floor as torch's "
                              f"'nearest', half_pixel + round_prefer_ceil as 'nearest-exact')")
    elif mode == "linear":
        if transform == "half_pixel" or (transform == "pytorch_half_pixel"
                                         and _output_sizes_above_1(node, cx, x)):
            corners = False
        elif transform == "align_corners":
            corners = True
        else:
            raise Unsupported(f"linear with coordinate_transformation_mode={transform!r}")
        fc_mode = _LINEAR_MODES[nd]
    else:
        raise Unsupported(f"mode {mode!r} (fastcnn resamples nearest and (bi/tri)linear)")
    axes = a.get("axes")
    axes = list(range(rank)) if axes is None else [_axis(v, rank) for v in axes]
    scales = cx.const(node, 2, optional=True)
    sizes = cx.const(node, 3, optional=True) if len(node.input) > 3 else None
    if scales is not None and scales.size == 0:
        scales = None
    spec = {"type": "upsample", "mode": fc_mode}
    if corners is not None:
        spec["align_corners"] = corners
    if sizes is not None and sizes.size:
        full = [None] * rank
        for ax, v in zip(axes, sizes):
            full[ax] = int(v)
        if full[1] not in (None, x.shape[0]):
            raise Unsupported("resizing the channel axis")
        spatial = [full[2 + i] if full[2 + i] is not None else x.shape[1 + i] for i in range(nd)]
        spec["size"] = spatial
    elif scales is not None:
        full = [1.0] * rank
        for ax, v in zip(axes, scales):
            full[ax] = float(v)
        if full[0] != 1.0 or full[1] != 1.0:
            raise Unsupported(f"scales {full} resize the batch or channel axis")
        if corners and not all(float(n * f).is_integer() for n, f in zip(x.shape[1:], full[2:])):
            # ONNX then maps with the fractional length in * scale, torch with the output's
            raise Unsupported(f"align_corners with scales {full[2:]} that do not give whole "
                              f"output sizes from {x.shape[1:]}")
        spec["scale_factor"] = full[2:]
    else:
        raise Unsupported("neither scales nor sizes given")
    cx.add_layer(node, spec, [x])
