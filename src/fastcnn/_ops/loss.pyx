"""Cross-entropy over class logits, forward (per-position losses) and backward, fused with the
log-softmax so that neither the probabilities nor the log-probabilities are ever stored.

Logits are (N, C, inner) (inner = prod of the extra dims d1, ...), targets (N, inner) class
indices, w the class weights (ones when the caller gave none), W = sum_c w_c, eps the label
smoothing. Per position, with lse = max + log(sum_c exp(x_c - max)) (never overflows):

    loss   = (1 - eps) * w_t * (lse - x_t) + (eps / C) * sum_c w_c * (lse - x_c)
    dx_c   = g * ((1 - eps) * w_t * (p_c - [c == t]) + (eps / C) * (W * p_c - w_c))

where p = softmax(x) and g the upstream gradient of this position's loss. A target equal to
``ignore_index`` (or, defensively, outside [0, C): the Python layer has already refused those)
gives loss 0 and dx 0. For (N, C) logits a task is one contiguous row; otherwise, as in
activation.pyx, one sample and a block of up to BLOCK positions swept class by class. Each
exponential is computed once per pass that needs it (the backward keeps them in dx and rescales);
sums are in double in a fixed order. The exp, max and sums over a row (or a block's columns) are
the vector loops of _simd.h (through _simd.pxd and the log-sum-exp of _softmax.pxd), dispatched
per CPU; this module keeps the op's structure.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log
from libc.stdint cimport int64_t

from fastcnn._ops._simd cimport exp_acc, exp_store, max_cols, row_max, scale
from fastcnn._ops._softmax cimport block_lse, row_lse

cdef enum:
    BLOCK = 128    # positions per task (per-position accumulators live on the stack)


cdef void _ce_forward_block(const floating* x, const int64_t* t, const double* w,
                            double wsum, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t nb,
                            int64_t ignore_index, double eps, double* loss,
                            double* wt) noexcept nogil:
    cdef double lse[BLOCK]
    cdef double swx[BLOCK]
    cdef floating mx[BLOCK]
    cdef Py_ssize_t c, i
    cdef int64_t k
    cdef const floating* row
    block_lse(x, C, inner, nb, mx, lse)
    if eps != 0.0:
        for i in range(nb):
            swx[i] = 0.0
        for c in range(C):
            row = x + c * inner
            for i in range(nb):
                swx[i] += w[c] * row[i]
    for i in range(nb):
        k = t[i]
        if k == ignore_index or k < 0 or k >= C:
            loss[i] = 0.0
            wt[i] = 0.0
            continue
        loss[i] = (1.0 - eps) * w[k] * (lse[i] - x[k * inner + i])
        if eps != 0.0:
            loss[i] += eps / C * (wsum * lse[i] - swx[i])
        wt[i] = w[k]


cdef void _ce_backward_block(const floating* x, const int64_t* t, const double* w,
                             double wsum, const double* g, Py_ssize_t C, Py_ssize_t inner,
                             Py_ssize_t nb, int64_t ignore_index, double eps,
                             floating* dx) noexcept nogil:
    cdef floating mx[BLOCK]
    cdef double sm[BLOCK]
    cdef double coef[BLOCK]       # multiplies exp(x_c - max): the p_c terms
    cdef double konst[BLOCK]      # g * eps / C (times w_c)
    cdef Py_ssize_t c, i
    cdef int64_t k
    cdef floating* out
    for i in range(nb):
        mx[i] = x[i]
        sm[i] = 0.0
    for c in range(1, C):
        max_cols(mx, x + c * inner, nb)
    for c in range(C):           # exp once, kept in dx, rescaled below
        exp_acc(x + c * inner, mx, dx + c * inner, sm, nb)
    for i in range(nb):
        k = t[i]
        if k == ignore_index or k < 0 or k >= C:
            coef[i] = 0.0
            konst[i] = 0.0
        else:
            coef[i] = g[i] * ((1.0 - eps) * w[k] + eps / C * wsum) / sm[i]
            konst[i] = g[i] * eps / C
    for c in range(C):
        out = dx + c * inner
        for i in range(nb):
            out[i] = <floating> (coef[i] * out[i] - konst[i] * w[c])
    for i in range(nb):      # the target's own term
        k = t[i]
        if not (k == ignore_index or k < 0 or k >= C):
            dx[k * inner + i] = <floating> (dx[k * inner + i] - g[i] * (1.0 - eps) * w[k])


cdef void _ce_forward_row(const floating* x, int64_t k, const double* w, double wsum,
                          Py_ssize_t C, int64_t ignore_index, double eps, double* loss,
                          double* wt) noexcept nogil:
    """One (C,) row of logits (inner == 1: the usual (N, C) case), contiguous loops."""
    cdef double swx = 0.0, lse
    cdef Py_ssize_t c
    if k == ignore_index or k < 0 or k >= C:
        loss[0] = 0.0
        wt[0] = 0.0
        return
    lse = row_lse(x, C)
    loss[0] = (1.0 - eps) * w[k] * (lse - x[k])
    if eps != 0.0:
        for c in range(C):
            swx += w[c] * x[c]
        loss[0] += eps / C * (wsum * lse - swx)
    wt[0] = w[k]


cdef void _ce_backward_row(const floating* x, int64_t k, const double* w, double wsum,
                           double g, Py_ssize_t C, int64_t ignore_index, double eps,
                           floating* dx) noexcept nogil:
    cdef double sm, coef, konst
    cdef Py_ssize_t c
    if k == ignore_index or k < 0 or k >= C:
        for c in range(C):
            dx[c] = 0
        return
    sm = exp_store(x, dx, C, row_max(x, C))   # exp once, kept in dx, rescaled below
    coef = g * ((1.0 - eps) * w[k] + eps / C * wsum) / sm
    konst = g * eps / C
    if konst != 0.0:
        for c in range(C):
            dx[c] = <floating> (coef * dx[c] - konst * w[c])
    else:
        scale(dx, C, <floating> coef)
    dx[k] = <floating> (dx[k] - g * (1.0 - eps) * w[k])


def cross_entropy_forward(const floating[:, :, ::1] x, const int64_t[:, ::1] target,
                          const double[::1] weight, int64_t ignore_index, double eps,
                          double[:, ::1] loss, double[:, ::1] target_weight, int num_threads):
    """loss[n, i] per position and target_weight[n, i] = w[target] (0 where ignored)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t nblocks = (inner + BLOCK - 1) // BLOCK
    cdef Py_ssize_t task, n, i0, nb, c
    cdef double wsum = 0.0
    for c in range(C):
        wsum += weight[c]
    if C == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            for n in prange(N, schedule='static', num_threads=num_threads):
                _ce_forward_row(&x[n, 0, 0], target[n, 0], &weight[0], wsum, C, ignore_index,
                                eps, &loss[n, 0], &target_weight[n, 0])
        else:
            for task in prange(N * nblocks, schedule='static', num_threads=num_threads):
                n = task // nblocks
                i0 = (task % nblocks) * BLOCK
                nb = inner - i0 if inner - i0 < BLOCK else BLOCK
                _ce_forward_block(&x[n, 0, i0], &target[n, i0], &weight[0], wsum, C, inner, nb,
                                  ignore_index, eps, &loss[n, i0], &target_weight[n, i0])


def cross_entropy_backward(const floating[:, :, ::1] x, const int64_t[:, ::1] target,
                           const double[::1] weight, int64_t ignore_index, double eps,
                           const double[:, ::1] grad, floating[:, :, ::1] dx,
                           int num_threads):
    """dx (N, C, inner) from the per-position upstream gradients grad (N, inner)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t nblocks = (inner + BLOCK - 1) // BLOCK
    cdef Py_ssize_t task, n, i0, nb, c
    cdef double wsum = 0.0
    for c in range(C):
        wsum += weight[c]
    if C == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            for n in prange(N, schedule='static', num_threads=num_threads):
                _ce_backward_row(&x[n, 0, 0], target[n, 0], &weight[0], wsum, grad[n, 0], C,
                                 ignore_index, eps, &dx[n, 0, 0])
        else:
            for task in prange(N * nblocks, schedule='static', num_threads=num_threads):
                n = task // nblocks
                i0 = (task % nblocks) * BLOCK
                nb = inner - i0 if inner - i0 < BLOCK else BLOCK
                _ce_backward_block(&x[n, 0, i0], &target[n, i0], &weight[0], wsum, &grad[n, i0],
                                   C, inner, nb, ignore_index, eps, &dx[n, 0, i0])
