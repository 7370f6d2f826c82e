"""What fastcnn was built with: the OpenMP runtime, and the vector code its loops run."""
from fastcnn._ops._openmp cimport FASTCNN_OPENMP, omp_get_max_threads
from fastcnn._ops._simd cimport fc_simd_path


def openmp_enabled():
    """True if the kernels were compiled with OpenMP (otherwise they run on one thread)."""
    return bool(FASTCNN_OPENMP)


def openmp_max_threads():
    """``omp_get_max_threads()``: the default team size (honours OMP_NUM_THREADS), 1 without OpenMP."""
    return omp_get_max_threads()


def simd_path():
    """The code the vector loops of _simd.h (softmax, cross-entropy, norms) run on this CPU:
    "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2 + FMA), "baseline" (older CPUs, or
    FASTCNN_SIMD=baseline in the environment), or "portable" for a build without dispatch (not
    GCC >= 12 on x86-64 Linux with glibc). The loader's own CPU test decides."""
    return fc_simd_path().decode()
