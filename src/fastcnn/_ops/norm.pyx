"""Normalization kernels: batch norm (statistics per channel) and row norms (layer, group and
instance norm: statistics per row of contiguous elements), forward and backward.

Batch norm sees x as (N, C, S), S the spatial size, M = N*S values per channel c:

    mean_c = sum x / M       var_c = sum (x - mean_c)^2 / M       invstd_c = 1/sqrt(var_c + eps)
    y      = (x - mean_c) * scale_c + shift_c          (scale = w*invstd, shift = b in training)
    dx     = (x - mean_c) * B_c + dy * A_c + K_c       (coefficients from the two sums
                                                        sum dy and sum dy*(x - mean_c))

The row norms see x as R = N*G rows, each (K, S) and contiguous, M = K*S values per row; the
affine parameters are indexed by g*K + k (the channel) and broadcast over S:

    layer norm     R = prod(leading dims), G = 1, K = prod(normalized_shape), S = 1
                   (without weight and bias: K = 1, S = prod(normalized_shape))
    group norm     R = N*G, K = C/G, S = spatial size
    instance norm  R = N*C, G = C, K = 1, S = spatial size

Statistics: one sweep sums d = x - shift and d^2, the shift being the mean of the first 8 values
of the channel or row (so d is small: no cancellation when the mean is large against the spread,
1e4 + noise); then mean = shift + sum d / M and var = sum d^2 / M - (sum d / M)^2. That
difference loses at most a factor 2 of the sums' precision while (sum d / M)^2 <= sum d^2 / 2M,
i.e. while the shift is within one standard deviation of the mean; otherwise (outliers among the
first values, a trend along the row) the variance is recomputed in a second pass about the mean,
from the cache, as sum (x - mean)^2 (non-negative terms).

The loops over contiguous elements (these sums, the affine sweeps, the gradient sums) are the
vector code of _simd.h, through _simd.pxd: each is compiled for AVX-512, AVX2 and the baseline
and picked per CPU at load time, since the wheel itself targets baseline x86-64; this module
keeps the structure (which sums, coefficients, rows, chunks). Each sum runs in lane partial sums
in the input precision over fixed blocks, each block's partials added to double accumulators;
the order is fixed, so a channel or row always gives the same bits. Parallelism is over channels
(batch norm) or rows (row norms, in fixed chunks for the affine-gradient partials), never inside
a reduction: results do not depend on the number of threads.

In float32 the mean is split into two floats, mean = mean_hi + mean_lo: the loops subtract
mean_hi, which is exact when x is near the mean (Sterbenz), and mean_lo enters the per-row
constants computed in double (y = (x - mean_hi) * a + (b - mean_lo * a)), so a large mean costs
no accuracy and the loops stay in single precision.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

import numpy as np

from fastcnn._ops._simd cimport (affine, affine_grads, affine_grads4, affine_relu, affine_vec,
                                 grad_apply, grad_apply_relu, grad_sums, grad_sums_relu,
                                 low_part, moments, sum_sq_dev)


# ---- helpers --------------------------------------------------------------------------------

cdef enum:
    SHIFT_SAMPLES = 8      # leading values averaged into the statistics' shift


cdef inline floating _shift(const floating* p, Py_ssize_t n) noexcept nogil:
    """Mean of the first min(n, SHIFT_SAMPLES) values, n > 0 (values the sweep reads first:
    no other cache line is touched)."""
    cdef Py_ssize_t i, k = n if n < SHIFT_SAMPLES else SHIFT_SAMPLES
    cdef double t = 0.0
    for i in range(k):
        t += p[i]
    return <floating> (t / k)


cdef inline double _var_from_sums(double s1, double s2, Py_ssize_t M, bint* ok) noexcept nogil:
    """Biased variance from s1 = sum d, s2 = sum d^2 (d = x - shift); ok = 0 when the shift is
    more than one standard deviation from the mean (then a second pass is needed)."""
    cdef double md = s1 / M, ms = s2 / M
    ok[0] = not (md * md > 0.5 * ms)        # NaN sums: kept (the result is NaN either way)
    return ms - md * md


cdef inline void _row_moments(const floating* p, Py_ssize_t M, double* mean,
                              double* var) noexcept nogil:
    """Mean and biased variance of a row of M > 0 values (see the module docstring)."""
    cdef double s1 = 0.0, s2 = 0.0, m
    cdef floating shift = _shift(p, M), hi
    cdef bint ok
    moments(p, M, shift, &s1, &s2)
    m = shift + s1 / M
    mean[0] = m
    var[0] = _var_from_sums(s1, s2, M, &ok)
    if not ok:
        hi = <floating> m
        var[0] = sum_sq_dev(p, M, hi, low_part(m, hi)) / M


# ---- batch norm: the segments in memory order -----------------------------------------------
#
# x (N, C, S) is N*C segments of S contiguous values, segment i = n*C + c. The passes run over
# the segments in memory order: one channel per task read N segments S apart (a 64x128x8x8 batch
# norm: 64 runs of 256 bytes 32 KiB apart per channel), which the prefetchers do not follow.
# The single sweeps below (channel_affine, ...) split the N*C segments into contiguous ranges
# (static schedule), which also gives every thread work at batch 1.
# A channel's sums are one partial per segment (each summed from zero, as moments and grad_sums
# sum one segment), added in n order afterwards: the same bits as one accumulator carried over
# the channel's segments (as before), and the same for any number of threads.
#
# A ReLU after the batch norm can be fused (relu / fscale, fshift below): the forward writes
# max(y, 0), and the backward takes dL/d(relu output), its mask recomputed from x with the
# forward's scale and shift (fscale[c], fshift[c], as the forward formed them) by the same
# vector expression, hence exactly y > 0. The ReLU's own read and write of the activation, and
# its backward's three arrays, are saved.

# The three per-segment steps below take the channel's mean in double (split into the float
# pair hi + lo here, as every caller did) and, for a fused ReLU, the channel's forward scale and
# shift (fscale[c], fshift[c]; not read without relu).

cdef inline void _affine(const floating* x, floating* y, Py_ssize_t n, double mean, floating a,
                         floating b, bint relu) noexcept nogil:
    """y = (x - mean) * a + b, then max(., 0) if relu."""
    cdef floating hi = <floating> mean
    cdef floating lo = low_part(mean, hi)
    if relu:
        affine_relu(x, y, n, hi, lo, a, b)
    else:
        affine(x, y, n, hi, lo, a, b)


cdef inline void _grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                            bint relu, const double* fscale, const double* fshift, Py_ssize_t c,
                            double* s1, double* s2) noexcept nogil:
    """s1 += sum g, s2 += sum g * (x - mean): g = dy, or dy masked by the fused ReLU."""
    cdef floating hi = <floating> mean
    cdef floating lo = low_part(mean, hi)
    if relu:
        grad_sums_relu(dy, x, n, hi, lo, <floating> fscale[c], <floating> fshift[c], s1, s2)
    else:
        grad_sums(dy, NULL, x, n, hi, lo, s1, s2)


cdef inline void _grad_apply(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                             double mean, floating a, floating b, floating k, bint relu,
                             const double* fscale, const double* fshift,
                             Py_ssize_t c) noexcept nogil:
    """dx = g * a + (x - mean) * b + k, g as in _grad_sums."""
    cdef floating hi = <floating> mean
    cdef floating lo = low_part(mean, hi)
    if relu:
        grad_apply_relu(dy, x, dx, n, hi, lo, a, b, k, <floating> fscale[c],
                        <floating> fshift[c])
    else:
        grad_apply(dy, NULL, x, dx, n, hi, lo, a, b, k)


cdef void _add_segments(const double* p1, const double* p2, Py_ssize_t N, Py_ssize_t C,
                        double* s1, double* s2) noexcept nogil:
    """s1[c] = sum over n of p1[n*C + c] (and s2 of p2), added in n order from zero."""
    cdef Py_ssize_t n, c
    for c in range(C):
        s1[c] = 0.0
        s2[c] = 0.0
    for n in range(N):
        for c in range(C):
            s1[c] += p1[n * C + c]
            s2[c] += p2[n * C + c]


cdef void _stats(const floating[:, :, ::1] x, double* mean, double* var, double* p1,
                 double* p2, double* shift, int num_threads) noexcept nogil:
    """mean[c] and biased var[c] of x (N, C, S) over N and S (N*S > 0), as _row_moments over the
    N segments of S values (the second pass, when needed, reads x again); p1, p2 (N*C) and shift (C): workspace."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t i, n, c
    cdef double m, M = <double> (N * S)
    cdef floating hi, lo
    cdef bint ok
    for c in range(C):
        shift[c] = _shift(&x[0, c, 0], S)
    for i in prange(N * C, schedule='static', num_threads=num_threads):
        n = i // C
        c = i - n * C
        p1[i] = 0.0
        p2[i] = 0.0
        moments(&x[n, c, 0], S, <floating> shift[c], &p1[i], &p2[i])
    _add_segments(p1, p2, N, C, mean, var)
    for c in range(C):
        m = shift[c] + mean[c] / M
        var[c] = _var_from_sums(mean[c], var[c], N * S, &ok)
        mean[c] = m
        if not ok:          # rare: the shift far from the mean; a second pass about the mean
            hi = <floating> m
            lo = low_part(m, hi)
            var[c] = 0.0
            for n in range(N):
                var[c] += sum_sq_dev(&x[n, c, 0], S, hi, lo)
            var[c] = var[c] / M


