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

Statistics take two passes over a channel or row, the second from the cache: the mean of the
values shifted by the first one (no cancellation when the mean is large against the spread,
1e4 + noise), then the sum of squared deviations from that mean (non-negative terms). Each sum
runs in LANES independent partial sums in the input precision over blocks of FLUSH elements
(so the loops vectorize), each block's total added to a double accumulator; the order is fixed,
so a channel or row always gives the same bits. Parallelism is over channels (batch norm) or
rows (row norms, in fixed chunks for the affine-gradient partials), never inside a reduction:
results do not depend on the number of threads.

In float32, ``x - mean`` is computed as ``(x - mean_hi) - mean_lo`` with mean = mean_hi + mean_lo
split into two floats: the first difference is exact when x is near the mean (Sterbenz), so a
large mean costs no accuracy, and the loop stays in single precision.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt


# ---- helpers --------------------------------------------------------------------------------

cdef enum:
    LANES = 8      # independent partial sums (vectorizable, a fixed order)
    FLUSH = 64     # elements per block: lane partials are added to the double total per block


cdef inline double _lane_total(const floating* a) noexcept nogil:
    return (((<double> a[0] + a[1]) + (<double> a[2] + a[3]))
            + ((<double> a[4] + a[5]) + (<double> a[6] + a[7])))


cdef inline double _sum_shifted(const floating* p, Py_ssize_t n, floating shift) noexcept nogil:
    """sum (p - shift), in double across blocks of FLUSH elements.

    Within a block each of the LANES lanes adds FLUSH/LANES values in the input precision (so
    the loop vectorizes); the values are shifted near zero, so these short sums lose nothing
    that matters, and the long sum over blocks is in double. Fixed order: same bits always.
    """
    cdef floating a[LANES]
    cdef double total = 0.0
    cdef Py_ssize_t i = 0, j, end
    while i < n:
        end = i + FLUSH if i + FLUSH < n else n
        for j in range(LANES):
            a[j] = 0
        while i + LANES <= end:
            for j in range(LANES):
                a[j] += p[i + j] - shift
            i += LANES
        j = 0
        while i < end:
            a[j] += p[i] - shift
            i += 1
            j += 1
        total += _lane_total(a)
    return total


cdef inline double _sum_sq_dev(const floating* p, Py_ssize_t n, double mean) noexcept nogil:
    """sum (p - mean)^2 (non-negative terms: short lane sums are accurate), double total."""
    cdef floating a[LANES]
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef floating d
    cdef double total = 0.0
    cdef Py_ssize_t i = 0, j, end
    while i < n:
        end = i + FLUSH if i + FLUSH < n else n
        for j in range(LANES):
            a[j] = 0
        while i + LANES <= end:
            for j in range(LANES):
                d = (p[i + j] - m_hi) - m_lo
                a[j] += d * d
            i += LANES
        j = 0
        while i < end:
            d = (p[i] - m_hi) - m_lo
            a[j] += d * d
            i += 1
            j += 1
        total += _lane_total(a)
    return total


cdef inline void _grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                            double mean, double* sdy, double* sdyx) noexcept nogil:
    """sdy += sum dy, sdyx += sum dy * (x - mean); lanes and blocks as _sum_shifted.

    The loop subtracts only mean_hi; sum dy * mean_lo is taken off the total afterwards (exact
    enough: mean_lo is below half an ulp of the mean).
    """
    cdef floating a[LANES]
    cdef floating q[LANES]
    cdef floating m_hi = <floating> mean
    cdef double m_lo = mean - <double> m_hi
    cdef double ta = 0.0, tq = 0.0
    cdef Py_ssize_t i = 0, i0, j, end
    while i < n:
        end = i + FLUSH if i + FLUSH < n else n
        i0 = i
        for j in range(LANES):
            a[j] = 0
            q[j] = 0
        # two sweeps of the block (the second from L1): one reduction per loop vectorizes,
        # two interleaved ones do not (gcc)
        while i + LANES <= end:
            for j in range(LANES):
                a[j] += dy[i + j]
            i += LANES
        j = 0
        while i < end:
            a[j] += dy[i]
            i += 1
            j += 1
        i = i0
        while i + LANES <= end:
            for j in range(LANES):
                q[j] += dy[i + j] * (x[i + j] - m_hi)
            i += LANES
        j = 0
        while i < end:
            q[j] += dy[i] * (x[i] - m_hi)
            i += 1
            j += 1
        ta += _lane_total(a)
        tq += _lane_total(q)
    sdy[0] += ta
    sdyx[0] += tq - ta * m_lo


