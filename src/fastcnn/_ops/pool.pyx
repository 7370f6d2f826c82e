"""Pooling: max / average / adaptive pooling and max unpooling, forward and backward.

Every kernel works on (P, S) arrays: one row per (sample, channel) plane of S = D*H*W input
cells (1-D and 2-D problems have leading sizes 1). Rows are independent, so the OpenMP loop runs
over planes; each plane is read and written by one thread, which makes the scatter-adds of the
backward passes race-free and every result independent of the number of threads.

Windows are given as per-axis tables computed in Python (fastcnn.functional), one entry per
output index o along the axis:

    start[o]   first input index of the window that lies inside the input
    count[o]   number of taps inside the input (taps are ``step`` = dilation apart)
    span[o]    window length counted for count_include_pad averaging (inside input + padding)

so that one kernel serves fixed windows (stride, padding, dilation, ceil_mode) and adaptive
bins (start = floor(o*in/out), count = ceil((o+1)*in/out) - start, step 1) alike, with no
division and no bounds test in the inner loops.

Max pooling follows torch: the first maximum wins ties, a NaN wins over any number (the last NaN
of the window), and indices are flat offsets into the input plane (d*H + h)*W + w.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset
from libc.math cimport INFINITY

from fastcnn._ops.plan_steps cimport CompiledStep, address

import math

import numpy as np

from fastcnn._ops.plan_steps import check_arrays

ctypedef long long idx_t      # int64, the dtype of the index arrays


cdef struct Windows:
    Py_ssize_t D, H, W                     # input plane
    Py_ssize_t oD, oH, oW                  # output plane
    Py_ssize_t dD, dH, dW                  # step between taps (dilation)
    const idx_t* ds
    const idx_t* dc
    const idx_t* hs
    const idx_t* hc
    const idx_t* ws
    const idx_t* wc
    Py_ssize_t kW, sW, pW                  # fixed windows along W (interior fast path)
    Py_ssize_t wlo, whi                    # outputs [wlo, whi) along W have all kW taps inside
    const idx_t* dsp                       # spans (average pooling only, else NULL)
    const idx_t* hsp
    const idx_t* wsp


cdef Windows _windows(tuple in_size, tuple step, const idx_t[:, ::1] starts,
                      const idx_t[:, ::1] counts, tuple out_size, tuple interior) except *:
    """``starts``/``counts`` are (3, max(out_size)) tables, row a for axis a (D, H, W).

    ``interior`` = (kW, sW, pW, wlo, whi): outputs wlo <= ow < whi read the kW taps
    ow*sW - pW + e*dW, all inside the row; they take a branch-free path over whole output rows.
    (0, 1, 0, 0, 0) when windows are not fixed (adaptive pooling).
    """
    cdef Windows w
    w.dsp = w.hsp = w.wsp = NULL
    w.kW, w.sW, w.pW, w.wlo, w.whi = interior
    w.D, w.H, w.W = in_size
    w.oD, w.oH, w.oW = out_size
    w.dD, w.dH, w.dW = step
    w.ds, w.hs, w.ws = &starts[0, 0], &starts[1, 0], &starts[2, 0]
    w.dc, w.hc, w.wc = &counts[0, 0], &counts[1, 0], &counts[2, 0]
    return w


cdef extern from "_pool.h" nogil:
    void fc_max_2x2_f(const float* x, float* y, idx_t* ind, Py_ssize_t W, Py_ssize_t oH,
                      Py_ssize_t oW)
    void fc_max_2x2_d(const double* x, double* y, idx_t* ind, Py_ssize_t W, Py_ssize_t oH,
                      Py_ssize_t oW)
    void fc_max_2x2_values_f(const float* x, float* y, Py_ssize_t W, Py_ssize_t oH,
                             Py_ssize_t oW)
    void fc_max_2x2_values_d(const double* x, double* y, Py_ssize_t W, Py_ssize_t oH,
                             Py_ssize_t oW)
    void fc_avg_2x2_f(const float* x, float* y, Py_ssize_t W, Py_ssize_t oH, Py_ssize_t oW,
                      float div)
    void fc_avg_2x2_d(const double* x, double* y, Py_ssize_t W, Py_ssize_t oH, Py_ssize_t oW,
                      double div)
    void fc_avg_2x2_backward_f(const float* dy, float* dx, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t oH, Py_ssize_t oW, float div)
    void fc_avg_2x2_backward_d(const double* dy, double* dx, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t oH, Py_ssize_t oW, double div)
    void fc_max_row_f(const float* x, float* y, idx_t* ind, Py_ssize_t n, Py_ssize_t sw,
                      idx_t start, Py_ssize_t na, Py_ssize_t step_a, Py_ssize_t nb,
                      Py_ssize_t step_b, Py_ssize_t kw, Py_ssize_t dw)
    void fc_max_row_d(const double* x, double* y, idx_t* ind, Py_ssize_t n, Py_ssize_t sw,
                      idx_t start, Py_ssize_t na, Py_ssize_t step_a, Py_ssize_t nb,
                      Py_ssize_t step_b, Py_ssize_t kw, Py_ssize_t dw)


cdef inline void _max_window(const floating* x, floating* y, idx_t* ind, const Windows* w,
                             Py_ssize_t od, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """One output from its window tables (any window: borders, ceil_mode, adaptive bins)."""
    cdef Py_ssize_t a, b, e, row, best_i, i
    cdef floating best = -INFINITY, v
    cdef const floating* xr
    # torch's index for an all -inf (or empty) window: the first tap inside
    best_i = (w.ds[od] * w.H + w.hs[oh]) * w.W + w.ws[ow]
    for a in range(w.dc[od]):
        for b in range(w.hc[oh]):
            row = ((w.ds[od] + a * w.dD) * w.H + w.hs[oh] + b * w.dH) * w.W
            xr = x + row
            i = w.ws[ow]
            for e in range(w.wc[ow]):
                v = xr[i]
                if v > best or v != v:     # v != v: NaN propagates
                    best = v
                    best_i = row + i
                i = i + w.dW
    y[ow] = best
    if ind != NULL:
        ind[ow] = best_i


cdef inline void _max_plane(const floating* x, floating* y, idx_t* ind,
                            const Windows* w) noexcept nogil:
    """Maxima of one plane. Interior outputs of a row are swept tap by tap over the whole row
    (_pool.h's fc_max_row, branch-free: on random data the comparison is a coin flip, and a
    mispredicted branch per tap costs more than the memory traffic); border windows one by
    one."""
    cdef Py_ssize_t od, oh, ow, row
    cdef Py_ssize_t lo = w.wlo, hi = w.whi, sW = w.sW
    cdef floating* yr
    cdef idx_t* ir = NULL
    for od in range(w.oD):
        for oh in range(w.oH):
            yr = y + (od * w.oH + oh) * w.oW
            if ind != NULL:
                ir = ind + (od * w.oH + oh) * w.oW
            for ow in range(lo):
                _max_window(x, yr, ir, w, od, oh, ow)
            for ow in range(hi, w.oW):
                _max_window(x, yr, ir, w, od, oh, ow)
            if hi <= lo:
                continue
            row = (w.ds[od] * w.H + w.hs[oh]) * w.W - w.pW + lo * sW
            if floating is float:
                fc_max_row_f(x, yr + lo, ir + lo if ind != NULL else NULL, hi - lo, sW, row,
                             w.dc[od], w.dD * w.H * w.W, w.hc[oh], w.dH * w.W, w.kW, w.dW)
            else:
                fc_max_row_d(x, yr + lo, ir + lo if ind != NULL else NULL, hi - lo, sW, row,
                             w.dc[od], w.dD * w.H * w.W, w.hc[oh], w.dH * w.W, w.kW, w.dW)


cdef inline void _max_2x2_plane(const floating* x, floating* y, idx_t* ind, Py_ssize_t W,
                                Py_ssize_t oH, Py_ssize_t oW) noexcept nogil:
    """2x2 windows at stride 2, all inside a plane W wide (the usual pooling): the same
    maxima and offsets as _max_plane, by the branch-free C loop of _pool.h (its per-tap
    sweeps spent their time in per-row setup on small planes, and the offsets' selects did not
    vectorize)."""
    if ind == NULL:                 # the maxima only: a loop that vectorizes
        if floating is float:
            fc_max_2x2_values_f(x, y, W, oH, oW)
        else:
            fc_max_2x2_values_d(x, y, W, oH, oW)
    elif floating is float:
        fc_max_2x2_f(x, y, ind, W, oH, oW)
    else:
        fc_max_2x2_d(x, y, ind, W, oH, oW)


cdef void _max_pool(const floating* x, floating* out, idx_t* indices, Py_ssize_t P,
                    Py_ssize_t S, Py_ssize_t L, const Windows* w, bint two_by_two,
                    int num_threads) noexcept nogil:
    """out (P, L) (and indices (P, L) unless NULL) of x (P, S), one plane per task."""
    cdef Py_ssize_t p
    if num_threads == 1 or P == 1:          # no team to start (~0.3 us)
        for p in range(P):
            _max_pool_plane(x, out, indices, S, L, w, two_by_two, p)
        return
    for p in prange(P, schedule='static', num_threads=num_threads):
        _max_pool_plane(x, out, indices, S, L, w, two_by_two, p)


cdef inline void _max_pool_plane(const floating* x, floating* out, idx_t* indices, Py_ssize_t S,
                                 Py_ssize_t L, const Windows* w, bint two_by_two,
                                 Py_ssize_t p) noexcept nogil:
    if two_by_two:
        _max_2x2_plane(x + p * S, out + p * L, indices + p * L if indices != NULL else NULL,
                       w.W, w.oH, w.oW)
    else:
        _max_plane(x + p * S, out + p * L, indices + p * L if indices != NULL else NULL, w)


def max_pool_forward(const floating[:, ::1] x, floating[:, ::1] out, idx_t[:, ::1] indices,
                     tuple in_size, tuple step, const idx_t[:, ::1] starts,
                     const idx_t[:, ::1] counts, tuple out_size, tuple interior,
                     bint two_by_two, int num_threads):
    """out (P, L) = window maxima of x (P, S); indices (P, L) their flat offsets, unless
    ``indices`` has no rows (then they are not stored). ``two_by_two``: the windows are 2x2 at
    stride 2 without padding, dilation or overhang (2-D planes; the tables are then unused)."""
    cdef Windows w = _windows(in_size, step, starts, counts, out_size, interior)
    cdef Py_ssize_t P = x.shape[0], L = out.shape[1]
    if P == 0 or L == 0:
        return
    with nogil:
        _max_pool(&x[0, 0], &out[0, 0], &indices[0, 0] if indices.shape[0] > 0 else NULL, P,
                  x.shape[1], L, &w, two_by_two, num_threads)


def scatter_add(const floating[:, ::1] grad_out, const idx_t[:, ::1] indices,
                floating[:, ::1] grad_in, int num_threads):
    """grad_in (P, S) = 0, then grad_in[p, indices[p, l]] += grad_out[p, l]: the backward of max
    pooling (adaptive or not). Out-of-range indices are skipped and counted; returns the count.
    (Each plane is zeroed and scattered into while it is in L1. A gather that writes each
    element once, for 2x2 windows, ran 10x slower: its interleaved stores did not vectorize.)"""
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], L = grad_out.shape[1]
    cdef Py_ssize_t p, l
    cdef idx_t i
    cdef Py_ssize_t bad = 0
    cdef floating* gi
    if P == 0 or S == 0:
        return 0
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            gi = &grad_in[p, 0]
            memset(gi, 0, S * sizeof(floating))
            for l in range(L):
                i = indices[p, l]
                if 0 <= i < S:
                    gi[i] = gi[i] + grad_out[p, l]
                else:
                    bad += 1
    return bad


def scatter(const floating[:, ::1] x, const idx_t[:, ::1] indices, floating[:, ::1] out,
            int num_threads):
    """out (P, S) = 0, then out[p, indices[p, l]] = x[p, l] (max unpooling; a repeated index
    keeps the last value). Out-of-range indices are skipped and counted; returns the count."""
    cdef Py_ssize_t P = out.shape[0], S = out.shape[1], L = x.shape[1]
    cdef Py_ssize_t p, l
    cdef idx_t i
    cdef Py_ssize_t bad = 0
    cdef floating* o
    if P == 0 or S == 0:
        return 0
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            o = &out[p, 0]
            memset(o, 0, S * sizeof(floating))
            for l in range(L):
                i = indices[p, l]
                if 0 <= i < S:
                    o[i] = x[p, l]
                else:
                    bad += 1
    return bad


def gather(const floating[:, ::1] src, const idx_t[:, ::1] indices, floating[:, ::1] out,
           int num_threads):
    """out[p, l] = src[p, indices[p, l]] (the backward of max unpooling); 0 for out-of-range
    indices, which are counted; returns the count."""
    cdef Py_ssize_t P = out.shape[0], L = out.shape[1], S = src.shape[1]
    cdef Py_ssize_t p, l
    cdef idx_t i
    cdef Py_ssize_t bad = 0
    if P == 0 or L == 0:
        return 0
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for l in range(L):
                i = indices[p, l]
                if 0 <= i < S:
                    out[p, l] = src[p, i]
                else:
                    out[p, l] = 0
                    bad += 1
    return bad


cdef inline double _divisor(const Windows* w, Py_ssize_t od, Py_ssize_t oh, Py_ssize_t ow,
                            double override) noexcept nogil:
    """The number an average window's sum is divided by (torch: an integer product)."""
    if override > 0:
        return override
    return <double> (w.dsp[od] * w.hsp[oh] * w.wsp[ow])


