# The log-sum-exp that softmax, log_softmax (activation.pyx) and the fused cross-entropy
# (loss.pyx) share: lse = max + log(sum exp(x - max)), which never overflows. The exp and the
# sums are the vector loops of _simd.h (via _simd.pxd); sums come back in double, in a fixed
# order.
from cython cimport floating
from libc.math cimport log

from fastcnn._ops._simd cimport exp_acc, max_cols, row_max, sum_exp


cdef inline double row_lse(const floating* x, Py_ssize_t n) noexcept nogil:
    """log-sum-exp of n >= 1 contiguous values."""
    cdef floating mx = row_max(x, n)
    return mx + log(sum_exp(x, n, mx))


cdef inline void block_exp_sums(const floating* x, Py_ssize_t D, Py_ssize_t inner,
                                Py_ssize_t nb, floating* mx, double* sm,
                                floating* store) noexcept nogil:
    """mx[i] = the max over the D rows (``inner`` apart) of column i < nb, sm[i] = sum of
    exp(x - mx[i]) down that column; with ``store`` (not NULL), the exponentials are written
    there in x's layout. Columns are swept together row by row (contiguous reads)."""
    cdef Py_ssize_t d, i
    for i in range(nb):
        mx[i] = x[i]
        sm[i] = 0.0
    for d in range(1, D):
        max_cols(mx, x + d * inner, nb)
    for d in range(D):
        exp_acc(x + d * inner, mx, store + d * inner if store != NULL else NULL, sm, nb)


cdef inline void block_lse(const floating* x, Py_ssize_t D, Py_ssize_t inner, Py_ssize_t nb,
                           floating* mx, double* lse) noexcept nogil:
    """lse[i] = log-sum-exp over the D rows (``inner`` apart) of column i < nb, and mx[i] their
    max."""
    cdef Py_ssize_t i
    block_exp_sums(x, D, inner, nb, mx, lse, NULL)
    for i in range(nb):
        lse[i] = mx[i] + log(lse[i])
