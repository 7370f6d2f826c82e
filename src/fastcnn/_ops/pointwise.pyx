"""The pointwise convolution's driver: a 1x1 kernel at stride 1 without padding, per sample

    y[n] (C_out, P) = W (C_out, C) @ x[n] (C, P) + bias,    P = prod(spatial),

by the vector kernel of _pointwise.h on x and y in place (no im2col, no copy, no BLAS call per
sample). The same kernel computes such a convolution's input gradient, dx[n] = W^T dy[n] (a
pointwise convolution of dy by the transposed weight), which functional/_conv.py passes as
``wt``. The weight is given transposed and padded (``layout``): (C, cpad), cpad =
``padded_channels(C_out)``, columns from C_out on zero.

Work is cut into tasks of one sample's range of positions (whole samples when there are enough
of them for the threads; ranges otherwise), each output computed by one task as the same sum in
the same order: the same bits for any number of threads.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid

from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays

cdef extern from "_pointwise.h" nogil:
    void fc_pointwise_f(const float* x, const float* wt, const float* bias, float* y,
                        float* panel, Py_ssize_t C, Py_ssize_t P, Py_ssize_t cout,
                        Py_ssize_t cpad, Py_ssize_t p0, Py_ssize_t p1, int relu)
    void fc_pointwise_d(const double* x, const double* wt, const double* bias, double* y,
                        double* panel, Py_ssize_t C, Py_ssize_t P, Py_ssize_t cout,
                        Py_ssize_t cpad, Py_ssize_t p0, Py_ssize_t p1, int relu)
    Py_ssize_t fc_pointwise_cpad(Py_ssize_t cout)
    enum: FC_PW_PANEL

# The fewest positions a task's range gets when samples are cut (two AVX-512 vectors of floats:
# a range shorter than a block computes some outputs twice).
cdef enum:
    _MIN_RANGE = 32


def workspace_size(Py_ssize_t C):
    """Elements of scratch forward() needs per thread: a panel of C rows of positions."""
    return C * FC_PW_PANEL


def padded_channels(Py_ssize_t c_out):
    """The columns of the weight (C, cpad) and bias (cpad) forward() reads for C_out channels."""
    return fc_pointwise_cpad(c_out)


def layout(w2, b1, dtype):
    """The operands of forward() for a weight w2 (C_out, C) and bias b1 (C_out,) or empty:
    (wt (C, cpad), bias (cpad)), the columns from C_out on zero."""
    c_out, c = w2.shape
    cpad = fc_pointwise_cpad(c_out)
    wt = np.zeros((c, cpad), dtype=dtype)
    wt[:, :c_out] = w2.T
    bias = np.zeros(cpad, dtype=dtype)
    if b1.size:
        bias[:c_out] = b1
    return wt, bias


cdef inline Py_ssize_t _parts(Py_ssize_t N, Py_ssize_t P, int num_threads) noexcept nogil:
    """Ranges each sample is cut into: 1 when the samples alone give every thread two tasks."""
    cdef Py_ssize_t parts
    if N >= 2 * num_threads:
        return 1
    parts = (2 * num_threads + N - 1) // N
    if parts > P // _MIN_RANGE:
        parts = P // _MIN_RANGE
    return parts if parts > 1 else 1


cdef void _forward(const floating* x, const floating* wt, const floating* bias, floating* y,
                   floating* ws, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P, Py_ssize_t cout,
                   Py_ssize_t cpad, bint relu, int num_threads) noexcept nogil:
    cdef Py_ssize_t parts = _parts(N, P, num_threads), t, n, i
    cdef floating* panel
    with parallel(num_threads=num_threads):
        panel = ws + threadid() * C * FC_PW_PANEL
        for t in prange(N * parts, schedule='static'):
            n = t // parts
            i = t % parts
            if floating is float:
                fc_pointwise_f(x + n * C * P, wt, bias, y + n * cout * P, panel, C, P, cout,
                               cpad, i * P // parts, (i + 1) * P // parts, relu)
            else:
                fc_pointwise_d(x + n * C * P, wt, bias, y + n * cout * P, panel, C, P, cout,
                               cpad, i * P // parts, (i + 1) * P // parts, relu)


def forward(const floating[:, ::1] x, const floating[:, ::1] wt, const floating[::1] bias,
            floating[:, ::1] out, floating[::1] workspace, Py_ssize_t C, bint relu,
            int num_threads):
    """out (N, C_out*P) = the pointwise convolution of x (N, C*P) by wt (C, cpad) (the weight
    transposed and padded: see layout) plus bias (cpad), then max(out, 0) if relu (NaN kept,
    -0 -> 0, as relu); ``workspace`` at least num_threads * workspace_size(C) elements."""
    cdef Py_ssize_t N = x.shape[0], P, cout, cpad = wt.shape[1]
    if C <= 0 or x.shape[1] % C or num_threads < 1:
        raise ValueError(f"pointwise.forward: x {tuple(x.shape)} is not (N, {C} * P) or "
                         f"num_threads = {num_threads} < 1")
    P = x.shape[1] // C
    cout = out.shape[1] // P if P else 0
    if (wt.shape[0] != C or bias.shape[0] != cpad or out.shape[0] != N
            or P == 0 or out.shape[1] != cout * P or cpad < fc_pointwise_cpad(cout)):
        raise ValueError(f"pointwise.forward: x {tuple(x.shape)}, wt {tuple(wt.shape)}, "
                         f"bias {tuple(bias.shape)}, out {tuple(out.shape)} do not match")
    if workspace.shape[0] < num_threads * C * FC_PW_PANEL:
        raise ValueError(f"pointwise.forward: a workspace of {workspace.shape[0]} elements is "
                         f"too small for {num_threads} threads")
    if N == 0:
        return
    with nogil:
        _forward(&x[0, 0], &wt[0, 0], &bias[0], &out[0, 0], &workspace[0], N, C, P, cout,
                 cpad, relu, num_threads)


# The inference plan's step (plan_steps.pxd): forward() on buffers bound once.
cdef struct _Pointwise:
    const void* x
    const void* wt
    const void* bias
    void* out
    void* workspace
    Py_ssize_t N, C, P, cout, cpad
    bint relu, is_double
    int max_threads             # the workspace serves this many threads


cdef void _pointwise_step(void* args, int num_threads) noexcept nogil:
    cdef _Pointwise* p = <_Pointwise*> args
    if num_threads > p.max_threads:         # fewer threads: the same bits
        num_threads = p.max_threads
    if p.is_double:
        _forward(<const double*> p.x, <const double*> p.wt, <const double*> p.bias,
                 <double*> p.out, <double*> p.workspace, p.N, p.C, p.P, p.cout, p.cpad, p.relu,
                 num_threads)
    else:
        _forward(<const float*> p.x, <const float*> p.wt, <const float*> p.bias,
                 <float*> p.out, <float*> p.workspace, p.N, p.C, p.P, p.cout, p.cpad, p.relu,
                 num_threads)


cdef class PointwiseStep(CompiledStep):
    """forward(x, wt, bias, out, workspace, C, relu, threads) as a plan step on up to
    ``max_threads`` threads (``workspace``: at least max_threads * workspace_size(C) elements,
    the plan's scratch)."""
    cdef _Pointwise p

    def __init__(self, x, wt, bias, out, workspace, Py_ssize_t C, bint relu, int max_threads):
        dtype = check_arrays("PointwiseStep", [x, wt, bias], [out, workspace])
        if (x.ndim != 2 or out.ndim != 2 or wt.ndim != 2 or C <= 0 or x.shape[1] % C
                or x.shape[0] != out.shape[0] or x.shape[0] == 0 or x.shape[1] == 0):
            raise ValueError(f"PointwiseStep: x {x.shape}, out {out.shape} are not (N, C*P) "
                             f"and (N, C_out*P) with C = {C}")
        P = x.shape[1] // C
        cout = out.shape[1] // P
        if (wt.shape[0] != C or bias.shape != (wt.shape[1],) or out.shape[1] != cout * P
                or cout == 0 or wt.shape[1] < fc_pointwise_cpad(cout)):
            raise ValueError(f"PointwiseStep: wt {wt.shape}, bias {bias.shape}, out "
                             f"{out.shape} do not match x {x.shape}")
        if max_threads < 1 or workspace.size < max_threads * C * FC_PW_PANEL:
            raise ValueError(f"PointwiseStep: a workspace of {workspace.size} elements is too "
                             f"small for {max_threads} threads")
        self.keep = (x, wt, bias, out, workspace)
        self.p.x, self.p.wt, self.p.bias, self.p.out = (address(x), address(wt), address(bias),
                                                        address(out))
        self.p.workspace = address(workspace)
        self.p.N, self.p.C, self.p.P, self.p.cout = x.shape[0], C, P, cout
        self.p.cpad = wt.shape[1]
        self.p.relu = relu
        self.p.is_double = dtype == np.float64
        self.p.max_threads = max_threads
        self.body = _pointwise_step
        self.args = &self.p