cdef void _affine_segments(const floating[:, :, ::1] x, const double* mean, const double* scale,
                           const double* shift, floating[:, :, ::1] out, bint relu,
                           int num_threads) noexcept nogil:
    """out[n, c] = (x[n, c] - mean[c]) * scale[c] + shift[c], then max(., 0) if relu."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t i, n, c
    for i in prange(N * C, schedule='static', num_threads=num_threads):
        n = i // C
        c = i - n * C
        _affine(&x[n, c, 0], &out[n, c, 0], S, mean[c], <floating> scale[c],
                <floating> shift[c], relu)


cdef void _grad_sums_segments(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                              const double* mean, bint relu, const double* fscale,
                              const double* fshift, double* sum_dy, double* sum_dy_xmu,
                              double* p1, double* p2, int num_threads) noexcept nogil:
    """sum_dy[c] = sum dy[:, c], sum_dy_xmu[c] = sum dy[:, c] * (x[:, c] - mean[c]) (dy masked
    by the fused ReLU if relu); p1, p2 (N*C): workspace."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t i, n, c
    for i in prange(N * C, schedule='static', num_threads=num_threads):
        n = i // C
        c = i - n * C
        p1[i] = 0.0
        p2[i] = 0.0
        _grad_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], relu, fscale, fshift, c, &p1[i],
                   &p2[i])
    _add_segments(p1, p2, N, C, sum_dy, sum_dy_xmu)


