"""fastcnn.functional: checked entry points over the compiled kernels.

Names, argument names, defaults, weight layouts and output sizes are those of
``torch.nn.functional``. Each differentiable op ``f`` has ``f_backward`` beside it, taking the
gradient of the loss with respect to ``f``'s output and returning the gradients with respect to
its inputs (a tuple when there are several, None for the ones not asked for or not present).
A backward takes what the forward saw -- the input, or the output where that is the cheap form
(sigmoid, tanh, softmax, log_softmax); each docstring says which. Losses return a numpy scalar
(or an array for reduction='none') and their backward takes dL/dloss.

Families, one private module each: _conv (convolution; _conv_algorithms picks its algorithm:
im2col + GEMM, Winograd, the direct kernels, depthwise loops), _fold (unfold/fold),
_conv_transpose, _pool, _resample, _norm (batch, layer, group, instance), _linear, _activation,
_dropout, _pad, _loss and _fuse (batch-norm folding); their kernels are the same-named modules
of fastcnn._ops (winograd, depthwise and gemm serve _conv and _linear, im2col serves _fold).
Running statistics and counters passed to the norms are the caller's numpy arrays, updated in
place.

Arrays are NCL / NCHW / NCDHW. Inputs may be any real dtype and memory layout: float32 and float64
are computed as they are (float64 wins when mixed); ints, bools and float16 are computed in
float32; views, Fortran-order and negative-stride arrays are copied to C order first. Index
arrays (max pooling's ``return_indices``, unpooling) are int64 flat positions in a spatial plane.

Each op family lives in its own private module (``_conv``, ``_pool``, ``_norm``, ...):
the checks, docstring and backward of an op are there, its kernel in ``fastcnn/_ops``.
"""
import sys as _sys

from fastcnn.functional._activation import *  # noqa: F401,F403
from fastcnn.functional._common import conv_output_size
from fastcnn.functional._conv import *  # noqa: F401,F403
from fastcnn.functional._conv_algorithms import *  # noqa: F401,F403
from fastcnn.functional._conv_transpose import *  # noqa: F401,F403
from fastcnn.functional._dropout import *  # noqa: F401,F403
from fastcnn.functional._fold import *  # noqa: F401,F403
from fastcnn.functional._fuse import *  # noqa: F401,F403
from fastcnn.functional._linear import *  # noqa: F401,F403
from fastcnn.functional._loss import *  # noqa: F401,F403
from fastcnn.functional._norm import *  # noqa: F401,F403
from fastcnn.functional._pad import *  # noqa: F401,F403
from fastcnn.functional._pool import *  # noqa: F401,F403
from fastcnn.functional._resample import *  # noqa: F401,F403

__all__ = ["conv_output_size"]
for _family in (
        "conv", "conv_algorithms", "fold", "conv_transpose", "pool", "resample", "norm",
        "linear", "activation", "dropout", "pad", "loss", "fuse",
):
    __all__ += _sys.modules[f"{__name__}._{_family}"].__all__
del _family
