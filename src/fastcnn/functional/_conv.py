"""Convolution (1-D/2-D/3-D): the checks, and the forward and backward drivers that run the
algorithm _conv_algorithms.py picks (im2col + GEMM, Winograd, the direct kernels, depthwise
loops)."""
from __future__ import annotations

import functools
import math

import numpy as np

from fastcnn import _checks, _memory
from fastcnn._checks import as_array, as_int, check_ndim, contiguous, float_dtype, lift3, ntuple
from fastcnn._ops import conv as _conv
from fastcnn._ops import conv_direct as _direct
from fastcnn._ops import depthwise as _depthwise
from fastcnn._ops import pointwise as _pointwise
from fastcnn._threads import get_num_threads, single_threaded_blas
from fastcnn._workspace import scratch
from fastcnn.functional._common import (
    _INT32_MAX,
    _WEIGHT_GRAD_CHUNKS,
    _ConvGeometry,
    _fused_activation,
    _mask3,
    _rows,
    conv_output_size,
)
from fastcnn.functional import _conv_algorithms as algorithms

__all__ = [
    "conv1d", "conv1d_backward", "conv2d", "conv2d_backward", "conv3d", "conv3d_backward",
]


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------

def _split_operands(fname, nd, x, w, weight_layout):
    """What convolution and transposed convolution check alike about input and weight:
    (batched, n, c_in, in_size, kernel)."""
    check_ndim(fname, "weight", w, (nd + 2,), weight_layout)
    check_ndim(fname, "input", x, (nd + 1, nd + 2),
               "(N, C, *spatial), or (C, *spatial) for one unbatched sample")
    batched = x.ndim == nd + 2
    n = x.shape[0] if batched else 1
    c_in = x.shape[1] if batched else x.shape[0]
    in_size = tuple(x.shape[-nd:])
    if 0 in in_size:     # as torch: an all-padding output would index an empty input row
        raise ValueError(f"{fname}: input must have non-zero spatial sizes (only the batch may "
                         f"be empty), got shape {x.shape}")
    kernel = tuple(w.shape[2:])
    if 0 in w.shape:
        raise ValueError(f"{fname}: weight must have no zero-size axis, got shape {w.shape}")
    return batched, n, c_in, in_size, kernel


# Geometries already checked, by everything they depend on (the arguments with their types:
# stride=True must not pass for stride=1): a training step asks for the same ones every step,
# and the checks cost ~10 us a call (LeNet's second layer forward at batch 64: ~180 us).
_GEOMETRIES: dict = {}
_GEOMETRIES_MAX = 4096


def _typed(value):
    """A key of an argument and its type (a tuple element by element); the dict lookup raises
    TypeError for an unhashable one (a list: such a call is checked every time)."""
    if type(value) is tuple:
        return tuple((type(v), v) for v in value)
    return (type(value), value)


def _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups) -> _ConvGeometry:
    """The checked geometry of a convolution of x by w (cached: see _GEOMETRIES)."""
    try:
        key = (fname, nd, x.shape, x.dtype.num, w.shape, w.dtype.num, _typed(stride),
               _typed(padding), _typed(dilation), _typed(groups))
        return _GEOMETRIES[key]
    except KeyError:
        pass
    except TypeError:
        key = None
    geom = _check_conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    if key is not None:
        if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = geom
    return geom