cdef void _grad_apply_segments(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                               const double* mean, const double* a, const double* b,
                               const double* k, bint relu, const double* fscale,
                               const double* fshift, floating[:, :, ::1] dx,
                               int num_threads) noexcept nogil:
    """dx[n, c] = g * a[c] + (x - mean[c]) * b[c] + k[c], g = dy masked as in
    _grad_sums_segments."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t i, n, c
    for i in prange(N * C, schedule='static', num_threads=num_threads):
        n = i // C
        c = i - n * C
        _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[c], <floating> a[c],
                    <floating> b[c], <floating> k[c], relu, fscale, fshift, c)


def channel_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                  int num_threads):
    """mean[c] and biased var[c] of x (N, C, S) over N and S (N*S > 0)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    if C == 0:
        return
    cdef double[::1] p1 = np.empty(N * C), p2 = np.empty(N * C), shift = np.empty(C)
    with nogil:
        _stats(x, &mean[0], &var[0], &p1[0], &p2[0], &shift[0], num_threads)


def channel_affine(const floating[:, :, ::1] x, const double[::1] mean,
                   const double[::1] scale, const double[::1] shift, floating[:, :, ::1] out,
                   bint relu, int num_threads):
    """out[n, c, s] = (x[n, c, s] - mean[c]) * scale[c] + shift[c], then max(., 0) if relu."""
    if x.shape[0] * x.shape[1] == 0:
        return
    with nogil:
        _affine_segments(x, &mean[0], &scale[0], &shift[0], out, relu, num_threads)


