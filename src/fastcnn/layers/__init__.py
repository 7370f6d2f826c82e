"""Layer classes, each registered under a snake_case name and its torch class name."""
from fastcnn.layers.base import Layer, Parameter
from fastcnn.layers.conv import Conv1d, Conv2d, Conv3d
from fastcnn.layers.shape import Add, Concat, Flatten, Identity

__all__ = ["Layer", "Parameter", "Conv1d", "Conv2d", "Conv3d", "Add", "Concat", "Flatten",
           "Identity"]
