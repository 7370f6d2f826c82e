"""softmax / log_softmax along one axis, forward and backward.

The array is seen as (outer, D, inner): the reduction runs over D, whose consecutive entries are
``inner`` elements apart. For the last axis (inner == 1) each task is one contiguous row; for
other axes a task is one outer index and a block of up to BLOCK consecutive inner columns, which
are swept together row by row (contiguous reads, per-column accumulators on the stack).

    softmax          y = exp(x - max) / sum exp(x - max)
    log_softmax      y = x - max - log(sum exp(x - max))         (max: over D; never overflows)
    softmax'         dx = y * (dy - sum(dy * y))
    log_softmax'     dx = dy - exp(y) * sum(dy)

The loops over a row (or over a block's columns) are the vector code of _simd.h, through
_simd.pxd: a polynomial exp instead of libm's scalar one, compiled for AVX-512, AVX2 and the
baseline and picked per CPU at load time (the wheel targets baseline x86-64). This module keeps
the structure: which sums, in which order, over which rows. Sums are accumulated in double, each
row or column by one task in a fixed order: the same bits for any number of threads.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastcnn._ops._simd cimport (affine, dot, exp_store, low_part, mul_sub,
                                 row_max, scale, sub_exp, sub_exp_cols, sum_shifted)
from fastcnn._ops._softmax cimport block_exp_sums, block_lse, row_lse
from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays


cdef enum:
    BLOCK = 256    # inner columns per task (per-column accumulators live on the stack)


cdef void _forward_block(const floating* x, floating* y, Py_ssize_t D, Py_ssize_t inner,
                         Py_ssize_t nb, bint take_log) noexcept nogil:
    """Columns [0, nb) of the (D, inner) slab at x (stride inner between rows)."""
    cdef floating mx[BLOCK]
    cdef double sm[BLOCK]
    cdef floating inv[BLOCK]
    cdef Py_ssize_t d, i
    cdef const floating* row
    cdef floating* out
    if take_log:
        block_lse(x, D, inner, nb, mx, sm)        # sm receives the log-sum-exp
        for d in range(D):
            row = x + d * inner
            out = y + d * inner
            for i in range(nb):
                out[i] = <floating> (row[i] - sm[i])
        return
    block_exp_sums(x, D, inner, nb, mx, sm, y)
    for i in range(nb):
        inv[i] = <floating> (1.0 / sm[i])
    for d in range(D):
        out = y + d * inner
        for i in range(nb):
            out[i] = out[i] * inv[i]


cdef void _forward_row(const floating* x, floating* y, Py_ssize_t D,
                       bint take_log) noexcept nogil:
    cdef double lse
    cdef floating hi
    if take_log:
        lse = row_lse(x, D)
        hi = <floating> lse
        affine(x, y, D, hi, low_part(lse, hi), 1, 0)        # y = x - lse
        return
    scale(y, D, <floating> (1.0 / exp_store(x, y, D, row_max(x, D))))


cdef void _backward_row(const floating* dy, const floating* y, floating* dx, Py_ssize_t D,
                        bint take_log) noexcept nogil:
    if take_log:
        sub_exp(dy, y, dx, D, <floating> sum_shifted(dy, D, 0))
    else:
        mul_sub(y, dy, dx, D, <floating> dot(dy, y, D))


cdef void _backward_block(const floating* dy, const floating* y, floating* dx, Py_ssize_t D,
                          Py_ssize_t inner, Py_ssize_t nb, bint take_log) noexcept nogil:
    cdef double sm[BLOCK]
    cdef floating s[BLOCK]
    cdef Py_ssize_t d, i, off
    for i in range(nb):
        sm[i] = 0.0
    for d in range(D):
        off = d * inner
        if take_log:
            for i in range(nb):
                sm[i] += dy[off + i]
        else:
            for i in range(nb):
                sm[i] += <double> dy[off + i] * y[off + i]
    for i in range(nb):
        s[i] = <floating> sm[i]
    for d in range(D):
        off = d * inner
        if take_log:
            sub_exp_cols(dy + off, y + off, dx + off, s, nb)
        else:
            for i in range(nb):
                dx[off + i] = y[off + i] * (dy[off + i] - s[i])


def softmax_forward(const floating[:, :, ::1] x, floating[:, :, ::1] out, bint take_log,
                    int num_threads):
    """out = softmax or log_softmax of x (outer, D, inner) over axis 1 (D > 0)."""
    cdef Py_ssize_t outer = x.shape[0], D = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t nblocks = (inner + BLOCK - 1) // BLOCK
    cdef Py_ssize_t t, o, i0, nb
    if D == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            for o in prange(outer, schedule='static', num_threads=num_threads):
                _forward_row(&x[o, 0, 0], &out[o, 0, 0], D, take_log)
        else:
            for t in prange(outer * nblocks, schedule='static', num_threads=num_threads):
                o = t // nblocks
                i0 = (t % nblocks) * BLOCK
                nb = inner - i0 if inner - i0 < BLOCK else BLOCK
                _forward_block(&x[o, 0, i0], &out[o, 0, i0], D, inner, nb, take_log)


def softmax_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] y,
                     floating[:, :, ::1] dx, bint take_log, int num_threads):
    """dx from dy and the forward output y, all (outer, D, inner), reduction over axis 1."""
    cdef Py_ssize_t outer = y.shape[0], D = y.shape[1], inner = y.shape[2]
    cdef Py_ssize_t nblocks = (inner + BLOCK - 1) // BLOCK
    cdef Py_ssize_t t, o, i0, nb
    if D == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            for o in prange(outer, schedule='static', num_threads=num_threads):
                _backward_row(&dy[o, 0, 0], &y[o, 0, 0], &dx[o, 0, 0], D, take_log)
        else:
            for t in prange(outer * nblocks, schedule='static', num_threads=num_threads):
                o = t // nblocks
                i0 = (t % nblocks) * BLOCK
                nb = inner - i0 if inner - i0 < BLOCK else BLOCK
                _backward_block(&dy[o, 0, i0], &y[o, 0, i0], &dx[o, 0, i0], D, inner, nb,
                                take_log)


def vector_exp(const floating[::1] x, floating[::1] out):
    """out = exp(x) with the softmax loops' vector exp (_simd.h), for tests."""
    cdef Py_ssize_t n = x.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"vector_exp: out has {out.shape[0]} values, x has {n}")
    if n == 0:
        return
    with nogil:
        exp_store(&x[0], &out[0], n, 0)