def _check_conv_geometry(fname, nd, x, w, stride, padding, dilation, groups) -> _ConvGeometry:
    batched, n, c_in, in_size, kernel = _split_operands(
        fname, nd, x, w, "(out_channels, in_channels/groups, *kernel_size)")
    groups = as_int(fname, "groups", groups, minimum=1)
    c_out, c_per_group = w.shape[:2]
    if c_out % groups:
        raise ValueError(f"{fname}: out_channels (weight.shape[0] = {c_out}) must be divisible "
                         f"by groups = {groups}")
    if c_in != c_per_group * groups:
        raise ValueError(
            f"{fname}: input has {c_in} channels but weight {w.shape} with groups={groups} "
            f"expects {c_per_group * groups} (weight.shape[1] * groups)")
    stride = ntuple(fname, "stride", stride, nd, minimum=1)
    dilation = ntuple(fname, "dilation", dilation, nd, minimum=1)
    span = tuple(d * (k - 1) for d, k in zip(dilation, kernel))   # dilated kernel extent - 1
    if isinstance(padding, str):
        if padding == "valid":
            pad_before = (0,) * nd
            out_size = tuple((i - s_ - 1) // st + 1 for i, s_, st in zip(in_size, span, stride))
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{fname}: padding='same' needs stride 1 (as torch), "
                                 f"got stride={stride}")
            # torch pads total//2 before and the rest after (one more after when odd).
            pad_before = tuple(s_ // 2 for s_ in span)
            out_size = in_size
        else:
            raise ValueError(f"{fname}: padding must be 'same', 'valid', an int or a tuple of "
                             f"{nd} ints, got {padding!r}")
    else:
        pad_before = ntuple(fname, "padding", padding, nd, minimum=0)
        out_size = tuple(conv_output_size(i, k, s, p, d) for i, k, s, p, d in
                         zip(in_size, kernel, stride, pad_before, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"{fname}: input spatial size {in_size} with padding {padding!r} is smaller than the "
            f"dilated kernel {tuple(s_ + 1 for s_ in span)}: the output size would be {out_size}")
    geom = _ConvGeometry(batched, n, c_in, c_out, groups, in_size, out_size,
                         lift3(kernel, 1), lift3(stride, 1), lift3(pad_before, 0),
                         lift3(dilation, 1))
    k_rows = c_in * math.prod(kernel)
    if max(k_rows, math.prod(out_size), c_out) > _INT32_MAX:
        raise ValueError(f"{fname}: a per-sample matrix dimension exceeds 2**31-1 (BLAS uses "
                         f"32-bit sizes): input {x.shape}, weight {w.shape}")
    return geom


def _conv_scratch(geom, args, threads, dtype):
    """This thread's scratch for a conv kernel call, and the samples per GEMM."""
    pointwise = _conv.is_pointwise(args[1], args[2], args[3])
    block = _conv.sample_block(geom.n, math.prod(geom.out_size), pointwise)
    per_thread = _conv.workspace_size(geom.in_channels, geom.out_channels, args[1], args[2],
                                      args[3], args[5], block)
    return scratch(per_thread * threads, dtype), block


def _pointwise_forward(x2, wt, bias, out2, c_in, relu, dtype):
    """_ops/pointwise.forward on get_num_threads() threads with this thread's scratch."""
    threads = get_num_threads()
    ws = scratch(_pointwise.workspace_size(c_in) * threads, dtype)
    _pointwise.forward(x2, wt, bias, out2, ws, c_in, relu, threads)


class ConvForward:
    """One convolution's forward (geometry ``geom``, weight w4 (C_out, C_in/groups, *kernel),
    bias b1 (C_out,) or empty), prepared: the algorithm chosen (``algorithms.select``) and its
    weight operands made once (the direct kernels' transposed weight, Winograd's transformed
    kernels). ``run(x2, out2)``: out2 (N, C_out*L) = the convolution of x2 (N, C_in*prod(in)),
    plus bias, then max(., 0) when ``relu``. F.conv2d prepares one per call; an
    InferenceSession once per plan. With ``set_conv_autotune`` on, Winograd is timed against
    the rules' other choice; with ``fastest``, every algorithm that can compute the problem is
    timed and the fastest kept (an InferenceSession's plans). Timing runs on ``probe`` = (x2,
    out2), or on zeros. ``step(x2, out2, workspace, max_threads)``: run's work as a compiled
    step of an inference plan (fastcnn._ops.plan_steps) on up to max_threads threads, with
    ``workspace`` of at least max_threads * ``step_scratch`` elements (every algorithm has
    one). ``residual_step(x2, out2, workspace, relu, max_threads, residual)``: the step with
    a residual (out2's shape) added before the ReLU, for the algorithms that can (Winograd;
    else None)."""
    __slots__ = ("algorithm", "run", "step", "step_scratch", "residual_step")

    def __init__(self, geom, nd, w4, b1, dtype, relu=False, probe=None, fastest=False):
        w2 = w4.reshape(geom.out_channels, -1)

        def prepare(algorithm):
            if algorithm == "depthwise":
                kernel_args = geom.kernel_args()
                shape_x = (geom.n, geom.in_channels, -1)
                shape_y = (geom.n, geom.out_channels, -1)
                steps[algorithm] = 0, lambda x2, out2, ws, threads: _depthwise.DepthwiseStep(
                    x2.reshape(shape_x), w2, b1, out2.reshape(shape_y), *kernel_args, relu)
                return lambda x2, out2: _depthwise.forward(
                    x2.reshape(shape_x), w2, b1, out2.reshape(shape_y), *kernel_args, relu,
                    get_num_threads())
            if algorithm == "pointwise":
                wt, bias = _pointwise.layout(w2, b1, dtype)
                c_in = geom.in_channels
                steps[algorithm] = _pointwise.workspace_size(c_in), (
                    lambda x2, out2, ws, threads: _pointwise.PointwiseStep(
                        x2, wt, bias, out2, ws, c_in, relu, threads))
                return lambda x2, out2: _pointwise_forward(x2, wt, bias, out2, c_in, relu, dtype)
            if algorithm in algorithms.WINOGRAD_TILE:
                ops = algorithms.WinogradOperands(w4, b1, geom.in_size, geom.padding[1],
                                                  geom.out_size, dtype,
                                                  m=algorithms.WINOGRAD_TILE[algorithm])
                steps[algorithm] = ops.step_scratch(geom.n), (
                    lambda x2, out2, ws, threads: ops.step(x2, out2, ws, relu, threads))
                residual_steps[algorithm] = ops.step
                return lambda x2, out2: ops.run(x2, out2, dtype, relu)
            if algorithm == "winograd_s2":
                ops = algorithms.WinogradS2Operands(w4, b1, geom.in_size, geom.padding[1],
                                                    geom.out_size, dtype)
                steps[algorithm] = ops.step_scratch(geom.n), (
                    lambda x2, out2, ws, threads: ops.step(x2, out2, ws, relu, threads))
                residual_steps[algorithm] = ops.step
                return lambda x2, out2: ops.run(x2, out2, dtype, relu)
            if algorithm in ("rows", "direct"):
                ops = algorithms.DirectOperands(w4, b1, geom, dtype, algorithm == "rows")
                steps[algorithm] = ops.workspace, lambda x2, out2, ws, threads: (
                    _direct.DirectStep(x2, ops.wt, ops.bias, out2, ws, ops.offsets,
                                       *ops.scalars, ops.by_rows, relu, threads))
                return lambda x2, out2: ops.run(x2, out2, dtype, relu)
            args = geom.kernel_args()
            pointwise = _conv.is_pointwise(args[1], args[2], args[3])
            block = _conv.sample_block(geom.n, math.prod(geom.out_size), pointwise)
            per_thread = _conv.workspace_size(geom.in_channels, geom.out_channels, args[1],
                                              args[2], args[3], args[5], block)

            def im2col(x2, out2):
                threads = get_num_threads()
                ws = scratch(per_thread * threads, dtype)
                with single_threaded_blas:
                    _conv.conv_forward(x2, w2, b1, out2, ws, geom.groups, *args, block, relu,
                                       threads)
            steps[algorithm] = per_thread, lambda x2, out2, ws, threads: _conv.Im2colStep(
                x2, w2, b1, out2, ws, geom.groups, args, block, relu, False, per_thread, threads)
            return im2col

        made, steps, residual_steps = {}, {}, {}

        def prepared(algorithm):            # each algorithm's operands made once
            if algorithm not in made:
                made[algorithm] = prepare(algorithm)
            return made[algorithm]

        def timed(algorithm):
            def run_once():
                nonlocal probe
                if probe is None:
                    probe = (np.zeros((geom.n, geom.in_channels * math.prod(geom.in_size)),
                                      dtype),
                             np.empty((geom.n, geom.out_channels * math.prod(geom.out_size)),
                                      dtype))
                prepared(algorithm)(*probe)
            return run_once

        runners = {a: timed(a) for a in algorithms.ALGORITHMS["forward"]}
        if fastest:
            self.algorithm = algorithms.fastest("forward", geom, nd, runners)
        else:
            self.algorithm = algorithms.select("forward", geom, nd, dtype, runners)
        self.run = prepared(self.algorithm)
        self.step_scratch, self.step = steps.get(self.algorithm, (0, None))
        self.residual_step = residual_steps.get(self.algorithm)


def _conv_forward(fname, nd, input, weight, bias, stride, padding, dilation, groups,
                  activation=None):
    relu = _fused_activation(fname, activation) == "relu"
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    b = None if bias is None else as_array(fname, "bias", bias)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    dtype = float_dtype(x, w, b)
    w4 = contiguous(w, dtype)
    b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, dtype)
    x2 = _rows(contiguous(x, dtype), geom.n)
    out = _memory.empty((geom.n, geom.out_channels) + geom.out_size, dtype)
    if geom.n == 0:
        return out if geom.batched else out[0]
    out2 = _rows(out, geom.n)
    plan = _forward_plan(geom, nd, dtype, relu)
    if plan is None:        # autotuning: ConvForward times its candidates on this call
        ConvForward(geom, nd, w4, b1, dtype, relu, probe=(x2, out2)).run(x2, out2)
    else:
        plan.run(w4, b1, x2, out2)
    return out if geom.batched else out[0]


class _ForwardPlan:
    """A convolution forward's work that does not read the weight's values, made once per
    problem: the algorithm (algorithms.select: the rules, or the one forced by
    conv_algorithms) and that algorithm's layout (the im2col blocking and workspace, the
    depthwise loops' shapes; the direct kernels' offsets and scalars are algorithms'
    direct_layout). ``run(w4, b1, x2, out2)`` prepares the weight operands and runs the same
    kernels as ConvForward: the same bits."""
    __slots__ = ("geom", "dtype", "relu", "algorithm", "args", "shapes", "block", "per_thread",
                 "layout")

    def __init__(self, geom, nd, dtype, relu, algorithm):
        self.geom, self.dtype, self.relu, self.algorithm = geom, dtype, relu, algorithm
        self.args = geom.kernel_args()
        self.shapes = ((geom.n, geom.in_channels, -1), (geom.n, geom.out_channels, -1))
        self.block = self.per_thread = 0
        self.layout = None
        if algorithm in ("rows", "direct"):
            self.layout = algorithms.direct_layout(
                (geom.out_channels, geom.in_channels) + geom.kernel[3 - nd:], geom, dtype,
                algorithm == "rows")
        if algorithm == "im2col":
            args = self.args
            pointwise = _conv.is_pointwise(args[1], args[2], args[3])
            self.block = _conv.sample_block(geom.n, math.prod(geom.out_size), pointwise)
            self.per_thread = _conv.workspace_size(geom.in_channels, geom.out_channels,
                                                   args[1], args[2], args[3], args[5],
                                                   self.block)

    def run(self, w4, b1, x2, out2):
        geom, dtype, relu, algorithm = self.geom, self.dtype, self.relu, self.algorithm
        if algorithm == "im2col":
            threads = get_num_threads()
            ws = scratch(self.per_thread * threads, dtype)
            with single_threaded_blas:
                _conv.conv_forward(x2, w4.reshape(geom.out_channels, -1), b1, out2, ws,
                                   geom.groups, *self.args, self.block, relu, threads)
        elif algorithm in ("rows", "direct"):
            algorithms.DirectOperands(w4, b1, geom, dtype, algorithm == "rows",
                                      self.layout).run(x2, out2, dtype, relu)
        elif algorithm == "pointwise":
            wt, bias = _pointwise.layout(w4.reshape(geom.out_channels, -1), b1, dtype)
            _pointwise_forward(x2, wt, bias, out2, geom.in_channels, relu, dtype)
        elif algorithm == "depthwise":
            shape_x, shape_y = self.shapes
            _depthwise.forward(x2.reshape(shape_x), w4.reshape(geom.out_channels, -1), b1,
                               out2.reshape(shape_y), *self.args, relu, get_num_threads())
        elif algorithm == "winograd_s2":
            algorithms.WinogradS2Operands(w4, b1, geom.in_size, geom.padding[1], geom.out_size,
                                          dtype).run(x2, out2, dtype, relu)
        else:
            algorithms.WinogradOperands(w4, b1, geom.in_size, geom.padding[1], geom.out_size,
                                        dtype, m=algorithms.WINOGRAD_TILE[algorithm]).run(
                x2, out2, dtype, relu)


# Forward plans by (geometry, nd, dtype, relu, forced forward algorithm); a training step asks
# for the same ones every step (ConvForward's closures, select() and the operands' layout
# cost ~10-20 us a call: LeNet's second layer at batch 64 runs ~140 us).
_FORWARD_PLANS: dict = {}
_PLANS_MAX = 1024


def _forward_plan(geom, nd, dtype, relu):
    """The cached _ForwardPlan of this problem, or None with autotuning on (its choice is
    timed per shape and thread count by ConvForward)."""
    if algorithms._autotune["enabled"]:
        return None
    key = (geom, nd, dtype.num, relu, algorithms._forced.get().get("forward"))
    plan = _FORWARD_PLANS.get(key)
    if plan is None:
        plan = _ForwardPlan(geom, nd, dtype, relu, algorithms.select("forward", geom, nd, dtype))
        if len(_FORWARD_PLANS) >= _PLANS_MAX:
            _FORWARD_PLANS.clear()
        _FORWARD_PLANS[key] = plan
    return plan


# A layer's calls, by what they depend on: the layer's arguments were checked when it was
# built (int tuples), its weight and bias are its own. In a train step every check and small
# call runs with cold caches (~64 us a forward outside the kernels on resnet_small at batch 32).
_LAYER_PLANS: dict = {}
_FLOAT_NUMS = (np.dtype(np.float32).num, np.dtype(np.float64).num)


def _layer_forward(nd, x, w, b, stride, padding, dilation, groups, relu):
    """conv{nd}d(x, w, b, stride, padding, dilation, groups, activation="relu" if relu) for a
    convolution layer (stride, padding, dilation: its checked tuples or padding string; w, b its
    parameters), or None where the layer must call conv{nd}d (which checks everything): x not
    a batched, C-contiguous, aligned array of w's float dtype, w or b not C-contiguous of that
    dtype, or autotuning on. The first call of a problem is checked as conv{nd}d's; the same
    plan runs (the same bits)."""
    if (type(x) is not np.ndarray or x.ndim != nd + 2 or x.dtype != w.dtype
            or algorithms._autotune["enabled"]):
        return None
    key = (nd, x.shape, w.shape, x.dtype.num, None if b is None else (b.shape, b.dtype.num),
           stride, padding, dilation, groups, relu, algorithms._forced.get().get("forward"))
    try:
        entry = _LAYER_PLANS.get(key)
    except TypeError:           # an argument replaced by an unhashable one (a list)
        return None
    if entry is None:
        if (x.dtype.num not in _FLOAT_NUMS
                or (b is not None and (type(b) is not np.ndarray or b.dtype != w.dtype))):
            return None
        fname = f"conv{nd}d"
        geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
        b1 = _checks.optional_vector(fname, "bias", b, geom.out_channels, x.dtype)
        entry = (_forward_plan(geom, nd, x.dtype, relu),
                 (geom.n, geom.out_channels) + geom.out_size, b1 if b is None else None)
        if len(_LAYER_PLANS) >= _PLANS_MAX:
            _LAYER_PLANS.clear()
        _LAYER_PLANS[key] = entry
    plan, shape, no_bias = entry
    xf, wf = x.flags, w.flags
    if not (xf.c_contiguous and xf.aligned and wf.c_contiguous and wf.aligned
            and (b is None or b.flags.c_contiguous)):
        return None
    out = _memory.empty(shape, x.dtype)
    n = shape[0]
    if n:
        plan.run(w, no_bias if b is None else b, _rows(x, n), _rows(out, n))
    return out


def _conv_backward(fname, nd, grad_output, input, weight, stride, padding, dilation, groups,
                   output_mask):
    """The three gradients, each by its own algorithm (algorithms.select per direction):
    input gradient, weight gradient (both by one im2col + GEMM pass where both chose it), and
    the bias gradient (_BackwardOperands.gradients)."""
    x = as_array(fname, "input", input)
    w = as_array(fname, "weight", weight)
    dy = as_array(fname, "grad_output", grad_output)
    geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation, groups)
    return _backward(fname, nd, geom, x, w, dy, output_mask)