def channel_grad_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                      const double[::1] mean, const double[::1] fscale,
                      const double[::1] fshift, double[::1] sum_dy, double[::1] sum_dy_xmu,
                      int num_threads):
    """sum_dy[c] = sum dy[:, c], sum_dy_xmu[c] = sum dy[:, c] * (x[:, c] - mean[c]), one pass.
    With fscale and fshift (C) not empty, dy is the gradient of a fused ReLU: masked first."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef bint relu = fscale.shape[0] > 0
    if C == 0:
        return
    cdef double[::1] p1 = np.empty(N * C), p2 = np.empty(N * C)
    with nogil:
        _grad_sums_segments(dy, x, &mean[0], relu, &fscale[0] if relu else NULL,
                            &fshift[0] if relu else NULL, &sum_dy[0], &sum_dy_xmu[0], &p1[0],
                            &p2[0], num_threads)


def channel_grad_apply(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                       const double[::1] mean, const double[::1] a, const double[::1] b,
                       const double[::1] k, const double[::1] fscale, const double[::1] fshift,
                       floating[:, :, ::1] dx, int num_threads):
    """dx[n, c, s] = dy * a[c] + (x - mean[c]) * b[c] + k[c], dy masked as in
    channel_grad_sums when fscale and fshift are not empty."""
    cdef bint relu = fscale.shape[0] > 0
    if x.shape[0] * x.shape[1] == 0:
        return
    with nogil:
        _grad_apply_segments(dy, x, &mean[0], &a[0], &b[0], &k[0], relu,
                             &fscale[0] if relu else NULL, &fshift[0] if relu else NULL, dx,
                             num_threads)


# Training's forward and backward run over blocks of channels, one block per task: a block's
# statistics (or gradient sums), then its affine (or dx) sweep, which reads the block again from
# the cache of the thread that summed it. Within a block the segments are visited in memory
# order (for each sample, the block's channels: runs of channels * S contiguous values).
# BLOCK_BYTES of input a block (x, or x and dy), at least one channel, at most C / threads
# channels: measured inside train steps (Intel Xeon, AVX-512, 2 threads; per call, ms, forward /
# backward, against one channel per task): VGG b64 64x128x8x8 0.36 / 0.36 (0.82 / 0.80),
# 64x64x16x16 0.49 / 0.64 (0.61 / 0.88), 64x32x32x32 0.68 / 1.22 (0.69 / 1.29), the step 79.1
# ms (87.8); ResNet b32 32x64x8x8 0.080 / 0.078 (0.097 / 0.140), 32x32x16x16 0.096 / 0.119
# (0.100 / 0.133). Blocks of 1 and 2 MiB were as fast or slower, and the whole array in memory
# order in two sweeps (statistics, then affine) lost on the larger arrays (0.78 / 1.27 for
# 64x32x32x32): its second sweep reads from L3.
cdef enum:
    BLOCK_BYTES = 1 << 19


cdef Py_ssize_t _channels_per_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t item,
                                    int threads) noexcept nogil:
    """Channels per block: BLOCK_BYTES of N*S values of ``item`` bytes each, at least 1, at
    most ceil(C / threads) (a block for every thread)."""
    cdef Py_ssize_t per = N * S * item, cb
    cb = BLOCK_BYTES // per if per > 0 else C
    if cb > (C + threads - 1) // threads:
        cb = (C + threads - 1) // threads
    return cb if cb > 1 else 1


cdef void _train_forward_block(const floating[:, :, ::1] x, Py_ssize_t c0, Py_ssize_t c1,
                               const double[::1] weight, const double[::1] bias, double eps,
                               floating[:, :, ::1] out, double[::1] mean, double[::1] var,
                               double[::1] invstd, bint relu, double* p1, double* p2,
                               double* shift, double* scale, double* offset) noexcept nogil:
    """channel_train_forward for channels c0 <= c < c1; p1, p2 (N*C), shift, scale, offset (C):
    workspace, of which the block uses its own channels' entries."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint has_w = weight.shape[0] > 0, has_b = bias.shape[0] > 0
    cdef Py_ssize_t n, c, i
    cdef double s1, s2, m, M = <double> (N * S), rs
    cdef floating hi, lo
    cdef bint ok
    for c in range(c0, c1):
        shift[c] = _shift(&x[0, c, 0], S)
    for n in range(N):
        for c in range(c0, c1):
            i = n * C + c
            p1[i] = 0.0
            p2[i] = 0.0
            moments(&x[n, c, 0], S, <floating> shift[c], &p1[i], &p2[i])
    for c in range(c0, c1):
        s1 = 0.0
        s2 = 0.0
        for n in range(N):          # the segments' sums in n order (see above)
            s1 += p1[n * C + c]
            s2 += p2[n * C + c]
        m = shift[c] + s1 / M
        mean[c] = m
        var[c] = _var_from_sums(s1, s2, N * S, &ok)
        if not ok:      # rare: the shift far from the mean; a second pass, about the mean
            hi = <floating> m
            lo = low_part(m, hi)
            s2 = 0.0
            for n in range(N):
                s2 += sum_sq_dev(&x[n, c, 0], S, hi, lo)
            var[c] = s2 / M
        rs = 1.0 / sqrt(var[c] + eps)
        invstd[c] = rs
        scale[c] = rs * (weight[c] if has_w else 1.0)
        offset[c] = bias[c] if has_b else 0.0
    for n in range(N):
        for c in range(c0, c1):
            _affine(&x[n, c, 0], &out[n, c, 0], S, mean[c], <floating> scale[c],
                    <floating> offset[c], relu)


