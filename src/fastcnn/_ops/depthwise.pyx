"""Depthwise convolution (groups = C_in): each input channel is convolved with its own M kernels
(M = C_out/C_in, the depth multiplier), output channel c*M + j reading input channel c only.

Through im2col + GEMM, such a convolution is C_in GEMMs with one row of kk = kD*kH*kW values
each: BLAS has nothing to block. Here the loops are direct, one output plane at a time, and the
innermost loop runs along a row of outputs, so for stride 1 it is a contiguous multiply-add that
the compiler vectorizes. For a kernel tap t = (a, b, e) and an output row (od, oh):

    forward        y[n, co, od, oh, ow] += w[co, t] * x[n, c, id, ih, ow*sW + e*dW - pW]
    grad input     dx[n, c, id, ih, ow*sW + e*dW - pW] += w[co, t] * dy[n, co, od, oh, ow]
    grad weight    dw[co, t] = sum over n, od, oh, ow of dy[n, co, od, oh, ow] * x[n, c, ...]

with id = od*sD + a*dD - pD, ih = oh*sH + b*dH - pH, and the ow range clipped to the taps that
fall inside the input (padding contributes nothing). Parallelism: output planes (forward), input
planes (grad input: each written by one thread, the M output channels added in order) and output
channels (grad weight: summed over the batch in order, in double). No result depends on the
number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

import numpy as np

from fastcnn._ops._epilogue cimport bias_relu
from fastcnn._ops.im2col cimport Geom, make_geom, valid_range
from fastcnn._ops.plan_steps cimport CompiledStep, address

from fastcnn._ops.plan_steps import check_arrays


cdef enum Sweep:
    FORWARD         # out row += w[t] * input row under tap t
    GRAD_INPUT      # input row under tap t += w[t] * out row
    GRAD_WEIGHT     # acc[t] += out row . input row under tap t


cdef void _sweep(Sweep mode, floating* out, floating* inp, const floating* w, double* acc,
                 const Py_ssize_t* cols, const Geom* g) noexcept nogil:
    """One pass over every (output row, tap) pair of a plane pair: ``out`` (oD, oH, oW) and
    ``inp`` (D, H, W); ``cols`` holds (lo, hi) per kernel column e (tap_columns). The three
    modes share the window arithmetic and differ in the row operation only."""
    cdef Py_ssize_t od, oh, ow, a, b, e, t, id_, ih, lo, hi, sW = g.sW
    cdef floating wt, s
    cdef floating* orow
    cdef floating* irow
    for od in range(g.oD):
        for oh in range(g.oH):
            orow = out + (od * g.oH + oh) * g.oW
            for a in range(g.kD):
                id_ = od * g.sD + a * g.dD - g.pD
                if id_ < 0 or id_ >= g.D:
                    continue
                for b in range(g.kH):
                    ih = oh * g.sH + b * g.dH - g.pH
                    if ih < 0 or ih >= g.H:
                        continue
                    for e in range(g.kW):
                        t = (a * g.kH + b) * g.kW + e
                        lo = cols[2 * e]
                        hi = cols[2 * e + 1]
                        irow = inp + (id_ * g.H + ih) * g.W + e * g.dW - g.pW
                        wt = w[t] if mode != GRAD_WEIGHT else 0
                        if mode == FORWARD:
                            if sW == 1:
                                for ow in range(lo, hi):
                                    orow[ow] = orow[ow] + wt * irow[ow]
                            else:
                                for ow in range(lo, hi):
                                    orow[ow] = orow[ow] + wt * irow[ow * sW]
                        elif mode == GRAD_INPUT:
                            if sW == 1:
                                for ow in range(lo, hi):
                                    irow[ow] = irow[ow] + wt * orow[ow]
                            else:
                                for ow in range(lo, hi):
                                    irow[ow * sW] = irow[ow * sW] + wt * orow[ow]
                        else:
                            s = 0
                            if sW == 1:
                                for ow in range(lo, hi):
                                    s = s + orow[ow] * irow[ow]
                            else:
                                for ow in range(lo, hi):
                                    s = s + orow[ow] * irow[ow * sW]
                            acc[t] += s     # a row's sum in the input precision, rows in double


cdef object tap_columns(const Geom* g):
    """(lo, hi) per kernel column e: the outputs whose tap e falls inside the input's width,
    computed once per call rather than per row."""
    cols = np.empty(2 * g.kW, dtype=np.intp)
    cdef Py_ssize_t[::1] c = cols
    cdef Py_ssize_t e
    for e in range(g.kW):
        valid_range(e * g.dW - g.pW, g.sW, g.W, g.oW, &c[2 * e], &c[2 * e + 1])
    return cols


cdef void _forward(const floating* x, Py_ssize_t C_in, Py_ssize_t S, const floating* weight,
                   Py_ssize_t kk, const floating* bias, floating* out, Py_ssize_t N,
                   Py_ssize_t C_out, Py_ssize_t L, const Geom* g, const Py_ssize_t* cols,
                   bint relu, int num_threads) noexcept nogil:
    """forward on pointers: x (N, C_in, S), weight (C_out, kk), bias (C_out) or NULL, out
    (N, C_out, L); one output plane per task."""
    cdef Py_ssize_t planes = N * C_out, p
    if num_threads == 1 or planes == 1:     # no team to start (~0.3 us)
        for p in range(planes):
            _forward_plane(x, C_in, S, weight, kk, bias, out, C_out, L, g, cols, relu, p)
        return
    for p in prange(planes, schedule='static', num_threads=num_threads):
        _forward_plane(x, C_in, S, weight, kk, bias, out, C_out, L, g, cols, relu, p)


cdef inline void _forward_plane(const floating* x, Py_ssize_t C_in, Py_ssize_t S,
                                const floating* weight, Py_ssize_t kk, const floating* bias,
                                floating* out, Py_ssize_t C_out, Py_ssize_t L, const Geom* g,
                                const Py_ssize_t* cols, bint relu, Py_ssize_t p) noexcept nogil:
    """Output plane p = (n, co): the bias, every tap's sweep, then the ReLU (in L1)."""
    cdef Py_ssize_t n = p // C_out, co = p % C_out, M = C_out // C_in, l
    cdef floating* y = out + p * L
    for l in range(L):
        y[l] = bias[co] if bias != NULL else 0
    _sweep(FORWARD, y, <floating*> (x + (n * C_in + co // M) * S), weight + co * kk, NULL, cols,
           g)
    if relu:
        for l in range(L):
            y[l] = bias_relu(y[l], 0, True)


def forward(const floating[:, :, ::1] x, const floating[:, ::1] weight,
            const floating[::1] bias, floating[:, :, ::1] out, tuple in_size, tuple kernel,
            tuple stride, tuple padding, tuple dilation, tuple out_size, bint relu,
            int num_threads):
    """out (N, C_out, L) = depthwise conv of x (N, C_in, S) by weight (C_out, kk) + bias, then
    max(out, 0) if relu (over the plane just written, still in L1)."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef const Py_ssize_t[::1] cols = tap_columns(&g)
    if out.shape[0] * out.shape[1] == 0 or out.shape[2] == 0:
        return
    with nogil:
        _forward(&x[0, 0, 0], x.shape[1], x.shape[2], &weight[0, 0], weight.shape[1],
                 &bias[0] if bias.shape[0] > 0 else NULL, &out[0, 0, 0], out.shape[0],
                 out.shape[1], out.shape[2], &g, &cols[0], relu, num_threads)


# The inference plan's depthwise convolution (plan_steps.pxd): forward with its geometry and
# tap columns bound once.
cdef struct _Depthwise:
    const void* x
    const void* weight
    const void* bias            # NULL: none
    void* out
    Py_ssize_t C_in, S, kk, N, C_out, L
    Geom g
    const Py_ssize_t* cols
    bint relu, is_double


cdef void _depthwise_step(void* args, int num_threads) noexcept nogil:
    cdef _Depthwise* p = <_Depthwise*> args
    if p.N * p.C_out == 0 or p.L == 0:
        return
    if p.is_double:
        _forward(<const double*> p.x, p.C_in, p.S, <const double*> p.weight, p.kk,
                 <const double*> p.bias, <double*> p.out, p.N, p.C_out, p.L, &p.g, p.cols,
                 p.relu, num_threads)
    else:
        _forward(<const float*> p.x, p.C_in, p.S, <const float*> p.weight, p.kk,
                 <const float*> p.bias, <float*> p.out, p.N, p.C_out, p.L, &p.g, p.cols,
                 p.relu, num_threads)


cdef class DepthwiseStep(CompiledStep):
    """forward(x, weight, bias, out, in_size, kernel, stride, padding, dilation, out_size,
    relu, threads) as a plan step: x (N, C_in, S), weight (C_out, kk), bias (C_out,) or empty,
    out (N, C_out, L)."""
    cdef _Depthwise p

    def __init__(self, x, weight, bias, out, tuple in_size, tuple kernel, tuple stride,
                 tuple padding, tuple dilation, tuple out_size, bint relu):
        inputs = [x, weight] if bias.size == 0 else [x, weight, bias]
        dtype = check_arrays("DepthwiseStep", inputs, [out])
        self.p.g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
        if (x.ndim != 3 or weight.ndim != 2 or out.ndim != 3 or x.shape[0] != out.shape[0]
                or x.shape[1] == 0 or out.shape[1] % x.shape[1]
                or weight.shape[0] != out.shape[1]
                or x.shape[2] != self.p.g.D * self.p.g.H * self.p.g.W
                or out.shape[2] != self.p.g.oD * self.p.g.oH * self.p.g.oW
                or weight.shape[1] != self.p.g.kD * self.p.g.kH * self.p.g.kW
                or (bias.size and bias.shape != (out.shape[1],))):
            raise ValueError(f"DepthwiseStep: x {x.shape}, weight {weight.shape}, out "
                             f"{out.shape} do not match the geometry")
        cols = tap_columns(&self.p.g)
        self.keep = (x, weight, bias, out, cols)
        self.p.x, self.p.weight, self.p.out = address(x), address(weight), address(out)
        self.p.bias = address(bias) if bias.size else NULL
        self.p.cols = <const Py_ssize_t*> address(cols)
        self.p.N, self.p.C_in, self.p.S = x.shape[0], x.shape[1], x.shape[2]
        self.p.C_out, self.p.L, self.p.kk = out.shape[1], out.shape[2], weight.shape[1]
        self.p.relu = relu
        self.p.is_double = dtype == np.float64
        self.body = _depthwise_step
        self.args = &self.p


def grad_input(const floating[:, :, ::1] grad_out, const floating[:, ::1] weight,
               floating[:, :, ::1] grad_x, tuple in_size, tuple kernel, tuple stride,
               tuple padding, tuple dilation, tuple out_size, int num_threads):
    """grad_x (N, C_in, S) = dL/dx for grad_out (N, C_out, L) (overwritten)."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = grad_x.shape[0], C_in = grad_x.shape[1], S = grad_x.shape[2]
    cdef Py_ssize_t M = grad_out.shape[1] // C_in, planes = N * C_in, p, n, c, j
    cdef const Py_ssize_t[::1] cols = tap_columns(&g)
    if planes == 0 or S == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            n = p // C_in
            c = p % C_in
            memset(&grad_x[n, c, 0], 0, S * sizeof(floating))
            if grad_out.shape[2] == 0:
                continue
            for j in range(M):
                _sweep(GRAD_INPUT, <floating*> &grad_out[n, c * M + j, 0], &grad_x[n, c, 0],
                       &weight[c * M + j, 0], NULL, &cols[0], &g)


def grad_weight(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                double[:, ::1] acc, tuple in_size, tuple kernel, tuple stride, tuple padding,
                tuple dilation, tuple out_size, int num_threads):
    """acc (C_out, kk) = dL/dW in double (overwritten), summed over the batch in order."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = grad_out.shape[0], C_out = grad_out.shape[1], C_in = x.shape[1]
    cdef Py_ssize_t M = C_out // C_in, kk = acc.shape[1], co, n
    cdef const Py_ssize_t[::1] cols = tap_columns(&g)
    if C_out == 0:
        return
    with nogil:
        for co in prange(C_out, schedule='static', num_threads=num_threads):
            memset(&acc[co, 0], 0, kk * sizeof(double))
            if grad_out.shape[2] == 0:
                continue
            for n in range(N):
                _sweep(GRAD_WEIGHT, <floating*> &grad_out[n, co, 0],
                       <floating*> &x[n, co // M, 0], NULL, &acc[co, 0], &cols[0], &g)
