"""Resampling (F.interpolate): nearest and (bi/tri)linear, forward and backward.

Arrays are (P, S): one row per (sample, channel) plane of S = D*H*W cells (1-D and 2-D inputs
have leading sizes 1). Which input cells an output reads, and with which weights, is separable
per axis and computed once in Python (fastcnn.functional) with torch's exact formulas and
float precision, so the kernels only gather and blend:

    nearest   src[a, o]                       input index along axis a for output index o
    linear    i0[a, o], i1[a, o], l0[a, o], l1[a, o]:
              y = sum over the 2 (1-D), 4 (2-D) or 8 (3-D) corners of
                  x[i_d, i_h, i_w] * l_d * l_h * l_w     (torch's order of operations)

Parallel over planes; the backward scatter-adds into its own plane, so it is race-free and
independent of the number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

ctypedef long long idx_t


cdef inline void _nearest_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                                Py_ssize_t oD, Py_ssize_t oH, Py_ssize_t oW,
                                const idx_t* sd, const idx_t* sh,
                                const idx_t* sw) noexcept nogil:
    cdef Py_ssize_t od, oh, ow
    cdef const floating* row
    for od in range(oD):
        for oh in range(oH):
            row = x + (sd[od] * H + sh[oh]) * W
            for ow in range(oW):
                y[ow] = row[sw[ow]]
            y += oW


cdef inline void _nearest_plane_backward(const floating* dy, floating* dx, Py_ssize_t H,
                                         Py_ssize_t W, Py_ssize_t oD, Py_ssize_t oH,
                                         Py_ssize_t oW, const idx_t* sd, const idx_t* sh,
                                         const idx_t* sw) noexcept nogil:
    cdef Py_ssize_t od, oh, ow
    cdef floating* row
    for od in range(oD):
        for oh in range(oH):
            row = dx + (sd[od] * H + sh[oh]) * W
            for ow in range(oW):
                row[sw[ow]] += dy[ow]
            dy += oW


def nearest(const floating[:, ::1] x, floating[:, ::1] out, tuple in_size, tuple out_size,
            const idx_t[:, ::1] src, int num_threads):
    """out[p, od, oh, ow] = x[p, src[0, od], src[1, oh], src[2, ow]]; src is (3, max(out))."""
    cdef Py_ssize_t D, H, W, oD, oH, oW
    D, H, W = in_size
    oD, oH, oW = out_size
    cdef Py_ssize_t P = x.shape[0], p
    if P == 0 or out.shape[1] == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            _nearest_plane(&x[p, 0], &out[p, 0], H, W, oD, oH, oW, &src[0, 0], &src[1, 0],
                           &src[2, 0])


def nearest_backward(const floating[:, ::1] grad_out, floating[:, ::1] grad_in, tuple in_size,
                     tuple out_size, const idx_t[:, ::1] src, int num_threads):
    """grad_in (P, S) = 0, then each output's gradient added to the cell it was copied from."""
    cdef Py_ssize_t D, H, W, oD, oH, oW
    D, H, W = in_size
    oD, oH, oW = out_size
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], p
    if P == 0 or S == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&grad_in[p, 0], 0, S * sizeof(floating))
            _nearest_plane_backward(&grad_out[p, 0], &grad_in[p, 0], H, W, oD, oH, oW,
                                    &src[0, 0], &src[1, 0], &src[2, 0])


cdef struct Lin:
    Py_ssize_t nd, H, W, oD, oH, oW
    const idx_t* d0
    const idx_t* d1
    const idx_t* h0
    const idx_t* h1
    const idx_t* w0
    const idx_t* w1


cdef inline void _linear_plane(const floating* x, floating* y, const Lin* g,
                               const floating* lam) noexcept nogil:
    """lam is the (2, 3, m) weight table: lam[k*3*m + a*m + o] = l_k for axis a, output o."""
    cdef Py_ssize_t od, oh, ow, m = max(g.oD, max(g.oH, g.oW))
    cdef const floating* c0 = lam
    cdef const floating* a0 = lam + m
    cdef const floating* b0 = lam + 2 * m
    cdef const floating* c1 = lam + 3 * m
    cdef const floating* a1 = lam + 4 * m
    cdef const floating* b1 = lam + 5 * m
    cdef const floating* r00
    cdef const floating* r01
    cdef const floating* r10
    cdef const floating* r11
    cdef Py_ssize_t S2 = g.H * g.W
    cdef floating t0, t1
    for od in range(g.oD):
        for oh in range(g.oH):
            r00 = x + g.d0[od] * S2 + g.h0[oh] * g.W
            r01 = x + g.d0[od] * S2 + g.h1[oh] * g.W
            r10 = x + g.d1[od] * S2 + g.h0[oh] * g.W
            r11 = x + g.d1[od] * S2 + g.h1[oh] * g.W
            if g.nd == 1:
                for ow in range(g.oW):
                    y[ow] = r00[g.w0[ow]] * b0[ow] + r00[g.w1[ow]] * b1[ow]
            elif g.nd == 2:
                for ow in range(g.oW):
                    y[ow] = ((r00[g.w0[ow]] * b0[ow] + r00[g.w1[ow]] * b1[ow]) * a0[oh] +
                             (r01[g.w0[ow]] * b0[ow] + r01[g.w1[ow]] * b1[ow]) * a1[oh])
            else:
                for ow in range(g.oW):
                    t0 = ((r00[g.w0[ow]] * b0[ow] + r00[g.w1[ow]] * b1[ow]) * a0[oh] +
                          (r01[g.w0[ow]] * b0[ow] + r01[g.w1[ow]] * b1[ow]) * a1[oh])
                    t1 = ((r10[g.w0[ow]] * b0[ow] + r10[g.w1[ow]] * b1[ow]) * a0[oh] +
                          (r11[g.w0[ow]] * b0[ow] + r11[g.w1[ow]] * b1[ow]) * a1[oh])
                    y[ow] = t0 * c0[od] + t1 * c1[od]
            y += g.oW


