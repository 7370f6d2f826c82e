# The exponential and the log-sum-exp that softmax, log_softmax (activation.pyx) and the fused
# cross-entropy (loss.pyx) share: lse = max + log(sum exp(x - max)), which never overflows.
# Sums are in double, in a fixed order.
from cython cimport floating
from libc.math cimport exp, expf, log


cdef inline double fexp(floating v) noexcept nogil:
    """exp in the input's precision (expf is much cheaper; the sums stay in double)."""
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline double row_lse(const floating* x, Py_ssize_t n) noexcept nogil:
    """log-sum-exp of n contiguous values."""
    cdef double mx = x[0], sm = 0.0
    cdef Py_ssize_t i
    for i in range(1, n):
        if x[i] > mx:
            mx = x[i]
    for i in range(n):
        sm += fexp(<floating> (x[i] - mx))
    return mx + log(sm)


cdef inline void block_lse(const floating* x, Py_ssize_t D, Py_ssize_t inner, Py_ssize_t nb,
                           double* lse, double* sm) noexcept nogil:
    """lse[i] = log-sum-exp over the D rows (``inner`` apart) of column i < nb; ``sm`` is
    scratch of nb doubles. Columns are swept together row by row (contiguous reads)."""
    cdef Py_ssize_t d, i
    cdef const floating* row
    for i in range(nb):
        lse[i] = x[i]
        sm[i] = 0.0
    for d in range(1, D):
        row = x + d * inner
        for i in range(nb):
            if row[i] > lse[i]:
                lse[i] = row[i]
    for d in range(D):
        row = x + d * inner
        for i in range(nb):
            sm[i] += fexp(<floating> (row[i] - lse[i]))
    for i in range(nb):
        lse[i] = lse[i] + log(sm[i])
