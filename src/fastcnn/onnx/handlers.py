"""ONNX op handlers: each turns one node (sometimes a pattern of nodes) into fastcnn layers.

The registry is keyed by op type and the range of opsets a handler covers: ``find_handler(op,
opset)`` returns the newest handler whose first opset is <= the model's (as tinygrad's ONNX
runner and onnx.reference pick versioned ops), so a model at opset 20 gets the handler written
for the op's version 18 when nothing changed since, and no exact-version table is needed.
Models below opset 13 are upgraded first (``onnx.version_converter``), so handlers start at 13.

A handler is ``fn(node, cx)``, ``cx`` the :class:`~fastcnn.onnx.importer.Converter`: it reads
inputs (``cx.tensor``, ``cx.const``), adds layers (``cx.add_layer``) and raises
``Unsupported(reason)`` for what fastcnn cannot express; the converter collects every such node.
"""
from __future__ import annotations

import math

import numpy as np

from fastcnn.onnx._reading import MAX_IMPORT_OPSET
from fastcnn.onnx.importer import Tensor, Unsupported

__all__ = ["HANDLERS", "handler", "find_handler"]

HANDLERS: dict = {}      # op type -> [(first opset, last opset, fn)], sorted by first opset


def handler(op_type, since=13, until=MAX_IMPORT_OPSET):
    """Register ``fn(node, cx)`` for ``op_type`` at opsets ``since`` to ``until``."""
    def register(fn):
        entries = HANDLERS.setdefault(op_type, [])
        entries.append((since, until, fn))
        entries.sort(key=lambda e: e[0])
        return fn
    return register


def find_handler(op_type, opset):
    """The newest handler for ``op_type`` whose first opset is <= ``opset`` (None if none, or
    if it stops before ``opset``)."""
    best = None
    for since, until, fn in HANDLERS.get(op_type, ()):
        if since <= opset:
            best = (until, fn)
    if best is None or opset > best[0]:
        return None
    return best[1]


# -- shared helpers -------------------------------------------------------------------------
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
        raise Unsupported(f"input of {x.rank} axes; fastcnn has the {'/'.join(map(str, allowed))}-D "
                          f"forms")
    return nd


def _f32(value):
    """A float attribute (stored as float32) as the decimal it was written as: 1e-3, not
    0.0010000000474974513."""
    return float(str(np.float32(value)))


def _axis(axis, rank):
    axis = int(axis)
    return axis + rank if axis < 0 else axis


# -- convolution and linear -----------------------------------------------------------------
@handler("Conv", 11)
def _conv(node, cx):
    x, w = cx.tensor(node, 0), cx.const(node, 1)
    b = cx.const(node, 2, optional=True)
    a = cx.attrs(node)
    nd = _spatial_rank(cx, x)
    kernel = list(w.shape[2:])
    strides = _ints(a.get("strides"), nd, 1)
    dilations = _ints(a.get("dilations"), nd, 1)
    pairs = _resolve_pads(a, x.shape[1:], kernel, strides, dilations)
    x, padding = _split_padding(cx, node, x, pairs)
    spec = {"type": f"conv{nd}d", "out_channels": int(w.shape[0]), "kernel_size": kernel,
            "stride": strides, "padding": padding, "dilation": dilations,
            "groups": int(a.get("group", 1)), "bias": b is not None}
    cx.add_layer(node, spec, [x], {"weight": w, **({"bias": b} if b is not None else {})})


@handler("ConvTranspose", 11)
def _conv_transpose(node, cx):
    x, w = cx.tensor(node, 0), cx.const(node, 1)
    b = cx.const(node, 2, optional=True)
    a = cx.attrs(node)
    nd = _spatial_rank(cx, x)
    groups = int(a.get("group", 1))
    kernel = list(w.shape[2:])
    strides = _ints(a.get("strides"), nd, 1)
    dilations = _ints(a.get("dilations"), nd, 1)
    out_pad = _ints(a.get("output_padding"), nd, 0)
    auto = a.get("auto_pad", "NOTSET")
    spatial = x.shape[1:]
    full = [s * (n - 1) + op + (k - 1) * d + 1 for n, s, op, k, d in
            zip(spatial, strides, out_pad, kernel, dilations)]
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = (list(a["output_shape"])[-nd:] if "output_shape" in a
                  else [n * s for n, s in zip(spatial, strides)])
        pairs = []
        for f, t in zip(full, target):
            total = f - t
            half = total // 2
            pairs.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    elif auto == "VALID":
        pairs = [(0, 0)] * nd
    else:
        pads = _ints(a.get("pads"), 2 * nd, 0)
        pairs = list(zip(pads[:nd], pads[nd:]))
    if any(p < 0 for pair in pairs for p in pair):
        raise Unsupported(f"pads {pairs} below 0 (an output larger than the full transposed "
                          f"convolution)")
    padding = [min(p) for p in pairs]
    spec = {"type": f"conv_transpose{nd}d", "out_channels": int(w.shape[1]) * groups,
            "kernel_size": kernel, "stride": strides, "padding": padding,
            "output_padding": out_pad, "groups": groups, "dilation": dilations,
            "bias": b is not None}
    weights = {"weight": w, **({"bias": b} if b is not None else {})}
    crop = [(p0 - m, p1 - m) for (p0, p1), m in zip(pairs, padding)]
    if not any(c for pair in crop for c in pair):
        cx.add_layer(node, spec, [x], weights)
        return
    y = cx.add_layer(node, spec, [x], weights, output=f"{node.output[0]}/full", check_shape=False)
    cx.add_layer(node, {"type": "pad", "pad": [-c for c in _torch_pad(crop)]}, [y],
                 name=f"{y.ref}_crop")