cdef inline void _avg_plane(const floating* x, floating* y, const Windows* w,
                            double override) noexcept nogil:
    """Averages of one plane; interior outputs of a row summed tap by tap over the row (the
    same order of additions as per output, so the same bits)."""
    cdef Py_ssize_t od, oh, ow, a, b, e, n, l
    cdef Py_ssize_t lo = w.wlo, hi = w.whi, sW = w.sW
    cdef floating acc, div
    cdef floating* yr
    cdef const floating* xr
    for od in range(w.oD):
        for oh in range(w.oH):
            l = (od * w.oH + oh) * w.oW
            yr = y + l
            for ow in range(w.oW):
                if lo <= ow < hi:
                    continue
                acc = 0
                n = w.dc[od] * w.hc[oh] * w.wc[ow]
                for a in range(w.dc[od]):
                    for b in range(w.hc[oh]):
                        xr = x + ((w.ds[od] + a) * w.H + w.hs[oh] + b) * w.W + w.ws[ow]
                        for e in range(w.wc[ow]):
                            acc = acc + xr[e]
                # an empty window (only padding, count_include_pad=False) averages to 0
                yr[ow] = <floating> (acc / _divisor(w, od, oh, ow, override)) if n else 0
            if hi <= lo:
                continue
            for ow in range(lo, hi):
                yr[ow] = 0
            if w.dc[od] * w.hc[oh] == 0:
                continue
            for a in range(w.dc[od]):
                for b in range(w.hc[oh]):
                    for e in range(w.kW):
                        xr = x + ((w.ds[od] + a) * w.H + w.hs[oh] + b) * w.W - w.pW + e
                        for ow in range(lo, hi):
                            yr[ow] = yr[ow] + xr[ow * sW]
            div = <floating> _divisor(w, od, oh, lo, override)   # the same for every interior ow
            for ow in range(lo, hi):
                yr[ow] = yr[ow] / div


