"""Helpers the handlers share: pads (explicit, auto_pad), padding layers, axes."""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx.importer import Unsupported


def _ints(values, n, default):
    return [int(v) for v in values] if values is not None else [default] * n


def _resolve_pads(attrs, spatial, kernel, strides, dilations):
    """[(begin, end)] per spatial axis from ``pads`` or ``auto_pad`` (SAME_UPPER: the extra
    cell at the end, SAME_LOWER: at the start, as the ONNX spec defines)."""
    nd = len(spatial)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = _ints(attrs.get("pads"), 2 * nd, 0)
        return list(zip(pads[:nd], pads[nd:]))
    if auto == "VALID":
        return [(0, 0)] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto!r}")
    out = []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return out


def _torch_pad(pairs):
    """torch's pad list (last axis first) from [(begin, end)] first axis first."""
    return [v for pair in reversed(pairs) for v in pair]


def _padded(cx, node, x, pairs, value=0.0):
    """``x`` with the (begin, end) ``pairs`` of its spatial axes padded by a pad layer (for
    asymmetric padding, which fastcnn's conv and pool layers do not take)."""
    return cx.add_layer(node, {"type": "pad", "pad": _torch_pad(pairs), "value": value}, [x],
                        name=f"{cx._name_for(node, None)}_pad", output=f"{node.output[0]}/pad",
                        check_shape=False)


def _split_padding(cx, node, x, pairs, limit=None, value=0.0):
    """(tensor, symmetric padding): pairs that are equal (and within ``limit`` per axis) go to
    the layer's own padding, anything else to a pad layer before it."""
    symmetric = all(b == e for b, e in pairs)
    if symmetric and (limit is None or all(b <= m for (b, _), m in zip(pairs, limit))):
        return x, [b for b, _ in pairs]
    return _padded(cx, node, x, pairs, value), [0] * len(pairs)


def _spatial_rank(cx, x, allowed=(1, 2, 3)):
    nd = len(x.shape) - 1
    if nd not in allowed:
        forms = "/".join(map(str, allowed))
        raise Unsupported(f"input of {x.rank} axes; fastcnn has the {forms}-D "
                          f"forms")
    return nd


def _f32(value):
    """A float attribute (stored as float32) as the decimal it was written as: 1e-3, not
    0.0010000000474974513."""
    return float(str(np.float32(value)))


def _axis(axis, rank):
    axis = int(axis)
    return axis + rank if axis < 0 else axis
