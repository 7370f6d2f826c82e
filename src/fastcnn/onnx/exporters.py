"""How each built-in layer is written as standard ONNX ops (the model in eval mode).

``EXPORTERS`` maps a registered layer name to ``fn(layer, b, inputs) -> output value name``,
``b`` a :class:`~fastcnn.onnx._builder.GraphBuilder`. A user's layer gets the same by defining
``export_onnx(self, builder, inputs) -> str``; a layer with neither is an export error that
names it.

The mappings follow the ONNX operator specs:
- convolutions: Conv / ConvTranspose with explicit ``pads`` (never auto_pad); torch's
  padding="same" is its total d*(k-1) split with the smaller half first;
- linear: Gemm(transB=1) on (N, F) inputs, MatMul + Add on (N, ..., F);
- batch norm: BatchNormalization (ONNX momentum = 1 - torch momentum); without running
  statistics, its batch-statistics formula in ReduceMean/Sub/Div;
- layer norm: LayerNormalization from opset 17, its formula before;
- group norm: GroupNormalization (per-channel scale, opset 21) from opset 21, before it
  Reshape(N, G, -1) / InstanceNormalization / Reshape back / Mul / Add (the form torch emits);
- GELU: Gelu from opset 20, before it x * 0.5 * (1 + erf(x / sqrt 2)) (or the tanh form);
- adaptive pools: GlobalAverage/MaxPool for 1x1, Average/MaxPool when the bins are equal,
  else separable: average bins as MatMuls with averaging matrices, max bins as Slice/ReduceMax;
- upsample: Resize (nearest: asymmetric + floor, as torch; nearest-exact: half_pixel +
  round_prefer_ceil; linear modes: half_pixel or align_corners);
- dropout vanishes; identity, flatten, add, concat as their ops.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["EXPORTERS", "exporter"]

EXPORTERS: dict = {}


def exporter(*names):
    """Register ``fn(layer, builder, inputs) -> str`` for the layer types ``names``."""
    def register(fn):
        for name in names:
            EXPORTERS[name] = fn
        return fn
    return register


def _pads(begin, end=None):
    """ONNX ``pads``: all begins, then all ends."""
    begin = list(begin)
    return begin + list(begin if end is None else end)


# -- convolutions and linear ----------------------------------------------------------------
@exporter("conv1d", "conv2d", "conv3d")
def _conv(layer, b, inputs):
    nd = layer.nd
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        pads = _pads([t // 2 for t in total], [t - t // 2 for t in total])
    elif layer.padding == "valid":
        pads = [0] * (2 * nd)
    else:
        pads = _pads(layer.padding)
    args = [inputs[0], b.param("weight")] + ([b.param("bias")] if layer.bias is not None else [])
    return b.node("Conv", args, output=b.out, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), dilations=list(layer.dilation), pads=pads,
                  group=layer.groups)


@exporter("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(layer, b, inputs):
    args = [inputs[0], b.param("weight")] + ([b.param("bias")] if layer.bias is not None else [])
    return b.node("ConvTranspose", args, output=b.out, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), dilations=list(layer.dilation),
                  pads=_pads(layer.padding), output_padding=list(layer.output_padding),
                  group=layer.groups)


@exporter("linear")
def _linear(layer, b, inputs):
    weight = b.param("weight")
    if len(layer.input_shape) == 1:
        args = [inputs[0], weight] + ([b.param("bias")] if layer.bias is not None else [])
        return b.node("Gemm", args, output=b.out, transB=1)
    weight_t = b.node("Transpose", [weight], "weight_t", perm=[1, 0])
    if layer.bias is None:
        return b.node("MatMul", [inputs[0], weight_t], output=b.out)
    y = b.node("MatMul", [inputs[0], weight_t], "matmul")
    return b.node("Add", [y, b.param("bias")], output=b.out)


@exporter("dropout", "dropout2d", "identity")
def _vanish(layer, b, inputs):
    return inputs[0]        # identity in eval mode: the next layer reads the input directly


# -- activations ----------------------------------------------------------------------------
_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "selu": "Selu"}


@exporter(*_SIMPLE)
def _simple(layer, b, inputs):
    return b.node(_SIMPLE[layer.type_name], inputs, output=b.out)


@exporter("leaky_relu")
def _leaky_relu(layer, b, inputs):
    return b.node("LeakyRelu", inputs, output=b.out, alpha=layer.negative_slope)


@exporter("elu")
def _elu(layer, b, inputs):
    return b.node("Elu", inputs, output=b.out, alpha=layer.alpha)


@exporter("gelu")
def _gelu(layer, b, inputs):
    x = inputs[0]
    if b.opset >= 20:
        return b.node("Gelu", [x], output=b.out, approximate=layer.approximate)
    if layer.approximate == "tanh":          # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.node("Mul", [b.node("Mul", [x, x], "square"), x], "cube")
        inner = b.node("Add", [x, b.node("Mul", [cube, b.constant(0.044715, "c")], "scaled")],
                       "inner")
        t = b.node("Tanh", [b.node("Mul", [inner, b.constant(math.sqrt(2 / math.pi), "k")],
                                   "arg")], "tanh")
    else:                                    # 0.5 x (1 + erf(x / sqrt 2))
        t = b.node("Erf", [b.node("Div", [x, b.constant(math.sqrt(2.0), "sqrt2")], "arg")],
                   "erf")
    one_plus = b.node("Add", [t, b.constant(1.0, "one")], "one_plus")
    # (x * (1 + t)) * 0.5: torch's order, which fastcnn's importer reads back as one gelu
    return b.node("Mul", [b.node("Mul", [x, one_plus], "x_one_plus"), b.constant(0.5, "half")],
                  output=b.out)


@exporter("hardtanh", "relu6")
def _hardtanh(layer, b, inputs):
    return b.node("Clip", [inputs[0], b.constant(layer.min_val, "min"),
                           b.constant(layer.max_val, "max")], output=b.out)


@exporter("softmax", "log_softmax")
def _softmax(layer, b, inputs):
    op = "Softmax" if layer.type_name == "softmax" else "LogSoftmax"
    return b.node(op, inputs, output=b.out, axis=layer.dim)


@exporter("prelu")
def _prelu(layer, b, inputs):
    # slope (C,) against (N, C, *spatial): ONNX broadcasts from the trailing axes
    rank = len(layer.input_shape) + 1
    slope = b.param("weight")
    if layer.num_parameters > 1:
        slope = b.channel_vector(slope, rank)
    return b.node("PRelu", [inputs[0], slope], output=b.out)


# -- normalization --------------------------------------------------------------------------
def _affine_or(b, layer, name, fill, shape):
    """The layer's parameter ``name``, or a constant ``fill`` when it has none."""
    if getattr(layer, name, None) is not None:
        return b.param(name)
    return b.constant(np.full(shape, fill), f"{name}_{'ones' if fill else 'zeros'}")


