"""Flatten, Reshape, Squeeze, Unsqueeze, Concat, Pad: layers that keep the batch axis."""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx.handlers._common import _axis, _torch_pad
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


def _per_sample_result(node, cx, x, fn):
    """The per-sample shape of ``fn(array of shape (B, *x.shape), B index)`` when it keeps the
    batch as axis 0 for every B; Unsupported otherwise."""
    results = []
    for i, batch in enumerate(cx.batches):
        try:
            shape = fn(np.broadcast_to(np.zeros((), np.int8), (batch,) + x.shape), i)
        except (ValueError, TypeError, IndexError) as exc:
            raise Unsupported(f"cannot apply to a tensor of per-sample shape {x.shape}: "
                              f"{exc}") from None
        if not shape or shape[0] != batch:
            raise Unsupported(f"moves or merges the batch axis (per-sample shape {x.shape} -> "
                              f"{tuple(shape)} at batch {batch})")
        results.append(tuple(shape[1:]))
    if results[0] != results[1]:
        raise Unsupported("the per-sample result depends on the batch size")
    return results[0]


def _reshape_to(node, cx, x, shape, output=None):
    if shape == x.shape:
        cx.bind(output or node.output[0], x)
        return x
    spec = ({"type": "flatten"} if len(shape) == 1 else {"type": "reshape", "shape": list(shape)})
    return cx.add_layer(node, spec, [x], output=output)


@handler("Flatten", 13)
def _flatten(node, cx):
    x = cx.tensor(node, 0)
    axis = _axis(cx.attrs(node).get("axis", 1), x.rank)
    if axis == 1:
        _reshape_to(node, cx, x, (math.prod(x.shape),))
        return
    shape = _per_sample_result(node, cx, x, lambda arr, i: (
        math.prod(arr.shape[:axis]), math.prod(arr.shape[axis:])))
    _reshape_to(node, cx, x, shape)


def _target_shape(full, target, allowzero):
    out = [int(v) for v in target]
    if not allowzero:
        out = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(out)]
    return np.empty(full, np.int8).reshape(out).shape


@handler("Reshape", 13)
def _reshape(node, cx):
    x = cx.tensor(node, 0)
    target = cx.const_info(node.input[1])
    if target is None:
        raise Unsupported("the target shape is computed from the model input")
    allowzero = cx.attrs(node).get("allowzero", 0)
    shape = _per_sample_result(node, cx, x, lambda arr, i: _target_shape(
        arr.shape, target.values[i], allowzero))
    from fastcnn.onnx.handlers.patterns import _group_norm_pattern   # (it imports this module)
    if _group_norm_pattern(node, cx, x, shape):
        return
    _reshape_to(node, cx, x, shape)


@handler("Squeeze", 13)
def _squeeze(node, cx):
    x = cx.tensor(node, 0)
    axes = cx.const(node, 1, optional=True)
    shape = _per_sample_result(node, cx, x, lambda arr, i: np.squeeze(
        arr, axis=None if axes is None else tuple(int(v) for v in axes)).shape)
    _reshape_to(node, cx, x, shape)


@handler("Unsqueeze", 13)
def _unsqueeze(node, cx):
    x = cx.tensor(node, 0)
    axes = [int(v) for v in cx.const(node, 1)]
    shape = _per_sample_result(node, cx, x, lambda arr, i: np.expand_dims(
        arr, axis=tuple(axes)).shape)
    _reshape_to(node, cx, x, shape)


@handler("Concat", 13)
def _concat(node, cx):
    xs = [cx.tensor(node, i) for i in range(len(node.input))]
    axis = _axis(cx.attrs(node)["axis"], xs[0].rank)
    if axis == 0:
        raise Unsupported("concatenation along the batch axis")
    if len(xs) == 1:
        cx.bind(node.output[0], xs[0])
        return
    cx.add_layer(node, {"type": "concat", "dim": axis}, xs)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@handler("Pad", 13)
def _pad(node, cx):
    x = cx.tensor(node, 0)
    pads = [int(v) for v in cx.const(node, 1)]
    value = cx.const(node, 2, optional=True)
    axes = cx.const(node, 3, optional=True)
    mode = cx.attrs(node).get("mode", "constant")
    if mode not in _PAD_MODES:
        raise Unsupported(f"mode {mode!r}")
    rank = x.rank
    axes = list(range(rank)) if axes is None else [_axis(v, rank) for v in axes]
    k = len(axes)
    pairs = [(0, 0)] * rank
    for ax, b, e in zip(axes, pads[:k], pads[k:]):
        pairs[ax] = (b, e)
    if pairs[0] != (0, 0):
        raise Unsupported("padding the batch axis")
    first = next((i for i, p in enumerate(pairs) if p != (0, 0)), rank)
    if first == rank:
        cx.bind(node.output[0], x)
        return
    spec = {"type": "pad", "pad": _torch_pad(pairs[first:]), "mode": _PAD_MODES[mode]}
    if mode == "constant":
        spec["value"] = 0.0 if value is None or np.size(value) == 0 else float(value)
    cx.add_layer(node, spec, [x])
