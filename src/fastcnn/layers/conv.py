"""Convolution layers: conv1d/2d/3d (torch.nn.Conv1d/2d/3d)."""
from __future__ import annotations

import math

from fastcnn import functional as F
from fastcnn._checks import as_int, ntuple
from fastcnn.functional import _conv as _conv_ops
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

DEFAULT_WEIGHT_INIT = "kaiming_uniform"   # He, fan_in, ReLU gain: the seeds' choice for ReLU nets
DEFAULT_BIAS_INIT = "zeros"


def check_padding(fname, padding, nd, stride=None):
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{fname}: padding must be 'same', 'valid', an int or a tuple of "
                             f"{nd} ints, got {padding!r}")
        if padding == "same" and stride is not None and any(s != 1 for s in stride):
            raise ValueError(f"{fname}: padding='same' needs stride 1, got stride={stride}")
        return padding
    return ntuple(fname, "padding", padding, nd, minimum=0)


class _ConvBase(Layer):
    """What convolution and transposed convolution layers share: arguments, input checks,
    weight and bias, and forward/backward through ``F.<name>`` / ``F.<name>_backward``."""
    output_is_private = True      # a new array, not kept, no view of the input
    nd = 2
    op = "conv"

    def _init_common(self, out_channels, kernel_size, stride, dilation, groups, bias,
                     in_channels, weight_init, bias_init):
        fname = self.type_name
        self.out_channels = as_int(fname, "out_channels", out_channels, minimum=1)
        self.kernel_size = ntuple(fname, "kernel_size", kernel_size, self.nd, minimum=1)
        self.stride = ntuple(fname, "stride", stride, self.nd, minimum=1)
        self.dilation = ntuple(fname, "dilation", dilation, self.nd, minimum=1)
        self.groups = as_int(fname, "groups", groups, minimum=1)
        if self.out_channels % self.groups:
            raise ValueError(f"{fname}: out_channels={out_channels} must be divisible by "
                             f"groups={groups}")
        if not isinstance(bias, bool):
            raise TypeError(f"{fname}: bias must be True or False, got {bias!r}")
        self.use_bias = bias
        self.in_channels = (None if in_channels is None else
                            as_int(fname, "in_channels", in_channels, minimum=1))
        self.weight_init, self.bias_init = weight_init, bias_init
        self._forward = getattr(F, f"{self.op}{self.nd}d")
        self._backward = getattr(F, f"{self.op}{self.nd}d_backward")

    def _build_parameters(self, input_shape, weight_shape_of):
        """Check the input, infer in_channels, create weight (weight_shape_of(C_in)) and bias."""
        c = self.input_channels(input_shape, (self.nd + 1,), self.in_channels)
        if c % self.groups:
            raise ValueError(f"{self.where()}: the input's {c} channels are not divisible by "
                             f"groups={self.groups}")
        self.in_channels = c
        self.weight = self.add_parameter("weight", weight_shape_of(c), DEFAULT_WEIGHT_INIT,
                                         init=self.weight_init)
        self.bias = (self.add_parameter("bias", (self.out_channels,), DEFAULT_BIAS_INIT,
                                        init=self.bias_init, weight_decay=False)
                     if self.use_bias else None)

    def _args(self):
        raise NotImplementedError

    def forward(self, x):
        self.save_for_backward(x)
        return self._forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                             **self._args())

    def backward(self, grad):
        (x,) = self.saved()
        return self._backward_from(grad, x)

    def _backward_from(self, grad, x):
        """Accumulate the parameter gradients for dL/d(output) ``grad``; return dL/dx."""
        need_x = getattr(self, "needs_input_grad", True)
        mask = (need_x, True, self.bias is not None)
        if self.op == "conv":
            gx, gw, gb = _conv_ops._layer_backward(self.nd, grad, x, self.weight.data,
                                                   self.stride, self.padding, self.dilation,
                                                   self.groups, mask)
        else:
            gx, gw, gb = self._backward(grad, x, self.weight.data, **self._args(),
                                        output_mask=mask)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx


class _ConvNd(_ConvBase):
    # A following ReLU is applied in the kernel's epilogue, with the bias; the output is then
    # kept, for the ReLU's mask in the backward.
    fusable_activations = ("relu",)

    @property
    def output_is_private(self):
        return self.fused_activation is None

    def forward(self, x):
        act = self.fused_activation
        w, b = self.weight.data, None if self.bias is None else self.bias.data
        y = _conv_ops._layer_forward(self.nd, x, w, b, self.stride, self.padding,
                                     self.dilation, self.groups, act == "relu")
        if y is None:
            y = self._forward(x, w, b, **self._args(), activation=act)
        self.save_for_backward(x, y if act else None)
        return y

    def backward(self, grad):
        x, y = self.saved()
        if y is not None:
            grad = F.relu_backward(grad, y)
        return self._backward_from(grad, x)

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, in_channels=None, weight_init=None, bias_init=None):
        self._init_common(out_channels, kernel_size, stride, dilation, groups, bias, in_channels,
                          weight_init, bias_init)
        self.padding = check_padding(self.type_name, padding, self.nd, self.stride)

    def build(self, input_shape):
        self._build_parameters(input_shape, lambda c: (self.out_channels, c // self.groups)
                               + self.kernel_size)
        spatial = tuple(input_shape[1:])
        if self.padding == "same":
            out = spatial
        else:
            pad = (0,) * self.nd if self.padding == "valid" else self.padding
            out = tuple(F.conv_output_size(i, k, s, p, d) for i, k, s, p, d in
                        zip(spatial, self.kernel_size, self.stride, pad, self.dilation))
        if any(o < 1 for o in out):
            raise ValueError(f"{self.where()}: input of spatial size {spatial} is too small for "
                             f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
                             f"padding={self.padding} (output size would be {out})")
        return (self.out_channels,) + out

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def flops(self):
        per_output = 2 * (self.in_channels // self.groups) * math.prod(self.kernel_size)
        return per_output * math.prod(self.output_shape)


@register_layer("conv1d", aliases=("Conv1d",))
class Conv1d(_ConvNd):
    """1-D convolution over (C, L): torch.nn.Conv1d."""
    nd = 1


@register_layer("conv2d", aliases=("Conv2d",))
class Conv2d(_ConvNd):
    """2-D convolution over (C, H, W): torch.nn.Conv2d."""
    nd = 2


@register_layer("conv3d", aliases=("Conv3d",))
class Conv3d(_ConvNd):
    """3-D convolution over (C, D, H, W): torch.nn.Conv3d."""
    nd = 3


class _ConvTransposeNd(_ConvBase):
    op = "conv_transpose"

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, in_channels=None, weight_init=None,
                 bias_init=None):
        self._init_common(out_channels, kernel_size, stride, dilation, groups, bias, in_channels,
                          weight_init, bias_init)
        fname = self.type_name
        self.padding = ntuple(fname, "padding", padding, self.nd, minimum=0)
        self.output_padding = ntuple(fname, "output_padding", output_padding, self.nd, minimum=0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= s and op >= d:
                raise ValueError(f"{fname}: output_padding {self.output_padding} must be smaller "
                                 f"than stride {self.stride} or dilation {self.dilation}")

    def build(self, input_shape):
        # torch's layout (C_in, C_out/groups, *k); fans are computed from it as torch does.
        self._build_parameters(input_shape, lambda c: (c, self.out_channels // self.groups)
                               + self.kernel_size)
        out = tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in
                    zip(input_shape[1:], self.stride, self.padding, self.dilation,
                        self.kernel_size, self.output_padding))
        if any(o < 1 for o in out):
            raise ValueError(f"{self.where()}: output size would be {out} for input "
                             f"{tuple(input_shape)}")
        return (self.out_channels,) + out

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation)

    def flops(self):
        per_input = 2 * (self.out_channels // self.groups) * math.prod(self.kernel_size)
        return per_input * math.prod(self.input_shape)


@register_layer("conv_transpose1d", aliases=("ConvTranspose1d",))
class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution: torch.nn.ConvTranspose1d."""
    nd = 1


@register_layer("conv_transpose2d", aliases=("ConvTranspose2d", "deconv2d"))
class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution (learned upsampling): torch.nn.ConvTranspose2d."""
    nd = 2


@register_layer("conv_transpose3d", aliases=("ConvTranspose3d",))
class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution: torch.nn.ConvTranspose3d."""
    nd = 3