def _normalize_explicit(layer, b, x, axes, weight, bias, output):
    """(x - mean) / sqrt(var + eps) over ``axes`` (biased variance), then * weight + bias
    (already broadcastable, or None): the formula of layer and batch norm without their ops."""
    mean = b.reduce("ReduceMean", x, axes)
    centred = b.node("Sub", [x, mean], "centred")
    var = b.reduce("ReduceMean", b.node("Mul", [centred, centred], "squared"), axes)
    std = b.node("Sqrt", [b.node("Add", [var, b.constant(layer.eps, "eps")], "var_eps")], "std")
    if weight is None:
        return b.node("Div", [centred, std], output=output)
    y = b.node("Div", [centred, std], "normalized")
    y = b.node("Mul", [y, weight], "scaled")
    return b.node("Add", [y, bias], output=output)


def _batch_norm_node(layer, b, x, momentum):
    c = layer.num_features
    attrs = {"epsilon": layer.eps}
    if momentum is not None:
        attrs["momentum"] = 1.0 - momentum      # ONNX weighs the running value, torch the batch
    return b.node("BatchNormalization",
                  [x, _affine_or(b, layer, "weight", 1.0, (c,)),
                   _affine_or(b, layer, "bias", 0.0, (c,)), b.param("running_mean"),
                   b.param("running_var")], output=b.out, **attrs)


@exporter("batch_norm1d", "batch_norm2d", "batch_norm3d")
def _batch_norm(layer, b, inputs):
    if layer.track_running_stats:
        return _batch_norm_node(layer, b, inputs[0], layer.momentum)
    # no running statistics: eval mode normalizes with the batch's own
    rank = len(layer.input_shape) + 1
    weight = bias = None
    if layer.affine:
        weight = b.channel_vector(b.param("weight"), rank)
        bias = b.channel_vector(b.param("bias"), rank)
    return _normalize_explicit(layer, b, inputs[0], [0] + list(range(2, rank)), weight, bias,
                               b.out)


@exporter("instance_norm1d", "instance_norm2d", "instance_norm3d")
def _instance_norm(layer, b, inputs):
    if layer.track_running_stats:            # eval mode uses the running statistics
        return _batch_norm_node(layer, b, inputs[0], layer.momentum)
    c = layer.num_features
    return b.node("InstanceNormalization",
                  [inputs[0], _affine_or(b, layer, "weight", 1.0, (c,)),
                   _affine_or(b, layer, "bias", 0.0, (c,))], output=b.out, epsilon=layer.eps)


