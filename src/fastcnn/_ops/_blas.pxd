# BLAS for the kernels, reached through scipy's Cython bindings so that it runs without the GIL.
#
# The kernels store matrices row-major; BLAS is column-major. A row-major (m x n) matrix is the
# column-major (n x m) matrix with the same buffer, so C = op(A) op(B) is computed as
# C^T = op(B)^T op(A)^T, i.e. the operands are swapped, never copied (as scikit-learn does).
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major ``C (m x n) = alpha * op(A) @ op(B) + beta * C``.

    ``op(A)`` is (m x k): A is stored (m x k) with leading dimension lda, or (k x m) if trans_a.
    ``op(B)`` is (k x n): B is stored (k x n) with leading dimension ldb, or (n x k) if trans_b.
    With beta == 0, C is overwritten and may hold anything on entry (BLAS does not read it).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda, &beta, c, &ldc)
