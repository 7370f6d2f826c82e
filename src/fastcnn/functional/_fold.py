"""unfold / fold (im2col / col2im), as torch.nn.functional.unfold / fold, and their
gradients (each is the other's adjoint)."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import im2col as _im2col
from fastcnn._threads import get_num_threads
from fastcnn.functional._common import _delegate, conv_output_size

__all__ = ["unfold", "fold", "unfold_backward", "fold_backward"]


def _spatial_rank(*per_axis_args) -> int:
    """1, 2 or 3 from the first tuple argument's length; 2 when all are ints (as torch)."""
    for value in per_axis_args:
        if isinstance(value, (tuple, list)) and len(value) in (1, 2, 3):
            return len(value)
    return 2


def _window_args(fname, nd, kernel_size, dilation, padding, stride):
    return (ntuple(fname, "kernel_size", kernel_size, nd, minimum=1),
            ntuple(fname, "dilation", dilation, nd, minimum=1),
            ntuple(fname, "padding", padding, nd, minimum=0),
            ntuple(fname, "stride", stride, nd, minimum=1))


def _blocks(fname, in_size, kernel, dilation, padding, stride):
    blocks = tuple(conv_output_size(i, k, s, p, d) for i, k, s, p, d in
                   zip(in_size, kernel, stride, padding, dilation))
    if any(b < 1 for b in blocks):
        raise ValueError(f"{fname}: spatial size {in_size} with kernel_size {kernel}, dilation "
                         f"{dilation}, padding {padding}, stride {stride} gives no sliding "
                         f"block (blocks per axis: {blocks})")
    return blocks


def _lifted(size, kernel, stride, padding, dilation, blocks):
    """The kernels' geometry arguments: the image size and window parameters, and the blocks
    per axis, each lifted to 3 axes."""
    return (lift3(size, 1), lift3(kernel, 1), lift3(stride, 1), lift3(padding, 0),
            lift3(dilation, 1), lift3(blocks, 1))


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Extract sliding blocks (im2col), as ``torch.nn.functional.unfold``.

    input (N, C, *spatial) or unbatched (C, *spatial) -> (N, C * prod(kernel_size), L) or
    (C * prod(kernel_size), L), where L is the number of blocks
    ``prod(floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1)``. Row
    ``c*prod(kernel_size) + offset`` holds channel c at one kernel offset, column l one block.
    2-D unless ``kernel_size`` (or another argument) is a tuple of 1 or 3 entries.
    """
    fname = "unfold"
    nd = _spatial_rank(kernel_size, dilation, padding, stride)
    x = as_array(fname, "input", input)
    check_ndim(fname, "input", x, (nd + 1, nd + 2), f"(N, C, *spatial) or (C, *spatial) for "
                                                    f"{nd}-D blocks")
    kernel, dilation, padding, stride = _window_args(fname, nd, kernel_size, dilation, padding,
                                                     stride)
    batched = x.ndim == nd + 2
    xb = x if batched else x[None]
    n, c = xb.shape[:2]
    in_size = tuple(xb.shape[2:])
    blocks = _blocks(fname, in_size, kernel, dilation, padding, stride)
    dtype = float_dtype(x)
    rows, L = c * math.prod(kernel), math.prod(blocks)
    _checks.check_extent(fname, "output (rows, blocks)", (rows, L))
    _checks.check_extent(fname, "input spatial size", (c,) + in_size)
    cols = _memory.empty((n, rows, L), dtype)
    if n and c:
        _im2col.unfold(contiguous(xb, dtype).reshape(n, -1), cols.reshape(n, -1), c,
                       *_lifted(in_size, kernel, stride, padding, dilation, blocks),
                       get_num_threads())
    return cols if batched else cols[0]


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding blocks back into an array (col2im), as ``torch.nn.functional.fold``.

    input (N, C * prod(kernel_size), L) or (C * prod(kernel_size), L) -> (N, C, *output_size)
    or (C, *output_size). Overlapping blocks add up; ``fold(unfold(x))`` multiplies each element
    by the number of blocks that cover it. The adjoint of :func:`unfold`.
    """
    fname = "fold"
    nd = _spatial_rank(output_size, kernel_size, dilation, padding, stride)
    cols = as_array(fname, "input", input)
    check_ndim(fname, "input", cols, (2, 3), "(N, C*prod(kernel_size), L) or "
                                             "(C*prod(kernel_size), L)")
    out_size = ntuple(fname, "output_size", output_size, nd, minimum=1)
    _checks.check_extent(fname, "output_size", out_size)
    kernel, dilation, padding, stride = _window_args(fname, nd, kernel_size, dilation, padding,
                                                     stride)
    batched = cols.ndim == 3
    cb = cols if batched else cols[None]
    n, rows, L = cb.shape
    kk = math.prod(kernel)
    if rows % kk:
        raise ValueError(f"{fname}: input.shape[-2] = {rows} must be divisible by "
                         f"prod(kernel_size) = {kk} (kernel_size={kernel})")
    blocks = _blocks(fname, out_size, kernel, dilation, padding, stride)
    if L != math.prod(blocks):
        raise ValueError(f"{fname}: input.shape[-1] = {L} must equal the number of sliding "
                         f"blocks {math.prod(blocks)} (blocks per axis {blocks} for "
                         f"output_size={out_size})")
    c = rows // kk
    _checks.check_extent(fname, "input (rows, blocks)", (rows, L))
    _checks.check_extent(fname, "output (channels, *output_size)", (c,) + out_size)
    dtype = float_dtype(cols)
    out = _memory.empty((n, c) + out_size, dtype)
    if n and c:
        _im2col.fold(contiguous(cb, dtype).reshape(n, -1), out.reshape(n, -1), c,
                     *_lifted(out_size, kernel, stride, padding, dilation, blocks),
                     get_num_threads())
    return out if batched else out[0]


def unfold_backward(grad_output, input_size, kernel_size, dilation=1, padding=0, stride=1):
    """Gradient of :func:`unfold`: ``fold(grad_output, input_size[-nd:], ...)``.

    ``input_size`` is the shape of unfold's input (or just its spatial size).
    """
    nd = _spatial_rank(kernel_size, dilation, padding, stride)
    if not isinstance(input_size, (tuple, list, np.ndarray)):
        raise TypeError(f"unfold_backward: input_size must be a tuple of ints, got "
                        f"{_checks._describe(input_size)}")
    size = tuple(input_size)
    return _delegate("unfold_backward", fold, grad_output, size[len(size) - nd:], kernel_size,
                     dilation, padding, stride)


def fold_backward(grad_output, kernel_size, dilation=1, padding=0, stride=1):
    """Gradient of :func:`fold`: ``unfold(grad_output, ...)``."""
    return _delegate("fold_backward", unfold, grad_output, kernel_size, dilation, padding,
                     stride)