cdef inline double _channel_mean(const floating[:, :, ::1] x, Py_ssize_t c) noexcept nogil:
    """Mean of channel c of x (N, C, S): shifted by its first value (no cancellation)."""
    cdef Py_ssize_t N = x.shape[0], S = x.shape[2], n
    cdef floating shift = x[0, c, 0]
    cdef double s = 0.0
    for n in range(N):
        s += _sum_shifted(&x[n, c, 0], S, shift)
    return shift + s / (N * S)


cdef inline double _channel_var(const floating[:, :, ::1] x, Py_ssize_t c,
                                double mean) noexcept nogil:
    """Biased variance of channel c about its mean: a second pass (the channel is in cache)."""
    cdef Py_ssize_t N = x.shape[0], S = x.shape[2], n
    cdef double s = 0.0
    for n in range(N):
        s += _sum_sq_dev(&x[n, c, 0], S, mean)
    return s / (N * S)


cdef inline void _row_moments(const floating* p, Py_ssize_t M, double* mean,
                              double* var) noexcept nogil:
    """Mean (shifted by the first value) and biased variance (second pass) of a row."""
    cdef floating shift = p[0]
    cdef double m = shift + _sum_shifted(p, M, shift) / M
    mean[0] = m
    var[0] = _sum_sq_dev(p, M, m) / M


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
    """mean[c] and biased var[c] of x (N, C, S) over N and S (N*S > 0)."""
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t c
    cdef double m
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            m = _channel_mean(x, c)
            mean[c] = m
            var[c] = _channel_var(x, c, m)


def channel_affine(const floating[:, :, ::1] x, const double[::1] mean,
                   const double[::1] scale, const double[::1] shift, floating[:, :, ::1] out,
                   int num_threads):
    """out[n, c, s] = (x[n, c, s] - mean[c]) * scale[c] + shift[c]."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t c, n
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            for n in range(N):
                _affine(&x[n, c, 0], &out[n, c, 0], S, mean[c], <floating> scale[c],
                        <floating> shift[c])


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
                _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[c],
                            <floating> a[c], <floating> b[c], <floating> k[c])


# A channel's N*S values are read again right after its statistics, by the same thread: the
# later passes hit the cache, and one kernel does the whole channel.

def channel_train_forward(const floating[:, :, ::1] x, const double[::1] weight,
                          const double[::1] bias, double eps, floating[:, :, ::1] out,
                          double[::1] mean, double[::1] var, double[::1] invstd,
                          int num_threads):
    """Batch statistics (mean, biased var, invstd) per channel of x (N, C, S), then
    out = (x - mean) * invstd * weight + bias (weight, bias may be empty). N*S > 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef bint has_w = weight.shape[0] > 0, has_b = bias.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double m, v, rs, scale, sh
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            m = _channel_mean(x, c)
            v = _channel_var(x, c, m)
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


# ---- row norms (layer / group / instance): one row per task ----------------------------------

cdef inline void _affine_vec(const floating* x, floating* y, Py_ssize_t n, double mean,
                             floating rs, const floating* w, const floating* b) noexcept nogil:
    """y[k] = (x[k] - mean) * rs * w[k] + b[k] (w, b may be NULL): layer norm's S == 1 case."""
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef Py_ssize_t k
    if w != NULL and b != NULL:
        for k in range(n):
            y[k] = ((x[k] - m_hi) - m_lo) * rs * w[k] + b[k]
    elif w != NULL:
        for k in range(n):
            y[k] = ((x[k] - m_hi) - m_lo) * rs * w[k]
    elif b != NULL:
        for k in range(n):
            y[k] = ((x[k] - m_hi) - m_lo) * rs + b[k]
    else:
        for k in range(n):
            y[k] = ((x[k] - m_hi) - m_lo) * rs


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
    cdef const floating* wp = &weight[0] if has_w else NULL
    cdef const floating* bp = &bias[0] if has_b else NULL
    cdef Py_ssize_t r, k, g
    cdef double m, v, rs, scale, sh
    if M == 0:
        return
    with nogil:
        for r in prange(R, schedule='static', num_threads=num_threads):
            m = 0.0        # assigned here, so private to the thread (only written via &m below)
            v = 0.0
            _row_moments(&x[r, 0], M, &m, &v)
            rs = 1.0 / sqrt(v + eps)
            mean[r] = m
            rstd[r] = rs
            if S == 1 and G == 1:
                _affine_vec(&x[r, 0], &out[r, 0], M, m, <floating> rs, wp, bp)
                continue
            g = r % G
            for k in range(K):
                scale = rs * (weight[g * K + k] if has_w else 1.0)
                sh = bias[g * K + k] if has_b else 0.0
                _affine(&x[r, k * S], &out[r, k * S], S, m, <floating> scale, <floating> sh)