@exporter("layer_norm")
def _layer_norm(layer, b, inputs):
    k = len(layer.normalized_shape)
    rank = len(layer.input_shape) + 1
    if b.opset >= 17:
        shape = layer.normalized_shape
        args = [inputs[0], _affine_or(b, layer, "weight", 1.0, shape)]
        if layer.weight is not None:
            args.append(b.param("bias"))
        return b.node("LayerNormalization", args, output=b.out, axis=-k, epsilon=layer.eps)
    weight = bias = None
    if layer.weight is not None:
        weight, bias = b.param("weight"), b.param("bias")
    return _normalize_explicit(layer, b, inputs[0], list(range(rank - k, rank)), weight, bias,
                               b.out)


@exporter("group_norm")
def _group_norm(layer, b, inputs):
    c, g = layer.num_channels, layer.num_groups
    rank = len(layer.input_shape) + 1
    if b.opset >= 21:
        return b.node("GroupNormalization",
                      [inputs[0], _affine_or(b, layer, "weight", 1.0, (c,)),
                       _affine_or(b, layer, "bias", 0.0, (c,))], output=b.out,
                      num_groups=g, epsilon=layer.eps)
    grouped = b.reshape(inputs[0], [0, g, -1], "grouped")
    normed = b.node("InstanceNormalization",
                    [grouped, b.constant(np.ones(g), "group_ones"),
                     b.constant(np.zeros(g), "group_zeros")], "instance_norm",
                    epsilon=layer.eps)
    shape = b.node("Shape", [inputs[0]], "shape")
    if not layer.affine:
        return b.node("Reshape", [normed, shape], output=b.out)
    y = b.node("Reshape", [normed, shape], "ungrouped")
    y = b.node("Mul", [y, b.channel_vector(b.param("weight"), rank)], "scaled")
    return b.node("Add", [y, b.channel_vector(b.param("bias"), rank)], output=b.out)


# -- pooling --------------------------------------------------------------------------------
@exporter("max_pool1d", "max_pool2d", "max_pool3d")
def _max_pool(layer, b, inputs):
    stride = layer.stride or layer.kernel_size
    return b.node("MaxPool", inputs, output=b.out, kernel_shape=list(layer.kernel_size),
                  strides=list(stride), pads=_pads(layer.padding),
                  dilations=list(layer.dilation), ceil_mode=int(layer.ceil_mode))


@exporter("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(layer, b, inputs):
    stride = layer.stride or layer.kernel_size
    divisor = layer.divisor_override
    attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(stride),
                 pads=_pads(layer.padding), ceil_mode=int(layer.ceil_mode))
    if divisor is None:
        return b.node("AveragePool", inputs, output=b.out,
                      count_include_pad=int(layer.count_include_pad), **attrs)
    if layer.ceil_mode:
        from fastcnn.onnx.errors import OnnxExportError
        raise OnnxExportError(f"{layer.where()}: divisor_override with ceil_mode=True has no "
                              f"ONNX form (AveragePool's partial windows divide by their size)")
    # every window is whole inside the padded input: sum = mean * prod(k), then / divisor
    mean = b.node("AveragePool", inputs, "mean", count_include_pad=1, **attrs)
    factor = b.constant(math.prod(layer.kernel_size) / divisor, "sum_over_divisor")
    return b.node("Mul", [mean, factor], output=b.out)


