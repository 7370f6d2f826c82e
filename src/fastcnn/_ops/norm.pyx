"""Normalization kernels: batch norm (statistics per channel) and row norms (layer, group and
instance norm: statistics per row of contiguous elements), forward and backward.

Batch norm sees x as (N, C, S), S the spatial size, M = N*S values per channel c:

    mean_c = sum x / M          var_c = sum (x - mean_c)^2 / M        invstd_c = 1/sqrt(var_c + eps)
    y      = (x - mean_c) * scale_c + shift_c          (scale = w*invstd, shift = b in training)
    dx     = (x - mean_c) * B_c + dy * A_c + K_c       (coefficients from the two sums
                                                        sum dy and sum dy*(x - mean_c))

The row norms see x as R = N*G rows, each (K, S) and contiguous, M = K*S values per row; the
affine parameters are indexed by g*K + k (the channel) and broadcast over S:

    layer norm     R = prod(leading dims), G = 1, K = prod(normalized_shape), S = 1
    group norm     R = N*G, K = C/G, S = spatial size
    instance norm  R = N*C, G = C, K = 1, S = spatial size

Statistics are accumulated in double from values shifted by the first element of the channel
or row (the "shifted data" algorithm): one pass gives sum and sum of squares without the
cancellation of E[x^2] - E[x]^2 when the mean is large against the spread (1e4 + noise).
Sums use four independent accumulators (instruction-level parallelism; the same four-way order
every call), so a channel or row always gives the same bits. Parallelism is over channels
(batch norm) or rows (row norms, in fixed chunks for the affine-gradient partials), never
inside a reduction: results do not depend on the number of threads.

In float32, ``x - mean`` is computed as ``(x - mean_hi) - mean_lo`` with mean = mean_hi + mean_lo
split into two floats: the first difference is exact when x is near the mean (Sterbenz), so a
large mean costs no accuracy, and the loop stays in single precision.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt


# ---- helpers --------------------------------------------------------------------------------

cdef inline void _shifted_sums(const floating* p, Py_ssize_t n, double shift,
                               double* s1, double* s2) noexcept nogil:
    """s1 += sum (p - shift), s2 += sum (p - shift)^2, in a fixed order."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0
    cdef double d0, d1, d2, d3
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        d0 = p[i] - shift
        d1 = p[i + 1] - shift
        d2 = p[i + 2] - shift
        d3 = p[i + 3] - shift
        a0 += d0
        a1 += d1
        a2 += d2
        a3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
        i += 4
    while i < n:
        d0 = p[i] - shift
        a0 += d0
        q0 += d0 * d0
        i += 1
    s1[0] += (a0 + a1) + (a2 + a3)
    s2[0] += (q0 + q1) + (q2 + q3)


cdef inline void _grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                            double mean, double* sdy, double* sdyx) noexcept nogil:
    """sdy += sum dy, sdyx += sum dy * (x - mean), in a fixed order."""
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        a0 += dy[i]
        a1 += dy[i + 1]
        a2 += dy[i + 2]
        a3 += dy[i + 3]
        q0 += <double> dy[i] * ((x[i] - m_hi) - m_lo)
        q1 += <double> dy[i + 1] * ((x[i + 1] - m_hi) - m_lo)
        q2 += <double> dy[i + 2] * ((x[i + 2] - m_hi) - m_lo)
        q3 += <double> dy[i + 3] * ((x[i + 3] - m_hi) - m_lo)
        i += 4
    while i < n:
        a0 += dy[i]
        q0 += <double> dy[i] * ((x[i] - m_hi) - m_lo)
        i += 1
    sdy[0] += (a0 + a1) + (a2 + a3)
    sdyx[0] += (q0 + q1) + (q2 + q3)


cdef inline void _affine(const floating* x, floating* y, Py_ssize_t n, double mean,
                         floating scale, floating shift) noexcept nogil:
    """y = (x - mean) * scale + shift."""
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = ((x[i] - m_hi) - m_lo) * scale + shift


cdef inline void _grad_apply(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                             double mean, floating a, floating b, floating k) noexcept nogil:
    """dx = dy * a + (x - mean) * b + k."""
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] * a + ((x[i] - m_hi) - m_lo) * b + k


# ---- batch norm: one channel per task -------------------------------------------------------

