"""MaxPool, AveragePool, global pools, ReduceMean over the spatial axes."""
from __future__ import annotations

import numpy as np

from fastcnn.onnx.handlers._common import (_axis, _ints, _resolve_pads, _spatial_rank,
                                           _split_padding)
from fastcnn.onnx.handlers.registry import handler
from fastcnn.onnx.importer import Unsupported


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
