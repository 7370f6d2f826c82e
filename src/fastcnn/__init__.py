"""fastcnn: convolutional networks on the CPU.

Kernels are Cython with OpenMP loops under ``nogil`` and BLAS through scipy; everything above
them is Python. ``fastcnn.functional`` holds the ops, named and shaped as
``torch.nn.functional``.
"""
from fastcnn import functional
from fastcnn._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["functional", "get_num_threads", "set_num_threads", "__version__"]
