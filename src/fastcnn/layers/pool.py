"""Pooling layers: max / average (1-D, 2-D, 3-D), adaptive, global average."""
from __future__ import annotations

import math

from fastcnn import functional as F
from fastcnn._checks import ntuple
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "GlobalAvgPool2d"]


class _Pool(Layer):
    output_is_private = True      # a new array, not kept, no view of the input
    nd = 2

    def build(self, input_shape):
        self.input_channels(input_shape, (self.nd + 1,))
        return self.probe_output_shape(input_shape)

    def flops(self):
        return math.prod(self.input_shape)


class _MaxPool(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        name = f"max_pool{self.nd}d"
        self.kernel_size = ntuple(name, "kernel_size", kernel_size, self.nd, minimum=1)
        self.stride = None if stride is None else ntuple(name, "stride", stride, self.nd, minimum=1)
        self.padding = ntuple(name, "padding", padding, self.nd, minimum=0)
        self.dilation = ntuple(name, "dilation", dilation, self.nd, minimum=1)
        self.ceil_mode = bool(ceil_mode)

    def _args(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode)

    def forward(self, x):
        fn = getattr(F, f"max_pool{self.nd}d")
        if not self.training:
            return fn(x, **self._args())
        y, indices = fn(x, **self._args(), return_indices=True)
        self.save_for_backward(x, indices)
        return y

    def backward(self, grad):
        x, indices = self.saved()
        return getattr(F, f"max_pool{self.nd}d_backward")(grad, x, indices, **self._args())


@register_layer("max_pool1d", aliases=("MaxPool1d",))
class MaxPool1d(_MaxPool):
    """Max over sliding windows of (C, L) (torch.nn.MaxPool1d)."""
    nd = 1


@register_layer("max_pool2d", aliases=("MaxPool2d",))
class MaxPool2d(_MaxPool):
    """Max over sliding windows of (C, H, W) (torch.nn.MaxPool2d)."""
    nd = 2


@register_layer("max_pool3d", aliases=("MaxPool3d",))
class MaxPool3d(_MaxPool):
    """Max over sliding windows of (C, D, H, W) (torch.nn.MaxPool3d)."""
    nd = 3


class _AvgPool(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        name = f"avg_pool{self.nd}d"
        self.kernel_size = ntuple(name, "kernel_size", kernel_size, self.nd, minimum=1)
        self.stride = None if stride is None else ntuple(name, "stride", stride, self.nd, minimum=1)
        self.padding = ntuple(name, "padding", padding, self.nd, minimum=0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def _args(self):
        args = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad)
        if self.divisor_override is not None:
            args["divisor_override"] = self.divisor_override
        return args

    def forward(self, x):
        self.save_for_backward(x)
        return getattr(F, f"avg_pool{self.nd}d")(x, **self._args())

    def backward(self, grad):
        (x,) = self.saved()
        return getattr(F, f"avg_pool{self.nd}d_backward")(grad, x, **self._args())


@register_layer("avg_pool1d", aliases=("AvgPool1d",))
class AvgPool1d(_AvgPool):
    """Mean over sliding windows of (C, L)."""
    nd = 1


@register_layer("avg_pool2d", aliases=("AvgPool2d",))
class AvgPool2d(_AvgPool):
    """Mean over sliding windows of (C, H, W)."""
    nd = 2


@register_layer("avg_pool3d", aliases=("AvgPool3d",))
class AvgPool3d(_AvgPool):
    """Mean over sliding windows of (C, D, H, W)."""
    nd = 3


class _AdaptiveAvgPool(_Pool):
    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        self.save_for_backward(x)
        return getattr(F, f"adaptive_avg_pool{self.nd}d")(x, self.output_size)

    def backward(self, grad):
        (x,) = self.saved()
        return getattr(F, f"adaptive_avg_pool{self.nd}d_backward")(grad, x)


@register_layer("adaptive_avg_pool1d", aliases=("AdaptiveAvgPool1d",))
class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Mean over output_size bins of (C, L), bins as torch."""
    nd = 1


@register_layer("adaptive_avg_pool2d", aliases=("AdaptiveAvgPool2d",))
class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Mean over an output_size grid of bins of (C, H, W), bins as torch."""
    nd = 2


@register_layer("adaptive_max_pool2d", aliases=("AdaptiveMaxPool2d",))
class AdaptiveMaxPool2d(_Pool):
    """Max over an output_size grid of bins of (C, H, W)."""
    nd = 2

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        if not self.training:
            return F.adaptive_max_pool2d(x, self.output_size)
        y, indices = F.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        self.save_for_backward(x, indices)
        return y

    def backward(self, grad):
        x, indices = self.saved()
        return F.adaptive_max_pool2d_backward(grad, x, indices)


@register_layer("global_avg_pool2d", aliases=("GlobalAvgPool2d",))
class GlobalAvgPool2d(_Pool):
    """Mean over each channel's whole plane: (C, H, W) -> (C, 1, 1)."""
    nd = 2

    def __init__(self):
        pass

    def forward(self, x):
        self.save_for_backward(x)
        return F.global_avg_pool2d(x)

    def backward(self, grad):
        (x,) = self.saved()
        return F.global_avg_pool2d_backward(grad, x)
