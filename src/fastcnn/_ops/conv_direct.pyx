"""Drivers of the direct convolution kernels (_conv_direct.h / _conv_direct.inc): GEMM-free
paths that functional/_conv_algorithms.py picks by measured rules per CPU level: the forward
along output channels or along output rows (the latter also serves stride-1 input gradients
and, storing with strides, each output phase of a transposed convolution), and the weight
gradient on the row kernel's layout or with the output channels in the vector lanes. Each
sample is first copied into zero-bordered planes in the thread's workspace (_pad_sample); the
layout constants come from the header.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memcpy, memset

from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays


cdef extern from "_conv_direct.h" nogil:
    void fc_pad_sample_f(const float* x, float* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t pad_h, Py_ssize_t pad_w,
                         Py_ssize_t Hp, Py_ssize_t wq, Py_ssize_t phases)
    void fc_pad_sample_d(const double* x, double* xp, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t pad_h,
                         Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t wq, Py_ssize_t phases)
    void fc_direct_conv_f(const float* xp, const float* wt, const float* bias, float* y,
                          const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout, Py_ssize_t cpad,
                          Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh,
                          Py_ssize_t sw, int relu, Py_ssize_t yc, Py_ssize_t yh, Py_ssize_t yw)
    void fc_direct_conv_rows_f(const float* xp, const float* wt, const float* bias, float* y,
                               const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout,
                               Py_ssize_t cpad, Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp,
                               Py_ssize_t sh, int relu, Py_ssize_t yc, Py_ssize_t yh,
                               Py_ssize_t yw)
    void fc_direct_conv_rows_d(const double* xp, const double* wt, const double* bias,
                               double* y, const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout,
                               Py_ssize_t cpad, Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp,
                               Py_ssize_t sh, int relu, Py_ssize_t yc, Py_ssize_t yh,
                               Py_ssize_t yw)
    void fc_dw_rows_f(const float* xp, const float* dyp, float* acc, const Py_ssize_t* off,
                      Py_ssize_t kpad, Py_ssize_t cout, Py_ssize_t oh_n, Py_ssize_t ow_n,
                      Py_ssize_t ldy, Py_ssize_t wp, Py_ssize_t sh)
    void fc_dw_rows_d(const double* xp, const double* dyp, double* acc,
                      const Py_ssize_t* off, Py_ssize_t kpad, Py_ssize_t cout, Py_ssize_t oh_n,
                      Py_ssize_t ow_n, Py_ssize_t ldy, Py_ssize_t wp, Py_ssize_t sh)
    void fc_dw_channels_f(const float* xp, const float* dyt, float* acc, const Py_ssize_t* off,
                          Py_ssize_t kpad, Py_ssize_t cpad, Py_ssize_t oh_n, Py_ssize_t ow_n,
                          Py_ssize_t wp, Py_ssize_t sh)
    void fc_dw_channels_d(const double* xp, const double* dyt, double* acc,
                          const Py_ssize_t* off, Py_ssize_t kpad, Py_ssize_t cpad,
                          Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh)
    void fc_dw_channels_transpose_f(const float* dy, float* dyt, Py_ssize_t cout, Py_ssize_t L,
                                    Py_ssize_t cpad)
    void fc_dw_channels_transpose_d(const double* dy, double* dyt, Py_ssize_t cout,
                                    Py_ssize_t L, Py_ssize_t cpad)
    Py_ssize_t fc_direct_conv_panel_f()
    Py_ssize_t fc_direct_conv_panel_d()
    enum: FC_CO_PAD
    enum: FC_DW_CO
    enum: FC_DW_K
    enum: FC_DW_LANES
    enum: FC_DWC_CO
    enum: FC_DWC_K
    enum: FC_ROW_TAIL
    void fc_direct_conv_d(const double* xp, const double* wt, const double* bias, double* y,
                          const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout, Py_ssize_t cpad,
                          Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh,
                          Py_ssize_t sw, int relu, Py_ssize_t yc, Py_ssize_t yh, Py_ssize_t yw)


cdef inline Py_ssize_t _phase_width(Py_ssize_t Wp, Py_ssize_t phases) noexcept nogil:
    """Row length of a plane Wp wide stored as ``phases`` column-phase planes."""
    return (Wp + phases - 1) // phases


cdef inline Py_ssize_t _panel(floating dummy) noexcept nogil:
    if floating is float:
        return fc_direct_conv_panel_f()
    else:
        return fc_direct_conv_panel_d()


cdef inline Py_ssize_t _direct_scratch(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp,
                                       Py_ssize_t stride_h, Py_ssize_t stride_w,
                                       Py_ssize_t phases) noexcept nogil:
    # the zero-bordered sample (C planes of Hp x Wp, each as ``phases`` column phases), then
    # the tail the kernels' last blocks read into: the channel kernel's stride_h + 1 rows and
    # 4 strides, the row kernel's FC_ROW_TAIL elements
    cdef Py_ssize_t Wq = _phase_width(Wp, phases)
    return C * phases * Hp * Wq + (stride_h + 1) * Wq + 4 * stride_w + FC_ROW_TAIL


def direct_workspace_size(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t stride_h,
                          Py_ssize_t stride_w, bint by_rows):
    """Per-thread scratch of direct_forward: one zero-bordered sample (in column phases with a
    width stride, for either kernel) and a tail that the row kernel's last blocks read into
    (``by_rows`` no longer changes it)."""
    return _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w)


cdef inline void _rows_kernel(const floating* xp, const floating* wt, const floating* bias,
                              floating* y, const Py_ssize_t* off, Py_ssize_t K,
                              Py_ssize_t cout, Py_ssize_t cpad, Py_ssize_t oh_n,
                              Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh, bint relu,
                              Py_ssize_t yc, Py_ssize_t yh, Py_ssize_t yw) noexcept nogil:
    if floating is float:
        fc_direct_conv_rows_f(xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, relu, yc,
                              yh, yw)
    else:
        fc_direct_conv_rows_d(xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, relu, yc,
                              yh, yw)


cdef inline void _pad_sample(const floating* x, floating* xp, Py_ssize_t size, Py_ssize_t C,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w,
                             Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t phases,
                             bint clear) noexcept nogil:
    """The direct kernels' copy of one sample x (C, H, W): C zero-bordered planes of Hp x Wp,
    the input at (pad_h, pad_w), each plane as ``phases`` column-phase planes when phases > 1
    (see direct_forward). ``clear``: zero the ``size`` elements first (the tail included);
    needed once per workspace and problem, since every sample of a problem writes the same
    elements (fc_pad_sample) and leaves the borders as they are."""
    cdef Py_ssize_t rows = min(H, Hp - pad_h), cols = min(W, Wp - pad_w)
    if clear:
        memset(xp, 0, size * sizeof(floating))
    if rows <= 0 or cols <= 0:     # the windows read padding only: the outputs are the bias
        return
    if floating is float:
        fc_pad_sample_f(x, xp, C, H, W, rows, cols, pad_h, pad_w, Hp, _phase_width(Wp, phases),
                        phases)
    else:
        fc_pad_sample_d(x, xp, C, H, W, rows, cols, pad_h, pad_w, Hp, _phase_width(Wp, phases),
                        phases)


cdef void _direct_forward(const floating* x, Py_ssize_t N, Py_ssize_t x_row,
                          const floating* wt, Py_ssize_t K, Py_ssize_t cpad,
                          const floating* bias, floating* out, Py_ssize_t out_row,
                          floating* workspace, const Py_ssize_t* offsets, Py_ssize_t C,
                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w,
                          Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t out_h, Py_ssize_t out_w,
                          Py_ssize_t stride_h, Py_ssize_t stride_w, bint by_rows, bint relu,
                          int num_threads, Py_ssize_t C_out, Py_ssize_t y0, Py_ssize_t yc,
                          Py_ssize_t yh, Py_ssize_t yw) noexcept nogil:
    """direct_forward on pointers (N > 0): x (N, x_row), wt (K, cpad), out (N, out_row), the
    output layout (C_out, y0, yc, yh, yw); the workspace holds max(N, num_threads) samples'
    scratch (_direct_scratch) when N < num_threads, num_threads of them otherwise."""
    cdef Py_ssize_t phases = stride_w
    cdef Py_ssize_t Wq = _phase_width(Wp, phases)
    cdef Py_ssize_t stride = _direct_scratch(C, Hp, Wp, stride_h, stride_w, phases)
    cdef Py_ssize_t n, t, c, r, co0, co1, r0, r1
    # the channel kernel's weight panels (see channel_panel) cannot be cut
    cdef Py_ssize_t unit = FC_CO_PAD if by_rows else _panel(<floating> 0)
    cdef Py_ssize_t blocks = (C_out + unit - 1) // unit
    cdef Py_ssize_t cchunks = 1, rchunks = 1, parts
    cdef floating* xp
    # Fewer samples than threads (inference at batch 1): each sample's outputs are also cut
    # into parts, by blocks of FC_CO_PAD channels, then (row kernel) by rows, so that every
    # thread has work. Every output is computed by the same code on the same padded planes:
    # the same bits as one part per sample.
    if N < num_threads:
        cchunks = min(blocks, (num_threads + N - 1) // N)
        if by_rows and N * cchunks < num_threads:
            rchunks = min(out_h, (num_threads + N * cchunks - 1) // (N * cchunks))
    parts = cchunks * rchunks
    if parts > 1:
        for n in prange(N, schedule='static', num_threads=num_threads):
            _pad_sample(x + n * x_row, workspace + n * stride, stride, C, H, W, pad_h, pad_w,
                        Hp, Wp, phases, True)
        for t in prange(N * parts, schedule='static', num_threads=num_threads):
            n = t // parts
            c = (t % parts) // rchunks
            r = t % rchunks
            co0 = (c * blocks // cchunks) * unit
            co1 = min(((c + 1) * blocks // cchunks) * unit, C_out)
            r0 = r * out_h // rchunks
            r1 = (r + 1) * out_h // rchunks
            xp = workspace + n * stride
            if co1 <= co0 or r1 <= r0:
                continue
            if by_rows:
                _rows_kernel(xp + r0 * stride_h * Wq, wt + co0, bias + co0,
                             out + n * out_row + y0 + co0 * yc + r0 * yh, offsets, K,
                             co1 - co0, cpad, r1 - r0, out_w, Wq, stride_h, relu, yc, yh, yw)
            elif floating is float:
                fc_direct_conv_f(xp, wt + co0 * K, bias + co0,
                                 out + n * out_row + y0 + co0 * yc, offsets, K, co1 - co0,
                                 cpad, out_h, out_w, Wq, stride_h, stride_w, relu, yc, yh, yw)
            else:
                fc_direct_conv_d(xp, wt + co0 * K, bias + co0,
                                 out + n * out_row + y0 + co0 * yc, offsets, K, co1 - co0,
                                 cpad, out_h, out_w, Wq, stride_h, stride_w, relu, yc, yh, yw)
        return
    # Each thread takes a contiguous range of samples in its own scratch, cleared for the
    # first of them only (the copies of the next ones overwrite the same elements).
    if num_threads == 1:                    # no team to start (~0.3 us)
        _direct_samples(x, 0, N, x_row, wt, K, cpad, bias, out, out_row, workspace, stride,
                        offsets, C, H, W, pad_h, pad_w, Hp, Wp, out_h, out_w, stride_h,
                        stride_w, by_rows, relu, C_out, y0, yc, yh, yw)
        return
    for t in prange(num_threads, schedule='static', num_threads=num_threads):
        _direct_samples(x, t * N // num_threads, (t + 1) * N // num_threads, x_row, wt, K,
                        cpad, bias, out, out_row, workspace + t * stride, stride, offsets, C, H,
                        W, pad_h, pad_w, Hp, Wp, out_h, out_w, stride_h, stride_w, by_rows,
                        relu, C_out, y0, yc, yh, yw)


cdef inline void _direct_samples(const floating* x, Py_ssize_t n0, Py_ssize_t n1,
                                 Py_ssize_t x_row, const floating* wt, Py_ssize_t K,
                                 Py_ssize_t cpad, const floating* bias, floating* out,
                                 Py_ssize_t out_row, floating* xp, Py_ssize_t stride,
                                 const Py_ssize_t* offsets, Py_ssize_t C, Py_ssize_t H,
                                 Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp,
                                 Py_ssize_t Wp, Py_ssize_t out_h, Py_ssize_t out_w,
                                 Py_ssize_t stride_h, Py_ssize_t stride_w, bint by_rows,
                                 bint relu, Py_ssize_t C_out, Py_ssize_t y0, Py_ssize_t yc,
                                 Py_ssize_t yh, Py_ssize_t yw) noexcept nogil:
    """Samples n0 <= n < n1 of _direct_forward, one after the other in the scratch xp."""
    cdef Py_ssize_t n
    for n in range(n0, n1):
        _direct_sample(x + n * x_row, wt, K, cpad, bias, out + n * out_row, xp, stride,
                       offsets, C, H, W, pad_h, pad_w, Hp, Wp, out_h, out_w, stride_h,
                       stride_w, by_rows, relu, C_out, y0, yc, yh, yw, n == n0)


cdef inline void _direct_sample(const floating* x, const floating* wt, Py_ssize_t K,
                                Py_ssize_t cpad, const floating* bias, floating* out,
                                floating* xp, Py_ssize_t stride, const Py_ssize_t* offsets,
                                Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h,
                                Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                                Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h,
                                Py_ssize_t stride_w, bint by_rows, bint relu, Py_ssize_t C_out,
                                Py_ssize_t y0, Py_ssize_t yc, Py_ssize_t yh, Py_ssize_t yw,
                                bint clear) noexcept nogil:
    """One sample of _direct_forward (one part per sample): x (C*H*W) padded into the
    scratch xp (``stride`` elements; ``clear``: zeroed first), then the kernel into out (that
    sample's row)."""
    cdef Py_ssize_t phases = stride_w, Wq = _phase_width(Wp, stride_w)
    _pad_sample(x, xp, stride, C, H, W, pad_h, pad_w, Hp, Wp, phases, clear)
    if by_rows:
        _rows_kernel(xp, wt, bias, out + y0, offsets, K, C_out, cpad, out_h, out_w, Wq,
                     stride_h, relu, yc, yh, yw)
    elif floating is float:
        fc_direct_conv_f(xp, wt, bias, out + y0, offsets, K, C_out, cpad, out_h, out_w, Wq,
                         stride_h, stride_w, relu, yc, yh, yw)
    else:
        fc_direct_conv_d(xp, wt, bias, out + y0, offsets, K, C_out, cpad, out_h, out_w, Wq,
                         stride_h, stride_w, relu, yc, yh, yw)


def direct_forward(const floating[:, ::1] x, const floating[:, ::1] wt,
                   const floating[::1] bias, floating[:, ::1] out, floating[::1] workspace,
                   const Py_ssize_t[::1] offsets, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                   Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                   Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                   bint by_rows, bint relu, int num_threads):
    """out (N, C_out*oH*oW) = the convolution of x (N, C*H*W) with wt (K, cpad) (the
    weight transposed, C_out padded to cpad; for the channel kernel in panels: see
    channel_panel) and bias (cpad), then max(out, 0) if relu (as the kernel stores). Each
    sample is copied into its thread's workspace as C zero-bordered planes
    of Hp x Wp, the input at (pad_h, pad_w); ``offsets`` (K,) are the taps' positions in those
    planes (see _conv_direct.h). ``by_rows``: the kernel vectorized along output rows instead
    of output channels. With stride_w > 1 (either kernel) each plane is stored as stride_w
    planes of its column phases (column j at phase j % stride_w, position j // stride_w, rows Wq =
    ceil(Wp / stride_w) long), so that a tap's inputs for consecutive outputs are contiguous
    (``offsets`` then address that layout). out[n] is (C_out, out_h, out_w)."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C_out = out.shape[1] // (out_h * out_w)
    cdef Py_ssize_t y0 = 0, yc = out_h * out_w, yh = out_w, yw = 1
    if N == 0:
        return
    with nogil:
        _direct_forward(&x[0, 0], N, x.shape[1], &wt[0, 0], wt.shape[0], wt.shape[1],
                        &bias[0], &out[0, 0], out.shape[1], &workspace[0], &offsets[0], C, H,
                        W, pad_h, pad_w, Hp, Wp, out_h, out_w, stride_h, stride_w, by_rows,
                        relu, num_threads, C_out, y0, yc, yh, yw)


# The inference plan's direct convolution (plan_steps.pxd): direct_forward with the default
# output layout, its operands (DirectOperands) and a workspace of its own bound once.
cdef struct _Direct:
    const void* x
    const void* wt
    const void* bias
    void* out
    void* workspace
    const Py_ssize_t* offsets
    Py_ssize_t N, x_row, K, cpad, out_row, C, H, W, pad_h, pad_w, Hp, Wp, out_h, out_w
    Py_ssize_t stride_h, stride_w, C_out
    Py_ssize_t y0, yc, yh, yw   # the output layout: (0, out_h * out_w, out_w, 1)
    bint by_rows, relu, is_double
    int max_threads             # the workspace serves this many threads


cdef void _direct_step(void* args, int num_threads) noexcept nogil:
    cdef _Direct* p = <_Direct*> args
    if num_threads > p.max_threads:         # fewer threads: the same bits, a bit slower
        num_threads = p.max_threads
    if p.is_double:
        _direct_forward(<const double*> p.x, p.N, p.x_row, <const double*> p.wt, p.K, p.cpad,
                        <const double*> p.bias, <double*> p.out, p.out_row,
                        <double*> p.workspace, p.offsets, p.C, p.H, p.W, p.pad_h, p.pad_w,
                        p.Hp, p.Wp, p.out_h, p.out_w, p.stride_h, p.stride_w, p.by_rows,
                        p.relu, num_threads, p.C_out, p.y0, p.yc, p.yh, p.yw)
    else:
        _direct_forward(<const float*> p.x, p.N, p.x_row, <const float*> p.wt, p.K, p.cpad,
                        <const float*> p.bias, <float*> p.out, p.out_row,
                        <float*> p.workspace, p.offsets, p.C, p.H, p.W, p.pad_h, p.pad_w,
                        p.Hp, p.Wp, p.out_h, p.out_w, p.stride_h, p.stride_w, p.by_rows,
                        p.relu, num_threads, p.C_out, p.y0, p.yc, p.yh, p.yw)


cdef class DirectStep(CompiledStep):
    """direct_forward(x, wt, bias, out, workspace, offsets, C, H, W, pad_h, pad_w, Hp, Wp,
    out_h, out_w, stride_h, stride_w, by_rows, relu, threads) as a plan step, on up to
    ``max_threads`` threads: ``workspace`` holds at least max_threads *
    direct_workspace_size(...) elements (a plan's scratch, shared by its steps, which run one
    at a time); a run asking for more threads uses max_threads. out[n] is (C_out, out_h,
    out_w), C_out at most wt's (padded) columns."""
    cdef _Direct p

    def __init__(self, x, wt, bias, out, workspace, offsets, Py_ssize_t C, Py_ssize_t H,
                 Py_ssize_t W,
                 Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                 Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                 bint by_rows, bint relu, int max_threads):
        dtype = check_arrays("DirectStep", [x, wt, bias], [out, workspace])
        if (not isinstance(offsets, np.ndarray) or offsets.dtype != np.intp
                or offsets.shape != (wt.shape[0],) or not offsets.flags.c_contiguous):
            raise TypeError("DirectStep: offsets must be a C-contiguous intp array, one per "
                            "row of wt")
        if (x.ndim != 2 or out.ndim != 2 or wt.ndim != 2 or x.shape[0] != out.shape[0]
                or x.shape[0] == 0 or x.shape[1] != C * H * W or out_h * out_w == 0
                or bias.shape != (wt.shape[1],) or max_threads < 1):
            raise ValueError(f"DirectStep: x {x.shape}, wt {wt.shape}, out {out.shape} do not "
                             f"match the geometry")
        C_out = out.shape[1] // (out_h * out_w)
        if out.shape[1] % (out_h * out_w) or not 0 < C_out <= wt.shape[1]:
            raise ValueError(f"DirectStep: out {out.shape} is not 1 to {wt.shape[1]} channels "
                             f"of {out_h} x {out_w} (wt {wt.shape})")
        if workspace.size < max_threads * _direct_scratch(C, Hp, Wp, stride_h, stride_w,
                                                          stride_w):
            raise ValueError(f"DirectStep: a workspace of {workspace.size} elements is too "
                             f"small for {max_threads} threads")
        self.keep = (x, wt, bias, out, offsets, workspace)
        self.p.x, self.p.wt, self.p.bias = address(x), address(wt), address(bias)
        self.p.out, self.p.workspace = address(out), address(workspace)
        self.p.offsets = <const Py_ssize_t*> address(offsets)
        self.p.N, self.p.x_row, self.p.out_row = x.shape[0], x.shape[1], out.shape[1]
        self.p.K, self.p.cpad = wt.shape[0], wt.shape[1]
        self.p.C, self.p.H, self.p.W = C, H, W
        self.p.pad_h, self.p.pad_w, self.p.Hp, self.p.Wp = pad_h, pad_w, Hp, Wp
        self.p.out_h, self.p.out_w = out_h, out_w
        self.p.stride_h, self.p.stride_w = stride_h, stride_w
        self.p.C_out, self.p.y0, self.p.yc = C_out, 0, out_h * out_w
        self.p.yh, self.p.yw = out_w, 1
        self.p.by_rows, self.p.relu = by_rows, relu
        self.p.is_double = dtype == np.float64
        self.p.max_threads = max_threads
        self.body = _direct_step
        self.args = &self.p


# ---- a transposed convolution by output phases ------------------------------------------
# Each output phase of a 2-D transposed convolution is a stride-1 convolution of the input
# (functional/_conv_algorithms.py: subpixel_phases) stored into its interleaved outputs. All
# phases read one zero-bordered copy of each sample, large enough for every phase's padding
# (each phase's plane starts at its own origin in it: the shift is in its offsets), padded once
# and used by every phase while it is in cache; one team runs all phases of all samples.

# The columns of subpixel_forward's phase table, one row per phase.
cdef enum:
    _PH_K = 0       # taps
    _PH_WT = 1      # the phase's first row in wt (K rows of cpad)
    _PH_OFF = 2     # its first entry in offsets (K entries, its origin in the planes included)
    _PH_ROWS = 3    # 1: the row kernel, 0: the channel kernel (its wt rows in panels)
    _PH_OH = 4      # the phase's outputs: rows
    _PH_OW = 5      # and columns
    _PH_Y0 = 6      # output (co, i, j) of a sample at y0 + co*yc + i*yh + j*yw of its row
    _PH_YC = 7
    _PH_YH = 8
    _PH_YW = 9
    _PH_COLS = 10
PHASE_COLUMNS = _PH_COLS


cdef inline void _phase_part(const floating* xp, const floating* wt, Py_ssize_t cpad,
                             const floating* bias, floating* y, const Py_ssize_t* offsets,
                             const Py_ssize_t* ph, Py_ssize_t Wp, Py_ssize_t co0,
                             Py_ssize_t co1, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Channels [co0, co1) of one phase (its row ``ph`` of the table) of one sample: padded
    planes xp (rows Wp long), y that sample's output row; with the row kernel only its output
    rows [r0, r1) (each row computed alone: the same bits), the channel kernel all rows."""
    cdef Py_ssize_t K = ph[_PH_K]
    cdef const floating* w = wt + ph[_PH_WT] * cpad
    cdef floating* dst = y + ph[_PH_Y0] + co0 * ph[_PH_YC]
    if ph[_PH_ROWS]:
        _rows_kernel(xp + r0 * Wp, w + co0, bias + co0, dst + r0 * ph[_PH_YH],
                     offsets + ph[_PH_OFF], K, co1 - co0, cpad, r1 - r0, ph[_PH_OW], Wp, 1,
                     False, ph[_PH_YC], ph[_PH_YH], ph[_PH_YW])
    elif floating is float:
        fc_direct_conv_f(xp, w + co0 * K, bias + co0, dst, offsets + ph[_PH_OFF], K, co1 - co0,
                         cpad, ph[_PH_OH], ph[_PH_OW], Wp, 1, 1, False, ph[_PH_YC], ph[_PH_YH],
                         ph[_PH_YW])
    else:
        fc_direct_conv_d(xp, w + co0 * K, bias + co0, dst, offsets + ph[_PH_OFF], K, co1 - co0,
                         cpad, ph[_PH_OH], ph[_PH_OW], Wp, 1, 1, False, ph[_PH_YC], ph[_PH_YH],
                         ph[_PH_YW])


cdef void _subpixel_forward(const floating* x, Py_ssize_t N, Py_ssize_t x_row,
                            const floating* wt, Py_ssize_t cpad, const floating* bias,
                            floating* out, Py_ssize_t out_row, floating* workspace,
                            const Py_ssize_t* offsets, const Py_ssize_t* table, Py_ssize_t P,
                            Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                            Py_ssize_t left, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t C_out,
                            int num_threads) noexcept nogil:
    """subpixel_forward on pointers (N > 0; the workspace holds num_threads samples' scratch,
    _direct_scratch(C, Hp, Wp, 1, 1, 1) each)."""
    cdef Py_ssize_t stride = _direct_scratch(C, Hp, Wp, 1, 1, 1)
    cdef Py_ssize_t n, p, t, c, r, q, co0, co1, cchunks, rchunks, blocks, unit, parts, oh
    if N < num_threads:
        # Fewer samples than threads (inference at batch 1): every sample padded first, then
        # each phase of each sample cut into ``parts`` parts over the team: by blocks of
        # channels, then (the row kernel) by rows; each output computed by the same code on
        # the same planes as with one part per sample (the same bits).
        parts = (num_threads + N * P - 1) // (N * P)
        for n in prange(N, schedule='static', num_threads=num_threads):
            _pad_sample(x + n * x_row, workspace + n * stride, stride, C, H, W, top, left, Hp,
                        Wp, 1, True)
        for t in prange(N * P * parts, schedule='static', num_threads=num_threads):
            n = t // (P * parts)
            p = (t // parts) % P
            q = t % parts
            # the channel kernel's panels cannot be cut, nor its rows (its blocks pair them)
            unit = FC_CO_PAD if table[p * _PH_COLS + _PH_ROWS] else _panel(<floating> 0)
            blocks = (C_out + unit - 1) // unit
            oh = table[p * _PH_COLS + _PH_OH]
            cchunks = min(blocks, parts)
            rchunks = min(oh, parts // cchunks) if table[p * _PH_COLS + _PH_ROWS] else 1
            if q >= cchunks * rchunks:
                continue
            c = q // rchunks
            r = q % rchunks
            co0 = (c * blocks // cchunks) * unit
            co1 = min(((c + 1) * blocks // cchunks) * unit, C_out)
            if co1 > co0:
                _phase_part(workspace + n * stride, wt, cpad, bias, out + n * out_row, offsets,
                            table + p * _PH_COLS, Wp, co0, co1, r * oh // rchunks,
                            (r + 1) * oh // rchunks)
        return
    # each thread: a contiguous range of samples in its scratch, cleared for the first only
    if num_threads == 1:                    # no team to start
        _subpixel_samples(x, 0, N, x_row, wt, cpad, bias, out, out_row, workspace, stride,
                          offsets, table, P, C, H, W, top, left, Hp, Wp, C_out)
        return
    for t in prange(num_threads, schedule='static', num_threads=num_threads):
        _subpixel_samples(x, t * N // num_threads, (t + 1) * N // num_threads, x_row, wt, cpad,
                          bias, out, out_row, workspace + t * stride, stride, offsets, table, P,
                          C, H, W, top, left, Hp, Wp, C_out)


cdef inline void _subpixel_samples(const floating* x, Py_ssize_t n0, Py_ssize_t n1,
                                   Py_ssize_t x_row, const floating* wt, Py_ssize_t cpad,
                                   const floating* bias, floating* out, Py_ssize_t out_row,
                                   floating* xp, Py_ssize_t stride, const Py_ssize_t* offsets,
                                   const Py_ssize_t* table, Py_ssize_t P, Py_ssize_t C,
                                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t top, Py_ssize_t left,
                                   Py_ssize_t Hp, Py_ssize_t Wp,
                                   Py_ssize_t C_out) noexcept nogil:
    """Samples n0 <= n < n1 of _subpixel_forward, one after the other in the scratch xp: each
    padded once, then every phase of it."""
    cdef Py_ssize_t n, p
    for n in range(n0, n1):
        _pad_sample(x + n * x_row, xp, stride, C, H, W, top, left, Hp, Wp, 1, n == n0)
        for p in range(P):
            _phase_part(xp, wt, cpad, bias, out + n * out_row, offsets, table + p * _PH_COLS,
                        Wp, 0, C_out, 0, table[p * _PH_COLS + _PH_OH])


def subpixel_workspace_size(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp):
    """Per-thread scratch of subpixel_forward: one sample's common zero-bordered planes and the
    tail the kernels' last blocks read into."""
    return _direct_scratch(C, Hp, Wp, 1, 1, 1)


cdef _check_subpixel(str who, tuple shapes, const Py_ssize_t[:, ::1] table,
                     const Py_ssize_t[::1] offsets, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t top, Py_ssize_t left, Py_ssize_t Hp, Py_ssize_t Wp,
                     Py_ssize_t C_out, Py_ssize_t workspace, int num_threads,
                     Py_ssize_t panel):
    """subpixel_forward's buffers (shapes: x, wt, bias, out) against its geometry and phase
    table, before any pointer is taken: every phase's weights, offsets and outputs inside
    their arrays, every tap inside the padded planes, cpad whole blocks of the row kernel
    and (where a phase uses it) panels of the channel kernel (``panel``)."""
    (N, x_row), (wt_rows, cpad), (n_bias,), (out_n, out_row) = shapes
    if (N != out_n or N == 0 or x_row != C * H * W or n_bias != cpad or num_threads < 1
            or min(C, H, W, Hp, Wp) < 1 or min(top, left) < 0 or table.shape[0] < 1
            or not 0 < C_out <= cpad or cpad % FC_CO_PAD
            or table.shape[1] != _PH_COLS):
        raise ValueError(f"{who}: x ({N}, {x_row}), wt ({wt_rows}, {cpad}), bias ({n_bias},), "
                         f"out ({out_n}, {out_row}), table ({table.shape[0]}, {table.shape[1]}) or "
                         f"num_threads {num_threads} do not match C, H, W = {C}, {H}, {W} "
                         f"(expected one row of C*H*W per sample, bias of cpad, table rows of "
                         f"{_PH_COLS}, 0 < C_out = {C_out} <= cpad, a multiple of {FC_CO_PAD})")
    cdef Py_ssize_t p, k, K, oh, ow, y0, yc, yh, yw, last
    cdef Py_ssize_t plane = C * Hp * Wp
    for p in range(table.shape[0]):
        K, oh, ow = table[p, _PH_K], table[p, _PH_OH], table[p, _PH_OW]
        y0, yc, yh, yw = table[p, _PH_Y0], table[p, _PH_YC], table[p, _PH_YH], table[p, _PH_YW]
        last = y0 + (C_out - 1) * yc + (oh - 1) * yh + (ow - 1) * yw
        if (K < 1 or min(oh, ow, yc, yh, yw) < 1 or y0 < 0 or C_out < 1 or last >= out_row
                or table[p, _PH_WT] < 0 or table[p, _PH_WT] + K > wt_rows
                or table[p, _PH_OFF] < 0 or table[p, _PH_OFF] + K > offsets.shape[0]
                or table[p, _PH_ROWS] not in (0, 1)
                or (table[p, _PH_ROWS] == 0 and cpad % panel)):
            raise ValueError(f"{who}: phase {p} ({[table[p, i] for i in range(_PH_COLS)]}) "
                             f"does not fit wt "
                             f"({wt_rows}, {cpad}; the channel kernel's panels {panel} wide), "
                             f"offsets ({offsets.shape[0]},) or out ({out_n}, {out_row})")
        for k in range(table[p, _PH_OFF], table[p, _PH_OFF] + K):
            if offsets[k] < 0 or offsets[k] + (oh - 1) * Wp + ow > plane:
                raise ValueError(f"{who}: phase {p}'s tap offset {offsets[k]} reads outside "
                                 f"the padded planes ({C} of {Hp} x {Wp})")
    if workspace < num_threads * _direct_scratch(C, Hp, Wp, 1, 1, 1):
        raise ValueError(f"{who}: a workspace of {workspace} elements is too small for "
                         f"{num_threads} threads ({_direct_scratch(C, Hp, Wp, 1, 1, 1)} each)")


def subpixel_forward(const floating[:, ::1] x, const floating[:, ::1] wt,
                     const floating[::1] bias, floating[:, ::1] out, floating[::1] workspace,
                     const Py_ssize_t[::1] offsets, const Py_ssize_t[:, ::1] table,
                     Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top, Py_ssize_t left,
                     Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t C_out, int num_threads):
    """out (N, C_out*oH*oW) = a 2-D transposed convolution of x (N, C*H*W) by output phases,
    each a stride-1 direct convolution (_conv_direct.h) stored into its interleaved outputs.
    Each sample is copied once into its thread's workspace as C zero-bordered planes of Hp x Wp
    (the input at (top, left)), which every phase reads; then every phase runs on it in turn
    (one team for the call). ``table`` (P, PHASE_COLUMNS) describes phase p: its taps K, its
    weights wt[wt0 : wt0 + K] ((K, cpad), the channel kernel's in panels: channel_panel), its
    tap offsets offsets[off0 : off0 + K] in the common planes (its origin in them included),
    which kernel (1: along rows, 0: along channels), its output rows and columns, and where
    output (co, i, j) goes in a sample's row of out (y0 + co*yc + i*yh + j*yw), co < C_out.
    bias (cpad). Workspace: num_threads * subpixel_workspace_size(C, Hp, Wp) elements. With
    fewer samples than threads, the phases' channel blocks (and the row kernel's rows) are cut
    between threads too: the same bits for any thread count."""
    _check_subpixel(
        "subpixel_forward", ((x.shape[0], x.shape[1]), (wt.shape[0], wt.shape[1]),
                             (bias.shape[0],), (out.shape[0], out.shape[1])), table, offsets, C, H, W, top, left, Hp,
        Wp, C_out, workspace.shape[0], num_threads, _panel(<floating> 0))
    with nogil:
        _subpixel_forward(&x[0, 0], x.shape[0], x.shape[1], &wt[0, 0], wt.shape[1], &bias[0],
                          &out[0, 0], out.shape[1], &workspace[0], &offsets[0], &table[0, 0],
                          table.shape[0], C, H, W, top, left, Hp, Wp, C_out, num_threads)


cdef struct _Subpixel:
    const void* x
    const void* wt
    const void* bias
    void* out
    void* workspace
    const Py_ssize_t* offsets
    const Py_ssize_t* table
    Py_ssize_t N, x_row, cpad, out_row, P, C, H, W, top, left, Hp, Wp, C_out
    bint is_double
    int max_threads             # the workspace serves this many threads


cdef void _subpixel_step(void* args, int num_threads) noexcept nogil:
    cdef _Subpixel* p = <_Subpixel*> args
    if num_threads > p.max_threads:         # fewer threads: the same bits, a bit slower
        num_threads = p.max_threads
    if p.is_double:
        _subpixel_forward(<const double*> p.x, p.N, p.x_row, <const double*> p.wt, p.cpad,
                          <const double*> p.bias, <double*> p.out, p.out_row,
                          <double*> p.workspace, p.offsets, p.table, p.P, p.C, p.H, p.W,
                          p.top, p.left, p.Hp, p.Wp, p.C_out, num_threads)
    else:
        _subpixel_forward(<const float*> p.x, p.N, p.x_row, <const float*> p.wt, p.cpad,
                          <const float*> p.bias, <float*> p.out, p.out_row,
                          <float*> p.workspace, p.offsets, p.table, p.P, p.C, p.H, p.W,
                          p.top, p.left, p.Hp, p.Wp, p.C_out, num_threads)


cdef class SubpixelStep(CompiledStep):
    """subpixel_forward(x, wt, bias, out, workspace, offsets, table, C, H, W, top, left, Hp,
    Wp, C_out, threads) as one plan step for all phases, on up to ``max_threads`` threads:
    ``workspace`` holds at least max_threads * subpixel_workspace_size(C, Hp, Wp) elements (a
    plan's scratch); a run asking for more threads uses max_threads."""
    cdef _Subpixel p

    def __init__(self, x, wt, bias, out, workspace, offsets, table, Py_ssize_t C,
                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t top, Py_ssize_t left, Py_ssize_t Hp,
                 Py_ssize_t Wp, Py_ssize_t C_out, int max_threads):
        dtype = check_arrays("SubpixelStep", [x, wt, bias], [out, workspace])
        for name, a, nd in (("offsets", offsets, 1), ("table", table, 2)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.intp or a.ndim != nd
                    or not a.flags.c_contiguous):
                raise TypeError(f"SubpixelStep: {name} must be a C-contiguous {nd}-D intp "
                                f"array")
        if x.ndim != 2 or wt.ndim != 2 or bias.ndim != 1 or out.ndim != 2:
            raise ValueError(f"SubpixelStep: x {x.shape}, wt {wt.shape}, bias {bias.shape}, "
                             f"out {out.shape}: expected 2-D, 2-D, 1-D, 2-D")
        _check_subpixel("SubpixelStep", (x.shape, wt.shape, bias.shape, out.shape), table,
                        offsets, C, H, W, top, left, Hp, Wp, C_out, workspace.size, max_threads,
                        channel_panel(dtype))
        self.keep = (x, wt, bias, out, offsets, table, workspace)
        self.p.x, self.p.wt, self.p.bias = address(x), address(wt), address(bias)
        self.p.out, self.p.workspace = address(out), address(workspace)
        self.p.offsets = <const Py_ssize_t*> address(offsets)
        self.p.table = <const Py_ssize_t*> address(table)
        self.p.N, self.p.x_row, self.p.out_row = x.shape[0], x.shape[1], out.shape[1]
        self.p.cpad, self.p.P = wt.shape[1], table.shape[0]
        self.p.C, self.p.H, self.p.W = C, H, W
        self.p.top, self.p.left, self.p.Hp, self.p.Wp = top, left, Hp, Wp
        self.p.C_out = C_out
        self.p.is_double = dtype == np.float64
        self.p.max_threads = max_threads
        self.body = _subpixel_step
        self.args = &self.p


def gather(const floating[::1] source, const Py_ssize_t[::1] index, floating[::1] out):
    """out[i] = source[index[i]], or 0 where index[i] is -1: a transposed convolution's phase
    weights (transposed, padded, in panels) in one pass from indices made once per problem,
    instead of numpy's fancy indexing per call (a 64 -> 32 k4 weight: 23 -> 17 us; a call costs
    about 5 us more than numpy's few copies, which stay for the plain direct convolution's
    weight). Every index is checked."""
    cdef Py_ssize_t n = index.shape[0], m = source.shape[0], i, j, bad = -1
    if out.shape[0] != n:
        raise ValueError(f"gather: out has {out.shape[0]} elements, index {n}")
    with nogil:
        for i in range(n):
            j = index[i]
            if j >= 0 and j < m:
                out[i] = source[j]
            elif j == -1:
                out[i] = 0
            else:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"gather: index[{bad}] = {index[bad]} is outside the source "
                         f"({m} elements) and not -1")


# The kernels' layout constants (_conv_direct.h), for the Python side that prepares operands.
CO_PAD = FC_CO_PAD     # the forward kernels' weight and bias: C_out padded to a multiple of it


def channel_panel(dtype):
    """The channel kernel's weight panel at this module's level: its weight (K, cpad) holds
    cpad / panel blocks, each (K, panel) for channels [b*panel, (b+1)*panel) (panel: 2 vectors
    of ``dtype``; cpad a multiple of it)."""
    return fc_direct_conv_panel_f() if np.dtype(dtype) == np.float32 else fc_direct_conv_panel_d()


def direct_weight_grad_layout(Py_ssize_t C_out, Py_ssize_t K, Py_ssize_t out_w):
    """(channels, taps, row length) of direct_weight_grad's padded dy and offsets: rounded up
    to its blocks (FC_DW_CO channels, FC_DW_K taps) and to whole vectors per row."""
    return ((C_out + FC_DW_CO - 1) // FC_DW_CO * FC_DW_CO, (K + FC_DW_K - 1) // FC_DW_K * FC_DW_K,
            (out_w + FC_DW_LANES - 1) // FC_DW_LANES * FC_DW_LANES)


def direct_weight_grad_workspace_size(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp,
                                      Py_ssize_t stride_h, Py_ssize_t stride_w,
                                      Py_ssize_t C_out, Py_ssize_t K, Py_ssize_t out_h,
                                      Py_ssize_t out_w):
    """Per-thread scratch of direct_weight_grad: the padded sample (column phases for
    stride_w > 1), the padded dy, and the lane accumulators."""
    cpad, kpad, ldy = direct_weight_grad_layout(C_out, K, out_w)
    return (_direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w) + cpad * out_h * ldy
            + cpad * kpad * FC_DW_LANES)


cdef void _check_weight_grad_buffers(str name, Py_ssize_t x_cols, Py_ssize_t x_rows,
                                     Py_ssize_t dy_cols, Py_ssize_t dy_rows,
                                     Py_ssize_t parts_cols, Py_ssize_t n_offsets,
                                     Py_ssize_t workspace, Py_ssize_t C, Py_ssize_t H,
                                     Py_ssize_t W, Py_ssize_t C_out, Py_ssize_t K, Py_ssize_t L,
                                     Py_ssize_t kpad, Py_ssize_t stride, int num_threads,
                                     Py_ssize_t parts_row) except *:
    """The weight-gradient drivers' arrays against their geometry, before any nogil loop (a
    workspace too short for the threads overran the heap); a chunk's partial has
    ``parts_row`` elements."""
    if (x_cols != C * H * W or dy_rows != x_rows or dy_cols != C_out * L
            or parts_cols != parts_row or n_offsets != kpad or num_threads < 1
            or workspace < stride * num_threads):
        raise ValueError(f"{name}: x ({x_rows}, {x_cols}), dy ({dy_rows}, {dy_cols}), parts "
                         f"({parts_cols} a chunk), offsets ({n_offsets}), workspace "
                         f"({workspace}) or num_threads ({num_threads}) do not match "
                         f"C*H*W={C * H * W}, C_out*L={C_out * L}, {parts_row} a chunk, "
                         f"kpad={kpad}, {stride} a thread")


cdef enum:
    _SUM_BLOCK = 512      # elements of the partials summed at a time (4 KB of doubles)


cdef inline void _sum_block(const double* parts, Py_ssize_t n_chunks, Py_ssize_t total,
                            floating* grad_w, Py_ssize_t e0, Py_ssize_t e1) noexcept nogil:
    """Elements [e0, e1) of the partials (n_chunks rows of ``total``) summed in chunk order
    into grad_w (see _sum_chunks): along the rows, which the compiler vectorizes (each
    element's sum keeps its order)."""
    cdef double t[_SUM_BLOCK]
    cdef Py_ssize_t j, e, m = e1 - e0
    cdef const double* row
    for e in range(m):
        t[e] = parts[e0 + e]
    for j in range(1, n_chunks):
        row = parts + j * total + e0
        for e in range(m):
            t[e] = t[e] + row[e]
    for e in range(m):
        grad_w[e0 + e] = <floating> t[e]


cdef void _sum_chunks(const double[:, ::1] parts, floating[:, ::1] grad_w,
                      int num_threads) noexcept nogil:
    """grad_w (C_out, K) = the sum of the chunks' partials parts (n_chunks, C_out*K) in chunk
    order, in double, each element by one thread (the same bits for any number of threads),
    read along the partials' rows, a block of _SUM_BLOCK elements at a time."""
    cdef Py_ssize_t n_chunks = parts.shape[0], total = grad_w.shape[0] * grad_w.shape[1]
    cdef Py_ssize_t blocks = (total + _SUM_BLOCK - 1) // _SUM_BLOCK, b
    if total == 0 or n_chunks == 0:
        return
    for b in prange(blocks, schedule='static', num_threads=num_threads):
        _sum_block(&parts[0, 0], n_chunks, total, &grad_w[0, 0], b * _SUM_BLOCK,
                   min((b + 1) * _SUM_BLOCK, total))


cdef inline void _sum_acc_block(const floating* parts, Py_ssize_t n_chunks, Py_ssize_t row,
                                floating* grad_w, Py_ssize_t e0, Py_ssize_t e1,
                                Py_ssize_t C_out, Py_ssize_t K,
                                Py_ssize_t cpad) noexcept nogil:
    """Elements [e0, e1) (e = k * cpad + co) of the chunks' accumulators (n_chunks rows of
    ``row``) summed in chunk order, in double, into grad_w[co, k] (co < C_out)."""
    cdef double t[_SUM_BLOCK]
    cdef Py_ssize_t j, e, m = e1 - e0
    cdef const floating* r
    for e in range(m):
        t[e] = parts[e0 + e]
    for j in range(1, n_chunks):
        r = parts + j * row + e0
        for e in range(m):
            t[e] = t[e] + <double> r[e]
    for e in range(e0, e1):
        if e % cpad < C_out:
            grad_w[(e % cpad) * K + e // cpad] = <floating> t[e - e0]


cdef void _sum_acc_chunks(const floating[:, ::1] parts, floating[:, ::1] grad_w,
                          Py_ssize_t cpad, int num_threads) noexcept nogil:
    """grad_w (C_out, K) = the sum of the chunks' float accumulators parts (n_chunks, kpad *
    cpad; (k, co) at k * cpad + co), in chunk order and in double, each element by one
    thread (the same bits for any number of threads)."""
    cdef Py_ssize_t n_chunks = parts.shape[0], total = grad_w.shape[1] * cpad
    cdef Py_ssize_t blocks = (total + _SUM_BLOCK - 1) // _SUM_BLOCK, b
    if total == 0 or n_chunks == 0:
        return
    for b in prange(blocks, schedule='static', num_threads=num_threads):
        _sum_acc_block(&parts[0, 0], n_chunks, parts.shape[1], &grad_w[0, 0], b * _SUM_BLOCK,
                       min((b + 1) * _SUM_BLOCK, total), grad_w.shape[0], grad_w.shape[1],
                       cpad)


def direct_weight_grad(const floating[:, ::1] x, const floating[:, ::1] dy,
                       floating[:, ::1] grad_w, double[:, ::1] parts, floating[::1] workspace,
                       const Py_ssize_t[::1] offsets, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                       Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h,
                       Py_ssize_t stride_w, int num_threads):
    """grad_w (C_out, K): the weight gradient of a 2-D convolution (one group) without im2col,
    along the output rows. Each fixed chunk of samples (chunk j: samples [j*N//n_chunks,
    (j+1)*N//n_chunks), n_chunks = parts.shape[0]) makes one double partial parts[j] (C_out*K),
    added in chunk order by _sum_chunks. Each sample is padded as for direct_forward's row
    kernel (column phases for stride_w > 1) and its dy copied with rows padded to whole vectors
    (direct_weight_grad_layout), and _conv_direct.h's fc_dw_rows adds its products into
    per-lane accumulators, whose lanes are added up (in double, in a fixed order) at the end of
    the chunk. Thread workspace: direct_weight_grad_workspace_size(...) elements. ``offsets``
    has kpad entries (the extra ones 0)."""
    cdef Py_ssize_t N = x.shape[0], n_chunks = parts.shape[0], L = out_h * out_w
    cdef Py_ssize_t C_out = grad_w.shape[0], K = grad_w.shape[1]
    cdef Py_ssize_t cpad, kpad, ldy
    cpad, kpad, ldy = direct_weight_grad_layout(C_out, K, out_w)
    cdef Py_ssize_t V = FC_DW_LANES * sizeof(float) // sizeof(floating)   # one slot
    cdef Py_ssize_t Wq = _phase_width(Wp, stride_w)
    cdef Py_ssize_t xp_size = _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w)
    cdef Py_ssize_t dy_size = cpad * out_h * ldy, acc_size = cpad * kpad * FC_DW_LANES
    cdef Py_ssize_t stride = direct_weight_grad_workspace_size(C, Hp, Wp, stride_h, stride_w,
                                                               C_out, K, out_h, out_w)
    _check_weight_grad_buffers("direct_weight_grad", x.shape[1], N, dy.shape[1], dy.shape[0],
                               parts.shape[1], offsets.shape[0], workspace.shape[0], C, H, W,
                               C_out, K, L, kpad, stride, num_threads, K * C_out)
    cdef Py_ssize_t j, n, co, r, k, lane
    cdef double t
    cdef floating* xp
    cdef floating* dyp
    cdef floating* acc
    if N == 0 or L == 0 or n_chunks == 0:
        if C_out * K:
            memset(&grad_w[0, 0], 0, C_out * K * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            xp = &workspace[0] + threadid() * stride
            dyp = xp + xp_size
            acc = dyp + dy_size
            memset(acc, 0, acc_size * sizeof(floating))
            memset(dyp, 0, dy_size * sizeof(floating))     # the padding: never written below
            for n in range(j * N // n_chunks, (j + 1) * N // n_chunks):
                _pad_sample(&x[n, 0], xp, xp_size, C, H, W, pad_h, pad_w, Hp, Wp, stride_w,
                            n == (j * N) // n_chunks)
                for co in range(C_out):
                    for r in range(out_h):
                        memcpy(dyp + (co * out_h + r) * ldy, &dy[n, (co * out_h + r) * out_w],
                               out_w * sizeof(floating))
                if floating is float:
                    fc_dw_rows_f(xp, dyp, acc, &offsets[0], kpad, C_out, out_h, out_w, ldy, Wq,
                                 stride_h)
                else:
                    fc_dw_rows_d(xp, dyp, acc, &offsets[0], kpad, C_out, out_h, out_w, ldy, Wq,
                                 stride_h)
            for co in range(C_out):
                for k in range(K):
                    t = 0.0
                    for lane in range(V):
                        t = t + acc[(co * kpad + k) * V + lane]
                    parts[j, co * K + k] = t
    with nogil:
        _sum_chunks(parts, grad_w, num_threads)


def channels_weight_grad_layout(Py_ssize_t C_out, Py_ssize_t K):
    """(channels, taps) of direct_weight_grad_channels' dy^T and accumulators and of its
    offsets: rounded up to FC_DWC_CO channels and FC_DWC_K taps."""
    return ((C_out + FC_DWC_CO - 1) // FC_DWC_CO * FC_DWC_CO,
            (K + FC_DWC_K - 1) // FC_DWC_K * FC_DWC_K)


def channels_weight_grad_workspace_size(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp,
                                        Py_ssize_t stride_h, Py_ssize_t stride_w,
                                        Py_ssize_t C_out, Py_ssize_t K, Py_ssize_t out_h,
                                        Py_ssize_t out_w):
    """Per-thread scratch of direct_weight_grad_channels: the padded sample (column phases for
    stride_w > 1) and the sample's dy^T (out_h*out_w, cpad)."""
    cpad, kpad = channels_weight_grad_layout(C_out, K)
    return _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w) + out_h * out_w * cpad


def direct_weight_grad_channels(const floating[:, ::1] x, const floating[:, ::1] dy,
                                floating[:, ::1] grad_w, floating[:, ::1] parts,
                                floating[::1] workspace, const Py_ssize_t[::1] offsets,
                                Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h,
                                Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                                Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h,
                                Py_ssize_t stride_w, int num_threads):
    """grad_w (C_out, K): the weight gradient of a 2-D convolution (one group) with the output
    channels in the vector lanes (_conv_direct.h's fc_dw_channels):

        grad_w[co, k] = sum over samples n and outputs p of
                        dy[n, co, p] * xpad[n, off[k] + p's corner]

    Each fixed chunk of samples (chunk j: samples [j*N//n_chunks, (j+1)*N//n_chunks), n_chunks
    = parts.shape[0]) sums into its own accumulators parts[j] (kpad*cpad: (k, co) at k*cpad +
    co, of the gradient's type); then they are added in chunk order in double, each sum by one
    thread (the same bits for any number of threads). Each sample is padded as
    for direct_forward's row kernel (column phases for stride_w > 1) and its dy transposed to
    (out_h*out_w, cpad) with zero channels past C_out. Thread workspace:
    channels_weight_grad_workspace_size(...) elements; ``offsets`` has kpad entries
    (channels_weight_grad_layout; the extra ones 0)."""
    # (no forward: x, workspace and grad_w stand in for its unused wt, bias and out)
    _weight_grad_channels("direct_weight_grad_channels", False, x, dy, x, workspace, grad_w,
                          grad_w, parts, workspace, offsets, C, H, W, pad_h, pad_w, Hp, Wp,
                          out_h, out_w, stride_h, stride_w, num_threads)


def direct_forward_and_weight_grad_channels(
        const floating[:, ::1] x, const floating[:, ::1] dy, const floating[:, ::1] wt,
        const floating[::1] bias, floating[:, ::1] out, floating[:, ::1] grad_w,
        floating[:, ::1] parts, floating[::1] workspace, const Py_ssize_t[::1] offsets,
        Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w,
        Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h,
        Py_ssize_t stride_w, int num_threads):
    """Two products of one 2-D convolution (one group) of x (N, C*H*W) that read the same
    padded samples, in one pass over the samples: out (N, C_out*out_h*out_w) = its forward by
    the channel kernel (wt (K, cpad) in its panels, channel_panel; bias (cpad)), as
    direct_forward computes it; and grad_w (C_out, K) = its weight gradient for the output
    gradient dy (N, C_out*out_h*out_w), as direct_weight_grad_channels (the same chunks,
    partials and order). A transposed convolution's backward is both, for the convolution of
    its dy by its weight: its input gradient is that convolution's forward, its weight
    gradient that convolution's weight gradient with the transposed convolution's input as
    output gradient. Each sample is padded once for both, and used by both while in cache.
    Every result is computed by the same code on the same data as by those two drivers: the
    same bits. Workspace and offsets (kpad entries) as direct_weight_grad_channels'."""
    _weight_grad_channels("direct_forward_and_weight_grad_channels", True, x, dy, wt, bias, out,
                          grad_w, parts, workspace, offsets, C, H, W, pad_h, pad_w, Hp, Wp,
                          out_h, out_w, stride_h, stride_w, num_threads)


cdef _weight_grad_channels(str who, bint forward, const floating[:, ::1] x,
                           const floating[:, ::1] dy,
                           const floating[:, ::1] wt, const floating[::1] bias,
                           floating[:, ::1] out, floating[:, ::1] grad_w,
                           floating[:, ::1] parts,
                           floating[::1] workspace, const Py_ssize_t[::1] offsets,
                           Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad_h,
                           Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t out_h,
                           Py_ssize_t out_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                           int num_threads):
    """direct_weight_grad_channels, and with ``forward`` the forward by wt and bias into out
    too (direct_forward_and_weight_grad_channels; else those are not read), after checking
    every buffer."""
    cdef Py_ssize_t N = x.shape[0], n_chunks = parts.shape[0], L = out_h * out_w
    cdef Py_ssize_t C_out = grad_w.shape[0], K = grad_w.shape[1]
    cdef Py_ssize_t cpad, kpad
    cpad, kpad = channels_weight_grad_layout(C_out, K)
    cdef Py_ssize_t Wq = _phase_width(Wp, stride_w)
    cdef Py_ssize_t xp_size = _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w)
    cdef Py_ssize_t dyt_size = L * cpad, acc_size = kpad * cpad
    cdef Py_ssize_t stride = xp_size + dyt_size
    cdef Py_ssize_t cpad_f = wt.shape[1] if forward else 0
    _check_weight_grad_buffers(who, x.shape[1], N, dy.shape[1], dy.shape[0], parts.shape[1],
                               offsets.shape[0], workspace.shape[0], C, H, W, C_out, K, L,
                               kpad, stride, num_threads, acc_size)
    if forward and (out.shape[0] != N or out.shape[1] != C_out * L or wt.shape[0] != K
                    or cpad_f < C_out or cpad_f % _panel(<floating> 0)
                    or bias.shape[0] != cpad_f):
        raise ValueError(f"{who}: out, wt ({wt.shape[0]}, {cpad_f}) or bias do not match N={N}, "
                         f"C_out*L={C_out * L}, K={K} (wt and bias: C_out padded to the "
                         f"channel kernel's panels, {_panel(<floating> 0)})")
    cdef Py_ssize_t j, n
    cdef floating* xp
    cdef floating* dyt
    cdef floating* acc
    cdef const floating* wt_p = &wt[0, 0] if forward else NULL
    cdef const floating* bias_p = &bias[0] if forward else NULL
    cdef floating* out_p = &out[0, 0] if forward else NULL
    if N == 0 or L == 0 or n_chunks == 0:
        if C_out * K:
            memset(&grad_w[0, 0], 0, C_out * K * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            xp = &workspace[0] + threadid() * stride
            dyt = xp + xp_size
            acc = &parts[j, 0]                  # the chunk's partial: its own accumulators
            memset(acc, 0, acc_size * sizeof(floating))
            memset(dyt, 0, dyt_size * sizeof(floating))    # the padding: never written below
            for n in range((j * N) // n_chunks, ((j + 1) * N) // n_chunks):
                _pad_sample(&x[n, 0], xp, xp_size, C, H, W, pad_h, pad_w, Hp, Wp, stride_w,
                            n == (j * N) // n_chunks)
                if floating is float:
                    if forward:
                        fc_direct_conv_f(xp, wt_p, bias_p, out_p + n * C_out * L, &offsets[0],
                                         K, C_out, cpad_f, out_h, out_w, Wq, stride_h,
                                         stride_w, False, L, out_w, 1)
                    fc_dw_channels_transpose_f(&dy[n, 0], dyt, C_out, L, cpad)
                    fc_dw_channels_f(xp, dyt, acc, &offsets[0], kpad, cpad, out_h, out_w, Wq,
                                     stride_h)
                else:
                    if forward:
                        fc_direct_conv_d(xp, wt_p, bias_p, out_p + n * C_out * L, &offsets[0],
                                         K, C_out, cpad_f, out_h, out_w, Wq, stride_h,
                                         stride_w, False, L, out_w, 1)
                    fc_dw_channels_transpose_d(&dy[n, 0], dyt, C_out, L, cpad)
                    fc_dw_channels_d(xp, dyt, acc, &offsets[0], kpad, cpad, out_h, out_w, Wq,
                                     stride_h)
    with nogil:
        _sum_acc_chunks(parts, grad_w, cpad, num_threads)

