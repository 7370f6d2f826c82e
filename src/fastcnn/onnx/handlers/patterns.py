"""Patterns of several nodes that are one fastcnn layer: GELU's erf form, torch's group norm."""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx.handlers.norm import _group_norm_layer
from fastcnn.onnx.handlers.shapes import _per_sample_result, _target_shape
from fastcnn.onnx.importer import Tensor, Unsupported


def _gelu_pattern(node, cx):
    """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5 (GELU before opset 20, as torch exports it):
    one gelu layer. True when matched (nodes consumed)."""
    if not cx.is_const(node, 1) or cx.is_const(node, 0):
        return False
    x = cx.tensor(node, 0)
    source = node.input[0]

    def scalar(n, i, value):
        info = cx.const_info(n.input[i])
        return (info is not None and not info.batched and info.value.size == 1
                and math.isclose(float(info.value.reshape(())), value, rel_tol=1e-6))

    def other(n, name):
        return 1 if n.input[0] == name else 0

    if not scalar(node, 1, math.sqrt(2.0)):
        return False
    chain, last = [], node
    for op in ("Erf", "Add", "Mul", "Mul"):
        step = cx.single_consumer(last.output[0])
        if step is None or step[1].op_type != op:
            return False
        index, n = step
        k = other(n, last.output[0])
        if op == "Add" and not scalar(n, k, 1.0):
            return False
        if op == "Mul" and len(chain) == 2 and n.input[k] != source:
            return False
        if op == "Mul" and len(chain) == 3 and not scalar(n, k, 0.5):
            return False
        chain.append(index)
        last = n
    for index in chain:
        cx.skip(index)
    cx.add_layer(node, {"type": "gelu"}, [x], output=last.output[0])
    return True

def _group_norm_pattern(node, cx, x, shape):
    """Reshape(N, G, -1) -> InstanceNormalization(ones, zeros) -> Reshape(back) [-> Mul(gamma)
    -> Add(beta)], the form torch (and fastcnn before opset 21) exports GroupNorm in: one
    group_norm layer. True when matched (nodes consumed), False to convert node by node."""
    c = x.shape[0]
    if len(shape) != 2 or x.rank < 3 or c % shape[0] or shape[0] == c:
        return False
    g = shape[0]
    step = cx.single_consumer(node.output[0])
    if step is None or step[1].op_type != "InstanceNormalization":
        return False
    inorm_index, inorm = step
    try:
        scale, offset = cx.const(inorm, 1), cx.const(inorm, 2)
    except Unsupported:
        return False
    if scale.shape != (g,) or not np.all(scale == 1) or not np.all(offset == 0):
        return False
    step = cx.single_consumer(inorm.output[0])
    if step is None or step[1].op_type != "Reshape":
        return False
    back_index, back = step
    target = cx.const_info(back.input[1])
    if target is None:
        return False
    try:
        back_shape = _per_sample_result(back, cx, Tensor("", (g, math.prod(x.shape) // g)),
                                        lambda arr, i: _target_shape(arr.shape, target.values[i],
                                                                     0))
    except Unsupported:
        return False
    if back_shape != x.shape:
        return False
    eps = cx.attrs(inorm).get("epsilon", 1e-5)
    used = [inorm_index, back_index]
    weight, bias = np.ones(c, scale.dtype), np.zeros(c, scale.dtype)
    last = back
    name = None
    for op, fill in (("Mul", "weight"), ("Add", "bias")):
        step = cx.single_consumer(last.output[0])
        if step is None or step[1].op_type != op:
            break
        other = 1 if step[1].input[0] == last.output[0] else 0
        info = cx.const_info(step[1].input[other])
        if info is None or info.batched:
            break
        value = info.value
        if value.size != c or value.reshape(-1).shape != (c,) or (
                value.ndim > 1 and value.shape[-(x.rank - 2):] != (1,) * (x.rank - 2)):
            break
        if fill == "weight":
            weight = value.reshape(c)
            if info.origin and "." in info.origin:
                name = info.origin.rsplit(".", 1)[0]
        else:
            bias = value.reshape(c)
        used.append(step[0])
        last = step[1]
    for index in used:
        cx.skip(index)
    from fastcnn.onnx.importer import _layer_name
    _group_norm_layer(node, cx, x, g, eps, weight, bias, output=last.output[0],
                      name=_layer_name(name) if name else None)
    return True