def channel_train_forward(const floating[:, :, ::1] x, const double[::1] weight,
                          const double[::1] bias, double eps, floating[:, :, ::1] out,
                          double[::1] mean, double[::1] var, double[::1] invstd, bint relu,
                          int num_threads):
    """Batch statistics (mean, biased var, invstd) per channel of x (N, C, S), then
    out = (x - mean) * invstd * weight + bias (weight, bias may be empty), then max(out, 0) if
    relu. N*S > 0. The scale and shift are invstd * weight and bias, in double."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t cb, j
    if C == 0:
        return
    cdef double[::1] p1 = np.empty(N * C), p2 = np.empty(N * C)
    cdef double[::1] work = np.empty(3 * C)
    cb = _channels_per_block(N, C, S, sizeof(floating), num_threads)
    with nogil:
        for j in prange((C + cb - 1) // cb, schedule='static', num_threads=num_threads):
            _train_forward_block(x, j * cb, min(C, (j + 1) * cb), weight, bias, eps, out, mean,
                                 var, invstd, relu, &p1[0], &p2[0], &work[0], &work[C],
                                 &work[2 * C])


cdef void _train_backward_block(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                                Py_ssize_t c0, Py_ssize_t c1, const double[::1] mean,
                                const double[::1] invstd, const double[::1] weight,
                                bint relu, const double* fscale, const double* fshift,
                                floating[:, :, ::1] dx, double[::1] sum_dy,
                                double[::1] sum_dy_xmu, double* p1, double* p2, double* ca,
                                double* cb, double* ck) noexcept nogil:
    """channel_train_backward for channels c0 <= c < c1; p1, p2 (N*C), ca, cb, ck (C):
    workspace, of which the block uses its own channels' entries."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint has_w = weight.shape[0] > 0
    cdef Py_ssize_t n, c, i
    cdef double a, b, rs, w, M = <double> (N * S)
    for n in range(N):
        for c in range(c0, c1):
            i = n * C + c
            p1[i] = 0.0
            p2[i] = 0.0
            _grad_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], relu, fscale, fshift, c, &p1[i],
                       &p2[i])
    for c in range(c0, c1):
        a = 0.0
        b = 0.0
        for n in range(N):          # the segments' sums in n order (see above)
            a += p1[n * C + c]
            b += p2[n * C + c]
        sum_dy[c] = a
        sum_dy_xmu[c] = b
        rs = invstd[c]
        w = weight[c] if has_w else 1.0
        ca[c] = w * rs
        cb[c] = -ca[c] * rs * rs * b / M
        ck[c] = -ca[c] * a / M
    for n in range(N):
        for c in range(c0, c1):
            _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[c], <floating> ca[c],
                        <floating> cb[c], <floating> ck[c], relu, fscale, fshift, c)