# ReLU: one pass, split over the team in fixed chunks. numpy's ``where(x > 0, dy, 0)`` makes a
# boolean temporary and runs on one thread (1.1 ms on a LeNet activation of 300k values). Both
# operands are loaded before the select so that gcc if-converts and vectorizes the loop: a
# branch on the sign of random data mispredicts half the time (0.56 ms with the branch).

cdef enum:
    CHUNK = 16384    # elements per task


cdef void _relu_chunk(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        y[i] = v if not (v <= 0) else 0          # NaN fails both tests: copied through


cdef void _add_chunk(const floating* a, const floating* b, floating* y, Py_ssize_t n,
                     bint relu) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    if relu:
        for i in range(n):
            v = a[i] + b[i]
            y[i] = v if not (v <= 0) else 0
    else:
        for i in range(n):
            y[i] = a[i] + b[i]


cdef void _relu_grad_chunk(const floating* dy, const floating* x, floating* dx,
                           Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, v
    for i in range(n):
        g = dy[i]
        v = x[i]
        dx[i] = g if v > 0 else 0                # a select: inf * 0 would be NaN


cdef void _relu(const floating* x, floating* y, Py_ssize_t n, int num_threads) noexcept nogil:
    """y[:n] = max(x[:n], 0), NaN kept, on the team in fixed chunks."""
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK, j, start
    if num_threads == 1 or chunks == 1:     # no team to start (~0.3 us, a tiny layer's cost)
        _relu_chunk(x, y, n)
        return
    for j in prange(chunks, schedule='static', num_threads=num_threads):
        start = j * CHUNK
        _relu_chunk(x + start, y + start, min(CHUNK, n - start))


cdef void _add(const floating* a, const floating* b, floating* y, Py_ssize_t n, bint relu,
               int num_threads) noexcept nogil:
    """y[:n] = a + b (then max(., 0), NaN kept, if relu), on the team in fixed chunks."""
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK, j, start
    if num_threads == 1 or chunks == 1:     # no team to start
        _add_chunk(a, b, y, n, relu)
        return
    for j in prange(chunks, schedule='static', num_threads=num_threads):
        start = j * CHUNK
        _add_chunk(a + start, b + start, y + start, min(CHUNK, n - start), relu)


def relu_forward(const floating[::1] x, floating[::1] y, int num_threads):
    """y = max(x, 0), NaN kept."""
    if x.shape[0] == 0:
        return
    with nogil:
        _relu(&x[0], &y[0], x.shape[0], num_threads)


def add(const floating[::1] a, const floating[::1] b, floating[::1] y, bint relu,
        int num_threads):
    """y = a + b, or max(a + b, 0) with NaN kept if relu (a residual sum and its ReLU in one
    pass), on the team (numpy's add runs on one thread). y may be a or b."""
    if a.shape[0] == 0:
        return
    with nogil:
        _add(&a[0], &b[0], &y[0], a.shape[0], relu, num_threads)


# The inference plan's steps (plan_steps.pxd): a ReLU (b NULL) or a sum of two, into y.
cdef struct _Eltwise:
    const void* a
    const void* b
    void* y
    Py_ssize_t n
    bint relu
    bint is_double


cdef void _eltwise_step(void* args, int num_threads) noexcept nogil:
    cdef _Eltwise* p = <_Eltwise*> args
    if p.n == 0:
        return
    if p.b == NULL:
        if p.is_double:
            _relu(<const double*> p.a, <double*> p.y, p.n, num_threads)
        else:
            _relu(<const float*> p.a, <float*> p.y, p.n, num_threads)
    elif p.is_double:
        _add(<const double*> p.a, <const double*> p.b, <double*> p.y, p.n, p.relu,
             num_threads)
    else:
        _add(<const float*> p.a, <const float*> p.b, <float*> p.y, p.n, p.relu, num_threads)


cdef class EltwiseStep(CompiledStep):
    """relu_forward(a, y) when ``b`` is None, else add(a, b, y, relu), as a plan step: a, b, y
    1-D C-contiguous arrays of one float dtype and size (y may be a or b)."""
    cdef _Eltwise p

    def __init__(self, a, b, y, bint relu=False):
        inputs = [a] if b is None else [a, b]
        dtype = check_arrays("EltwiseStep", inputs, [y])
        if any(x.size != y.size for x in inputs):
            raise ValueError("EltwiseStep: the arrays' sizes differ")
        self.keep = (a, b, y)
        self.p.a = address(a)
        self.p.b = NULL if b is None else address(b)
        self.p.y = address(y)
        self.p.n = y.size
        self.p.relu = relu
        self.p.is_double = dtype == np.float64
        self.body = _eltwise_step
        self.args = &self.p


def relu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                  int num_threads):
    """dx = dy where x > 0 else 0."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK, j, start
    with nogil:
        for j in prange(chunks, schedule='static', num_threads=num_threads):
            start = j * CHUNK
            _relu_grad_chunk(&dy[start], &x[start], &dx[start], min(CHUNK, n - start))
