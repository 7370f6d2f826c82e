"""What fastcnn was built with: the OpenMP runtime, and the vector code its loops run."""
from fastcnn._ops._openmp cimport FASTCNN_OPENMP, omp_get_max_threads
from fastcnn._ops._simd cimport fc_simd_cpu_path, fc_simd_path


def openmp_enabled():
    """True if the kernels were compiled with OpenMP (otherwise they run on one thread)."""
    return bool(FASTCNN_OPENMP)


def openmp_max_threads():
    """``omp_get_max_threads()``: the default team size (honours OMP_NUM_THREADS), 1 without OpenMP."""
    return omp_get_max_threads()


def simd_path():
    """The code the vector kernels (_simd.h, _conv_direct.h, _pool.h) run: "x86-64-v4"
    (AVX-512), "x86-64-v3" (AVX2 + FMA), "baseline" (older CPUs), or "portable" for a build
    without dispatch (not GCC >= 12 on x86-64 Linux with glibc). The best level the CPU
    supports, or the lower one that FASTCNN_SIMD (x86-64-v3 or baseline) asks for.

    It also picks the convolution algorithms: functional/_conv_algorithms.py applies the rule
    table measured for this level (``machine_isa()``), so a lower FASTCNN_SIMD changes which
    algorithm runs as well as the vector code."""
    return fc_simd_path().decode()


def simd_cpu_path():
    """The best level this CPU supports ("portable" without dispatch), whatever FASTCNN_SIMD
    asks for: the levels from it down to "baseline" can all be run here."""
    return fc_simd_cpu_path().decode()
