"""What the OpenMP runtime fastcnn was built with offers."""
from fastcnn._ops._openmp cimport FASTCNN_OPENMP, omp_get_max_threads


def openmp_enabled():
    """True if the kernels were compiled with OpenMP (otherwise they run on one thread)."""
    return bool(FASTCNN_OPENMP)


def openmp_max_threads():
    """``omp_get_max_threads()``: the default team size (honours OMP_NUM_THREADS), 1 without OpenMP."""
    return omp_get_max_threads()
