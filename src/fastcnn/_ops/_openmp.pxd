# One place for OpenMP: the kernels build and run (on one thread) without it.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTCNN_OPENMP 1
    #else
    #define FASTCNN_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    bint FASTCNN_OPENMP
    int omp_get_max_threads() noexcept nogil
