"""Arithmetic with a constant (or learned) tensor: y = x + c, x - c, x * c, x / c (or c - x,
c / x), c broadcast against each sample as numpy broadcasts. What an imported ONNX Add / Sub /
Mul / Div with an initializer becomes: input normalization ((x - mean) / std), LayerScale-style
learned scales, biases added after a bias-free layer."""
from __future__ import annotations

import math

import numpy as np

from fastcnn._checks import as_int
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["Elementwise"]

_OPS = ("add", "sub", "mul", "div")


def _reduce_to(grad, shape):
    """Sum ``grad`` over the axes along which an operand of ``shape`` was broadcast."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and grad.shape[lead + i] != 1)
    out = grad.sum(axis=axes, keepdims=True) if axes else grad
    return out.reshape(shape)


@register_layer("elementwise", aliases=("Elementwise",))
class Elementwise(Layer):
    """``op`` in add, sub, mul, div between each sample and the tensor ``value`` of ``shape``
    (broadcast from the trailing axes, numpy's rules; the batch axis is never part of it).
    ``reverse`` puts the tensor first (c - x, c / x). ``trainable``: ``value`` is a parameter
    (learned, never weight-decayed) rather than a buffer. ``value`` starts at 0 for add/sub and
    1 for mul/div (the identity), and is set by loading a state_dict.

    Backward: dL/dx = g (add), +-g (sub), g * c (mul), g / c (div), -g * c / x^2 (c / x);
    dL/dc is the same product with x, summed over the batch and the broadcast axes."""
    output_is_private = True      # a new array, not kept, no view of the input

    def __init__(self, op, shape=(), reverse=False, trainable=True):
        if op not in _OPS:
            raise ValueError(f"elementwise: op must be one of {', '.join(_OPS)}, got {op!r}")
        if not isinstance(shape, (list, tuple)):
            raise ValueError(f"elementwise: shape must be a list of sizes (the constant's shape, "
                             f"batch excluded), got {shape!r}")
        self.op = op
        # a scalar is held as shape (1,), which broadcasts the same
        self.shape = tuple(as_int("elementwise", "shape", s, minimum=1) for s in shape) or (1,)
        self.reverse = bool(reverse)
        self.trainable = bool(trainable)

    def build(self, input_shape):
        try:
            out = np.broadcast_shapes(tuple(input_shape), self.shape)
        except ValueError:
            raise ValueError(f"{self.where()}: a constant of shape {list(self.shape)} does not "
                             f"broadcast against samples of shape {tuple(input_shape)}") from None
        fill = "zeros" if self.op in ("add", "sub") else "ones"
        dtype = self._init_context.dtype
        if self.trainable:
            self.value = self.add_parameter("value", self.shape, fill, use_model_default=False,
                                            weight_decay=False).data
        else:
            self.value = self.add_buffer("value", np.full(self.shape, 0 if fill == "zeros" else 1,
                                                          dtype))
        return tuple(out)

    def _value(self):
        return self._params["value"].data if self.trainable else self._buffers["value"]

    def forward(self, x):
        c = self._value()
        a, b = (c, x) if self.reverse else (x, c)
        fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[self.op]
        y = fn(a, b)
        self.save_for_backward(x)
        return np.ascontiguousarray(y, dtype=x.dtype)

    def backward(self, grad):
        (x,) = self.saved()
        c = self._value()
        op, rev = self.op, self.reverse
        if op == "add":
            gx, gc = grad, grad
        elif op == "sub":
            gx, gc = (-grad, grad) if rev else (grad, -grad)
        elif op == "mul":
            gx, gc = grad * c, grad * x
        elif rev:                                   # y = c / x
            gx, gc = -grad * c / (x * x), grad / x
        else:                                       # y = x / c
            gx, gc = grad / c, -grad * x / (c * c)
        if self.trainable:
            self._params["value"].grad += _reduce_to(gc, self.shape)
        return np.ascontiguousarray(_reduce_to(gx, x.shape), dtype=x.dtype)

    def flops(self):
        return math.prod(self.output_shape)
