"""Layer classes, each registered under a snake_case name and its torch class name."""
from fastcnn.layers.base import Layer, Parameter
from fastcnn.layers.activation import (ELU, GELU, Hardtanh, LeakyReLU, LogSoftmax, PReLU, ReLU,
                                       ReLU6, SELU, Sigmoid, Softmax, Tanh)
from fastcnn.layers.conv import (Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d,
                                 ConvTranspose3d)
from fastcnn.layers.linear import Dropout, Dropout2d, Linear
from fastcnn.layers.norm import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm,
                                 InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm)
from fastcnn.layers.pool import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveMaxPool2d,
                                 AvgPool1d, AvgPool2d, AvgPool3d, GlobalAvgPool2d, MaxPool1d,
                                 MaxPool2d, MaxPool3d)
from fastcnn.layers.elementwise import Elementwise
from fastcnn.layers.pad import Pad
from fastcnn.layers.resample import Upsample
from fastcnn.layers.shape import Add, Concat, Flatten, Identity, Reshape

__all__ = [
    "Layer", "Parameter", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Linear", "Dropout", "Dropout2d", "ReLU", "LeakyReLU", "ELU", "SELU",
    "GELU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "PReLU", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "GlobalAvgPool2d", "Upsample", "Add", "Concat", "Flatten", "Identity",
    "Reshape", "Pad", "Elementwise", "Hardtanh", "ReLU6",
]
