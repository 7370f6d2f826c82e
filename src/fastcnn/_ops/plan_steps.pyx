"""Running an inference plan's compiled steps without Python between the layers.

A CompiledStep (plan_steps.pxd) is one layer's kernel bound to fixed buffers; the kernel
modules define them (activation.EltwiseStep, gemm.LinearStep, pool.PoolStep,
conv_direct.DirectStep, conv.Im2colStep, depthwise.DepthwiseStep), and this one the
concatenation (ConcatStep). ``step()`` runs one alone; ``CompiledRun(steps,
one_thread)`` runs a sequence of them in one call with the GIL released, each on the team of
``get_num_threads()`` threads or, where ``one_thread`` says so (the plan's autotuning), on one
thread. A plan runs its layers as such sequences, and a layer without a compiled step (a
plugin, a convolution algorithm without one) as Python in between.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cython.parallel cimport prange
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

from fastcnn._threads import get_num_threads


def check_arrays(who, arrays, written=()):
    """Every one of ``arrays`` a C-contiguous numpy array of one float dtype (float32 or
    float64), those in ``written`` writeable: what a step's pointers may be taken from."""
    dtype = arrays[0].dtype if arrays and isinstance(arrays[0], np.ndarray) else None
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: arrays must be float32 or float64 numpy arrays")
    for a in list(arrays) + list(written):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
            raise TypeError(f"{who}: arrays must be C-contiguous numpy arrays of {dtype}")
    for a in written:
        if not a.flags.writeable:
            raise ValueError(f"{who}: the output array is read-only")
    return dtype


cdef class CompiledStep:
    """One layer's kernel on fixed buffers; calling it runs it alone on get_num_threads()
    threads (the plan's thread measurements)."""

    def __call__(self):
        cdef int threads = get_num_threads()
        if self.body == NULL:
            raise TypeError(f"{type(self).__name__}: not bound to a kernel")
        with nogil:
            self.body(self.args, threads)


# A concatenation: out (outer, sum of parts) gets each input (outer, part[i]) in turn.
cdef struct _Concat:
    Py_ssize_t count, outer, row        # inputs, outer rows, bytes of an output row
    const char** inputs
    Py_ssize_t* part                    # bytes of an input's row
    char* out


cdef void _concat_step(void* args, int num_threads) noexcept nogil:
    cdef _Concat* p = <_Concat*> args
    cdef Py_ssize_t o
    if num_threads == 1 or p.outer == 1:
        for o in range(p.outer):
            _concat_row(p, o)
        return
    # rows over the team (a U-Net's skip concatenations at batch 32: 2-4 MB each)
    for o in prange(p.outer, schedule='static', num_threads=num_threads):
        _concat_row(p, o)


cdef inline void _concat_row(const _Concat* p, Py_ssize_t o) noexcept nogil:
    cdef Py_ssize_t i, at = o * p.row
    for i in range(p.count):
        memcpy(p.out + at, p.inputs[i] + o * p.part[i], p.part[i])
        at += p.part[i]


cdef class ConcatStep(CompiledStep):
    """np.concatenate(inputs, axis, out=out) as a plan step (a copy: the same bits), the
    arrays C-contiguous of one float dtype, the same shape but along ``axis``."""
    cdef _Concat p

    def __init__(self, inputs, out, int axis):
        inputs = list(inputs)
        check_arrays("ConcatStep", inputs, [out])
        if not 0 <= axis < out.ndim:
            raise ValueError(f"ConcatStep: axis {axis} is not one of out's {out.ndim}")
        for x in inputs:
            if (x.ndim != out.ndim or x.shape[:axis] != out.shape[:axis]
                    or x.shape[axis + 1:] != out.shape[axis + 1:]):
                raise ValueError(f"ConcatStep: {x.shape} does not fit {out.shape} along "
                                 f"axis {axis}")
        if sum(x.shape[axis] for x in inputs) != out.shape[axis]:
            raise ValueError(f"ConcatStep: the inputs do not add up to {out.shape}")
        self.keep = (tuple(inputs), out)
        self.p.count = len(inputs)
        self.p.outer = 1
        for size in out.shape[:axis]:
            self.p.outer *= size
        self.p.row = out.nbytes // self.p.outer if self.p.outer else 0
        self.p.out = <char*> address(out)
        self.p.inputs = <const char**> malloc(max(1, self.p.count) * sizeof(char*))
        self.p.part = <Py_ssize_t*> malloc(max(1, self.p.count) * sizeof(Py_ssize_t))
        if self.p.inputs == NULL or self.p.part == NULL:
            raise MemoryError()
        for i, x in enumerate(inputs):
            self.p.inputs[i] = <const char*> address(x)
            self.p.part[i] = x.nbytes // self.p.outer if self.p.outer else 0
        self.body = _concat_step
        self.args = &self.p

    def __dealloc__(self):
        free(self.p.inputs)
        free(self.p.part)


cdef struct _Entry:
    step_body body
    void* args
    bint one_thread


cdef class CompiledRun:
    """``steps`` (CompiledStep) run in order by one call, the GIL released;
    ``one_thread[i]``: step i runs on one thread, the others on get_num_threads()."""
    cdef _Entry* entries
    cdef Py_ssize_t n
    cdef readonly tuple steps

    def __cinit__(self, steps, one_thread):
        cdef CompiledStep step
        cdef Py_ssize_t i
        self.steps = tuple(steps)
        if len(one_thread) != len(self.steps):
            raise ValueError(f"CompiledRun: one_thread has {len(one_thread)} flags for "
                             f"{len(self.steps)} steps")
        self.n = len(self.steps)
        self.entries = <_Entry*> malloc(max(self.n, 1) * sizeof(_Entry))
        if self.entries == NULL:
            raise MemoryError()
        for i in range(self.n):
            step = self.steps[i]
            if step.body == NULL:
                raise TypeError(f"CompiledRun: step {i} ({type(step).__name__}) is not bound "
                                f"to a kernel")
            self.entries[i].body = step.body
            self.entries[i].args = step.args
            self.entries[i].one_thread = bool(one_thread[i])

    def __dealloc__(self):
        free(self.entries)

    def __len__(self):
        return self.n

    def __call__(self):
        cdef int threads = get_num_threads()
        cdef Py_ssize_t i
        with nogil:
            for i in range(self.n):
                self.entries[i].body(self.entries[i].args,
                                     1 if self.entries[i].one_thread else threads)

    def times(self, bint one_thread):
        """Seconds each step took in one pass of the run, every step on one thread or every
        step on the team (the plan's choice of which steps leave the team: timed in place,
        with no Python around a step)."""
        cdef int threads = 1 if one_thread else get_num_threads()
        cdef double* spent = <double*> malloc(max(self.n, 1) * sizeof(double))
        cdef timespec start, stop
        cdef Py_ssize_t i
        if spent == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(self.n):
                    clock_gettime(CLOCK_MONOTONIC, &start)
                    self.entries[i].body(self.entries[i].args, threads)
                    clock_gettime(CLOCK_MONOTONIC, &stop)
                    spent[i] = (stop.tv_sec - start.tv_sec) + 1e-9 * (stop.tv_nsec
                                                                      - start.tv_nsec)
            return [spent[i] for i in range(self.n)]
        finally:
            free(spent)
