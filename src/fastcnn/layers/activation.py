"""Activation layers over fastcnn.functional's activations (torch.nn names as aliases).

Each saves, for its backward, the cheaper of its input or its output (sigmoid, tanh and the
softmaxes differentiate through their output).
"""
from __future__ import annotations

import math

import numpy as np

from fastcnn import functional as F
from fastcnn._checks import as_int
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["ReLU", "LeakyReLU", "ELU", "SELU", "GELU", "Sigmoid", "Tanh", "Softmax",
           "LogSoftmax", "PReLU", "Hardtanh", "ReLU6"]


class _Activation(Layer):
    fn = ""
    uses_output = False

    @property
    def output_is_private(self):
        return not self.uses_output

    def __init__(self):
        pass

    def _options(self):
        return {}

    def forward(self, x):
        y = getattr(F, self.fn)(x, **self._options())
        self.save_for_backward(y if self.uses_output else x)
        return y

    def backward(self, grad):
        (saved,) = self.saved()
        return getattr(F, f"{self.fn}_backward")(grad, saved, **self._options())

    def flops(self):
        return math.prod(self.output_shape)


@register_layer("relu", aliases=("ReLU",))
class ReLU(_Activation):
    """max(x, 0). When the model fuses it into the layer before (Model.set_activation_fusion),
    it passes its argument through. Otherwise it overwrites its input when the model says
    nobody else reads it: no new activation-sized array, and its backward reads its output
    (y > 0 exactly where x > 0)."""
    fn = "relu"
    uses_output = True
    #: Set by the model when the layer before applies this ReLU itself (convolution, batch
    #: norm, add): then forward and backward pass their argument through.
    fused_into = None

    def forward(self, x):
        if self.fused_into is not None:
            self.save_for_backward(None)
            return x
        y = F.relu(x, inplace=self.may_overwrite_input)
        self.save_for_backward(y)
        return y

    def backward(self, grad):
        (y,) = self.saved()
        if y is None:               # fused: the layer before masks the gradient
            return grad
        return F.relu_backward(grad, y)


@register_layer("leaky_relu", aliases=("LeakyReLU",))
class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x."""
    fn = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        self.negative_slope = float(negative_slope)

    def _options(self):
        return {"negative_slope": self.negative_slope}


@register_layer("elu", aliases=("ELU",))
class ELU(_Activation):
    """x if x > 0 else alpha * (exp(x) - 1)."""
    fn = "elu"

    def __init__(self, alpha=1.0):
        self.alpha = float(alpha)

    def _options(self):
        return {"alpha": self.alpha}


@register_layer("selu", aliases=("SELU",))
class SELU(_Activation):
    """scale * elu(x, alpha) with the self-normalizing constants."""
    fn = "selu"


@register_layer("gelu", aliases=("GELU",))
class GELU(_Activation):
    """x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh")."""
    fn = "gelu"

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _options(self):
        return {"approximate": self.approximate}


@register_layer("sigmoid", aliases=("Sigmoid",))
class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    fn = "sigmoid"
    uses_output = True


@register_layer("tanh", aliases=("Tanh",))
class Tanh(_Activation):
    """tanh(x)."""
    fn = "tanh"
    uses_output = True


@register_layer("softmax", aliases=("Softmax",))
class Softmax(_Activation):
    """exp(x) / sum(exp(x)) along ``dim`` (1 = the channel/class axis; 0 is the batch)."""
    fn = "softmax"
    uses_output = True

    def __init__(self, dim=1):
        self.dim = as_int("softmax", "dim", dim)

    def _options(self):
        return {"dim": self.dim}


@register_layer("log_softmax", aliases=("LogSoftmax",))
class LogSoftmax(Softmax):
    """log(softmax(x)) along ``dim``."""
    fn = "log_softmax"


@register_layer("prelu", aliases=("PReLU",))
class PReLU(Layer):
    """x if x > 0 else a * x, with a learned slope a: one shared (num_parameters=1) or one per
    channel (num_parameters = C). torch initializes a to 0.25."""

    def __init__(self, num_parameters=1, init=0.25):
        self.num_parameters = as_int("prelu", "num_parameters", num_parameters, minimum=1)
        self.init_value = float(init)

    def build(self, input_shape):
        if self.num_parameters != 1 and (not input_shape or input_shape[0] != self.num_parameters):
            raise ValueError(f"{self.where()}: num_parameters={self.num_parameters} must be 1 or "
                             f"the number of channels of input {tuple(input_shape)}")
        self.weight = self.add_parameter("weight", (self.num_parameters,),
                                         {"type": "constant", "value": self.init_value},
                                         use_model_default=False, weight_decay=False)
        return tuple(input_shape)

    def forward(self, x):
        self.save_for_backward(x)
        return F.prelu(x, self.weight.data)

    def backward(self, grad):
        (x,) = self.saved()
        gx, gw = F.prelu_backward(grad, x, self.weight.data)
        self.weight.grad += gw
        return gx


@register_layer("hardtanh", aliases=("Hardtanh", "clip"))
class Hardtanh(Layer):
    """min(max(x, min_val), max_val) (torch.nn.Hardtanh; ONNX Clip). The gradient passes where
    min_val < x < max_val, as torch's."""
    output_is_private = True      # a new array, not kept, no view of the input

    def __init__(self, min_val=-1.0, max_val=1.0):
        for name, value in (("min_val", min_val), ("max_val", max_val)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.type_name}: {name} must be a finite number, got {value!r}")
        if min_val > max_val:
            raise ValueError(f"{self.type_name}: min_val={min_val} must not exceed "
                             f"max_val={max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x):
        self.save_for_backward(x)
        return np.clip(x, self.min_val, self.max_val)

    def backward(self, grad):
        (x,) = self.saved()
        return np.where((x > self.min_val) & (x < self.max_val), grad, 0).astype(grad.dtype)

    def flops(self):
        return math.prod(self.output_shape)


@register_layer("relu6", aliases=("ReLU6",))
class ReLU6(Hardtanh):
    """min(max(x, 0), 6) (torch.nn.ReLU6, MobileNet's activation)."""

    def __init__(self):
        super().__init__(0.0, 6.0)