cdef inline void _avg_plane_backward(const floating* dy, floating* dx, const Windows* w,
                                     double override) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, a, b, e
    cdef Py_ssize_t lo = w.wlo, hi = w.whi, sW = w.sW
    cdef floating g, div
    cdef floating* xr
    cdef const floating* dyr
    for od in range(w.oD):
        for oh in range(w.oH):
            if w.dc[od] * w.hc[oh] == 0:
                continue
            dyr = dy + (od * w.oH + oh) * w.oW
            for ow in range(w.oW):
                if (lo <= ow < hi) or w.wc[ow] == 0:
                    continue
                g = <floating> (dyr[ow] / _divisor(w, od, oh, ow, override))
                for a in range(w.dc[od]):
                    for b in range(w.hc[oh]):
                        xr = dx + ((w.ds[od] + a) * w.H + w.hs[oh] + b) * w.W + w.ws[ow]
                        for e in range(w.wc[ow]):
                            xr[e] = xr[e] + g
            if hi <= lo:
                continue
            div = <floating> _divisor(w, od, oh, lo, override)
            for a in range(w.dc[od]):
                for b in range(w.hc[oh]):
                    for e in range(w.kW):
                        xr = dx + ((w.ds[od] + a) * w.H + w.hs[oh] + b) * w.W - w.pW + e
                        for ow in range(lo, hi):
                            xr[ow * sW] = xr[ow * sW] + dyr[ow] / div


