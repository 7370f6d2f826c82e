"""fastcnn: convolutional networks on the CPU.

Kernels are Cython with OpenMP loops under ``nogil`` and BLAS through scipy; everything above
them is Python. ``fastcnn.functional`` holds the ops, named and shaped as
``torch.nn.functional``; models are declared as dicts and built with :func:`build_model`.
"""
from fastcnn import data  # noqa: F401  (registers the datasets)
from fastcnn import functional
from fastcnn import layers  # noqa: F401  (registers the built-in layers)
from fastcnn import init
from fastcnn import onnx  # noqa: F401  (fastcnn.onnx; the onnx package itself is imported lazily)
from fastcnn._memory import memory_stats, release_memory, set_memory_limit
from fastcnn._threads import get_num_threads, set_num_threads
from fastcnn.functional import set_conv_autotune
from fastcnn.checkpoint import load, load_checkpoint, save
from fastcnn.inference import InferenceSession
from fastcnn.layers.base import Layer, Parameter
from fastcnn.model import Model, build_model, load_config
from fastcnn.optim import build_optimizer, clip_grad_norm, clip_grad_value
from fastcnn.registry import (register_dataset, register_initializer, register_layer,
                              register_loss, register_optimizer, register_scheduler)
from fastcnn.losses import build_loss
from fastcnn.schedulers import build_scheduler
from fastcnn.training import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "data", "functional", "init", "Layer", "Parameter", "Model", "build_model", "load_config",
    "build_loss", "build_optimizer", "build_scheduler", "clip_grad_norm", "clip_grad_value",
    "Trainer", "train", "save", "load", "load_checkpoint", "InferenceSession",
    "set_num_threads", "get_num_threads", "set_conv_autotune",
    "release_memory", "set_memory_limit", "memory_stats",
    "register_layer", "register_initializer", "register_optimizer", "register_scheduler",
    "register_loss", "register_dataset", "__version__",
]
