"""How each layer runs inside a plan: its output shape, and its kernel bound to fixed buffers.

A step builder takes an eval-mode layer, the full shapes of its inputs (batch included) and
the plan's dtype, checks and prepares everything once (geometry, the convolution's algorithm
and transformed weights, pooling tables) and returns a ``StepSpec``. ``spec.bind(inputs, out)``
then returns a callable with no arguments that runs the layer from the input arrays into
``out``: the plan's loop calls it on every run, with no checks, no allocation and no lookup.

Layers with no builder here (a user's plugin, a rarely used layer) run their own ``forward``
as Python and their result is copied into the plan's buffer: they work, at the cost of an
allocation and the checks. ``builder_for`` says which path a layer takes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from fastcnn._ops import activation as _act
from fastcnn._ops import gemm as _gemm
from fastcnn._threads import get_num_threads
from fastcnn.functional._conv import ConvForward, _conv_geometry
from fastcnn.functional._pool import _NO_INDICES, MaxPoolForward
from fastcnn.layers.activation import ReLU
from fastcnn.layers.conv import _ConvNd
from fastcnn.layers.linear import _DropoutBase, Linear
from fastcnn.layers.pool import _MaxPool
from fastcnn.layers.shape import Add, Concat, Flatten, Identity

__all__ = ["StepSpec", "builder_for", "build_step"]


@dataclass
class StepSpec:
    """What a plan needs to know of one layer at one input shape.

    kind: a short description ("conv2d winograd", "view", "python");
    out_shape: the output's full shape (batch included);
    view: the output is the first input reshaped (no work, no buffer of its own);
    in_place: the output may take the first input's buffer when nothing reads that input later;
    bind(inputs, out) -> run(): the kernel on fixed arrays (None for a view).
    """
    kind: str
    out_shape: tuple
    bind: Optional[Callable] = None
    view: bool = False
    in_place: bool = False


def _view(kind, shape):
    return StepSpec(kind, tuple(shape), view=True)


def _conv(layer, shapes, dtype):
    (shape,) = shapes
    fname = f"conv{layer.nd}d"
    w = np.ascontiguousarray(layer.weight.data, dtype=dtype)
    b1 = (np.ascontiguousarray(layer.bias.data, dtype=dtype) if layer.bias is not None
          else np.empty(0, dtype))
    # the geometry needs only the input's shape: a zero-strided stand-in holds no memory
    stand_in = np.broadcast_to(np.zeros((), dtype), shape)
    geom = _conv_geometry(fname, layer.nd, stand_in, w, **layer._args())
    conv = ConvForward(geom, layer.nd, w, b1, dtype, relu=layer.fused_activation == "relu")
    n = shape[0]

    def bind(inputs, out):
        return functools.partial(conv.run, inputs[0].reshape(n, -1), out.reshape(n, -1))
    return StepSpec(f"{fname} {conv.algorithm}", (n, geom.out_channels) + geom.out_size, bind)


def _linear(layer, shapes, dtype):
    (shape,) = shapes
    rows, features = math.prod(shape[:-1]), shape[-1]
    w = np.ascontiguousarray(layer.weight.data, dtype=dtype)
    b = None if layer.bias is None else np.ascontiguousarray(layer.bias.data, dtype=dtype)

    def bind(inputs, out):
        x2, y2 = inputs[0].reshape(rows, features), out.reshape(rows, layer.out_features)

        def run():                  # as F.linear: one GEMM on the team, then += bias
            _gemm.matmul(x2, w, y2, False, True, get_num_threads())
            if b is not None:
                np.add(y2, b, out=y2)
        return run
    return StepSpec("linear", tuple(shape[:-1]) + (layer.out_features,), bind)


def _relu(layer, shapes, dtype):
    (shape,) = shapes
    if layer.fused_into is not None:             # applied by the layer before it
        return _view("relu (fused)", shape)

    def bind(inputs, out):
        x, y = inputs[0].reshape(-1), out.reshape(-1)
        return lambda: _act.relu_forward(x, y, get_num_threads())
    return StepSpec("relu", tuple(shape), bind, in_place=True)


def _add(layer, shapes, dtype):
    relu = layer.fused_activation == "relu"

    def bind(inputs, out):
        flat = [x.reshape(-1) for x in inputs]
        y = out.reshape(-1)

        def run():                  # as Add.forward: left to right, the ReLU on the last sum
            threads = get_num_threads()
            _act.add(flat[0], flat[1], y, relu and len(flat) == 2, threads)
            for i in range(2, len(flat)):
                _act.add(y, flat[i], y, relu and i == len(flat) - 1, threads)
        return run
    return StepSpec("add" + (" + relu" if relu else ""), tuple(shapes[0]), bind, in_place=True)


def _concat(layer, shapes, dtype):
    out_shape = list(shapes[0])
    out_shape[layer._axis] = sum(s[layer._axis] for s in shapes)

    def bind(inputs, out):
        return functools.partial(np.concatenate, inputs, axis=layer._axis, out=out)
    return StepSpec("concat", tuple(out_shape), bind)


def _max_pool(layer, shapes, dtype):
    (shape,) = shapes
    nd = layer.nd
    pool = MaxPoolForward(f"max_pool{nd}d", nd, tuple(shape[-nd:]), layer.kernel_size,
                          layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
    planes = math.prod(shape[:-nd])

    def bind(inputs, out):
        return functools.partial(pool.run, inputs[0].reshape(planes, -1),
                                 out.reshape(planes, -1), _NO_INDICES)
    return StepSpec(f"max_pool{nd}d", tuple(shape[:-nd]) + pool.out_size, bind)


def _flatten(layer, shapes, dtype):
    return _view("flatten", (shapes[0][0],) + tuple(layer.output_shape))


def _pass_through(layer, shapes, dtype):
    return _view(layer.type_name, shapes[0])


def _python(layer, shapes, dtype):
    """Any other layer: its own forward (eval mode), copied into the plan's buffer."""
    out_shape = (shapes[0][0],) + tuple(layer.output_shape)

    def bind(inputs, out):
        return lambda: np.copyto(out, layer.forward(*inputs), casting="same_kind")
    return StepSpec(f"{layer.type_name} (python)", out_shape, bind)


# Checked in order: the first class the layer is an instance of picks its builder.
_BUILDERS = (
    (_ConvNd, _conv),
    (Linear, _linear),
    (ReLU, _relu),
    (Add, _add),
    (Concat, _concat),
    (_MaxPool, _max_pool),
    (Flatten, _flatten),
    (Identity, _pass_through),
    (_DropoutBase, _pass_through),            # the identity in eval mode
)


def builder_for(layer):
    """The builder of ``layer``'s step: a fast one for the built-in layers above, the layer's
    own forward otherwise."""
    for cls, builder in _BUILDERS:
        if isinstance(layer, cls) and type(layer).forward is cls.forward:
            return builder
    return _python


def build_step(layer, shapes, dtype) -> StepSpec:
    """The step of an eval-mode ``layer`` whose inputs have the full shapes ``shapes``."""
    spec = builder_for(layer)(layer, [tuple(s) for s in shapes], np.dtype(dtype))
    expected = (shapes[0][0],) + tuple(layer.output_shape)
    if tuple(spec.out_shape) != expected:      # a builder and the layer's build() disagree
        raise RuntimeError(f"{layer.where()}: the inference step gives shape {spec.out_shape}, "
                           f"the layer {expected}")
    return spec