cdef void _avg_pool(const floating* x, floating* out, Py_ssize_t P, Py_ssize_t S,
                    Py_ssize_t L, const Windows* w, double divisor_override, bint two_by_two,
                    int num_threads) noexcept nogil:
    """out (P, L) = window averages of x (P, S), one plane per task."""
    cdef Py_ssize_t p
    if num_threads == 1 or P == 1:          # no team to start
        for p in range(P):
            _avg_pool_plane(x + p * S, out + p * L, w, divisor_override, two_by_two)
        return
    for p in prange(P, schedule='static', num_threads=num_threads):
        _avg_pool_plane(x + p * S, out + p * L, w, divisor_override, two_by_two)


cdef inline void _avg_pool_plane(const floating* x, floating* y, const Windows* w,
                                 double divisor_override, bint two_by_two) noexcept nogil:
    cdef double div = divisor_override if divisor_override > 0 else 4
    if not two_by_two:
        _avg_plane(x, y, w, divisor_override)
    elif floating is float:
        fc_avg_2x2_f(x, y, w.W, w.oH, w.oW, <float> div)
    else:
        fc_avg_2x2_d(x, y, w.W, w.oH, w.oW, div)


def avg_pool_forward(const floating[:, ::1] x, floating[:, ::1] out, tuple in_size,
                     const idx_t[:, ::1] starts, const idx_t[:, ::1] counts,
                     const idx_t[:, ::1] spans, double divisor_override, tuple out_size,
                     tuple interior, bint two_by_two, int num_threads):
    """out (P, L) = window sums of x (P, S) / divisor, divisor = divisor_override if > 0 else
    spans[0, od] * spans[1, oh] * spans[2, ow]. Taps are contiguous (no dilation).
    ``two_by_two``: 2-D 2x2 windows at stride 2, all inside (_pool.h's loop)."""
    cdef Windows w = _windows(in_size, (1, 1, 1), starts, counts, out_size, interior)
    w.dsp, w.hsp, w.wsp = &spans[0, 0], &spans[1, 0], &spans[2, 0]
    cdef Py_ssize_t P = x.shape[0], L = out.shape[1]
    if P == 0 or L == 0:
        return
    with nogil:
        _avg_pool(&x[0, 0], &out[0, 0], P, x.shape[1], L, &w, divisor_override, two_by_two,
                  num_threads)


