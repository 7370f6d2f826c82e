"""What several op families share: batch-size chunking, per-sample rows, output sizes, the
checked geometry of a convolution problem."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastcnn import _checks
from fastcnn._checks import lift3

__all__ = []


# Samples are split into at most this many fixed chunks for the weight gradient (see conv.pyx):
# a function of the batch size only, so the result is the same for any number of threads.
_WEIGHT_GRAD_CHUNKS = 8
_INT32_MAX = _checks.INT32_MAX          # BLAS and the kernels take 32-bit sizes


@dataclass(frozen=True)
class _ConvGeometry:
    """A checked convolution problem, with per-axis tuples lifted to 3 axes for the kernels."""
    batched: bool
    n: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple       # spatial, nd entries
    out_size: tuple      # spatial, nd entries
    kernel: tuple        # the following are lifted to 3 entries
    stride: tuple
    padding: tuple       # before each axis
    dilation: tuple

    def kernel_args(self):
        return (lift3(self.in_size, 1), self.kernel, self.stride, self.padding, self.dilation,
                lift3(self.out_size, 1))


def _fused_activation(fname, activation):
    """The activation an op applies to its output in its own pass (the ``activation``
    keyword of batch norm and convolution): None or "relu"."""
    if activation is not None and activation != "relu":
        raise ValueError(f"{fname}: activation must be None or 'relu', got {activation!r}")
    return activation


def _rows(arr: np.ndarray, n: int) -> np.ndarray:
    """``arr`` viewed as (n, -1): one row per sample (also when n == 0)."""
    return arr.reshape(n, arr.size // n if n else 0)


def _delegate(fname, func, *args):
    """``func(*args)`` for a public function implemented by another one: its errors are
    re-raised under ``fname`` (the name the user called), e.g. selu -> elu."""
    try:
        return func(*args)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        inner, sep, rest = msg.partition(": ")
        if not sep or " " in inner:
            raise
        raise type(exc)(f"{fname}: {rest}") from None


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """``floor((size + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _mask3(fname, output_mask):
    """A backward's ``output_mask``: which of (input, weight, bias) gradients to compute."""
    try:
        flags = tuple(bool(m) for m in output_mask)
    except TypeError:
        flags = ()
    if len(flags) != 3:
        raise TypeError(f"{fname}: output_mask must be 3 booleans (input, weight, bias), "
                        f"got {output_mask!r}")
    return flags
