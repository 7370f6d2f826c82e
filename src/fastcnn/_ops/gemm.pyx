"""A matrix product split over the OpenMP team: C = op(A) @ op(B), for the linear layer.

numpy's matmul would run OpenBLAS's own thread pool, whose threads keep spinning after each call
and starve the OpenMP team of the next kernel (measured: a LeNet-5 training step went from 5 ms
to 80+ ms on 2 cores). Here the output is cut into fixed blocks of ``BLOCK`` rows or columns
(whichever side is longer), each block one single-threaded BLAS call on one OpenMP thread.
The cut depends on the shapes only, and each output element is one BLAS dot over the full K, so
the result is the same whatever the number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastcnn._ops._blas cimport gemm

DEF BLOCK = 64


def matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
           bint trans_a, bint trans_b, int num_threads):
    """c (M, N) = op(a) @ op(b), op(a) (M, K): a is (M, K), or (K, M) when trans_a;
    op(b) (K, N): b is (K, N), or (N, K) when trans_b. Overwrites c."""
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1]
    cdef bint by_rows = M >= N
    cdef Py_ssize_t extent = M if by_rows else N
    cdef Py_ssize_t blocks = (extent + BLOCK - 1) // BLOCK
    cdef Py_ssize_t j, start, size
    cdef const floating* pa = &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL
    cdef const floating* pb = &b[0, 0] if b.shape[0] > 0 and b.shape[1] > 0 else NULL
    cdef floating* pc = &c[0, 0] if M > 0 and N > 0 else NULL
    if M == 0 or N == 0:
        return
    if K == 0:
        c[:, :] = 0
        return
    with nogil:
        for j in prange(blocks, schedule='static', num_threads=num_threads):
            start = j * BLOCK
            size = BLOCK if start + BLOCK <= extent else extent - start
            if by_rows:
                # rows [start, start+size) of op(A): row offset, or column offset when transposed
                gemm(trans_a, trans_b, <int> size, <int> N, <int> K, <floating> 1.0,
                     pa + (start if trans_a else start * lda), <int> lda, pb, <int> ldb,
                     <floating> 0.0, pc + start * N, <int> N)
            else:
                gemm(trans_a, trans_b, <int> M, <int> size, <int> K, <floating> 1.0,
                     pa, <int> lda, pb + (start * ldb if trans_b else start), <int> ldb,
                     <floating> 0.0, pc + start, <int> N)
