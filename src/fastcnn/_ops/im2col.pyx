"""im2col / col2im: the window sweep behind convolution, unfold and fold.

For one input channel plane x (D, H, W) the columns matrix has one row per kernel offset
(a, b, e) and one column per output position (od, oh, ow):

    cols[(a*kH + b)*kW + e, (od*oH + oh)*oW + ow] = x[od*sD - pD + a*dD,
                                                      oh*sH - pH + b*dH,
                                                      ow*sW - pW + e*dW]

and 0 where the index falls in the padding. col2im is its adjoint: every column entry is *added*
back to the input cell it was read from (overlapping windows sum). For C channels the rows of
channel c follow those of channel c-1, which is torch's ``unfold`` layout (C*kD*kH*kW, L).

Parallelism is over (sample, channel) planes: each plane is written by exactly one thread, so
col2im is race-free and the result does not depend on the number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset, memcpy


cdef Geom make_geom(tuple in_size, tuple kernel, tuple stride, tuple padding,
                    tuple dilation, tuple out_size) except *:
    cdef Geom g
    g.D, g.H, g.W = in_size
    g.kD, g.kH, g.kW = kernel
    g.sD, g.sH, g.sW = stride
    g.pD, g.pH, g.pW = padding
    g.dD, g.dH, g.dW = dilation
    g.oD, g.oH, g.oW = out_size
    return g


cdef void im2col_plane(const floating* x, floating* cols, const Geom* g,
                       Py_ssize_t ld) noexcept nogil:
    """Write the (kD*kH*kW, oD*oH*oW) columns of one input plane x (D, H, W); consecutive
    rows of ``cols`` are ``ld`` (>= oD*oH*oW) elements apart."""
    cdef Py_ssize_t a, b, e, od, oh, ow, id_, ih, iw0, lo, hi
    cdef Py_ssize_t plane_out = g.oH * g.oW
    cdef floating* row = cols
    cdef floating* dst
    cdef const floating* src
    for a in range(g.kD):
        for b in range(g.kH):
            for e in range(g.kW):
                iw0 = e * g.dW - g.pW
                valid_range(iw0, g.sW, g.W, g.oW, &lo, &hi)
                for od in range(g.oD):
                    id_ = od * g.sD - g.pD + a * g.dD
                    if id_ < 0 or id_ >= g.D:
                        memset(row + od * plane_out, 0, plane_out * sizeof(floating))
                        continue
                    for oh in range(g.oH):
                        dst = row + od * plane_out + oh * g.oW
                        ih = oh * g.sH - g.pH + b * g.dH
                        if ih < 0 or ih >= g.H:
                            memset(dst, 0, g.oW * sizeof(floating))
                            continue
                        src = x + (id_ * g.H + ih) * g.W
                        if lo > 0:
                            memset(dst, 0, lo * sizeof(floating))
                        if g.sW == 1:
                            memcpy(dst + lo, src + iw0 + lo, (hi - lo) * sizeof(floating))
                        else:
                            for ow in range(lo, hi):
                                dst[ow] = src[iw0 + ow * g.sW]
                        if hi < g.oW:
                            memset(dst + hi, 0, (g.oW - hi) * sizeof(floating))
                row += ld


cdef void col2im_plane(const floating* cols, floating* x, const Geom* g,
                       Py_ssize_t ld) noexcept nogil:
    """Add the (kD*kH*kW, oD*oH*oW) columns (rows ``ld`` apart) back into one plane x
    (D, H, W) (x is not zeroed)."""
    cdef Py_ssize_t a, b, e, od, oh, ow, id_, ih, iw0, lo, hi
    cdef Py_ssize_t plane_out = g.oH * g.oW
    cdef const floating* row = cols
    cdef const floating* src
    cdef floating* dst
    for a in range(g.kD):
        for b in range(g.kH):
            for e in range(g.kW):
                iw0 = e * g.dW - g.pW
                valid_range(iw0, g.sW, g.W, g.oW, &lo, &hi)
                for od in range(g.oD):
                    id_ = od * g.sD - g.pD + a * g.dD
                    if id_ < 0 or id_ >= g.D:
                        continue
                    for oh in range(g.oH):
                        ih = oh * g.sH - g.pH + b * g.dH
                        if ih < 0 or ih >= g.H:
                            continue
                        src = row + od * plane_out + oh * g.oW
                        dst = x + (id_ * g.H + ih) * g.W
                        if g.sW == 1:
                            for ow in range(lo, hi):
                                dst[iw0 + ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[iw0 + ow * g.sW] += src[ow]
                row += ld


def unfold(const floating[:, ::1] x, floating[:, ::1] cols, Py_ssize_t channels,
           tuple in_size, tuple kernel, tuple stride, tuple padding, tuple dilation,
           tuple out_size, int num_threads):
    """x (N, C*D*H*W) -> cols (N, C*kD*kH*kW*L): im2col of every (sample, channel) plane."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = x.shape[0], C = channels
    cdef Py_ssize_t plane_in = g.D * g.H * g.W
    cdef Py_ssize_t plane_cols = g.kD * g.kH * g.kW * g.oD * g.oH * g.oW
    cdef Py_ssize_t job, n, c
    if N == 0 or C == 0 or plane_cols == 0:
        return
    with nogil:
        for job in prange(N * C, schedule='static', num_threads=num_threads):
            n = job // C
            c = job - n * C
            im2col_plane(&x[n, c * plane_in], &cols[n, c * plane_cols], &g,
                         g.oD * g.oH * g.oW)


def fold(const floating[:, ::1] cols, floating[:, ::1] x, Py_ssize_t channels,
         tuple in_size, tuple kernel, tuple stride, tuple padding, tuple dilation,
         tuple out_size, int num_threads):
    """cols (N, C*kD*kH*kW*L) -> x (N, C*D*H*W), summing overlaps: col2im. Overwrites x."""
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = x.shape[0], C = channels
    cdef Py_ssize_t plane_in = g.D * g.H * g.W
    cdef Py_ssize_t plane_cols = g.kD * g.kH * g.kW * g.oD * g.oH * g.oW
    cdef Py_ssize_t job, n, c
    if N == 0 or C == 0 or plane_in == 0:
        return
    with nogil:
        for job in prange(N * C, schedule='static', num_threads=num_threads):
            n = job // C
            c = job - n * C
            memset(&x[n, c * plane_in], 0, plane_in * sizeof(floating))
            if plane_cols > 0:
                col2im_plane(&cols[n, c * plane_cols], &x[n, c * plane_in], &g,
                             g.oD * g.oH * g.oW)