def avg_pool_backward(const floating[:, ::1] grad_out, floating[:, ::1] grad_in, tuple in_size,
                      const idx_t[:, ::1] starts, const idx_t[:, ::1] counts,
                      const idx_t[:, ::1] spans, double divisor_override, tuple out_size,
                      tuple interior, bint two_by_two, int num_threads):
    """grad_in (P, S): every window cell receives its output's gradient / divisor (summed).
    ``two_by_two`` as avg_pool_forward: each cell is then written once."""
    cdef Windows w = _windows(in_size, (1, 1, 1), starts, counts, out_size, interior)
    w.dsp, w.hsp, w.wsp = &spans[0, 0], &spans[1, 0], &spans[2, 0]
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], p
    cdef double div = divisor_override if divisor_override > 0 else 4
    if P == 0 or S == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if two_by_two:
                if floating is float:
                    fc_avg_2x2_backward_f(&grad_out[p, 0], &grad_in[p, 0], w.H, w.W, w.oH,
                                          w.oW, <float> div)
                else:
                    fc_avg_2x2_backward_d(&grad_out[p, 0], &grad_in[p, 0], w.H, w.W, w.oH,
                                          w.oW, div)
                continue
            memset(&grad_in[p, 0], 0, S * sizeof(floating))
            _avg_plane_backward(&grad_out[p, 0], &grad_in[p, 0], &w, divisor_override)


# Global average pooling: each plane's sum from 0 in memory order (the adaptive pooling's
# order: the same bits), divided by the plane's size in double, for GAP_PLANES planes at once:
# their sums are independent, so the additions' latency overlaps (one plane at a time waited
# for each addition: 32x64x8x8 took 0.041 ms through the adaptive pooling's window loop).
cdef enum:
    GAP_PLANES = 8


cdef inline void _gap_planes(const floating* x, floating* y, Py_ssize_t S) noexcept nogil:
    """y[v] = mean of plane v of x (GAP_PLANES planes of S cells)."""
    cdef floating acc[GAP_PLANES]
    cdef Py_ssize_t v, i
    for v in range(GAP_PLANES):
        acc[v] = 0
    for i in range(S):
        for v in range(GAP_PLANES):
            acc[v] = acc[v] + x[v * S + i]
    for v in range(GAP_PLANES):
        y[v] = <floating> (acc[v] / <double> S)


cdef inline void _gap_plane(const floating* x, floating* y, Py_ssize_t S) noexcept nogil:
    cdef floating acc = 0
    cdef Py_ssize_t i
    for i in range(S):
        acc = acc + x[i]
    y[0] = <floating> (acc / <double> S)