def _linear(node, cx, x, weight, bias, output=None):
    if x.shape[-1] != weight.shape[1]:
        raise Unsupported(f"input features {x.shape[-1]} do not match the weight "
                          f"{weight.shape}")
    spec = {"type": "linear", "out_features": int(weight.shape[0]), "bias": bias is not None}
    weights = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    return cx.add_layer(node, spec, [x], weights, output=output)


def _bias_vector(c, features, what):
    c = np.asarray(c)
    if c.size == 1:
        return np.full(features, c.reshape(()), dtype=c.dtype)
    if c.shape in ((features,), (1, features)):
        return c.reshape(features)
    raise Unsupported(f"{what} of shape {c.shape} is not one value per output feature "
                      f"({features})")


@handler("Gemm", 13)
def _gemm(node, cx):
    x, w = cx.tensor(node, 0), cx.const(node, 1)
    c = cx.const(node, 2, optional=True)
    a = cx.attrs(node)
    if a.get("transA", 0) or x.rank != 2:
        raise Unsupported("A must be the (batch, features) input, not transposed")
    weight = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
    bias = None if c is None else _bias_vector(c * a.get("beta", 1.0), weight.shape[0], "C")
    _linear(node, cx, x, weight, bias)


@handler("MatMul", 13)
def _matmul(node, cx):
    """x @ W (W a constant matrix) -> linear; a following Add of a constant vector is its
    bias (MatMul + Add, as torch exports Linear on (N, ..., F) inputs)."""
    x, w = cx.tensor(node, 0), cx.const(node, 1)
    if w.ndim != 2:
        raise Unsupported(f"the constant operand has shape {w.shape}; a linear layer needs a "
                          f"matrix")
    bias, output = None, None
    nxt = cx.single_consumer(node.output[0])
    if nxt is not None and nxt[1].op_type == "Add":
        add = nxt[1]
        other = 1 if add.input[0] == node.output[0] else 0
        if cx.is_const(add, other):
            try:
                bias = _bias_vector(cx.const(add, other), w.shape[1], "the added constant")
            except Unsupported:
                bias = None
            if bias is not None:
                cx.skip(nxt[0])
                output = add.output[0]
    _linear(node, cx, x, w.T, bias, output=output)


# -- elementwise ----------------------------------------------------------------------------
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
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
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
    per_channel = slope.size == c and (slope.ndim <= 1 or slope.shape[1:] == (1,) * (slope.ndim - 1))
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


# -- normalization --------------------------------------------------------------------------
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


# -- pooling --------------------------------------------------------------------------------
def _pool_attrs(node, cx, x):
    a = cx.attrs(node)
    nd = _spatial_rank(cx, x)
    kernel = _ints(a.get("kernel_shape"), nd, 1)
    strides = _ints(a.get("strides"), nd, 1)
    dilations = _ints(a.get("dilations"), nd, 1)
    pairs = _resolve_pads(a, x.shape[1:], kernel, strides, dilations)
    return a, nd, kernel, strides, dilations, pairs


