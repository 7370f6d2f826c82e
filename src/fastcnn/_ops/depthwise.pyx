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

from fastcnn._ops.im2col cimport Geom, make_geom


cdef inline void _ow_range(Py_ssize_t iw0, const Geom* g, Py_ssize_t* lo,
                           Py_ssize_t* hi) noexcept nogil:
    """Outputs ow in [lo, hi) read input column iw0 + ow*sW inside [0, W)."""
    cdef Py_ssize_t first = 0, last
    if iw0 < 0:
        first = (-iw0 + g.sW - 1) // g.sW
    if g.W - 1 - iw0 < 0:
        last = 0
    else:
        last = (g.W - 1 - iw0) // g.sW + 1
    if last > g.oW:
        last = g.oW
    if first > last:
        first = last
    lo[0] = first
    hi[0] = last


cdef void _forward_plane(const floating* x, const floating* w, floating bias, floating* y,
                         const Geom* g) noexcept nogil:
    """y (oD, oH, oW) = bias + the taps w (kD*kH*kW) over x (D, H, W)."""
    cdef Py_ssize_t od, oh, ow, a, b, e, id_, ih, iw0, lo, hi, sW = g.sW
    cdef floating wt
    cdef floating* yr
    cdef const floating* xr
    for od in range(g.oD):
        for oh in range(g.oH):
            yr = y + (od * g.oH + oh) * g.oW
            for ow in range(g.oW):
                yr[ow] = bias
            for a in range(g.kD):
                id_ = od * g.sD + a * g.dD - g.pD
                if id_ < 0 or id_ >= g.D:
                    continue
                for b in range(g.kH):
                    ih = oh * g.sH + b * g.dH - g.pH
                    if ih < 0 or ih >= g.H:
                        continue
                    for e in range(g.kW):
                        wt = w[(a * g.kH + b) * g.kW + e]
                        iw0 = e * g.dW - g.pW
                        _ow_range(iw0, g, &lo, &hi)
                        xr = x + (id_ * g.H + ih) * g.W + iw0
                        if sW == 1:
                            for ow in range(lo, hi):
                                yr[ow] = yr[ow] + wt * xr[ow]
                        else:
                            for ow in range(lo, hi):
                                yr[ow] = yr[ow] + wt * xr[ow * sW]


cdef void _grad_input_plane(const floating* dy, const floating* w, floating* dx,
                            const Geom* g) noexcept nogil:
    """dx (D, H, W) += the adjoint of _forward_plane for one output plane dy and taps w."""
    cdef Py_ssize_t od, oh, ow, a, b, e, id_, ih, iw0, lo, hi, sW = g.sW
    cdef floating wt
    cdef const floating* dyr
    cdef floating* xr
    for od in range(g.oD):
        for oh in range(g.oH):
            dyr = dy + (od * g.oH + oh) * g.oW
            for a in range(g.kD):
                id_ = od * g.sD + a * g.dD - g.pD
                if id_ < 0 or id_ >= g.D:
                    continue
                for b in range(g.kH):
                    ih = oh * g.sH + b * g.dH - g.pH
                    if ih < 0 or ih >= g.H:
                        continue
                    for e in range(g.kW):
                        wt = w[(a * g.kH + b) * g.kW + e]
                        iw0 = e * g.dW - g.pW
                        _ow_range(iw0, g, &lo, &hi)
                        xr = dx + (id_ * g.H + ih) * g.W + iw0
                        if sW == 1:
                            for ow in range(lo, hi):
                                xr[ow] = xr[ow] + wt * dyr[ow]
                        else:
                            for ow in range(lo, hi):
                                xr[ow * sW] = xr[ow * sW] + wt * dyr[ow]


cdef void _grad_weight_plane(const floating* dy, const floating* x, double* acc,
                             const Geom* g) noexcept nogil:
    """acc[t] += sum over the plane of dy * (x under tap t), one output plane dy."""
    cdef Py_ssize_t od, oh, ow, a, b, e, id_, ih, iw0, lo, hi, sW = g.sW, t
    cdef floating s
    cdef const floating* dyr
    cdef const floating* xr
    for od in range(g.oD):
        for oh in range(g.oH):
            dyr = dy + (od * g.oH + oh) * g.oW
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
                        iw0 = e * g.dW - g.pW
                        _ow_range(iw0, g, &lo, &hi)
                        xr = x + (id_ * g.H + ih) * g.W + iw0
                        s = 0
                        if sW == 1:
                            for ow in range(lo, hi):
                                s = s + dyr[ow] * xr[ow]
                        else:
                            for ow in range(lo, hi):
                                s = s + dyr[ow] * xr[ow * sW]
                        acc[t] += s         # a row's sum in the input precision, rows in double


def forward(const floating[:, :, ::1] x, const floating[:, ::1] weight,
            const floating[::1] bias, floating[:, :, ::1] out, tuple in_size, tuple kernel,
            tuple stride, tuple padding, tuple dilation, tuple out_size, int num_threads):
    """out (N, C_out, L) = depthwise conv of x (N, C_in, S) by weight (C_out, kk) + bias."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = out.shape[0], C_out = out.shape[1], C_in = x.shape[1]
    cdef Py_ssize_t M = C_out // C_in, planes = N * C_out, p, n, co
    cdef bint has_bias = bias.shape[0] > 0
    if planes == 0 or out.shape[2] == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=num_threads):
            n = p // C_out
            co = p % C_out
            _forward_plane(&x[n, co // M, 0], &weight[co, 0],
                           bias[co] if has_bias else <floating> 0, &out[n, co, 0], &g)


def grad_input(const floating[:, :, ::1] grad_out, const floating[:, ::1] weight,
               floating[:, :, ::1] grad_x, tuple in_size, tuple kernel, tuple stride,
               tuple padding, tuple dilation, tuple out_size, int num_threads):
    """grad_x (N, C_in, S) = dL/dx for grad_out (N, C_out, L) (overwritten)."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = grad_x.shape[0], C_in = grad_x.shape[1], S = grad_x.shape[2]
    cdef Py_ssize_t M = grad_out.shape[1] // C_in, planes = N * C_in, p, n, c, j
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
                _grad_input_plane(&grad_out[n, c * M + j, 0], &weight[c * M + j, 0],
                                  &grad_x[n, c, 0], &g)


def grad_weight(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                double[:, ::1] acc, tuple in_size, tuple kernel, tuple stride, tuple padding,
                tuple dilation, tuple out_size, int num_threads):
    """acc (C_out, kk) = dL/dW in double (overwritten), summed over the batch in order."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = grad_out.shape[0], C_out = grad_out.shape[1], C_in = x.shape[1]
    cdef Py_ssize_t M = C_out // C_in, kk = acc.shape[1], co, n
    if C_out == 0:
        return
    with nogil:
        for co in prange(C_out, schedule='static', num_threads=num_threads):
            memset(&acc[co, 0], 0, kk * sizeof(double))
            if grad_out.shape[2] == 0:
                continue
            for n in range(N):
                _grad_weight_plane(&grad_out[n, co, 0], &x[n, co // M, 0], &acc[co, 0], &g)