def channel_train_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                           const double[::1] mean, const double[::1] invstd,
                           const double[::1] weight, const double[::1] fscale,
                           const double[::1] fshift, floating[:, :, ::1] dx,
                           double[::1] sum_dy, double[::1] sum_dy_xmu, int num_threads):
    """sum_dy[c], sum_dy_xmu[c] = sum dy * (x - mean[c]), then (M = N*S, w = weight or 1)

        dx = w * invstd * (dy - sum_dy / M - (x - mean) * invstd^2 * sum_dy_xmu / M)

    dy masked first by a fused ReLU when fscale and fshift are not empty (channel_grad_sums).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint relu = fscale.shape[0] > 0
    cdef Py_ssize_t cb, j
    if C == 0:
        return
    cdef double[::1] p1 = np.empty(N * C), p2 = np.empty(N * C)
    cdef double[::1] work = np.empty(3 * C)
    cdef const double* fs = &fscale[0] if relu else NULL
    cdef const double* fh = &fshift[0] if relu else NULL
    cb = _channels_per_block(N, C, S, 2 * sizeof(floating), num_threads)
    with nogil:
        for j in prange((C + cb - 1) // cb, schedule='static', num_threads=num_threads):
            _train_backward_block(dy, x, j * cb, min(C, (j + 1) * cb), mean, invstd, weight,
                                  relu, fs, fh, dx, sum_dy, sum_dy_xmu, &p1[0], &p2[0],
                                  &work[0], &work[C], &work[2 * C])


def running_update(floating[::1] running, const double[::1] batch, double scale, double factor):
    """running[c] = (1 - factor) * running[c] + factor * (batch[c] * scale), in double, stored in
    running's precision: the update of batch_norm's running statistics (functional/_norm.py
    _update_running), the same operations in the same order (the module is compiled without
    FMA contraction), without its numpy temporaries."""
    cdef Py_ssize_t c
    cdef double keep = 1.0 - factor
    for c in range(running.shape[0]):
        running[c] = <floating> (keep * <double> running[c] + factor * (batch[c] * scale))


# ---- row norms (layer / group / instance): one row per task ----------------------------------

def rows_forward(const floating[:, ::1] x, const floating[::1] weight,
                 const floating[::1] bias, Py_ssize_t G, Py_ssize_t K, double eps,
                 floating[:, ::1] out, double[:, ::1] stats, int num_threads):
    """Normalize each row of x (R, K*S) over its M = K*S values; row r belongs to group r % G.

    out[r, k*S + s] = (x - mean_r) * rstd_r * weight[g*K + k] + bias[g*K + k]; weight and bias
    may be empty (1 and 0). Also writes stats (2, R): mean[r] and rstd[r] = 1/sqrt(var_r + eps)
    (biased var), in one array: one buffer check less per call (a group norm's glue is a tenth
    of its time).
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t S = M // K if K > 0 else 0
    cdef bint has_w = weight.shape[0] > 0, has_b = bias.shape[0] > 0
    cdef const floating* wp = &weight[0] if has_w else NULL
    cdef const floating* bp = &bias[0] if has_b else NULL
    cdef Py_ssize_t r, k, g
    cdef double m, v, rs, scale, sh
    cdef floating hi, lo
    if stats.shape[0] != 2 or stats.shape[1] != R or out.shape[0] != R or out.shape[1] != M:
        raise ValueError(f"rows_forward: out {tuple(out.shape)} or stats {tuple(stats.shape)} "
                         f"do not match x {tuple(x.shape)}")
    if M == 0:
        return
    with nogil:
        for r in prange(R, schedule='static', num_threads=num_threads):
            m = 0.0        # assigned here, so private to the thread (only written via &m below)
            v = 0.0
            _row_moments(&x[r, 0], M, &m, &v)
            rs = 1.0 / sqrt(v + eps)
            stats[0, r] = m
            stats[1, r] = rs
            hi = <floating> m
            lo = low_part(m, hi)
            if S == 1 and G == 1:     # layer norm: weight and bias per element
                affine_vec(&x[r, 0], &out[r, 0], M, hi, lo, <floating> rs, wp, bp)
                continue
            g = r % G
            for k in range(K):
                scale = rs * (weight[g * K + k] if has_w else 1.0)
                sh = bias[g * K + k] if has_b else 0.0
                affine(&x[r, k * S], &out[r, k * S], S, hi, lo, <floating> scale,
                       <floating> sh)


cdef enum:
    ROW_GROUP = 4          # layer-norm rows whose affine partials are added together


