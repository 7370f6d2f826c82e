"""Which vector code the kernels run, and a test twin of their exp.

The exp- and reduction-bound loops of the softmax, cross-entropy and normalization kernels
(_simd.h) are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline the wheel
targets, and the best one for the CPU is picked when a module is loaded. FASTCNN_SIMD=baseline in
the environment (read at load time) makes every kernel run the baseline code instead.
"""
from cython cimport floating

from fastcnn._ops._simd cimport exp_store, fc_simd_path


def simd_path():
    """The code the vector loops run: "x86-64-v4", "x86-64-v3", "baseline" (older CPUs, or
    FASTCNN_SIMD=baseline), or "portable" for a build without dispatch (not GCC >= 12 on x86-64
    Linux with glibc). Decided by the same CPU test as the loader's."""
    return fc_simd_path().decode()


def vector_exp(const floating[::1] x, floating[::1] out):
    """out = exp(x) with the kernels' vector exp (the loop of softmax's forward), for tests."""
    cdef Py_ssize_t n = x.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"vector_exp: out has {out.shape[0]} values, x has {n}")
    if n == 0:
        return
    with nogil:
        exp_store(&x[0], &out[0], n, 0)
