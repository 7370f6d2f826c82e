"""Transposed convolution (1-D/2-D/3-D)."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import conv as _conv
from fastcnn._ops import conv_direct as _direct
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch
from fastcnn.functional._common import _INT32_MAX, _rows
from fastcnn.functional._common import _ConvGeometry
from fastcnn.functional._conv import (
    _BackwardOperands,
    _conv_forward,
    _conv_geometry,
    _split_operands,
)
from fastcnn.functional import _conv_algorithms as algorithms

__all__ = [
    "conv_transpose_output_size", "conv_transpose1d", "conv_transpose1d_backward",
    "conv_transpose2d", "conv_transpose2d_backward", "conv_transpose3d",
    "conv_transpose3d_backward",
]


# --------------------------------------------------------------------------------------------
# Transposed convolution
# --------------------------------------------------------------------------------------------

def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """``(size-1)*stride - 2*padding + dilation*(kernel_size-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                             dilation) -> _ConvGeometry:
    batched, n, c_in, in_size, kernel = _split_operands(
        fname, nd, x, w, "(in_channels, out_channels/groups, *kernel_size)")
    groups = as_int(fname, "groups", groups, minimum=1)
    w_in, c_out_per_group = w.shape[:2]
    if w_in % groups:
        raise ValueError(f"{fname}: in_channels (weight.shape[0] = {w_in}) must be divisible "
                         f"by groups = {groups}")
    if c_in != w_in:
        raise ValueError(f"{fname}: input has {c_in} channels but weight {w.shape} expects "
                         f"{w_in} (weight.shape[0])")
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    padding = ntuple(fname, "padding", padding, nd, minimum=0)
    output_padding = ntuple(fname, "output_padding", output_padding, nd, minimum=0)
    dilation = ntuple(fname, "dilation", dilation, nd, minimum=1)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise ValueError(f"{fname}: output_padding must be smaller than either stride or "
                             f"dilation on each axis (as torch), got output_padding="
                             f"{output_padding}, stride={stride}, dilation={dilation}")
    out_size = tuple(conv_transpose_output_size(i, k, s, p, op, d) for i, k, s, p, op, d in
                     zip(in_size, kernel, stride, padding, output_padding, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(f"{fname}: input spatial size {in_size} with kernel {kernel}, stride "
                         f"{stride}, padding {padding}, output_padding {output_padding}, "
                         f"dilation {dilation} gives output size {out_size}: must be >= 1")
    _checks.check_extent(fname, "output spatial size", out_size)
    c_out = c_out_per_group * groups
    geom = _ConvGeometry(batched, n, c_in, c_out, groups, in_size, out_size,
                         lift3(kernel, 1), lift3(stride, 1), lift3(padding, 0),
                         lift3(dilation, 1))
    if max(c_out_per_group * math.prod(kernel), math.prod(in_size), c_in) > _INT32_MAX:
        raise ValueError(f"{fname}: a per-sample matrix dimension exceeds 2**31-1 (BLAS uses "
                         f"32-bit sizes): input {x.shape}, weight {w.shape}")
    return geom


def _conv_transpose_args(geom):
    """The kernels' geometry: the forward convolution from the output back to the input."""
    return (lift3(geom.out_size, 1), geom.kernel, geom.stride, geom.padding, geom.dilation,
            lift3(geom.in_size, 1))


class ConvTransposeForward:
    """One transposed convolution's forward (geometry ``geom`` as _conv_transpose_geometry
    makes it, weight w4 (C_in, C_out/groups, *kernel), bias b1 (C_out,) or empty), prepared:
    the algorithm chosen and, by phases, each output phase's kernels as the row kernel reads
    them. ``run(x2, out2)``: out2 (N, C_out*prod(out)) from x2 (N, C_in*prod(in)).
    F.conv_transpose*d prepares one per call; an InferenceSession once per plan.
    ``step(x2, out2, workspace, max_threads)``, ``step_scratch``: as ConvForward's (by
    phases: one compiled step for all output phases)."""
    __slots__ = ("algorithm", "run", "step", "step_scratch")

    def __init__(self, geom, nd, w4, b1, dtype, fastest=False):
        made = {}

        def prepared(algorithm):
            if algorithm not in made:
                made[algorithm] = self._prepared(algorithm, geom, nd, w4, b1, dtype)
            return made[algorithm][0]

        if fastest:
            probe = (np.zeros((geom.n, geom.in_channels * math.prod(geom.in_size)), dtype),
                     np.empty((geom.n, geom.out_channels * math.prod(geom.out_size)), dtype))
            runners = {a: (lambda a=a: prepared(a)(*probe))
                       for a in algorithms.ALGORITHMS["transposed forward"]}
            self.algorithm = algorithms.fastest("transposed forward", geom, nd, runners)
        else:
            self.algorithm = algorithms.select("transposed forward", geom, nd, dtype)
        self.run = prepared(self.algorithm)
        self.step_scratch, self.step = made[self.algorithm][1]

    @staticmethod
    def _prepared(algorithm, geom, nd, w4, b1, dtype):
        """(run(x2, out2), (step_scratch, step or None)) of ``algorithm`` with its operands
        made (see the class)."""
        if algorithm == "subpixel":
            # a direct kernel per output phase (algorithms.subpixel_by_rows: the row kernel
            # or the channel kernel), stored into the phase's interleaved outputs, all phases
            # on one padded copy of each sample (algorithms.subpixel_layout)
            ops = algorithms.SubpixelOperands(w4, b1, geom, dtype, algorithms.machine_rules())
            return ops.run, (ops.workspace, ops.step)
        else:
            args = _conv_transpose_args(geom)
            per_thread = _conv.conv_transpose_workspace_size(geom.out_channels, *args[1:4],
                                                             args[0], args[5])
            w2 = w4.reshape(geom.in_channels, -1)

            def gemm_col2im(x2, out2):
                threads = get_num_threads()
                ws = scratch(per_thread * threads, dtype)
                with single_threaded_blas:
                    _conv.conv_transpose_forward(x2, w2, b1, out2, ws, geom.groups, *args,
                                                 threads)

            def step(x2, out2, ws, threads):
                return _conv.Im2colStep(x2, w2, b1, out2, ws, geom.groups, args, 1, False, True,
                                        per_thread, threads)
            return gemm_col2im, (per_thread, step)


def _conv_transpose_forward(fname, nd, input, weight, bias, stride, padding, output_padding,
                            groups, dilation):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    geom = _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                                    dilation)
    dtype = float_dtype(x, w, b)
    b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, dtype)
    out = _memory.empty((geom.n, geom.out_channels) + geom.out_size, dtype)
    if geom.n:
        ConvTransposeForward(geom, nd, contiguous(w, dtype), b1, dtype).run(
            _rows(contiguous(x, dtype), geom.n), _rows(out, geom.n))
    return out if geom.batched else out[0]


