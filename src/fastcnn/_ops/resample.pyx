"""Resampling (F.interpolate): nearest and (bi/tri)linear, forward and backward.

Arrays are (P, S): one row per (sample, channel) plane of S = D*H*W cells (1-D and 2-D inputs
have leading sizes 1). Which input cells an output reads, and with which weights, is separable
per axis and computed once in Python (fastcnn.functional) with torch's exact formulas and
float precision, so the kernels only gather and blend:

    nearest   src[a, o]                       input index along axis a for output index o
    linear    i0[a, o], i1[a, o], l0[a, o], l1[a, o]:
              y = sum over the 2 (1-D), 4 (2-D) or 8 (3-D) corners of
                  x[i_d, i_h, i_w] * l_d * l_h * l_w     (torch's order of operations)

Parallel over planes; each backward writes only its own plane, so it is race-free and
independent of the number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
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


# The backward is applied one axis at a time, as a gather: along an axis, input index i receives
# from the outputs o with i0[o] == i (weight l0[o]) and those with i1[o] == i (weight l1[o]).
# i0 and i1 never decrease with o, so both sets are index ranges [s0[i], e0[i]) and
# [s1[i], e1[i]), tabulated in Python. Gathering into registers avoids the chains of
# read-modify-writes on the same cell that a per-output scatter of 2-8 corners would cost.

cdef inline void _adjoint_last(const floating* src, floating* dst, Py_ssize_t rows,
                               Py_ssize_t n_out, Py_ssize_t n_in, const idx_t* adj,
                               Py_ssize_t mi, const floating* l0,
                               const floating* l1) noexcept nogil:
    """dst (rows, n_in) = adjoint along the contiguous axis of src (rows, n_out)."""
    cdef const idx_t* s0 = adj
    cdef const idx_t* e0 = adj + 3 * mi
    cdef const idx_t* s1 = adj + 6 * mi
    cdef const idx_t* e1 = adj + 9 * mi
    cdef Py_ssize_t r, i, o
    cdef floating acc
    for r in range(rows):
        for i in range(n_in):
            acc = 0
            for o in range(s0[i], e0[i]):
                acc = acc + l0[o] * src[o]
            for o in range(s1[i], e1[i]):
                acc = acc + l1[o] * src[o]
            dst[i] = acc
        src += n_out
        dst += n_in


cdef inline void _adjoint_middle(const floating* src, floating* dst, Py_ssize_t outer,
                                 Py_ssize_t n_out, Py_ssize_t n_in, Py_ssize_t inner,
                                 const idx_t* adj, Py_ssize_t mi, const floating* l0,
                                 const floating* l1) noexcept nogil:
    """dst (outer, n_in, inner) = adjoint along the middle axis of src (outer, n_out, inner):
    whole contiguous rows of ``inner`` cells scaled and added."""
    cdef const idx_t* s0 = adj
    cdef const idx_t* e0 = adj + 3 * mi
    cdef const idx_t* s1 = adj + 6 * mi
    cdef const idx_t* e1 = adj + 9 * mi
    cdef Py_ssize_t q, i, o, k
    cdef floating wt
    cdef floating* d
    cdef const floating* r
    for q in range(outer):
        for i in range(n_in):
            d = dst + (q * n_in + i) * inner
            memset(d, 0, inner * sizeof(floating))
            for o in range(s0[i], e0[i]):
                wt = l0[o]
                r = src + (q * n_out + o) * inner
                for k in range(inner):
                    d[k] = d[k] + wt * r[k]
            for o in range(s1[i], e1[i]):
                wt = l1[o]
                r = src + (q * n_out + o) * inner
                for k in range(inner):
                    d[k] = d[k] + wt * r[k]


cdef inline void _linear_plane_backward(const floating* dy, floating* dx, const Lin* g,
                                        Py_ssize_t D, const idx_t* adj, Py_ssize_t mi,
                                        const floating* lam, floating* ws) noexcept nogil:
    """dx (D, H, W) = adjoint of the blend applied to dy (oD, oH, oW); ws holds oD*oH*W
    (+ oD*H*W in 3-D) scratch cells. adj is the (4, 3, mi) range table."""
    cdef Py_ssize_t m = max(g.oD, max(g.oH, g.oW))
    cdef floating* t1 = ws
    cdef floating* t2 = ws + g.oD * g.oH * g.W
    if g.nd == 1:
        _adjoint_last(dy, dx, 1, g.oW, g.W, adj + 2 * mi, mi, lam + 2 * m, lam + 5 * m)
    elif g.nd == 2:
        _adjoint_last(dy, t1, g.oH, g.oW, g.W, adj + 2 * mi, mi, lam + 2 * m, lam + 5 * m)
        _adjoint_middle(t1, dx, 1, g.oH, g.H, g.W, adj + mi, mi, lam + m, lam + 4 * m)
    else:
        _adjoint_last(dy, t1, g.oD * g.oH, g.oW, g.W, adj + 2 * mi, mi, lam + 2 * m,
                      lam + 5 * m)
        _adjoint_middle(t1, t2, g.oD, g.oH, g.H, g.W, adj + mi, mi, lam + m, lam + 4 * m)
        _adjoint_middle(t2, dx, 1, g.oD, D, g.H * g.W, adj, mi, lam, lam + 3 * m)


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


def linear_backward_workspace(int nd, tuple in_size, tuple out_size):
    """Scratch cells one thread needs for linear_backward."""
    D, H, W = in_size
    oD, oH, oW = out_size
    return 0 if nd == 1 else oD * oH * W + (oD * H * W if nd == 3 else 0)


def linear_backward(const floating[:, ::1] grad_out, floating[:, ::1] grad_in, int nd,
                    tuple in_size, tuple out_size, const idx_t[:, :, ::1] idx,
                    const floating[:, :, ::1] lam, const idx_t[:, :, ::1] adj,
                    floating[::1] workspace, int num_threads):
    """grad_in (P, S): the adjoint of ``linear`` applied to grad_out (P, L), one axis at a
    time. adj (4, 3, mi) holds the per-axis ranges s0, e0, s1, e1 (mi = max(in_size));
    workspace num_threads * linear_backward_workspace(...) cells."""
    cdef Lin g = _lin(nd, in_size, out_size, idx)
    cdef Py_ssize_t D = in_size[0]
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], p
    cdef Py_ssize_t mi = adj.shape[2]
    cdef Py_ssize_t stride = linear_backward_workspace(nd, in_size, out_size)
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef int tid
    if P == 0 or S == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for p in prange(P, schedule='static'):
            tid = threadid()
            _linear_plane_backward(&grad_out[p, 0], &grad_in[p, 0], &g, D, &adj[0, 0, 0], mi,
                                   &lam[0, 0, 0], ws + tid * stride)
