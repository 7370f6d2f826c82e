"""Conv, ConvTranspose, Gemm, MatMul (+ Add): convolution and linear layers."""
from __future__ import annotations

import numpy as np

from fastcnn.onnx.handlers._common import (_ints, _resolve_pads, _spatial_rank, _split_padding,
                                           _torch_pad)
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


def _operands(node, cx):
    """What Conv and ConvTranspose read alike: the data x, the weight w (a constant), the
    optional bias b, the attributes, the spatial rank and the kernel, strides and dilations."""
    x, w = cx.tensor(node, 0), cx.const(node, 1)
    b = cx.const(node, 2, optional=True)
    a = cx.attrs(node)
    nd = _spatial_rank(cx, x)
    return (x, w, b, a, nd, list(w.shape[2:]), _ints(a.get("strides"), nd, 1),
            _ints(a.get("dilations"), nd, 1))


@handler("Conv", 11)
def _conv(node, cx):
    x, w, b, a, nd, kernel, strides, dilations = _operands(node, cx)
    pairs = _resolve_pads(a, x.shape[1:], kernel, strides, dilations)
    x, padding = _split_padding(cx, node, x, pairs)
    spec = {"type": f"conv{nd}d", "out_channels": int(w.shape[0]), "kernel_size": kernel,
            "stride": strides, "padding": padding, "dilation": dilations,
            "groups": int(a.get("group", 1)), "bias": b is not None}
    cx.add_layer(node, spec, [x], {"weight": w, **({"bias": b} if b is not None else {})})


@handler("ConvTranspose", 11)
def _conv_transpose(node, cx):
    x, w, b, a, nd, kernel, strides, dilations = _operands(node, cx)
    groups = int(a.get("group", 1))
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