def _bins(n_in, n_out):
    """torch's adaptive bins: [floor(i * in / out), ceil((i + 1) * in / out))."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _adaptive(layer, b, x, kind):
    spatial_in = tuple(layer.input_shape[1:])
    spatial_out = tuple(layer.output_shape[1:])
    nd = len(spatial_in)
    op = "Average" if kind == "avg" else "Max"
    if all(o == 1 for o in spatial_out):
        return b.node(f"Global{op}Pool", [x], output=b.out)
    if all(i % o == 0 for i, o in zip(spatial_in, spatial_out)):
        k = [i // o for i, o in zip(spatial_in, spatial_out)]
        return b.node(f"{op}Pool", [x], output=b.out, kernel_shape=k, strides=k,
                      pads=[0] * (2 * nd))
    # uneven bins: both reductions are separable, one spatial axis after the other
    for a, (n_in, n_out) in enumerate(zip(spatial_in, spatial_out)):
        axis = 2 + a
        last = a == nd - 1
        if n_in == n_out:
            if last:
                return b.node("Identity", [x], output=b.out)
            continue
        if kind == "avg":
            # (out, in) averaging matrix; MatMul contracts the last axis, so move ``axis`` there
            # by multiplying from the left ((out, in) @ (..., in, W)) or the right
            weights = np.zeros((n_out, n_in))
            for i, (s, e) in enumerate(_bins(n_in, n_out)):
                weights[i, s:e] = 1.0 / (e - s)
            if axis == 1 + nd:                  # the last axis: x @ weights.T
                x = b.node("MatMul", [x, b.constant(weights.T, "bins")], "bins_avg")
            else:                               # H of (N, C, H, W): weights @ x
                x = b.node("MatMul", [b.constant(weights, "bins"), x], "bins_avg")
        else:
            parts = [b.reduce("ReduceMax", b.slice(x, axis, s, e), [axis])
                     for s, e in _bins(n_in, n_out)]
            x = b.node("Concat", parts, "bins_max", axis=axis)
    return b.node("Identity", [x], output=b.out)


@exporter("adaptive_avg_pool1d", "adaptive_avg_pool2d")
def _adaptive_avg(layer, b, inputs):
    return _adaptive(layer, b, inputs[0], "avg")


@exporter("adaptive_max_pool2d")
def _adaptive_max(layer, b, inputs):
    return _adaptive(layer, b, inputs[0], "max")


@exporter("global_avg_pool2d")
def _global_avg(layer, b, inputs):
    return b.node("GlobalAveragePool", inputs, output=b.out)


# -- resampling -----------------------------------------------------------------------------
@exporter("upsample")
def _upsample(layer, b, inputs):
    x = inputs[0]
    mode = layer.mode
    nd = len(layer.input_shape) - 1
    if mode == "area":                       # torch's area mode is adaptive average pooling
        return _adaptive(layer, b, x, "avg")
    if mode in ("nearest", "nearest-exact"):
        attrs = dict(mode="nearest",
                     coordinate_transformation_mode="asymmetric" if mode == "nearest"
                     else "half_pixel",
                     nearest_mode="floor" if mode == "nearest" else "round_prefer_ceil")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode="align_corners"
                     if layer.align_corners else "half_pixel")
    roi = ""
    if layer.scale_factor is not None:
        factors = (list(layer.scale_factor) if isinstance(layer.scale_factor, (list, tuple))
                   else [layer.scale_factor] * nd)
        scales = b.constant(np.asarray([1.0, 1.0] + [float(f) for f in factors], np.float32),
                            "scales", np.float32)
        return b.node("Resize", [x, roi, scales], output=b.out, **attrs)
    spatial = list(layer.output_shape[1:])
    if b.opset >= 18:
        return b.node("Resize", [x, roi, "", b.ints(spatial, "sizes")], output=b.out,
                      axes=list(range(2, 2 + nd)), **attrs)
    batch_channels = b.slice(b.node("Shape", [x], "shape"), 0, 0, 2)
    sizes = b.node("Concat", [batch_channels, b.ints(spatial, "spatial_sizes")], "sizes", axis=0)
    return b.node("Resize", [x, roi, "", sizes], output=b.out, **attrs)


# -- shapes and merges ----------------------------------------------------------------------
@exporter("flatten")
def _flatten(layer, b, inputs):
    rank = len(layer.input_shape) + 1
    end = layer.end_dim + rank if layer.end_dim < 0 else layer.end_dim
    start = layer.start_dim + rank if layer.start_dim < 0 else layer.start_dim
    if start == 1 and end == rank - 1:
        return b.node("Flatten", inputs, output=b.out, axis=1)
    return b.reshape(inputs[0], [0] + list(layer.output_shape), output=b.out)


@exporter("reshape")
def _reshape(layer, b, inputs):
    return b.reshape(inputs[0], [0] + list(layer.output_shape), output=b.out)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


@exporter("pad")
def _pad(layer, b, inputs):
    rank = len(layer.input_shape) + 1
    pairs = [(layer.pad[2 * i], layer.pad[2 * i + 1]) for i in range(len(layer.pad) // 2)][::-1]
    pairs = [(0, 0)] * (rank - len(pairs)) + pairs             # first axis first, as ONNX
    args = [inputs[0], b.ints([p[0] for p in pairs] + [p[1] for p in pairs], "pads")]
    if layer.mode == "constant":
        args.append(b.constant(layer.value, "value"))
    if layer.mode == "circular" and b.opset < 19:
        from fastcnn.onnx.errors import OnnxExportError
        raise OnnxExportError(f"{layer.where()}: circular padding (Pad mode 'wrap') needs "
                              f"opset 19 or newer, got opset {b.opset}")
    return b.node("Pad", args, output=b.out, mode=_PAD_MODES[layer.mode])


@exporter("elementwise")
def _elementwise(layer, b, inputs):
    value = b.param("value")
    args = [value, inputs[0]] if layer.reverse else [inputs[0], value]
    return b.node(layer.op.capitalize(), args, output=b.out)


@exporter("add")
def _add(layer, b, inputs):
    total = inputs[0]
    for i, x in enumerate(inputs[1:], 2):        # ((x1 + x2) + x3) ..., the order fastcnn sums
        total = b.node("Add", [total, x], output=b.out if i == len(inputs) else None)
    return total


@exporter("concat")
def _concat(layer, b, inputs):
    return b.node("Concat", inputs, output=b.out, axis=layer._axis)