def channel_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                  int num_threads):
    """mean[c] and biased var[c] of x (N, C, S) over N and S, in double (N*S > 0)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t c, n
    cdef double shift, s1, s2, m, v
    cdef double M = <double> (N * S)
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            shift = x[0, c, 0]
            s1 = 0.0
            s2 = 0.0
            for n in range(N):
                _shifted_sums(&x[n, c, 0], S, shift, &s1, &s2)
            m = s1 / M
            v = s2 / M - m * m
            mean[c] = shift + m
            var[c] = v if v > 0.0 else 0.0


def channel_affine(const floating[:, :, ::1] x, const double[::1] mean,
                   const double[::1] scale, const double[::1] shift, floating[:, :, ::1] out,
                   int num_threads):
    """out[n, c, s] = (x[n, c, s] - mean[c]) * scale[c] + shift[c]."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t c, n
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            for n in range(N):
                _affine(&x[n, c, 0], &out[n, c, 0], S, mean[c], <floating> scale[c], <floating> shift[c])


def channel_grad_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                      const double[::1] mean, double[::1] sum_dy, double[::1] sum_dy_xmu,
                      int num_threads):
    """sum_dy[c] = sum dy[:, c], sum_dy_xmu[c] = sum dy[:, c] * (x[:, c] - mean[c]), one pass."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t c, n
    cdef double a, b
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            a = 0.0
            b = 0.0
            for n in range(N):
                _grad_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], &a, &b)
            sum_dy[c] = a
            sum_dy_xmu[c] = b


def channel_grad_apply(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                       const double[::1] mean, const double[::1] a, const double[::1] b,
                       const double[::1] k, floating[:, :, ::1] dx, int num_threads):
    """dx[n, c, s] = dy * a[c] + (x - mean[c]) * b[c] + k[c]."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t c, n
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            for n in range(N):
                _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S,
                            mean[c], <floating> a[c],
                            <floating> b[c], <floating> k[c])


# ---- row norms (layer / group / instance): one row per task ----------------------------------