@handler("MaxPool", 12)
def _max_pool(node, cx):
    x = cx.tensor(node, 0)
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the Indices output is read")
    a, nd, kernel, strides, dilations, pairs = _pool_attrs(node, cx, x)
    lowest = float(np.finfo(np.dtype(cx.dtype)).min)   # a max never picks the padding
    x, padding = _split_padding(cx, node, x, pairs, [k // 2 for k in kernel], value=lowest)
    spec = {"type": f"max_pool{nd}d", "kernel_size": kernel, "stride": strides,
            "padding": padding, "dilation": dilations, "ceil_mode": bool(a.get("ceil_mode", 0))}
    cx.add_layer(node, spec, [x])


@handler("AveragePool", 11)
def _avg_pool(node, cx):
    x = cx.tensor(node, 0)
    a, nd, kernel, strides, dilations, pairs = _pool_attrs(node, cx, x)
    if any(d != 1 for d in dilations):
        raise Unsupported(f"dilations {dilations}: fastcnn's average pooling has none")
    include = bool(a.get("count_include_pad", 0))
    symmetric = all(b == e and b <= k // 2 for (b, e), k in zip(pairs, kernel))
    if not symmetric and not include and any(p for pair in pairs for p in pair):
        raise Unsupported(f"pads {pairs} are asymmetric (or above half the kernel) and "
                          f"count_include_pad=0: the divisor would count the padding")
    x, padding = _split_padding(cx, node, x, pairs, [k // 2 for k in kernel])
    spec = {"type": f"avg_pool{nd}d", "kernel_size": kernel, "stride": strides,
            "padding": padding, "ceil_mode": bool(a.get("ceil_mode", 0)),
            "count_include_pad": include}
    cx.add_layer(node, spec, [x])


def _global(node, cx, x, kind, output=None):
    nd = _spatial_rank(cx, x)
    if kind == "avg":
        spec = ({"type": "global_avg_pool2d"} if nd == 2 else
                {"type": "adaptive_avg_pool1d", "output_size": 1} if nd == 1 else
                {"type": "avg_pool3d", "kernel_size": list(x.shape[1:])})
    else:
        spec = ({"type": "adaptive_max_pool2d", "output_size": 1} if nd == 2 else
                {"type": f"max_pool{nd}d", "kernel_size": list(x.shape[1:])})
    return cx.add_layer(node, spec, [x], output=output)


@handler("GlobalAveragePool", 1)
def _global_avg(node, cx):
    _global(node, cx, cx.tensor(node, 0), "avg")


@handler("GlobalMaxPool", 1)
def _global_max(node, cx):
    _global(node, cx, cx.tensor(node, 0), "max")


def _reduce_mean(node, cx, axes):
    """ReduceMean over every spatial axis = global average pooling (+ a reshape when the axes
    are dropped)."""
    x = cx.tensor(node, 0)
    a = cx.attrs(node)
    rank = x.rank
    if axes is None or len(axes) == 0:
        raise Unsupported("a mean over every axis, batch included")
    axes = sorted(_axis(v, rank) for v in axes)
    if axes != list(range(2, rank)):
        raise Unsupported(f"a mean over axes {axes}; fastcnn reduces the spatial axes "
                          f"{list(range(2, rank))} only (global average pooling)")
    if a.get("keepdims", 1):
        _global(node, cx, x, "avg")
        return
    pooled = _global(node, cx, x, "avg", output=f"{node.output[0]}/pooled")
    cx.add_layer(node, {"type": "flatten"}, [pooled], name=f"{pooled.ref}_flatten")


@handler("ReduceMean", 13)
def _reduce_mean_13(node, cx):
    _reduce_mean(node, cx, cx.attrs(node).get("axes"))


@handler("ReduceMean", 18)
def _reduce_mean_18(node, cx):
    axes = cx.const(node, 1, optional=True)
    _reduce_mean(node, cx, None if axes is None else [int(v) for v in axes])


# -- shapes ---------------------------------------------------------------------------------
def _per_sample_result(node, cx, x, fn):
    """The per-sample shape of ``fn(array of shape (B, *x.shape), B index)`` when it keeps the
    batch as axis 0 for every B; Unsupported otherwise."""
    results = []
    for i, batch in enumerate(cx.batches):
        try:
            shape = fn(np.broadcast_to(np.zeros((), np.int8), (batch,) + x.shape), i)
        except (ValueError, TypeError, IndexError) as exc:
            raise Unsupported(f"cannot apply to a tensor of per-sample shape {x.shape}: {exc}") from None
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


# -- resampling -----------------------------------------------------------------------------
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _output_sizes_above_1(node, cx, x):
    """pytorch_half_pixel is half_pixel but for outputs of length 1 (which sample 0)."""
    sizes = cx.const(node, 3, optional=True) if len(node.input) > 3 else None
    if sizes is not None and sizes.size:
        return all(int(v) > 1 for v in sizes)
    scales = cx.const(node, 2, optional=True)
    return scales is None or all(math.floor(n * float(s)) > 1 for n, s in
                                 zip(x.shape[1:], np.asarray(scales).reshape(-1)[-len(x.shape[1:]):]))


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


# -- patterns -------------------------------------------------------------------------------
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