cdef inline void _linear_plane_backward(const floating* dy, floating* dx, const Lin* g,
                                        const floating* lam) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, m = max(g.oD, max(g.oH, g.oW))
    cdef const floating* c0 = lam
    cdef const floating* a0 = lam + m
    cdef const floating* b0 = lam + 2 * m
    cdef const floating* c1 = lam + 3 * m
    cdef const floating* a1 = lam + 4 * m
    cdef const floating* b1 = lam + 5 * m
    cdef floating* r00
    cdef floating* r01
    cdef floating* r10
    cdef floating* r11
    cdef Py_ssize_t S2 = g.H * g.W
    cdef floating v, u0, u1, u00, u01, u10, u11
    for od in range(g.oD):
        for oh in range(g.oH):
            r00 = dx + g.d0[od] * S2 + g.h0[oh] * g.W
            r01 = dx + g.d0[od] * S2 + g.h1[oh] * g.W
            r10 = dx + g.d1[od] * S2 + g.h0[oh] * g.W
            r11 = dx + g.d1[od] * S2 + g.h1[oh] * g.W
            for ow in range(g.oW):
                v = dy[ow]
                if g.nd == 1:
                    r00[g.w0[ow]] += b0[ow] * v
                    r00[g.w1[ow]] += b1[ow] * v
                elif g.nd == 2:
                    r00[g.w0[ow]] += a0[oh] * b0[ow] * v
                    r00[g.w1[ow]] += a0[oh] * b1[ow] * v
                    r01[g.w0[ow]] += a1[oh] * b0[ow] * v
                    r01[g.w1[ow]] += a1[oh] * b1[ow] * v
                else:
                    u00 = c0[od] * a0[oh]
                    u01 = c0[od] * a1[oh]
                    u10 = c1[od] * a0[oh]
                    u11 = c1[od] * a1[oh]
                    r00[g.w0[ow]] += u00 * b0[ow] * v
                    r00[g.w1[ow]] += u00 * b1[ow] * v
                    r01[g.w0[ow]] += u01 * b0[ow] * v
                    r01[g.w1[ow]] += u01 * b1[ow] * v
                    r10[g.w0[ow]] += u10 * b0[ow] * v
                    r10[g.w1[ow]] += u10 * b1[ow] * v
                    r11[g.w0[ow]] += u11 * b0[ow] * v
                    r11[g.w1[ow]] += u11 * b1[ow] * v
            dy += g.oW


cdef Lin _lin(int nd, tuple in_size, tuple out_size, const idx_t[:, :, ::1] idx) except *:
    cdef Lin g
    g.nd = nd
    _, g.H, g.W = in_size
    g.oD, g.oH, g.oW = out_size
    g.d0, g.h0, g.w0 = &idx[0, 0, 0], &idx[0, 1, 0], &idx[0, 2, 0]
    g.d1, g.h1, g.w1 = &idx[1, 0, 0], &idx[1, 1, 0], &idx[1, 2, 0]
    return g


def linear(const floating[:, ::1] x, floating[:, ::1] out, int nd, tuple in_size,
           tuple out_size, const idx_t[:, :, ::1] idx, const floating[:, :, ::1] lam,
           int num_threads):
    """out (P, L): linear (nd=1), bilinear (2) or trilinear (3) blend of x (P, S) with corner
    indices idx (2, 3, m) and weights lam (2, 3, m), m = max(out_size)."""
    cdef Lin g = _lin(nd, in_size, out_size, idx)
    cdef Py_ssize_t P = x.shape[0], p
    if P == 0 or out.shape[1] == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            _linear_plane(&x[p, 0], &out[p, 0], &g, &lam[0, 0, 0])


def linear_backward(const floating[:, ::1] grad_out, floating[:, ::1] grad_in, int nd,
                    tuple in_size, tuple out_size, const idx_t[:, :, ::1] idx,
                    const floating[:, :, ::1] lam, int num_threads):
    """grad_in (P, S) = 0, then every output's gradient times each corner weight added to the
    corner (the adjoint of ``linear``)."""
    cdef Lin g = _lin(nd, in_size, out_size, idx)
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], p
    if P == 0 or S == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&grad_in[p, 0], 0, S * sizeof(floating))
            _linear_plane_backward(&grad_out[p, 0], &grad_in[p, 0], &g, &lam[0, 0, 0])