def _backward(fname, nd, geom, x, w, dy, output_mask):
    """_conv_backward's gradients once x, w (ndarrays) and their geometry are checked."""
    b = _BackwardOperands(fname, geom, x, w, dy, output_mask)
    if geom.n == 0:
        return b.gradients()
    dtype, n, threads = b.dtype, geom.n, b.threads
    x2, w4, dy2 = b.x2, b.w2.reshape(w.shape), _rows(b.dy3, n)
    empty = np.empty((0, 0), dtype=dtype)

    def run_im2col(with_x, with_w):
        args = geom.kernel_args()
        ws, block = _conv_scratch(geom, args, threads, dtype)
        with single_threaded_blas:
            _conv.conv_backward(x2, b.w2, dy2, _rows(b.grad_x, n) if with_x else empty,
                                b.parts if with_w else empty, ws, with_x, with_w, geom.groups,
                                *args, block, threads)

    def input_grad(algorithm):
        """dL/dx: the convolution of dy by the kernels transposed and flipped."""
        if algorithm == "depthwise":
            _depthwise.grad_input(b.dy3, b.w2, b.grad_x.reshape(n, geom.in_channels, -1),
                                  *geom.kernel_args(), threads)
        elif algorithm == "pointwise":      # dx = W^T dy: pointwise, by the weight transposed
            wt, zero = _pointwise.layout(b.w2.T, np.empty(0, dtype), dtype)
            _pointwise_forward(dy2, wt, zero, _rows(b.grad_x, n), geom.out_channels, False,
                               dtype)
        elif algorithm in ("direct", "rows"):
            flipped = np.ascontiguousarray(w4.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
            algorithms.direct_conv2d(dy2, flipped, np.empty(0, dtype), _rows(b.grad_x, n),
                                     algorithms.input_grad_as_conv(geom, nd), dtype,
                                     by_rows=algorithm == "rows")
        elif algorithm in algorithms.WINOGRAD_TILE:
            # Winograd on dy, padded 2 - p, by the flipped kernels
            algorithms.winograd_conv2d(dy2, w4, np.empty(0, dtype), _rows(b.grad_x, n),
                                       geom.out_size, 2 - geom.padding[1], geom.in_size, dtype,
                                       flip=True, m=algorithms.WINOGRAD_TILE[algorithm])
        else:
            run_im2col(True, False)

    def weight_grad(algorithm):
        if algorithm == "depthwise":
            acc = np.empty(b.w2.shape)
            _depthwise.grad_weight(b.dy3, x2.reshape(n, geom.in_channels, -1), acc,
                                   *geom.kernel_args(), threads)
            b.grad_w = acc.astype(dtype, copy=False)
        elif algorithm in algorithms.WINOGRAD_TILE:
            b.grad_w = algorithms.winograd_weight_grad(x2, dy2, geom, dtype,
                                                       m=algorithms.WINOGRAD_TILE[algorithm])
        elif algorithm in ("direct", "channels"):
            b.grad_w = algorithms.direct_weight_grad(x2, dy2, geom, dtype,
                                                     by_channels=algorithm == "channels")
        else:
            run_im2col(False, True)

    chosen = _backward_algorithms(geom, nd, dtype, b.need_x, b.need_w)
    if chosen is not None:
        input_algorithm, weight_algorithm = chosen
    else:                                 # autotuning: select times the candidates
        input_algorithm = weight_algorithm = None
        if b.need_x:
            input_algorithm = algorithms.select(
                "input gradient", geom, nd, dtype,
                {a: functools.partial(input_grad, a) for a in algorithms.ALGORITHMS["input gradient"]})
        if b.need_w:
            weight_algorithm = algorithms.select(
                "weight gradient", geom, nd, dtype,
                {a: functools.partial(weight_grad, a) for a in algorithms.ALGORITHMS["weight gradient"]})
        b.grad_w = None                   # a candidate timed may have set it

    if input_algorithm == weight_algorithm == "im2col":
        run_im2col(True, True)            # one pass: the columns of dy shared by both
    else:
        if input_algorithm is not None:
            input_grad(input_algorithm)
        if weight_algorithm is not None:
            weight_grad(weight_algorithm)
    return b.gradients()


def _layer_backward(nd, dy, x, w, stride, padding, dilation, groups, output_mask):
    """conv{nd}d_backward for a convolution layer's saved input (which passed _layer_forward,
    so its geometry is cached) and own weight; output_mask a tuple of 3 bools. Checks dy as
    conv{nd}d_backward does; the same kernels, the same bits. Any other input (one the
    forward took conv{nd}d's checks for) goes through conv{nd}d_backward."""
    fname = f"conv{nd}d_backward"
    if type(x) is not np.ndarray or x.ndim != nd + 2 or x.dtype != w.dtype:
        return _conv_backward(fname, nd, dy, x, w, stride, padding, dilation, groups,
                              output_mask)
    key = (nd, x.shape, w.shape, x.dtype.num, stride, padding, dilation, groups)
    try:
        geom = _LAYER_GEOMETRIES.get(key)
    except TypeError:           # an argument replaced by an unhashable one (a list)
        return _conv_backward(fname, nd, dy, x, w, stride, padding, dilation, groups,
                              output_mask)
    if geom is None:
        geom = _conv_geometry(fname, nd, x, w, stride, padding, dilation,
                              groups)
        if len(_LAYER_GEOMETRIES) >= _PLANS_MAX:
            _LAYER_GEOMETRIES.clear()
        _LAYER_GEOMETRIES[key] = geom
    return _backward(fname, nd, geom, x, w, as_array(fname, "grad_output", dy), output_mask)


_LAYER_GEOMETRIES: dict = {}


# The backward's (input gradient, weight gradient) algorithms by (geometry, nd, dtype, which
# gradients, forced algorithms): select() per direction costs a few us a call, and a training
# step asks for the same ones every step.
_BACKWARD_ALGORITHMS: dict = {}


def _backward_algorithms(geom, nd, dtype, need_x, need_w):
    """(input gradient algorithm or None, weight gradient algorithm or None) of this problem
    (algorithms.select), cached; None with autotuning on (select times the candidates)."""
    if algorithms._autotune["enabled"]:
        return None
    forced = algorithms._forced.get()
    key = (geom, nd, dtype.num, need_x, need_w, forced.get("input gradient"),
           forced.get("weight gradient"))
    chosen = _BACKWARD_ALGORITHMS.get(key)
    if chosen is None:
        chosen = (algorithms.select("input gradient", geom, nd, dtype) if need_x else None,
                  algorithms.select("weight gradient", geom, nd, dtype) if need_w else None)
        if len(_BACKWARD_ALGORITHMS) >= _PLANS_MAX:
            _BACKWARD_ALGORITHMS.clear()
        _BACKWARD_ALGORITHMS[key] = chosen
    return chosen


class _BackwardOperands:
    """What the backward of convolution and of transposed convolution share: the checked
    grad_output, the operands as contiguous (rows, ...) arrays of one dtype, the output
    buffers, and the final reduction (weight partials in chunk order, bias sums)."""

    def __init__(self, fname, geom, x, w, dy, output_mask):
        self.need_x, self.need_w, self.need_b = _mask3(fname, output_mask)
        expected = ((geom.n,) if geom.batched else ()) + (geom.out_channels,) + geom.out_size
        if dy.shape != expected:
            raise ValueError(f"{fname}: grad_output must have the forward output's shape "
                             f"{expected}, got {dy.shape}")
        self.geom, self.weight_shape = geom, w.shape
        self.dtype = dtype = float_dtype(x, w, dy)
        n = geom.n
        self.threads = get_num_threads()
        self.x2 = _rows(contiguous(x, dtype), n)
        self.w2 = contiguous(w, dtype).reshape(w.shape[0], -1)
        self.dy3 = contiguous(dy, dtype).reshape(n, geom.out_channels, math.prod(geom.out_size))
        self.grad_x = (_memory.empty((n, geom.in_channels) + geom.in_size, dtype)
                       if self.need_x else None)
        self.grad_w = None      # set instead of the partials by the Winograd and depthwise paths

    @functools.cached_property
    def parts(self):
        """One weight-gradient partial per fixed chunk of the batch, each fully written by the
        im2col kernels (the first sample of a chunk overwrites); an empty batch runs no kernel.
        Made only when those kernels run."""
        n = self.geom.n
        alloc = np.empty if n else np.zeros
        return alloc((max(1, min(n, _WEIGHT_GRAD_CHUNKS)), self.w2.size), dtype=self.dtype)

    def gradients(self):
        """(grad_input, grad_weight, grad_bias), None where not asked for."""
        grad_w = grad_b = None
        if self.need_w and self.grad_w is not None:
            grad_w = self.grad_w.reshape(self.weight_shape)
        elif self.need_w:
            # partials added in chunk order: the same bits for any number of threads
            parts = self.parts
            grad_w = (parts[0].copy() if parts.shape[0] == 1 else parts.sum(axis=0))
            grad_w = grad_w.reshape(self.weight_shape)
        if self.need_b:
            grad_b = np.empty(self.geom.out_channels, dtype=self.dtype)
            _conv.bias_backward(self.dy3, grad_b, self.threads)
        grad_x = self.grad_x
        if grad_x is not None and not self.geom.batched:
            grad_x = grad_x[0]
        return grad_x, grad_w, grad_b


_CONV_DOC = """{nd}-D convolution (cross-correlation, as every deep-learning library), as
    ``torch.nn.functional.conv{nd}d``.

    Parameters
    ----------
    input : array (N, C_in, {spatial}) or (C_in, {spatial})
    weight : array (C_out, C_in/groups, {kernel})
    bias : array (C_out,) or None
    stride, dilation : int or tuple of {nd} ints, >= 1
    padding : int or tuple of {nd} ints >= 0 (zeros on both sides), or "valid" (none) or
        "same" (output size = input size; needs stride 1; odd totals put the extra zero after)
    groups : int; C_in and C_out must be divisible by it (groups = C_in: depthwise)
    activation : None or "relu", keyword-only: "relu" returns ``relu(conv{nd}d(...))``, the
        ReLU applied as the kernel stores each output, with the bias (not in torch's signature;
        the backward is :func:`relu_backward` of this output, then :func:`conv{nd}d_backward`)

    Returns
    -------
    array (N, C_out, {out}) with
    ``out = floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` per axis and

        y[n, g*C_out/groups + o] = bias[o] + sum over c, offsets of
                                   weight[o, c, offset] * x_padded[n, g*C_in/groups + c,
                                                                   out*stride + offset*dilation]
    """

_CONV_BACKWARD_DOC = """Gradients of :func:`conv{nd}d`.

    ``grad_output`` is dL/dy, shaped as conv{nd}d's output; the other arguments are those of the
    forward call. Returns ``(grad_input, grad_weight, grad_bias)``, with None for the entries
    whose ``output_mask`` flag is False:

        grad_input  = col2im(W^T @ dy)       (the transposed convolution of dy)
        grad_weight = sum_n dy[n] @ im2col(x[n])^T
        grad_bias   = dy summed over the batch and spatial axes
    """


def _make_conv(nd, spatial, kernel, out):
    def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
             activation=None):
        return _conv_forward(f"conv{nd}d", nd, input, weight, bias, stride, padding, dilation,
                             groups, activation)

    def conv_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                      output_mask=(True, True, True)):
        return _conv_backward(f"conv{nd}d_backward", nd, grad_output, input, weight, stride,
                              padding, dilation, groups, output_mask)

    conv.__name__ = conv.__qualname__ = f"conv{nd}d"
    conv_backward.__name__ = conv_backward.__qualname__ = f"conv{nd}d_backward"
    conv.__doc__ = _CONV_DOC.format(nd=nd, spatial=spatial, kernel=kernel, out=out)
    conv_backward.__doc__ = _CONV_BACKWARD_DOC.format(nd=nd)
    conv.__module__ = conv_backward.__module__ = __name__
    return conv, conv_backward


conv1d, conv1d_backward = _make_conv(1, "L", "kL", "L_out")
conv2d, conv2d_backward = _make_conv(2, "H, W", "kH, kW", "H_out, W_out")
conv3d, conv3d_backward = _make_conv(3, "D, H, W", "kD, kH, kW", "D_out, H_out, W_out")
