"""Layers that move data without arithmetic: identity, flatten, and the merges add / concat."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import functional as F
from fastcnn._checks import as_int
from fastcnn.functional._activation import _add
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["Identity", "Flatten", "Reshape", "Add", "Concat"]


@register_layer("identity", aliases=("Identity",))
class Identity(Layer):
    """y = x."""

    def __init__(self):
        pass

    def forward(self, x):
        if self.training:
            self.save_for_backward(True)
        return x

    def backward(self, grad):
        self.saved()
        return grad


class _PerSampleReshape(Layer):
    """A layer that gives each sample its output shape (a view; the gradient is reshaped
    back): flatten and reshape."""

    def forward(self, x):
        self.save_for_backward(x.shape)
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, grad):
        (shape,) = self.saved()
        return grad.reshape(shape)


@register_layer("flatten", aliases=("Flatten",))
class Flatten(_PerSampleReshape):
    """Flatten per-sample axes start_dim..end_dim into one (torch.nn.Flatten; dim 0 is the
    batch, which is never flattened)."""

    def __init__(self, start_dim=1, end_dim=-1):
        self.start_dim = as_int("flatten", "start_dim", start_dim)
        self.end_dim = as_int("flatten", "end_dim", end_dim)

    def build(self, input_shape):
        full = (None,) + tuple(input_shape)          # axis 0 is the batch
        nd = len(full)
        start = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        end = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not 1 <= start <= end < nd:
            raise ValueError(f"{self.where()}: start_dim={self.start_dim}, end_dim={self.end_dim} "
                             f"do not select per-sample axes of an input of per-sample shape "
                             f"{tuple(input_shape)}")
        shape = full[1:start] + (math.prod(full[start:end + 1]),) + full[end + 1:]
        return shape


@register_layer("reshape", aliases=("Reshape", "Unflatten"))
class Reshape(_PerSampleReshape):
    """Give each sample the shape ``shape`` (batch excluded; one entry may be -1, inferred), as
    ``x.reshape(N, *shape)``: what an imported ONNX Reshape / Squeeze / Unsqueeze that keeps
    the batch becomes."""

    def __init__(self, shape):
        if (not isinstance(shape, (list, tuple)) or
                any(isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1)
                    for v in shape) or list(shape).count(-1) > 1):
            raise ValueError(f"reshape: shape must be a list of positive ints (one may be -1), "
                             f"the per-sample shape, got {shape!r}")
        self.shape = tuple(shape)

    def build(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(v for v in self.shape if v != -1)
        out = tuple(size // known if v == -1 else v for v in self.shape)
        if math.prod(out) != size:
            raise ValueError(f"{self.where()}: cannot reshape samples of shape "
                             f"{tuple(input_shape)} ({size} values) to {list(self.shape)}")
        return out


class _Merge(Layer):
    output_is_private = True      # a new array, not kept, no view of the input
    num_inputs = None


@register_layer("add", aliases=("Add",))
class Add(_Merge):
    """y = x_1 + x_2 + ... (residual connections). All inputs have the same shape. A ReLU that
    follows can be fused (relu(x_1 + x_2) in one pass); the output is then kept for its mask."""
    fusable_activations = ("relu",)

    @property
    def output_is_private(self):
        return self.fused_activation is None

    def __init__(self):
        pass

    def build(self, input_shapes):
        first = tuple(input_shapes[0])
        for i, shape in enumerate(input_shapes[1:], 1):
            if tuple(shape) != first:
                raise ValueError(f"{self.where()}: inputs must have the same shape, got "
                                 f"{first} (input 0) and {tuple(shape)} (input {i})")
        return first

    def forward(self, *xs):
        relu = self.fused_activation == "relu"
        out = xs[0]
        for i, x in enumerate(xs[1:], 2):        # the fused ReLU with the last sum
            out = _add(out, x, relu=relu and i == len(xs))
        self.save_for_backward(len(xs), out if relu else None)
        return out

    def backward(self, grad):
        count, y = self.saved()
        if y is not None:
            grad = F.relu_backward(grad, y)
        return (grad,) * count

    def flops(self):
        return (len(self.input_shape) - 1) * math.prod(self.output_shape)


@register_layer("concat", aliases=("Concat", "cat"))
class Concat(_Merge):
    """Concatenate along ``dim`` (1 = channels, as DenseNet and U-Net skip connections)."""

    def __init__(self, dim=1):
        self.dim = as_int("concat", "dim", dim)

    def build(self, input_shapes):
        nd = len(input_shapes[0]) + 1
        axis = self.dim + nd if self.dim < 0 else self.dim
        if not 1 <= axis < nd:
            raise ValueError(f"{self.where()}: dim={self.dim} is not a per-sample axis of inputs "
                             f"with per-sample shape {tuple(input_shapes[0])}")
        self._axis = axis
        ref = list(input_shapes[0])
        for i, shape in enumerate(input_shapes[1:], 1):
            other = list(shape)
            rest_other, rest_ref = other[:axis - 1] + other[axis:], ref[:axis - 1] + ref[axis:]
            if len(other) != len(ref) or rest_other != rest_ref:
                raise ValueError(f"{self.where()}: inputs must match except along dim {self.dim}, "
                                 f"got {tuple(input_shapes[0])} (input 0) and {tuple(shape)} "
                                 f"(input {i})")
        out = list(ref)
        out[axis - 1] = sum(s[axis - 1] for s in input_shapes)
        return tuple(out)

    def forward(self, *xs):
        self.save_for_backward([x.shape[self._axis] for x in xs])
        return np.concatenate(xs, axis=self._axis)

    def backward(self, grad):
        (sizes,) = self.saved()
        cuts = np.cumsum(sizes)[:-1]
        return tuple(np.ascontiguousarray(g) for g in np.split(grad, cuts, axis=self._axis))
