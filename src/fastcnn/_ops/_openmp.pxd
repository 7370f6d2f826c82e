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
    /* An orphaned barrier: binds to the enclosing parallel region. Cython's prange inside a
       parallel block is "omp for nowait", so phases that read what another thread wrote
       need this between them. Every thread of the team must reach it. */
    static inline void fastcnn_barrier(void) {
    #ifdef _OPENMP
        #pragma omp barrier
    #endif
    }
    """
    bint FASTCNN_OPENMP
    int omp_get_max_threads() noexcept nogil
    void fastcnn_barrier() noexcept nogil
