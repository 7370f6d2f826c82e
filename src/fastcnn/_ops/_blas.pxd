# BLAS for the kernels, reached through scipy's Cython bindings so that it runs without the GIL.
#
# The kernels store matrices row-major; BLAS is column-major. A row-major (m x n) matrix is the
# column-major (n x m) matrix with the same buffer, so C = op(A) op(B) is computed as
# C^T = op(B)^T op(A)^T, i.e. the operands are swapped, never copied (as scikit-learn does).
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


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


cdef inline void gemv_row(bint trans_b, int n, int k, const floating* a, int inc_a,
                          const floating* b, int ldb, floating* c) noexcept nogil:
    """Row-major ``c (1 x n) = a (1 x k) @ op(B)``: gemm's m == 1 case as one GEMV (a's
    elements inc_a apart). ``op(B)`` is (k x n): B is stored (k x n) with leading dimension
    ldb, or (n x k) if trans_b. GEMM is far slower on a single row on some CPUs (OpenBLAS's
    Haswell sgemm: 19.9 us for 1 x 400 @ 400 x 120, its sgemv 2.8 us; SkylakeX 3.0 / 3.1)."""
    cdef char t = b'T' if trans_b else b'N'
    cdef int m_, n_, one = 1
    cdef floating alpha = 1, beta = 0
    if n <= 0:
        return
    # B (k x n) row-major is column-major (n x k): c = B_cm @ a; B (n x k) is (k x n): B_cm^T a
    m_, n_ = (k, n) if trans_b else (n, k)
    if floating is float:
        sgemv(&t, &m_, &n_, &alpha, <float*> b, &ldb, <float*> a, &inc_a, &beta, c, &one)
    else:
        dgemv(&t, &m_, &n_, &alpha, <double*> b, &ldb, <double*> a, &inc_a, &beta, c, &one)
