"""Upsampling layer over fastcnn.functional.interpolate."""
from __future__ import annotations

from fastcnn import functional as F
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["Upsample"]


@register_layer("upsample", aliases=("Upsample", "interpolate"))
class Upsample(Layer):
    """Resize the spatial axes to ``size`` or by ``scale_factor`` (torch.nn.Upsample); modes
    "nearest" and "bilinear" (and "linear" for 1-D)."""
    output_is_private = True      # a new array, not kept, no view of the input

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        if (size is None) == (scale_factor is None):
            raise ValueError("upsample: give exactly one of size and scale_factor")
        self.size, self.scale_factor = size, scale_factor
        self.mode, self.align_corners = mode, align_corners

    def _args(self):
        return dict(size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                    align_corners=self.align_corners)

    def build(self, input_shape):
        return self.probe_output_shape(input_shape)

    def forward(self, x):
        self.save_for_backward(x.shape)
        return F.interpolate(x, **self._args())

    def backward(self, grad):
        (shape,) = self.saved()
        return F.interpolate_backward(grad, shape, **self._args())