cdef inline void _vec_grad_row(const floating* dy, const floating* x, floating* dx,
                               Py_ssize_t M, double mean, double rs, const floating* w,
                               double* gw, double* gb) noexcept nogil:
    """Layer norm's S == 1 row: affine partials gw[k] += dy*xhat, gb[k] += dy (if gw is not
    NULL), then dx (if not NULL) from the row sums of g = dy * w."""
    cdef floating m_hi = <floating> mean
    cdef floating m_lo = <floating> (mean - <double> m_hi)
    cdef floating frs = <floating> rs
    cdef floating xh
    cdef double sg = 0.0, sgx = 0.0, c1, c2
    cdef Py_ssize_t k
    cdef floating a[LANES]
    cdef floating q[LANES]
    cdef Py_ssize_t i = 0, i0, j, end
    if gw != NULL:
        for k in range(M):
            xh = ((x[k] - m_hi) - m_lo) * frs
            gw[k] += dy[k] * xh
            gb[k] += dy[k]
    if dx == NULL:
        return
    if w == NULL:     # sums of g = dy * w and g * (x - mean), as in _grad_sums
        _grad_sums(dy, x, M, mean, &sg, &sgx)
    else:
        while i < M:  # lanes and blocks as in _grad_sums, one reduction per sweep
            end = i + FLUSH if i + FLUSH < M else M
            i0 = i
            for j in range(LANES):
                a[j] = 0
                q[j] = 0
            while i + LANES <= end:
                for j in range(LANES):
                    a[j] += dy[i + j] * w[i + j]
                i += LANES
            j = 0
            while i < end:
                a[j] += dy[i] * w[i]
                i += 1
                j += 1
            i = i0
            while i + LANES <= end:
                for j in range(LANES):
                    q[j] += dy[i + j] * w[i + j] * ((x[i + j] - m_hi) - m_lo)
                i += LANES
            j = 0
            while i < end:
                q[j] += dy[i] * w[i] * ((x[i] - m_hi) - m_lo)
                i += 1
                j += 1
            sg += _lane_total(a)
            sgx += _lane_total(q)
    c1 = -rs * sg / M
    c2 = -rs * rs * rs * sgx / M
    if w != NULL:
        for k in range(M):
            dx[k] = dy[k] * w[k] * frs + ((x[k] - m_hi) - m_lo) * <floating> c2 + <floating> c1
    else:
        for k in range(M):
            dx[k] = dy[k] * frs + ((x[k] - m_hi) - m_lo) * <floating> c2 + <floating> c1


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
    cdef Py_ssize_t j, r, k, g, gk
    cdef double sdy, sdyx, a, b, w, rs, m, v, c1, c2
    if M == 0 or R == 0:
        return
    with nogil:
        for j in prange(J, schedule='static', num_threads=num_threads):
            for r in range(j * R // J, (j + 1) * R // J):
                m = 0.0        # assigned here, so private to the thread (only written via &m)
                v = 0.0
                _row_moments(&x[r, 0], M, &m, &v)
                rs = 1.0 / sqrt(v + eps)
                if S == 1 and G == 1:
                    _vec_grad_row(&dy[r, 0], &x[r, 0], &dx[r, 0] if need_x else NULL, M, m, rs,
                                  wp, &gw_parts[j, 0] if need_p else NULL,
                                  &gb_parts[j, 0] if need_p else NULL)
                    continue
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
