"""BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization."""
from __future__ import annotations

import numpy as np

from fastcnn.onnx.handlers._common import _axis, _f32, _spatial_rank
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


@handler("BatchNormalization", 9)
def _batch_norm(node, cx):
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    if a.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
        raise Unsupported("training_mode=1 (the running statistics as outputs)")
    nd = {2: 1, 3: 1, 4: 2, 5: 3}.get(x.rank)
    if nd is None:
        raise Unsupported(f"input of {x.rank} axes")
    momentum = a.get("momentum", 0.9)
    spec = {"type": f"batch_norm{nd}d", "eps": _f32(a.get("epsilon", 1e-5)),
            "momentum": _f32(1.0 - _f32(momentum))}
    weights = {"weight": cx.const(node, 1), "bias": cx.const(node, 2),
               "running_mean": cx.const(node, 3), "running_var": cx.const(node, 4)}
    cx.add_layer(node, spec, [x], weights)


@handler("InstanceNormalization", 6)
def _instance_norm(node, cx):
    x = cx.tensor(node, 0)
    nd = _spatial_rank(cx, x)
    spec = {"type": f"instance_norm{nd}d", "eps": _f32(cx.attrs(node).get("epsilon", 1e-5)),
            "affine": True}
    cx.add_layer(node, spec, [x], {"weight": cx.const(node, 1), "bias": cx.const(node, 2)})


@handler("LayerNormalization", 17)
def _layer_norm(node, cx):
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    if len(node.output) > 1 and any(node.output[1:]):
        raise Unsupported("the Mean / InvStdDev outputs are read")
    axis = _axis(a.get("axis", -1), x.rank)
    if axis < 1:
        raise Unsupported("normalizing across the batch axis")
    shape = x.shape[axis - 1:]
    scale = cx.const(node, 1)
    bias = cx.const(node, 2, optional=True)
    bias = np.zeros(shape, scale.dtype) if bias is None else bias
    spec = {"type": "layer_norm", "normalized_shape": list(shape),
            "eps": _f32(a.get("epsilon", 1e-5))}
    cx.add_layer(node, spec, [x], {"weight": scale, "bias": bias})


def _group_norm_layer(node, cx, x, groups, eps, weight, bias, output=None, name=None):
    spec = {"type": "group_norm", "num_groups": int(groups), "eps": _f32(eps)}
    return cx.add_layer(node, spec, [x], {"weight": weight, "bias": bias}, output=output,
                        name=name)


@handler("GroupNormalization", 18)
def _group_norm_18(node, cx):
    """Opset 18's scale and bias are per group: expanded to per channel."""
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    g = int(a["num_groups"])
    scale, bias = cx.const(node, 1), cx.const(node, 2)
    per = x.shape[0] // g
    _group_norm_layer(node, cx, x, g, a.get("epsilon", 1e-5), np.repeat(scale, per),
                      np.repeat(bias, per))


@handler("GroupNormalization", 21)
def _group_norm_21(node, cx):
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    _group_norm_layer(node, cx, x, a["num_groups"], a.get("epsilon", 1e-5), cx.const(node, 1),
                      cx.const(node, 2))