def _conv_transpose_backward(fname, nd, grad_output, input, weight, stride, padding,
                             output_padding, groups, dilation, output_mask):
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    dy = as_array(fname, "grad_output", grad_output)
    geom = _conv_transpose_geometry(fname, nd, x, w, stride, padding, output_padding, groups,
                                    dilation)
    b = _BackwardOperands(fname, geom, x, w, dy, output_mask)
    need_x, need_w, dtype, n, threads = b.need_x, b.need_w, b.dtype, geom.n, b.threads
    if (need_x or need_w) and n and nd == 2:
        # The transposed convolution's gradients are those of the convolution of dy by the
        # same weight, stride and padding (whose output is x): dL/dx is that convolution, and
        # dL/dW its weight gradient with x as the output's gradient. Where the direct kernels
        # suit that convolution they beat the GEMM + im2col below (U-Net's k4 s2 upsampling,
        # 64 -> 32 channels on 16x16: dx by the channel kernel; dW, channels in the lanes,
        # 1.3 ms against 1.9 on AVX-512).
        dy4 = b.dy3.reshape((n, geom.out_channels) + geom.out_size)
        w4 = b.w2.reshape(w.shape)
        as_conv = _conv_geometry(fname, nd, dy4, w4, geom.stride[1:], geom.padding[1:],
                                 geom.dilation[1:], geom.groups)
        if as_conv.out_size == geom.in_size:
            rules = algorithms.machine_rules()
            by_channels = need_w and algorithms.select("weight gradient", as_conv, nd,
                                                       dtype) == "channels"
            x_algorithm = algorithms.select("forward", as_conv, nd, dtype)
            by_direct = x_algorithm == "direct"
            # (conv_algorithms(forward="direct") forces it too; a 4x4 stride-2 one goes to
            # winograd_s2 where the rules or a forced choice say so: dx below as a convolution)
            direct_x = need_x and (by_direct or x_algorithm == "winograd_s2"
                                   or algorithms.direct_ok(as_conv, nd, rules))
            if direct_x and by_direct and by_channels and n >= threads:
                # both by the channel kernels in one pass over the samples (dy padded once
                # for both, one team): the same bits as the two passes below, which batches
                # smaller than the team take (the forward cuts samples between threads)
                ops = algorithms.DirectOperands(w4, np.empty(0, dtype), as_conv, dtype)
                b.grad_w = algorithms.direct_weight_grad(
                    _rows(b.dy3, n), b.x2, as_conv, dtype, by_channels=True,
                    forward=(ops, _rows(b.grad_x, n)))
                need_x = need_w = False
            if need_x and direct_x:
                b.grad_x = _conv_forward(fname, nd, dy4, w4, None, geom.stride[1:],
                                         geom.padding[1:], geom.dilation[1:], geom.groups)
                need_x = False
            if need_w and by_channels:
                b.grad_w = algorithms.direct_weight_grad(_rows(b.dy3, n), b.x2, as_conv, dtype,
                                                         by_channels=True)
                need_w = False
    if (need_x or need_w) and n:
        args = _conv_transpose_args(geom)
        per_thread = _conv.conv_transpose_workspace_size(geom.out_channels, *args[1:4],
                                                         args[0], args[5])
        ws = scratch(per_thread * threads, dtype)
        gx = _rows(b.grad_x, n) if need_x else np.empty((0, 0), dtype=dtype)
        gw = b.parts if need_w else np.empty((0, 0), dtype=dtype)
        with single_threaded_blas:
            _conv.conv_transpose_backward(b.x2, b.w2, _rows(b.dy3, n), gx, gw, ws, need_x,
                                          need_w, geom.groups, *args, threads)
    return b.gradients()


