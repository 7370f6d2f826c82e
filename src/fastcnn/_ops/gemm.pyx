"""A matrix product split over the OpenMP team: C = op(A) @ op(B), for the linear layer.

numpy's matmul would run OpenBLAS's own thread pool, whose threads keep spinning after each call
and starve the OpenMP team of the next kernel (measured: a LeNet-5 training step went from 5 ms
to 80+ ms on 2 cores). Here the output is cut into fixed blocks of ``BLOCK`` rows or columns
(whichever side is longer), each block one single-threaded BLAS call on one OpenMP thread (a
GEMV when C is a single row: _blas.gemv_row).
The cut depends on the shapes only, and each output element is one BLAS dot over the full K, so
the result is the same whatever the number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastcnn._ops._blas cimport gemm, gemv_row
from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays

DEF BLOCK = 64


cdef void _matmul(const floating* pa, const floating* pb, floating* pc, Py_ssize_t M,
                  Py_ssize_t N, Py_ssize_t K, Py_ssize_t lda, Py_ssize_t ldb, bint trans_a,
                  bint trans_b, int num_threads) noexcept nogil:
    """pc (M, N) = op(pa) @ op(pb) (see matmul; M, N, K > 0), in fixed blocks of BLOCK rows or
    columns, each one single-threaded BLAS call on one OpenMP thread."""
    cdef bint by_rows = M >= N and M > 1
    cdef Py_ssize_t extent = M if by_rows else N
    cdef Py_ssize_t blocks = (extent + BLOCK - 1) // BLOCK
    cdef Py_ssize_t j
    if num_threads == 1 or blocks == 1:     # no team to start (~0.3 us)
        for j in range(blocks):
            _block(pa, pb, pc, M, N, K, lda, ldb, trans_a, trans_b, by_rows, extent, j)
        return
    for j in prange(blocks, schedule='static', num_threads=num_threads):
        _block(pa, pb, pc, M, N, K, lda, ldb, trans_a, trans_b, by_rows, extent, j)


cdef inline void _block(const floating* pa, const floating* pb, floating* pc, Py_ssize_t M,
                        Py_ssize_t N, Py_ssize_t K, Py_ssize_t lda, Py_ssize_t ldb,
                        bint trans_a, bint trans_b, bint by_rows, Py_ssize_t extent,
                        Py_ssize_t j) noexcept nogil:
    """Block j of _matmul: BLOCK rows (by_rows) or columns of pc, one BLAS call."""
    cdef Py_ssize_t start = j * BLOCK
    cdef Py_ssize_t size = BLOCK if start + BLOCK <= extent else extent - start
    if M == 1:          # one row (a linear layer at batch 1): a GEMV per block of columns
        gemv_row(trans_b, <int> size, <int> K, pa, <int> (lda if trans_a else 1),
                 pb + (start * ldb if trans_b else start), <int> ldb, pc + start)
    elif by_rows:
        # rows [start, start+size) of op(A): row offset, or column offset when transposed
        gemm(trans_a, trans_b, <int> size, <int> N, <int> K, <floating> 1.0,
             pa + (start if trans_a else start * lda), <int> lda, pb, <int> ldb,
             <floating> 0.0, pc + start * N, <int> N)
    else:
        gemm(trans_a, trans_b, <int> M, <int> size, <int> K, <floating> 1.0,
             pa, <int> lda, pb + (start * ldb if trans_b else start), <int> ldb,
             <floating> 0.0, pc + start, <int> N)


def matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
           bint trans_a, bint trans_b, int num_threads):
    """c (M, N) = op(a) @ op(b), op(a) (M, K): a is (M, K), or (K, M) when trans_a;
    op(b) (K, N): b is (K, N), or (N, K) when trans_b. Overwrites c."""
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = a.shape[0] if trans_a else a.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        c[:, :] = 0
        return
    with nogil:
        _matmul(&a[0, 0], &b[0, 0], &c[0, 0], M, N, K, a.shape[1], b.shape[1], trans_a,
                trans_b, num_threads)


# The inference plan's linear layer (plan_steps.pxd): y (M, N) = x (M, K) @ w (N, K)^T, then
# y += bias row by row (as F.linear: the same GEMM blocks, then the same float additions as
# numpy's y += bias).
cdef struct _Linear:
    const void* x
    const void* w
    const void* bias            # NULL: none
    void* y
    Py_ssize_t M, N, K
    bint is_double


cdef void _add_bias(floating* y, const floating* bias, Py_ssize_t M,
                    Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(M):
        for j in range(N):
            y[i * N + j] = y[i * N + j] + bias[j]


cdef void _linear_step(void* args, int num_threads) noexcept nogil:
    cdef _Linear* p = <_Linear*> args
    if p.is_double:
        _matmul(<const double*> p.x, <const double*> p.w, <double*> p.y, p.M, p.N, p.K, p.K,
                p.K, False, True, num_threads)
        if p.bias != NULL:
            _add_bias(<double*> p.y, <const double*> p.bias, p.M, p.N)
    else:
        _matmul(<const float*> p.x, <const float*> p.w, <float*> p.y, p.M, p.N, p.K, p.K,
                p.K, False, True, num_threads)
        if p.bias != NULL:
            _add_bias(<float*> p.y, <const float*> p.bias, p.M, p.N)


cdef class LinearStep(CompiledStep):
    """y (M, N) = x (M, K) @ w (N, K)^T + bias (N,) (bias None: none) as a plan step; all
    C-contiguous, one float dtype, M, N, K > 0. Run it between single_threaded_blas's bounds
    (the plan does)."""
    cdef _Linear p

    def __init__(self, x, w, bias, y):
        inputs = [x, w] if bias is None else [x, w, bias]
        dtype = check_arrays("LinearStep", inputs, [y])
        M, K = x.shape
        N = w.shape[0]
        if (w.shape != (N, K) or y.shape != (M, N) or min(M, N, K) == 0
                or (bias is not None and bias.shape != (N,))):
            raise ValueError(f"LinearStep: shapes x {x.shape}, w {w.shape}, y {y.shape} do "
                             f"not make a product")
        self.keep = (x, w, bias, y)
        self.p.x, self.p.w, self.p.y = address(x), address(w), address(y)
        self.p.bias = NULL if bias is None else address(bias)
        self.p.M, self.p.N, self.p.K = M, N, K
        self.p.is_double = dtype == np.float64
        self.body = _linear_step
        self.args = &self.p