def global_avg_forward(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    """out (P, 1) = the mean of each row of x (P, S), summed in order from 0 (the bits of
    avg_pool_forward with one window over the plane)."""
    cdef Py_ssize_t P = x.shape[0], S = x.shape[1], blocks = P // GAP_PLANES, b, p
    if P == 0:
        return
    with nogil:
        if num_threads == 1 or blocks <= 1:
            for b in range(blocks):
                _gap_planes(&x[b * GAP_PLANES, 0], &out[b * GAP_PLANES, 0], S)
        else:
            for b in prange(blocks, schedule='static', num_threads=num_threads):
                _gap_planes(&x[b * GAP_PLANES, 0], &out[b * GAP_PLANES, 0], S)
        for p in range(blocks * GAP_PLANES, P):
            _gap_plane(&x[p, 0], &out[p, 0], S)


def global_avg_backward(const floating[:, ::1] grad_out, floating[:, ::1] grad_in,
                        int num_threads):
    """grad_in (P, S): row p all 0 + grad_out[p, 0] / S (the bits of avg_pool_backward with
    one window over the plane: -0 becomes +0)."""
    cdef Py_ssize_t P = grad_in.shape[0], S = grad_in.shape[1], p, i
    cdef floating g
    if P == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            g = <floating> (grad_out[p, 0] / <double> S)
            g = g + <floating> 0.0
            for i in range(S):
                grad_in[p, i] = g


# The inference plan's pooling steps (plan_steps.pxd): max pooling (no indices) or average
# pooling of the planes x (P, S) into out (P, L), the window tables bound once.
cdef struct _Pool:
    const void* x
    void* out
    Py_ssize_t P, S, L
    Windows w
    bint average
    double divisor_override
    bint two_by_two
    bint is_double


cdef void _pool_step(void* args, int num_threads) noexcept nogil:
    cdef _Pool* p = <_Pool*> args
    if p.P == 0 or p.L == 0:
        return
    if p.average:
        if p.is_double:
            _avg_pool(<const double*> p.x, <double*> p.out, p.P, p.S, p.L, &p.w,
                      p.divisor_override, p.two_by_two, num_threads)
        else:
            _avg_pool(<const float*> p.x, <float*> p.out, p.P, p.S, p.L, &p.w,
                      p.divisor_override, p.two_by_two, num_threads)
    elif p.is_double:
        _max_pool(<const double*> p.x, <double*> p.out, NULL, p.P, p.S, p.L, &p.w,
                  p.two_by_two, num_threads)
    else:
        _max_pool(<const float*> p.x, <float*> p.out, NULL, p.P, p.S, p.L, &p.w, p.two_by_two,
                  num_threads)


cdef class PoolStep(CompiledStep):
    """max_pool_forward (no indices; ``spans`` None) or avg_pool_forward of x (P, S) into
    out (P, L) as a plan step, with the same table arguments."""
    cdef _Pool p

    def __init__(self, x, out, tuple in_size, tuple step, starts, counts, spans,
                 double divisor_override, tuple out_size, tuple interior, bint two_by_two):
        dtype = check_arrays("PoolStep", [x], [out])
        tables = [starts, counts] + ([] if spans is None else [spans])
        for t in tables:
            if (not isinstance(t, np.ndarray) or t.dtype != np.int64 or t.ndim != 2
                    or t.shape[0] != 3 or not t.flags.c_contiguous):
                raise TypeError("PoolStep: window tables must be C-contiguous int64 (3, n)")
        if (x.ndim != 2 or out.ndim != 2 or x.shape[0] != out.shape[0]
                or x.shape[1] != math.prod(in_size) or out.shape[1] != math.prod(out_size)):
            raise ValueError(f"PoolStep: planes {x.shape} -> {out.shape} do not match the "
                             f"windows {in_size} -> {out_size}")
        self.keep = (x, out, tables)
        cdef const idx_t[:, ::1] sp
        self.p.w = _windows(in_size, step, starts, counts, out_size, interior)
        if spans is not None:
            sp = spans
            self.p.w.dsp, self.p.w.hsp, self.p.w.wsp = &sp[0, 0], &sp[1, 0], &sp[2, 0]
        self.p.x, self.p.out = address(x), address(out)
        self.p.P, self.p.S, self.p.L = x.shape[0], x.shape[1], out.shape[1]
        self.p.average = spans is not None
        self.p.divisor_override = divisor_override
        self.p.two_by_two = two_by_two
        self.p.is_double = dtype == np.float64
        self.body = _pool_step
        self.args = &self.p
