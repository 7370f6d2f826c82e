"""Linear and dropout layers."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import functional as F
from fastcnn._checks import as_int
from fastcnn.layers.base import Layer
from fastcnn.layers.conv import DEFAULT_BIAS_INIT, DEFAULT_WEIGHT_INIT
from fastcnn.registry import register_layer

__all__ = ["Linear", "Dropout", "Dropout2d"]


@register_layer("linear", aliases=("Linear", "dense"))
class Linear(Layer):
    """y = x @ W^T + b over the last axis; W (out_features, in_features) as torch.nn.Linear."""
    output_is_private = True      # a new array, not kept, no view of the input

    def __init__(self, out_features, bias=True, in_features=None, weight_init=None,
                 bias_init=None):
        self.out_features = as_int("linear", "out_features", out_features, minimum=1)
        if not isinstance(bias, bool):
            raise TypeError(f"linear: bias must be True or False, got {bias!r}")
        self.use_bias = bias
        self.in_features = (None if in_features is None else
                            as_int("linear", "in_features", in_features, minimum=1))
        self.weight_init, self.bias_init = weight_init, bias_init

    def build(self, input_shape):
        if not input_shape:
            raise ValueError(f"{self.where()}: needs at least one per-sample axis")
        features = input_shape[-1]
        if self.in_features is not None and self.in_features != features:
            raise ValueError(f"{self.where()}: in_features={self.in_features} but the input's "
                             f"last axis has {features} (per-sample shape {tuple(input_shape)}; "
                             f"add a flatten layer before it?)")
        self.in_features = features
        self.weight = self.add_parameter("weight", (self.out_features, features),
                                         DEFAULT_WEIGHT_INIT, init=self.weight_init)
        self.bias = (self.add_parameter("bias", (self.out_features,), DEFAULT_BIAS_INIT,
                                        init=self.bias_init, weight_decay=False)
                     if self.use_bias else None)
        return tuple(input_shape[:-1]) + (self.out_features,)

    def forward(self, x):
        self.save_for_backward(x)
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad):
        (x,) = self.saved()
        need_x = getattr(self, "needs_input_grad", True)
        gx, gw, gb = F.linear_backward(grad, x, self.weight.data,
                                       output_mask=(need_x, True, self.bias is not None))
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx

    def flops(self):
        return 2 * self.in_features * math.prod(self.output_shape)


class _DropoutBase(Layer):
    fn = "dropout"

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{self.fn}: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = None

    def build(self, input_shape):
        # A generator of its own, drawn from the model's seeded one: building is deterministic,
        # and a trainer may hand every dropout its run's generator instead.
        self.rng = np.random.default_rng(self._init_context.rng.integers(2**63))
        return tuple(input_shape)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            if self.training:
                self.save_for_backward(None)
            return x
        y, mask = getattr(F, self.fn)(x, self.p, True, self.rng, return_mask=True)
        self.save_for_backward(mask)
        return y

    def backward(self, grad):
        (mask,) = self.saved()
        return grad if mask is None else F.dropout_backward(grad, mask, self.p)


@register_layer("dropout", aliases=("Dropout",))
class Dropout(_DropoutBase):
    """Zero each element with probability p in training, scaling the rest by 1/(1-p)."""
    fn = "dropout"


@register_layer("dropout2d", aliases=("Dropout2d",))
class Dropout2d(_DropoutBase):
    """Zero whole channels with probability p in training (scaling the rest by 1/(1-p))."""
    fn = "dropout2d"