_CONV_TRANSPOSE_DOC = """{nd}-D transposed convolution (the input gradient of conv{nd}d, sometimes
    called deconvolution), as ``torch.nn.functional.conv_transpose{nd}d``.

    Parameters
    ----------
    input : array (N, C_in, {spatial}) or (C_in, {spatial})
    weight : array (C_in, C_out/groups, {kernel})
    bias : array (C_out,) or None
    stride, dilation : int or tuple of {nd} ints, >= 1
    padding : int or tuple of {nd} ints >= 0: ``dilation*(kernel-1) - padding`` zeros are
        implicitly added to both sides of the input (padding crops the output)
    output_padding : int or tuple of {nd} ints >= 0, smaller than stride or dilation per axis:
        extra size added to one side of the output (picks among the input sizes that a strided
        convolution maps to the same output size)
    groups : int; C_in must be divisible by it

    Returns
    -------
    array (N, C_out, {out}) with, per axis,
    ``out = (in-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1`` and

        y[n, g*C_out/groups + o, i*stride - padding + offset*dilation] +=
            x[n, g*C_in/groups + c, i] * weight[g*C_in/groups + c, o, offset]   (+ bias[o])

    computed per sample as ``col2im(W^T @ x)`` (a GEMM, then col2im), never by zero-upsampling.
    """

_CONV_TRANSPOSE_BACKWARD_DOC = """Gradients of :func:`conv_transpose{nd}d`.

    ``grad_output`` is dL/dy, shaped as conv_transpose{nd}d's output; the other arguments are
    those of the forward call. Returns ``(grad_input, grad_weight, grad_bias)``, None where
    ``output_mask`` is False:

        grad_input  = W @ im2col(dy)           (the convolution of dy with the same weight)
        grad_weight = sum_n x[n] @ im2col(dy[n])^T
        grad_bias   = dy summed over the batch and spatial axes
    """


def _make_conv_transpose(nd, spatial, kernel, out):
    def conv_transpose(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                       dilation=1):
        return _conv_transpose_forward(f"conv_transpose{nd}d", nd, input, weight, bias, stride,
                                       padding, output_padding, groups, dilation)

    def conv_transpose_backward(grad_output, input, weight, stride=1, padding=0,
                                output_padding=0, groups=1, dilation=1,
                                output_mask=(True, True, True)):
        return _conv_transpose_backward(f"conv_transpose{nd}d_backward", nd, grad_output, input,
                                        weight, stride, padding, output_padding, groups,
                                        dilation, output_mask)

    name = f"conv_transpose{nd}d"
    conv_transpose.__name__ = conv_transpose.__qualname__ = name
    conv_transpose_backward.__name__ = conv_transpose_backward.__qualname__ = name + "_backward"
    conv_transpose.__doc__ = _CONV_TRANSPOSE_DOC.format(nd=nd, spatial=spatial, kernel=kernel,
                                                        out=out)
    conv_transpose_backward.__doc__ = _CONV_TRANSPOSE_BACKWARD_DOC.format(nd=nd)
    conv_transpose.__module__ = conv_transpose_backward.__module__ = __name__
    return conv_transpose, conv_transpose_backward


conv_transpose1d, conv_transpose1d_backward = _make_conv_transpose(1, "L", "kL", "L_out")
conv_transpose2d, conv_transpose2d_backward = _make_conv_transpose(2, "H, W", "kH, kW",
                                                                   "H_out, W_out")
conv_transpose3d, conv_transpose3d_backward = _make_conv_transpose(3, "D, H, W", "kD, kH, kW",
                                                                   "D_out, H_out, W_out")