def rows_forward(const floating[:, ::1] x, const floating[::1] weight,
                 const floating[::1] bias, Py_ssize_t G, Py_ssize_t K, double eps,
                 floating[:, ::1] out, double[::1] mean, double[::1] rstd, int num_threads):
    """Normalize each row of x (R, K*S) over its M = K*S values; row r belongs to group r % G.

    out[r, k*S + s] = (x - mean_r) * rstd_r * weight[g*K + k] + bias[g*K + k]; weight and bias
    may be empty (1 and 0). Also writes mean[r] and rstd[r] = 1/sqrt(var_r + eps) (biased var).
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t S = M // K if K > 0 else 0
    cdef bint has_w = weight.shape[0] > 0, has_b = bias.shape[0] > 0
    cdef Py_ssize_t r, k, g
    cdef double shift, s1, s2, m, v, rs, scale, sh
    if M == 0:
        return
    with nogil:
        for r in prange(R, schedule='static', num_threads=num_threads):
            shift = x[r, 0]
            s1 = 0.0
            s2 = 0.0
            _shifted_sums(&x[r, 0], M, shift, &s1, &s2)
            m = s1 / M
            v = s2 / M - m * m
            if v < 0.0:
                v = 0.0
            m = shift + m
            rs = 1.0 / sqrt(v + eps)
            mean[r] = m
            rstd[r] = rs
            g = r % G
            for k in range(K):
                scale = rs * (weight[g * K + k] if has_w else 1.0)
                sh = bias[g * K + k] if has_b else 0.0
                _affine(&x[r, k * S], &out[r, k * S], S, m,
                        <floating> scale, <floating> sh)


def rows_backward(const floating[:, ::1] dy, const floating[:, ::1] x, const double[::1] mean,
                  const double[::1] rstd, const floating[::1] weight, Py_ssize_t G,
                  Py_ssize_t K, floating[:, ::1] dx, double[:, ::1] gw_parts,
                  double[:, ::1] gb_parts, int num_threads):
    """Gradients of rows_forward.

    With xhat = (x - mean_r) * rstd_r and dxhat = dy * weight (per k), per row of M values:

        dx = rstd_r * (dxhat - sum(dxhat)/M - xhat * sum(dxhat * xhat)/M)

    dx may be empty (not wanted). gw_parts and gb_parts (J, G*K), or empty, receive one partial
    affine gradient per chunk of rows (chunk j: rows [j*R//J, (j+1)*R//J)); summed over j in
    order they are sum dy*xhat and sum dy per channel. J depends on R only: same bits for any
    number of threads.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t S = M // K if K > 0 else 0
    cdef bint has_w = weight.shape[0] > 0
    cdef bint need_x = dx.shape[0] > 0, need_p = gw_parts.shape[0] > 0
    cdef Py_ssize_t J = gw_parts.shape[0] if need_p else R
    cdef Py_ssize_t j, r, k, g, gk
    cdef double sdy, sdyx, a, b, w, rs, m, c1, c2
    if M == 0 or R == 0:
        return
    with nogil:
        for j in prange(J, schedule='static', num_threads=num_threads):
            for r in range(j * R // J, (j + 1) * R // J):
                m = mean[r]
                rs = rstd[r]
                g = r % G
                sdy = 0.0
                sdyx = 0.0
                for k in range(K):
                    gk = g * K + k
                    a = 0.0
                    b = 0.0
                    _grad_sums(&dy[r, k * S], &x[r, k * S], S, m, &a, &b)
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
                        _grad_apply(&dy[r, k * S], &x[r, k * S], &dx[r, k * S], S, m,
                                    <floating> (rs * w), <floating> c2, <floating> c1)


def rows_stats(const floating[:, ::1] x, double eps, double[::1] mean, double[::1] rstd,
               int num_threads):
    """mean[r] and rstd[r] = 1/sqrt(var_r + eps) of each row of x (R, M), M > 0 (biased var)."""
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1]
    cdef Py_ssize_t r
    cdef double shift, s1, s2, m, v
    if M == 0:
        return
    with nogil:
        for r in prange(R, schedule='static', num_threads=num_threads):
            shift = x[r, 0]
            s1 = 0.0
            s2 = 0.0
            _shifted_sums(&x[r, 0], M, shift, &s1, &s2)
            m = s1 / M
            v = s2 / M - m * m
            if v < 0.0:
                v = 0.0
            mean[r] = shift + m
            rstd[r] = 1.0 / sqrt(v + eps)


# ---- batch norm, fused per channel ----------------------------------------------------------
# A channel's N*S values are read twice in a row (statistics, then output): done by the same
# thread back to back, the second read mostly hits the cache instead of memory.

def channel_train_forward(const floating[:, :, ::1] x, const double[::1] weight,
                          const double[::1] bias, double eps, floating[:, :, ::1] out,
                          double[::1] mean, double[::1] var, double[::1] invstd,
                          int num_threads):
    """Batch statistics (mean, biased var, invstd) per channel of x (N, C, S), then
    out = (x - mean) * invstd * weight + bias (weight, bias may be empty). N*S > 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint has_w = weight.shape[0] > 0, has_b = bias.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double shift, s1, s2, m, v, rs, scale, sh
    cdef double M = <double> (N * S)
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            shift = x[0, c, 0]
            s1 = 0.0
            s2 = 0.0
            for n in range(N):
                _shifted_sums(&x[n, c, 0], S, shift, &s1, &s2)
            m = s1 / M
            v = s2 / M - m * m
            if v < 0.0:
                v = 0.0
            m = shift + m
            rs = 1.0 / sqrt(v + eps)
            mean[c] = m
            var[c] = v
            invstd[c] = rs
            scale = rs * (weight[c] if has_w else 1.0)
            sh = bias[c] if has_b else 0.0
            for n in range(N):
                _affine(&x[n, c, 0], &out[n, c, 0], S, m, <floating> scale, <floating> sh)


def channel_train_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                           const double[::1] mean, const double[::1] invstd,
                           const double[::1] weight, floating[:, :, ::1] dx,
                           double[::1] sum_dy, double[::1] sum_dy_xmu, int num_threads):
    """sum_dy[c], sum_dy_xmu[c] = sum dy * (x - mean[c]), then (M = N*S, w = weight or 1)

        dx = w * invstd * (dy - sum_dy / M - (x - mean) * invstd^2 * sum_dy_xmu / M)
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint has_w = weight.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double a, b, m, rs, w, ca, cb, ck
    cdef double M = <double> (N * S)
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            a = 0.0
            b = 0.0
            m = mean[c]
            for n in range(N):
                _grad_sums(&dy[n, c, 0], &x[n, c, 0], S, m, &a, &b)
            sum_dy[c] = a
            sum_dy_xmu[c] = b
            rs = invstd[c]
            w = weight[c] if has_w else 1.0
            ca = w * rs
            cb = -ca * rs * rs * b / M
            ck = -ca * a / M
            for n in range(N):
                _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, m, <floating> ca,
                            <floating> cb, <floating> ck)
