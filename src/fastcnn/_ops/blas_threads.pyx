"""single_threaded_blas's guard (fastcnn._threads) in C, for BLAS libraries whose thread-count
functions are C functions (OpenBLAS with its own pthreads pool: ``int get(void)``,
``void set(int)``).

Entering and leaving it costs ~0.1 us against ~2 us through ctypes (which also releases the
GIL around every call, so the Python guard needs a lock of its own): an inference run and
every kernel call of fastcnn.functional pass through it. Its methods hold the GIL from start
to end and call no Python, so they are atomic with respect to other Python threads: the first
guard in saves the counts and sets one thread, the last one out restores them.
"""
from libc.stdlib cimport free, malloc

ctypedef int (*get_count)() noexcept nogil
ctypedef void (*set_count)(int) noexcept nogil


cdef class CountGuard:
    """``enter()``/``exit()``: every library of ``functions`` ((get address, set address)
    pairs) on one thread while at least one guard is entered, as it was before otherwise."""
    cdef get_count* gets
    cdef set_count* sets
    cdef int* saved             # the count before the first enter; 0: left as it was
    cdef Py_ssize_t n
    cdef readonly Py_ssize_t depth

    def __cinit__(self, functions):
        cdef Py_ssize_t i
        functions = list(functions)
        self.n = len(functions)
        self.gets = <get_count*> malloc(max(self.n, 1) * sizeof(get_count))
        self.sets = <set_count*> malloc(max(self.n, 1) * sizeof(set_count))
        self.saved = <int*> malloc(max(self.n, 1) * sizeof(int))
        if self.gets == NULL or self.sets == NULL or self.saved == NULL:
            raise MemoryError()
        for i, (get, set_) in enumerate(functions):
            if not get or not set_:
                raise ValueError("CountGuard: a function address is 0")
            self.gets[i] = <get_count> <size_t> get
            self.sets[i] = <set_count> <size_t> set_
            self.saved[i] = 0

    def __dealloc__(self):
        free(self.gets)
        free(self.sets)
        free(self.saved)

    def enter(self):
        cdef Py_ssize_t i
        cdef int count
        if self.depth == 0:
            for i in range(self.n):
                count = self.gets[i]()
                self.saved[i] = 0
                if count != 1:
                    self.sets[i](1)
                    self.saved[i] = count
        self.depth += 1

    def exit(self):
        cdef Py_ssize_t i
        if self.depth == 0:
            raise RuntimeError("CountGuard: exit without enter")
        self.depth -= 1
        if self.depth == 0:
            for i in range(self.n):
                if self.saved[i] > 0:
                    self.sets[i](self.saved[i])
                self.saved[i] = 0