cdef void _layer_rows_backward(const floating* dy, const floating* x, floating* dx,
                               Py_ssize_t nrows, Py_ssize_t M, double eps, const floating* w,
                               double* gw, double* gb) noexcept nogil:
    """Layer norm's rows (S == 1: weight per element) of one chunk, ROW_GROUP at a time. Per
    row: its statistics, then dx (if not NULL) from the row sums of g = dy * w; then, the group's
    rows being in L1, the affine partials gw[k] += sum dy*xhat, gb[k] += sum dy (if gw is not
    NULL), the group's terms added together first."""
    cdef floating hi[ROW_GROUP]
    cdef floating lo[ROW_GROUP]
    cdef floating frs[ROW_GROUP]
    cdef double m, v, rs, sg, sgx
    cdef Py_ssize_t r = 0, q, nq, off
    while r < nrows:
        nq = nrows - r if nrows - r < ROW_GROUP else ROW_GROUP
        for q in range(nq):
            off = (r + q) * M
            _row_moments(x + off, M, &m, &v)
            rs = 1.0 / sqrt(v + eps)
            hi[q] = <floating> m
            lo[q] = low_part(m, hi[q])
            frs[q] = <floating> rs
            if dx != NULL:
                sg = 0.0
                sgx = 0.0
                grad_sums(dy + off, w, x + off, M, hi[q], lo[q], &sg, &sgx)
                grad_apply(dy + off, w, x + off, dx + off, M, hi[q], lo[q], frs[q],
                           <floating> (-rs * rs * rs * sgx / M), <floating> (-rs * sg / M))
        if gw != NULL:
            if nq == ROW_GROUP:
                affine_grads4(dy + r * M, x + r * M, M, M, hi, lo, frs, gw, gb)
            else:
                for q in range(nq):
                    affine_grads(dy + (r + q) * M, x + (r + q) * M, M, hi[q], lo[q], frs[q],
                                 gw, gb)
        r += nq


def rows_backward(const floating[:, ::1] dy, const floating[:, ::1] x, double eps,
                  const floating[::1] weight, Py_ssize_t G, Py_ssize_t K,
                  floating[:, ::1] dx, double[:, ::1] gw_parts, double[:, ::1] gb_parts,
                  int num_threads):
    """Gradients of rows_forward.

    Each row's statistics are recomputed first (as rows_forward: the row is then in the cache
    for the gradient sweeps, so x is read from memory once). With xhat = (x - mean_r) * rstd_r
    and g = dy * weight (per k), per row of M values:

        dx = rstd_r * (g - sum(g)/M - xhat * sum(g * xhat)/M)

    dx may be empty (not wanted). gw_parts and gb_parts (J, G*K), or empty, receive one partial
    affine gradient per chunk of rows (chunk j: rows [j*R//J, (j+1)*R//J)); summed over j in
    order they are sum dy*xhat and sum dy per channel. J depends on R only: same bits for any
    number of threads.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t S = M // K if K > 0 else 0
    cdef bint has_w = weight.shape[0] > 0
    cdef bint need_x = dx.shape[0] > 0, need_p = gw_parts.shape[0] > 0
    cdef const floating* wp = &weight[0] if has_w else NULL
    cdef Py_ssize_t J = gw_parts.shape[0] if need_p else R
    cdef Py_ssize_t j, r, r0, k, g, gk
    cdef double sdy, sdyx, a, b, w, rs, m, v, c1, c2
    cdef floating hi, lo
    if M == 0 or R == 0:
        return
    with nogil:
        for j in prange(J, schedule='static', num_threads=num_threads):
            r0 = j * R // J
            if S == 1 and G == 1:      # layer norm: weight per element, rows in groups
                _layer_rows_backward(&dy[r0, 0], &x[r0, 0], &dx[r0, 0] if need_x else NULL,
                                     (j + 1) * R // J - r0, M, eps, wp,
                                     &gw_parts[j, 0] if need_p else NULL,
                                     &gb_parts[j, 0] if need_p else NULL)
                continue
            for r in range(r0, (j + 1) * R // J):
                m = 0.0        # assigned here, so private to the thread (only written via &m)
                v = 0.0
                _row_moments(&x[r, 0], M, &m, &v)
                rs = 1.0 / sqrt(v + eps)
                hi = <floating> m
                lo = low_part(m, hi)
                g = r % G
                sdy = 0.0
                sdyx = 0.0
                for k in range(K):
                    gk = g * K + k
                    a = 0.0
                    b = 0.0
                    grad_sums(&dy[r, k * S], NULL, &x[r, k * S], S, hi, lo, &a, &b)
                    b = b * rs     # sum dy * xhat over this k
                    if need_p:
                        gb_parts[j, gk] += a
                        gw_parts[j, gk] += b
                    w = weight[gk] if has_w else 1.0
                    sdy = sdy + w * a
                    sdyx = sdyx + w * b
                if need_x:
                    c1 = -rs * sdy / M                 # constant term
                    c2 = -rs * rs * sdyx / M           # times (x - mean)
                    for k in range(K):
                        w = weight[g * K + k] if has_w else 1.0
                        grad_apply(&dy[r, k * S], NULL, &x[r, k * S], &dx[r, k * S], S, hi, lo,
                                   <floating> (rs * w), <floating> c2, <floating> c1)
