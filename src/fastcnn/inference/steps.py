"""How each layer runs inside a plan: its output shape, and its kernel bound to fixed buffers.

A step builder takes an eval-mode layer, the full shapes of its inputs (batch included) and
the plan's dtype, checks and prepares everything once (geometry, the convolution's algorithm
and transformed weights, pooling tables) and returns a ``StepSpec``. ``spec.bind(inputs, out,
scratch)`` then returns a callable with no arguments that runs the layer from the input arrays
into ``out`` (``scratch``: the plan's workspace, at least ``spec.scratch`` elements, shared by
its steps, which run one at a time): the plan's loop calls it on every run, with no checks, no
allocation and no lookup.
For ReLU, add, concat, linear, max and average pooling and the convolutions (every algorithm;
a transposed convolution by phases: one per phase) that callable is a compiled step
(fastcnn._ops.plan_steps.CompiledStep: the kernel's pointers bound once), which the plan runs
in sequences without Python between the layers; the others are Python callables.

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
from fastcnn._ops import plan_steps as _plan_steps
from fastcnn._ops.parallel import openmp_max_threads
from fastcnn._threads import get_num_threads
from fastcnn.functional._conv import ConvForward, _conv_geometry
from fastcnn.functional._conv_transpose import ConvTransposeForward, _conv_transpose_geometry
from fastcnn.functional._pool import _NO_INDICES, AvgPool, MaxPoolForward
from fastcnn.layers.activation import ReLU
from fastcnn.layers.conv import _ConvNd, _ConvTransposeNd
from fastcnn.layers.linear import _DropoutBase, Linear
from fastcnn.layers.pool import GlobalAvgPool2d, _AdaptiveAvgPool, _AvgPool, _MaxPool
from fastcnn.layers.shape import Add, Concat, Identity, _PerSampleReshape

__all__ = ["StepSpec", "builder_for", "build_step"]


@dataclass
class StepSpec:
    """What a plan needs to know of one layer at one input shape.

    kind: a short description ("conv2d winograd", "view", "python");
    out_shape: the output's full shape (batch included);
    view: the output is the first input reshaped (no work, no buffer of its own);
    in_place: the output may take the first input's buffer when nothing reads that input later;
    bind(inputs, out, scratch) -> run(): the kernel on fixed arrays (None for a view), or a
    list of such run in turn (a transposed convolution's output phases);
    scratch: elements of workspace the kernel needs (the plan's, shared by all its steps);
    extra_inputs: names of values read besides the node's own inputs (appended to bind's
    inputs: a fused residual);
    view_input: which input a view reshapes;
    fuse_residual(name, relu) -> StepSpec: this step with the value ``name`` (its output's
    shape) added to its output, then the ReLU if relu: a following add fused into it (None
    where the kernel cannot).
    """
    kind: str
    out_shape: tuple
    bind: Optional[Callable] = None
    view: bool = False
    in_place: bool = False
    scratch: int = 0
    extra_inputs: tuple = ()
    view_input: int = 0
    fuse_residual: Optional[Callable] = None


def _view(kind, shape):
    return StepSpec(kind, tuple(shape), view=True)


def _weights(layer, dtype):
    w = np.ascontiguousarray(layer.weight.data, dtype=dtype)
    b1 = (np.ascontiguousarray(layer.bias.data, dtype=dtype) if layer.bias is not None
          else np.empty(0, dtype))
    return w, b1


def _stand_in(shape, dtype):
    """An array of ``shape`` that holds no memory, for the geometry checks (shapes only)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _by_samples(kind, prepared, out_shape):
    """A step running a prepared convolution on (N, -1) views of its input and output: its
    compiled step (``prepared.step``) where it has one, else ``prepared.run(x2, out2)``."""
    n, threads = out_shape[0], _team_size()

    def bind(inputs, out, scratch):
        x2, out2 = inputs[0].reshape(n, -1), out.reshape(n, -1)
        if prepared.step is not None:
            return prepared.step(x2, out2, scratch, threads)
        return functools.partial(prepared.run, x2, out2)
    need = prepared.step_scratch * threads if prepared.step is not None else 0
    residual_step = getattr(prepared, "residual_step", None)
    if residual_step is None:
        return StepSpec(kind, out_shape, bind, scratch=need)

    def fuse_residual(name, relu):
        def bind_fused(inputs, out, scratch):
            x2, res2, out2 = inputs[0].reshape(n, -1), inputs[1].reshape(n, -1), out.reshape(n, -1)
            return residual_step(x2, out2, scratch, relu, threads, res2)
        return StepSpec(f"{kind} + add" + (" + relu" if relu else ""), out_shape, bind_fused,
                        scratch=need, extra_inputs=(name,))
    return StepSpec(kind, out_shape, bind, scratch=need, fuse_residual=fuse_residual)


def _team_size():
    """The most threads a compiled step's workspace is made for: a run asking for more gets
    this many (the same bits: results never depend on the count)."""
    return max(get_num_threads(), openmp_max_threads(), 1)


def _conv(layer, shapes, dtype, fastest=False):
    (shape,) = shapes
    fname = f"conv{layer.nd}d"
    w, b1 = _weights(layer, dtype)
    geom = _conv_geometry(fname, layer.nd, _stand_in(shape, dtype), w, **layer._args())
    relu = layer.fused_activation == "relu"
    conv = ConvForward(geom, layer.nd, w, b1, dtype, relu=relu, fastest=fastest)
    spec = _by_samples(f"{fname} {conv.algorithm}", conv,
                       (shape[0], geom.out_channels) + geom.out_size)
    if relu:                        # an add after its own ReLU cannot go into its store
        spec.fuse_residual = None
    return spec


def _conv_transpose(layer, shapes, dtype, fastest=False):
    (shape,) = shapes
    fname = f"conv_transpose{layer.nd}d"
    w, b1 = _weights(layer, dtype)
    args = layer._args()
    geom = _conv_transpose_geometry(fname, layer.nd, _stand_in(shape, dtype), w,
                                    args["stride"], args["padding"], args["output_padding"],
                                    args["groups"], args["dilation"])
    conv = ConvTransposeForward(geom, layer.nd, w, b1, dtype, fastest)
    return _by_samples(f"{fname} {conv.algorithm}", conv,
                       (shape[0], geom.out_channels) + geom.out_size)


def _linear(layer, shapes, dtype):
    (shape,) = shapes
    rows, features = math.prod(shape[:-1]), shape[-1]
    w = np.ascontiguousarray(layer.weight.data, dtype=dtype)
    b = None if layer.bias is None else np.ascontiguousarray(layer.bias.data, dtype=dtype)

    def bind(inputs, out, scratch):  # as F.linear: one GEMM on the team, then += bias
        return _gemm.LinearStep(inputs[0].reshape(rows, features), w, b,
                                out.reshape(rows, layer.out_features))
    return StepSpec("linear", tuple(shape[:-1]) + (layer.out_features,), bind)


def _relu(layer, shapes, dtype):
    (shape,) = shapes
    if layer.fused_into is not None:             # applied by the layer before it
        return _view("relu (fused)", shape)

    def bind(inputs, out, scratch):
        return _act.EltwiseStep(inputs[0].reshape(-1), None, out.reshape(-1))
    return StepSpec("relu", tuple(shape), bind, in_place=True)


def _add(layer, shapes, dtype):
    relu = layer.fused_activation == "relu"

    def bind(inputs, out, scratch):
        flat = [x.reshape(-1) for x in inputs]
        y = out.reshape(-1)
        if len(flat) == 2:
            return _act.EltwiseStep(flat[0], flat[1], y, relu)

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

    def bind(inputs, out, scratch):
        return _plan_steps.ConcatStep(inputs, out, layer._axis)
    return StepSpec("concat", tuple(out_shape), bind)


def _max_pool(layer, shapes, dtype):
    (shape,) = shapes
    nd = layer.nd
    pool = MaxPoolForward(f"max_pool{nd}d", nd, tuple(shape[-nd:]), layer.kernel_size,
                          layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
    return _planes(f"max_pool{nd}d", _WithoutIndices(pool), shape, nd)


class _WithoutIndices:
    """A MaxPoolForward that keeps no indices (inference)."""
    __slots__ = ("pool", "out_size")

    def __init__(self, pool):
        self.pool, self.out_size = pool, pool.out_size

    def run(self, x2, out2):
        self.pool.run(x2, out2, _NO_INDICES)

    def step(self, x2, out2):
        return self.pool.step(x2, out2)


def _planes(kind, pool, shape, nd):
    """A pooling step: ``pool.step``, a compiled step over the (N*C, -1) planes of its input
    and output."""
    planes = math.prod(shape[:-nd])

    def bind(inputs, out, scratch):
        return pool.step(inputs[0].reshape(planes, -1), out.reshape(planes, -1))
    return StepSpec(kind, tuple(shape[:-nd]) + pool.out_size, bind)


def _avg_pool(layer, shapes, dtype):
    (shape,) = shapes
    nd, fname = layer.nd, f"avg_pool{layer.nd}d"
    pool = AvgPool.fixed(fname, nd, tuple(shape[-nd:]), layer.kernel_size, layer.stride,
                         layer.padding, layer.ceil_mode, layer.count_include_pad,
                         layer.divisor_override)
    return _planes(fname, pool, shape, nd)


def _adaptive_avg_pool(layer, shapes, dtype):
    (shape,) = shapes
    nd = layer.nd
    output_size = 1 if isinstance(layer, GlobalAvgPool2d) else layer.output_size
    pool = AvgPool.adaptive(layer.type_name, nd, tuple(shape[-nd:]), output_size)
    return _planes(layer.type_name, pool, shape, nd)


def _reshape(layer, shapes, dtype):
    return _view(layer.type_name, (shapes[0][0],) + tuple(layer.output_shape))


def _pass_through(layer, shapes, dtype):
    return _view(layer.type_name, shapes[0])


def _python(layer, shapes, dtype):
    """Any other layer: its own forward (eval mode), copied into the plan's buffer."""
    out_shape = (shapes[0][0],) + tuple(layer.output_shape)

    def bind(inputs, out, scratch):
        return lambda: np.copyto(out, layer.forward(*inputs), casting="same_kind")
    return StepSpec(f"{layer.type_name} (python)", out_shape, bind)


# Checked in order: the first class the layer is an instance of picks its builder.
_BUILDERS = (
    (_ConvNd, _conv),
    (_ConvTransposeNd, _conv_transpose),
    (Linear, _linear),
    (ReLU, _relu),
    (Add, _add),
    (Concat, _concat),
    (_MaxPool, _max_pool),
    (_AvgPool, _avg_pool),
    (_AdaptiveAvgPool, _adaptive_avg_pool),
    (GlobalAvgPool2d, _adaptive_avg_pool),
    (_PerSampleReshape, _reshape),             # flatten, reshape: views
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


def build_step(layer, shapes, dtype, autotune=False) -> StepSpec:
    """The step of an eval-mode ``layer`` whose inputs have the full shapes ``shapes``; with
    ``autotune``, a convolution takes the algorithm that ran fastest on this shape here."""
    builder = builder_for(layer)
    shapes, dtype = [tuple(s) for s in shapes], np.dtype(dtype)
    if builder in (_conv, _conv_transpose):
        spec = builder(layer, shapes, dtype, autotune)
    else:
        spec = builder(layer, shapes, dtype)
    expected = (shapes[0][0],) + tuple(layer.output_shape)
    if tuple(spec.out_shape) != expected:      # a builder and the layer's build() disagree
        raise RuntimeError(f"{layer.where()}: the inference step gives shape {spec.out_shape}, "
                           f"the layer {expected}")
    return spec
