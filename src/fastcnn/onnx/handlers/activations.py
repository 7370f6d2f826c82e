"""Elementwise ops: arithmetic (add layers, elementwise layers with constants), activations,
softmax, dropout, identity, cast."""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx.handlers._common import _axis, _f32
from fastcnn.onnx.handlers.patterns import _gelu_pattern
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


def _with_constant(node, cx, op):
    """x (op) c or c (op) x, c a constant: an elementwise layer (identity for + 0, * 1)."""
    reverse = cx.is_const(node, 0)
    x, c = cx.tensor(node, 1 if reverse else 0), cx.const(node, 0 if reverse else 1)
    shape = c.shape
    while len(shape) > len(x.shape) and shape[0] == 1:
        shape = shape[1:]                    # leading 1s: the batch axis, or nothing
    if len(shape) > len(x.shape):
        raise Unsupported(f"a constant of shape {c.shape} varies along the batch axis")
    neutral = 0 if op in ("add", "sub") else 1
    out = np.broadcast_shapes(x.shape, shape) if _broadcasts(x.shape, shape) else None
    if out is None:
        raise Unsupported(f"a constant of shape {c.shape} does not broadcast against "
                          f"(batch, {', '.join(map(str, x.shape))})")
    if np.all(c == neutral) and out == x.shape and not (reverse and op in ("sub", "div")):
        cx.bind(node.output[0], x)
        return
    info = cx.const_info(node.input[0 if reverse else 1])
    trainable = info is not None and info.origin == node.input[0 if reverse else 1]
    spec = {"type": "elementwise", "op": op, "shape": list(shape), "reverse": reverse,
            "trainable": trainable}
    cx.add_layer(node, spec, [x], {"value": c.reshape(shape)})


def _broadcasts(a, b):
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


def _binary(node, cx):
    op = node.op_type.lower()
    if op == "div" and _gelu_pattern(node, cx):
        return
    if cx.is_const(node, 0) or cx.is_const(node, 1):
        _with_constant(node, cx, op)
    elif op == "add":
        _merge_add(node, cx)
    else:
        raise Unsupported(f"{op} of two computed tensors (fastcnn merges them by add and "
                          f"concat only)")


for _op in ("Add", "Sub", "Mul", "Div"):
    handler(_op, 13)(_binary)


@handler("Sum", 13)
def _merge_add(node, cx):
    xs = [cx.tensor(node, i) for i in range(len(node.input))]
    if len(xs) == 1:
        cx.bind(node.output[0], xs[0])
        return
    if len({x.shape for x in xs}) != 1:
        raise Unsupported(f"inputs of shapes {[x.shape for x in xs]}: fastcnn's add takes "
                          f"equal shapes (no broadcasting)")
    cx.add_layer(node, {"type": "add"}, xs)


_SIMPLE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


def _simple(node, cx):
    cx.add_layer(node, {"type": _SIMPLE[node.op_type]}, [cx.tensor(node, 0)])


for _op in _SIMPLE:
    handler(_op, 13)(_simple)


@handler("LeakyRelu", 6)
def _leaky_relu(node, cx):
    alpha = _f32(cx.attrs(node).get("alpha", 0.01))
    cx.add_layer(node, {"type": "leaky_relu", "negative_slope": alpha}, [cx.tensor(node, 0)])


@handler("Elu", 6)
def _elu(node, cx):
    cx.add_layer(node, {"type": "elu", "alpha": _f32(cx.attrs(node).get("alpha", 1.0))},
                 [cx.tensor(node, 0)])


@handler("Selu", 6)
def _selu(node, cx):
    a = cx.attrs(node)
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    if not (math.isclose(alpha, 1.6732632423543772, rel_tol=1e-6)
            and math.isclose(gamma, 1.0507009873554805, rel_tol=1e-6)):
        raise Unsupported(f"alpha={alpha}, gamma={gamma}: fastcnn's selu has the "
                          f"self-normalizing constants only")
    cx.add_layer(node, {"type": "selu"}, [cx.tensor(node, 0)])


@handler("Gelu", 20)
def _gelu(node, cx):
    approximate = cx.attrs(node).get("approximate", "none")
    cx.add_layer(node, {"type": "gelu", "approximate": approximate}, [cx.tensor(node, 0)])


@handler("Clip", 13)
def _clip(node, cx):
    """Clip(0, inf) -> relu, Clip(0, 6) -> relu6, other finite bounds -> hardtanh."""
    x = cx.tensor(node, 0)
    lo, hi = cx.const(node, 1, optional=True), cx.const(node, 2, optional=True)
    lo = -math.inf if lo is None or np.size(lo) == 0 else float(lo)
    hi = math.inf if hi is None or np.size(hi) == 0 else float(hi)
    if lo == 0 and hi == math.inf:
        spec = {"type": "relu"}
    elif lo == 0 and hi == 6:
        spec = {"type": "relu6"}
    elif math.isfinite(lo) and math.isfinite(hi):
        spec = {"type": "hardtanh", "min_val": lo, "max_val": hi}
    else:
        raise Unsupported(f"bounds ({lo}, {hi}): fastcnn clips to two finite bounds "
                          f"(hardtanh) or to [0, inf) (relu)")
    cx.add_layer(node, spec, [x])


@handler("PRelu", 9)
def _prelu(node, cx):
    x, slope = cx.tensor(node, 0), cx.const(node, 1)
    c = x.shape[0]
    squeezed = slope.reshape(-1) if slope.size in (1, c) else None
    per_channel = slope.size == c and (slope.ndim <= 1
                                       or slope.shape[1:] == (1,) * (slope.ndim - 1))
    if squeezed is None or (slope.size == c and c > 1 and not per_channel):
        raise Unsupported(f"slope of shape {slope.shape}: fastcnn's prelu has one slope, or "
                          f"one per channel")
    cx.add_layer(node, {"type": "prelu", "num_parameters": int(squeezed.size)}, [x],
                 {"weight": squeezed})


@handler("Softmax", 13)
@handler("LogSoftmax", 13)
def _softmax(node, cx):
    x = cx.tensor(node, 0)
    axis = _axis(cx.attrs(node).get("axis", -1), x.rank)
    kind = "softmax" if node.op_type == "Softmax" else "log_softmax"
    cx.add_layer(node, {"type": kind, "dim": axis}, [x])


@handler("Dropout", 13)
def _dropout(node, cx):
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the mask output is read")
    ratio = cx.const(node, 1, optional=True)
    training = cx.const(node, 2, optional=True)
    if training is not None and bool(training):
        raise Unsupported("training_mode=True (a random forward)")
    p = 0.5 if ratio is None else _f32(ratio)
    cx.add_layer(node, {"type": "dropout", "p": p}, [cx.tensor(node, 0)])


@handler("Identity", 13)
def _identity(node, cx):
    cx.bind(node.output[0], cx.tensor(node, 0))


@handler("Cast", 13)
def _cast(node, cx):
    to = cx.attrs(node).get("to")
    if {1: "float32", 11: "float64"}.get(to) != cx.dtype:
        raise Unsupported(f"a cast to {cx.onnx.helper.tensor_dtype_to_np_dtype(to)} inside a "
                          f"{cx.dtype} model")
    cx.bind(node.output[0], cx.tensor(node, 0))
