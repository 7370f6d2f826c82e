"""Explicit padding as a layer (torch.nn.ConstantPad2d / ReflectionPad2d / ... in one): what an
imported ONNX ``Pad``, or the asymmetric padding of an ONNX convolution or pooling, becomes."""
from __future__ import annotations

import math

from fastcnn import functional as F
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["Pad"]

_MODES = ("constant", "reflect", "replicate", "circular")


@register_layer("pad", aliases=("Pad",))
class Pad(Layer):
    """Pad (or, with negative constant pads, crop) the trailing per-sample axes, as
    ``F.pad(x, pad, mode, value)``: ``pad = (left_last, right_last, left_second_last, ...)``,
    pairs for the last axis first, as torch. The batch axis is never padded. Modes 'constant'
    (with ``value``), 'reflect', 'replicate', 'circular' (these three: 1 to 3 spatial axes of
    (C, *spatial) samples)."""
    output_is_private = True      # a new array, not kept, no view of the input

    def __init__(self, pad, mode="constant", value=0.0):
        if not isinstance(pad, (list, tuple)) or not pad or len(pad) % 2:
            raise ValueError(f"pad: pad must be a non-empty list of (before, after) pairs, last "
                             f"axis first, got {pad!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in pad):
            raise TypeError(f"pad: pad must hold ints, got {pad!r}")
        if mode not in _MODES:
            raise ValueError(f"pad: mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise ValueError(f"pad: value must be a finite number, got {value!r}")
        self.pad = tuple(pad)
        self.mode = mode
        self.value = float(value)

    def build(self, input_shape):
        if len(self.pad) // 2 > len(input_shape):
            raise ValueError(f"{self.where()}: pad {list(self.pad)} pads {len(self.pad) // 2} "
                             f"axes but the samples have {len(input_shape)} "
                             f"(shape {tuple(input_shape)}); the batch is never padded")
        return self.probe_output_shape(input_shape)

    def forward(self, x):
        self.save_for_backward(x.shape)
        return F.pad(x, self.pad, self.mode, self.value)

    def backward(self, grad):
        (shape,) = self.saved()
        return F.pad_backward(grad, shape, self.pad, self.mode)
