"""Convolution (1-D/2-D/3-D, stride, padding, dilation, groups): forward and backward.

Shapes, per sample n and group g (Cg = C_in/groups, Cog = C_out/groups, K = Cg*kD*kH*kW,
L = oD*oH*oW, S = D*H*W):

    forward      y[n,g]  (Cog, L) = W[g] (Cog, K) @ cols[n,g] (K, L)          (+ bias)
    grad input   dcols   (K, L)   = W[g]^T (K, Cog) @ dy[n,g] (Cog, L);  dx[n] = col2im(dcols)
    grad weight  dW[g]   (Cog, K) = sum_n dy[n,g] (Cog, L) @ cols[n,g]^T (L, K)
    grad bias    db[co]           = sum_n sum_l dy[n, co, l]

where cols[n] = im2col(x[n]) holds the rows of all groups one after the other, so group g's
(K, L) block starts at row g*K. A 1x1 convolution with stride 1 and no padding has cols = x[n]
itself, and its grad input is the GEMM written straight into dx[n]: no im2col, no col2im.

Threads: the forward and grad input work on whole samples, one thread per sample, each with its
own slice of the workspace and single-threaded BLAS calls. The weight gradient sums over samples;
to give the same bits whatever the number of threads, samples are cut into ``n_chunks`` fixed
ranges (a function of N only), each chunk sums its samples in order into its own (C_out, K)
partial, and the caller adds the partials in chunk order.

The last section drives the direct kernels of _conv_direct.h, GEMM-free paths that
functional/_conv_algorithms.py picks by measured rules (direct_ok, rows_ok, dw_rows_ok): the
forward along output channels or along output rows (the latter also serves stride-1 input
gradients and, storing with strides, each output phase of a transposed convolution), and the
weight gradient on the row kernel's layout. Each sample is first copied into zero-bordered
planes in the thread's workspace (_pad_sample).
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memcpy, memset

from fastcnn._ops._blas cimport gemm
from fastcnn._ops._epilogue cimport bias_relu
from fastcnn._ops._simd cimport sum_shifted
from fastcnn._ops.im2col cimport Geom, make_geom, im2col_plane, col2im_plane


cdef inline void _im2col_sample(const floating* x, floating* cols, Py_ssize_t C,
                                Py_ssize_t plane_in, Py_ssize_t ld,
                                const Geom* g) noexcept nogil:
    """Columns of one sample, channel after channel; rows ``ld`` apart."""
    cdef Py_ssize_t c, kk = g.kD * g.kH * g.kW
    for c in range(C):
        im2col_plane(x + c * plane_in, cols + c * kk * ld, g, ld)


cdef inline void _col2im_sample(const floating* cols, floating* x, Py_ssize_t C,
                                Py_ssize_t plane_in, Py_ssize_t ld,
                                const Geom* g) noexcept nogil:
    """x (C planes) = col2im of one sample's columns (rows ``ld`` apart); x is overwritten."""
    cdef Py_ssize_t c, kk = g.kD * g.kH * g.kW
    memset(x, 0, C * plane_in * sizeof(floating))
    for c in range(C):
        col2im_plane(cols + c * kk * ld, x + c * plane_in, g, ld)


# Samples per GEMM: small outputs (LeNet's second conv has L = 100 positions) make per-sample
# GEMMs too thin for BLAS, so the columns of `block` samples sit side by side, (K, block*L),
# and one GEMM serves them all. A function of L only: the result does not depend on threads.
DEF BLOCK_COLUMNS = 384


def sample_block(Py_ssize_t n, Py_ssize_t out_positions, bint pointwise):
    """How many samples share one GEMM (1 for a 1x1 convolution, whose columns are x itself)."""
    if pointwise or out_positions == 0:
        return 1
    return max(1, min(n, BLOCK_COLUMNS // out_positions))


def workspace_size(Py_ssize_t channels, Py_ssize_t out_channels, tuple kernel, tuple stride,
                   tuple padding, tuple out_size, Py_ssize_t block):
    """Elements of scratch one thread needs: the (C*kD*kH*kW, block*L) columns, and when
    block > 1 the (C_out, block*L) GEMM output (forward) or gathered grad_output (backward)."""
    if _is_pointwise(kernel, stride, padding):
        return 0
    kD, kH, kW = kernel
    oD, oH, oW = out_size
    L = oD * oH * oW
    return (channels * kD * kH * kW + (out_channels if block > 1 else 0)) * block * L


def is_pointwise(tuple kernel, tuple stride, tuple padding):
    return _is_pointwise(kernel, stride, padding)


cdef bint _is_pointwise(tuple kernel, tuple stride, tuple padding):
    return kernel == (1, 1, 1) and stride == (1, 1, 1) and padding == (0, 0, 0)


def conv_forward(const floating[:, ::1] x, const floating[:, ::1] weight,
                 const floating[::1] bias, floating[:, ::1] out, floating[::1] workspace,
                 Py_ssize_t groups, tuple in_size, tuple kernel, tuple stride, tuple padding,
                 tuple dilation, tuple out_size, Py_ssize_t block, bint relu,
                 int num_threads):
    """out (N, C_out*L) = conv(x (N, C_in*S), weight (C_out, K)) + bias (C_out or empty),
    then max(out, 0) if relu (in the same pass as the bias).

    Samples go ``block`` at a time (see sample_block); ``workspace`` holds num_threads *
    workspace_size(...) elements (may be empty for 1x1).
    """
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = x.shape[0], C_out = weight.shape[0], K = weight.shape[1]
    cdef Py_ssize_t kk = g.kD * g.kH * g.kW
    cdef Py_ssize_t Cg = K // kk, C = Cg * groups, Cog = C_out // groups
    cdef Py_ssize_t S = g.D * g.H * g.W, L = g.oD * g.oH * g.oW
    cdef bint pointwise = _is_pointwise(kernel, stride, padding)
    cdef Py_ssize_t cols_size = 0 if pointwise else C * kk * block * L
    cdef Py_ssize_t ws_stride = 0 if pointwise else cols_size + (C_out * block * L if block > 1 else 0)
    cdef Py_ssize_t blocks = (N + block - 1) // block
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef const floating* cols
    cdef floating* cols_w
    cdef floating* dst
    cdef floating* row
    cdef floating b
    cdef Py_ssize_t j, n0, nb, ld, s_, n, gi, co, l
    cdef int tid
    if N == 0 or L == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(blocks, schedule='static'):
            tid = threadid()
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            ld = nb * L
            if pointwise:
                cols = &x[n0, 0]                    # nb == 1: the columns are the sample
            else:
                cols_w = ws + tid * ws_stride
                for s_ in range(nb):
                    _im2col_sample(&x[n0 + s_, 0], cols_w + s_ * L, C, S, ld, &g)
                cols = cols_w
            # one sample: straight into out[n0]; several: into scratch, then to each sample
            dst = &out[n0, 0] if nb == 1 else ws + tid * ws_stride + cols_size
            for gi in range(groups):
                gemm(False, False, <int> Cog, <int> ld, <int> K, <floating> 1.0,
                     &weight[gi * Cog, 0], <int> K, cols + gi * K * ld, <int> ld,
                     <floating> 0.0, dst + gi * Cog * ld, <int> ld)
            for s_ in range(nb):
                n = n0 + s_
                for co in range(C_out):
                    b = bias[co] if has_bias else 0
                    row = &out[n, co * L]
                    if nb == 1:
                        if has_bias or relu:
                            for l in range(L):
                                row[l] = bias_relu(row[l], b, relu)
                    else:
                        for l in range(L):
                            row[l] = bias_relu(dst[co * ld + s_ * L + l], b, relu)


def conv_backward(const floating[:, ::1] x, const floating[:, ::1] weight,
                  const floating[:, ::1] grad_out, floating[:, ::1] grad_x,
                  floating[:, ::1] grad_w_parts, floating[::1] workspace,
                  bint need_x, bint need_w,
                  Py_ssize_t groups, tuple in_size, tuple kernel, tuple stride, tuple padding,
                  tuple dilation, tuple out_size, Py_ssize_t block, int num_threads):
    """Gradients of conv_forward with respect to its input and weight.

    grad_out (N, C_out*L). If need_x, grad_x (N, C_in*S) is overwritten with dL/dx. If need_w,
    grad_w_parts (n_chunks, C_out*K) receives one partial weight gradient per chunk of samples
    (chunk j covers samples [j*N//n_chunks, (j+1)*N//n_chunks)); their sum in order is dL/dW.
    Within a chunk, samples go ``block`` at a time as in conv_forward.
    """
    cdef Geom g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    cdef Py_ssize_t N = x.shape[0], C_out = weight.shape[0], K = weight.shape[1]
    cdef Py_ssize_t kk = g.kD * g.kH * g.kW
    cdef Py_ssize_t Cg = K // kk, C = Cg * groups, Cog = C_out // groups
    cdef Py_ssize_t S = g.D * g.H * g.W, L = g.oD * g.oH * g.oW
    cdef bint pointwise = _is_pointwise(kernel, stride, padding)
    cdef Py_ssize_t cols_size = 0 if pointwise else C * kk * block * L
    cdef Py_ssize_t ws_stride = 0 if pointwise else cols_size + (C_out * block * L if block > 1 else 0)
    cdef Py_ssize_t n_chunks = grad_w_parts.shape[0] if need_w else N
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* dyb
    cdef floating* dwp
    cdef const floating* dy
    cdef floating* dxn
    cdef Py_ssize_t j, n0, n1, m0, nb, ld, s_, co, gi
    cdef int tid
    if N == 0:
        return
    if need_w and L == 0:
        memset(&grad_w_parts[0, 0], 0, n_chunks * C_out * K * sizeof(floating))
    if need_x and L == 0:
        memset(&grad_x[0, 0], 0, N * C * S * sizeof(floating))
    if L == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * N // n_chunks
            n1 = (j + 1) * N // n_chunks
            if need_w:
                dwp = &grad_w_parts[j, 0]
            m0 = n0
            while m0 < n1:
                nb = block if m0 + block <= n1 else n1 - m0
                ld = nb * L
                # grad_output of the block as one (C_out, nb*L) matrix
                if nb == 1:
                    dy = &grad_out[m0, 0]
                else:
                    dyb = ws + tid * ws_stride + cols_size
                    for s_ in range(nb):
                        for co in range(C_out):
                            memcpy(dyb + co * ld + s_ * L, &grad_out[m0 + s_, co * L],
                                   L * sizeof(floating))
                    dy = dyb
                if need_w:
                    if pointwise:
                        cols = <floating*> &x[m0, 0]     # nb == 1; read only below
                    else:
                        cols = ws + tid * ws_stride
                        for s_ in range(nb):
                            _im2col_sample(&x[m0 + s_, 0], cols + s_ * L, C, S, ld, &g)
                    for gi in range(groups):
                        gemm(False, True, <int> Cog, <int> K, <int> ld, <floating> 1.0,
                             dy + gi * Cog * ld, <int> ld, cols + gi * K * ld, <int> ld,
                             <floating> (1.0 if m0 > n0 else 0.0), dwp + gi * Cog * K, <int> K)
                if need_x:
                    if pointwise:
                        # K == Cg: dx[n, group g] = W[g]^T dy[n, group g], written in place.
                        dxn = &grad_x[m0, 0]
                        for gi in range(groups):
                            gemm(True, False, <int> K, <int> L, <int> Cog, <floating> 1.0,
                                 &weight[gi * Cog, 0], <int> K, dy + gi * Cog * L, <int> L,
                                 <floating> 0.0, dxn + gi * K * L, <int> L)
                    else:
                        cols = ws + tid * ws_stride
                        for gi in range(groups):
                            gemm(True, False, <int> K, <int> ld, <int> Cog, <floating> 1.0,
                                 &weight[gi * Cog, 0], <int> K, dy + gi * Cog * ld, <int> ld,
                                 <floating> 0.0, cols + gi * K * ld, <int> ld)
                        for s_ in range(nb):
                            _col2im_sample(cols + s_ * L, &grad_x[m0 + s_, 0], C, S, ld, &g)
                m0 = m0 + nb


def bias_backward(const floating[:, :, ::1] grad_out, floating[::1] grad_b, int num_threads):
    """grad_b[c] = sum over n and l of grad_out (N, C, L), in a fixed order: each row of L by
    _simd.h's lane sums (vector partial sums, then double), the rows added in double (a plain
    double loop was bound by the add latency: 0.24 ms for 2 MB)."""
    cdef Py_ssize_t N = grad_out.shape[0], C = grad_out.shape[1], L = grad_out.shape[2]
    cdef Py_ssize_t c, n
    cdef double acc
    if L == 0:
        grad_b[:] = 0
        return
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            acc = 0.0
            for n in range(N):
                acc = acc + sum_shifted(&grad_out[n, c, 0], L, 0)
            grad_b[c] = <floating> acc


# ------------------------------------------------------------------------------------------------
# Transposed convolution
# ------------------------------------------------------------------------------------------------
#
# conv_transpose(x, W) is the input gradient of conv(., W): the window geometry ``g`` below is the
# one of the *forward convolution* that maps the transposed conv's output (g.D, g.H, g.W) to its
# input (g.oD, g.oH, g.oW). Weight (C_in, Cog*kk) with Cog = C_out/groups, Cg = C_in/groups,
# L = input positions, S = output positions; per sample n and group g:
#
#     forward      cols (Cog*kk, L) = W[g]^T (Cog*kk, Cg) @ x[n,g] (Cg, L);  y[n] = col2im(cols)
#     grad input   dx[n,g] (Cg, L)  = W[g] (Cg, Cog*kk) @ im2col(dy[n])[g] (Cog*kk, L)
#     grad weight  dW[g] (Cg, Cog*kk) = sum_n x[n,g] (Cg, L) @ im2col(dy[n])[g]^T (L, Cog*kk)
#
# A 1x1 kernel with stride 1 and no padding has cols = y[n]: the GEMM writes the output in place.

cdef bint _transpose_is_pointwise(tuple kernel, tuple stride, tuple padding, tuple out_size,
                                  tuple in_size):
    # output_padding (allowed below dilation) can make a 1x1 kernel's output larger than its
    # input: then the GEMM result is not the output and col2im must place it
    return _is_pointwise(kernel, stride, padding) and out_size == in_size


def conv_transpose_workspace_size(Py_ssize_t out_channels, tuple kernel, tuple stride,
                                  tuple padding, tuple out_size, tuple in_size):
    """Elements of scratch one thread needs: the (C_out*kk, L) columns, or 0 for a 1x1 kernel
    whose output has the input's size."""
    if _transpose_is_pointwise(kernel, stride, padding, out_size, in_size):
        return 0
    kD, kH, kW = kernel
    iD, iH, iW = in_size
    return out_channels * kD * kH * kW * iD * iH * iW


def conv_transpose_forward(const floating[:, ::1] x, const floating[:, ::1] weight,
                           const floating[::1] bias, floating[:, ::1] out,
                           floating[::1] workspace, Py_ssize_t groups, tuple out_size,
                           tuple kernel, tuple stride, tuple padding, tuple dilation,
                           tuple in_size, int num_threads):
    """out (N, C_out*S) = conv_transpose(x (N, C_in*L), weight (C_in, Cog*kk)) + bias.

    ``out_size`` is the transposed conv's output (the geometry's input), ``in_size`` its input.
    """
    cdef Geom g = make_geom(out_size, kernel, stride, padding, dilation, in_size)
    cdef Py_ssize_t N = x.shape[0], C_in = weight.shape[0], M = weight.shape[1]
    cdef Py_ssize_t kk = g.kD * g.kH * g.kW
    cdef Py_ssize_t Cog = M // kk, C_out = Cog * groups, Cg = C_in // groups
    cdef Py_ssize_t S = g.D * g.H * g.W, L = g.oD * g.oH * g.oW
    cdef bint pointwise = _transpose_is_pointwise(kernel, stride, padding, out_size, in_size)
    cdef Py_ssize_t ws_stride = 0 if pointwise else C_out * kk * L
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* yn
    cdef floating* row
    cdef floating b
    cdef Py_ssize_t n, gi, co, l
    cdef int tid
    if N == 0 or S == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for n in prange(N, schedule='static'):
            tid = threadid()
            yn = &out[n, 0]
            cols = yn if pointwise else ws + tid * ws_stride
            for gi in range(groups):
                gemm(True, False, <int> M, <int> L, <int> Cg, <floating> 1.0,
                     &weight[gi * Cg, 0], <int> M, &x[n, gi * Cg * L], <int> L,
                     <floating> 0.0, cols + gi * M * L, <int> L)
            if not pointwise:
                _col2im_sample(cols, yn, C_out, S, L, &g)
            if has_bias:
                for co in range(C_out):
                    b = bias[co]
                    row = yn + co * S
                    for l in range(S):
                        row[l] = row[l] + b


def conv_transpose_backward(const floating[:, ::1] x, const floating[:, ::1] weight,
                            const floating[:, ::1] grad_out, floating[:, ::1] grad_x,
                            floating[:, ::1] grad_w_parts, floating[::1] workspace,
                            bint need_x, bint need_w, Py_ssize_t groups, tuple out_size,
                            tuple kernel, tuple stride, tuple padding, tuple dilation,
                            tuple in_size, int num_threads):
    """Gradients of conv_transpose_forward with respect to x and weight.

    grad_out (N, C_out*S). grad_x (N, C_in*L) is overwritten if need_x; grad_w_parts
    (n_chunks, C_in*Cog*kk) receives one partial per fixed chunk of samples if need_w (as
    conv_backward: chunk j is samples [j*N//n_chunks, (j+1)*N//n_chunks), summed in order).
    """
    cdef Geom g = make_geom(out_size, kernel, stride, padding, dilation, in_size)
    cdef Py_ssize_t N = x.shape[0], C_in = weight.shape[0], M = weight.shape[1]
    cdef Py_ssize_t kk = g.kD * g.kH * g.kW
    cdef Py_ssize_t Cog = M // kk, C_out = Cog * groups, Cg = C_in // groups
    cdef Py_ssize_t S = g.D * g.H * g.W, L = g.oD * g.oH * g.oW
    cdef bint pointwise = _transpose_is_pointwise(kernel, stride, padding, out_size, in_size)
    cdef Py_ssize_t ws_stride = 0 if pointwise else C_out * kk * L
    cdef Py_ssize_t n_chunks = grad_w_parts.shape[0] if need_w else N
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* dwp
    cdef const floating* dyn
    cdef Py_ssize_t j, n, n0, n1, gi
    cdef int tid
    if N == 0:
        return
    if L == 0:
        if need_w:
            memset(&grad_w_parts[0, 0], 0, n_chunks * C_in * M * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * N // n_chunks
            n1 = (j + 1) * N // n_chunks
            for n in range(n0, n1):
                dyn = &grad_out[n, 0]
                if pointwise:
                    cols = <floating*> dyn      # read only below
                else:
                    cols = ws + tid * ws_stride
                    _im2col_sample(dyn, cols, C_out, S, L, &g)
                for gi in range(groups):
                    if need_w:
                        gemm(False, True, <int> Cg, <int> M, <int> L, <floating> 1.0,
                             &x[n, gi * Cg * L], <int> L, cols + gi * M * L, <int> L,
                             <floating> (1.0 if n > n0 else 0.0),
                             &grad_w_parts[j, gi * Cg * M], <int> M)
                    if need_x:
                        gemm(False, False, <int> Cg, <int> L, <int> M, <floating> 1.0,
                             &weight[gi * Cg, 0], <int> M, cols + gi * M * L, <int> L,
                             <floating> 0.0, &grad_x[n, gi * Cg * L], <int> L)


# ------------------------------------------------------------------------------------------------
# Direct convolution for small layers (_conv_direct.h)
# ------------------------------------------------------------------------------------------------

cdef extern from "_conv_direct.h" nogil:
    void fc_direct_conv_f(const float* xp, const float* wt, const float* bias, float* y,
                          const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout, Py_ssize_t cpad,
                          Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh,
                          Py_ssize_t sw, int relu)
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
    enum: FC_CO_PAD
    enum: FC_DW_CO
    enum: FC_DW_K
    enum: FC_DW_LANES
    enum: FC_ROW_TAIL
    void fc_direct_conv_d(const double* xp, const double* wt, const double* bias, double* y,
                          const Py_ssize_t* off, Py_ssize_t K, Py_ssize_t cout, Py_ssize_t cpad,
                          Py_ssize_t oh_n, Py_ssize_t ow_n, Py_ssize_t wp, Py_ssize_t sh,
                          Py_ssize_t sw, int relu)


cdef inline Py_ssize_t _phase_width(Py_ssize_t Wp, Py_ssize_t phases) noexcept nogil:
    """Row length of a plane Wp wide stored as ``phases`` column-phase planes."""
    return (Wp + phases - 1) // phases


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
    """Per-thread scratch of direct_forward: one zero-bordered sample (in column phases for the
    row kernel with a width stride) and a tail that the kernels' last blocks read into."""
    return _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w if by_rows else 1)


cdef inline void _split_phases(const floating* src, floating* dst, Py_ssize_t cols,
                              Py_ssize_t pad, Py_ssize_t phases,
                              Py_ssize_t phase_stride) noexcept nogil:
    """Input row src[0:cols], placed at padded column pad + j, into its column phases: padded
    column q goes to dst[(q % phases) * phase_stride + q // phases]."""
    cdef Py_ssize_t p, j, q
    for p in range(phases):
        j = (p - pad % phases + phases) % phases      # first j with (pad + j) % phases == p
        q = (pad + j) // phases
        while j < cols:
            dst[p * phase_stride + q] = src[j]
            j += phases
            q += 1


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
                             Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t phases) noexcept nogil:
    """The direct kernels' copy of one sample x (C, H, W): C zero-bordered planes of Hp x Wp
    (``size`` elements zeroed first, the tail included), the input at (pad_h, pad_w), each
    plane as ``phases`` column-phase planes when phases > 1 (see direct_forward)."""
    cdef Py_ssize_t Wq = _phase_width(Wp, phases)
    cdef Py_ssize_t rows = min(H, Hp - pad_h), cols = min(W, Wp - pad_w), c, r
    memset(xp, 0, size * sizeof(floating))
    if rows <= 0 or cols <= 0:     # the windows read padding only: the outputs are the bias
        return
    for c in range(C):
        for r in range(rows):
            if phases == 1:
                memcpy(xp + (c * Hp + r + pad_h) * Wp + pad_w, x + (c * H + r) * W,
                       cols * sizeof(floating))
            else:
                _split_phases(x + (c * H + r) * W, xp + (c * phases * Hp + r + pad_h) * Wq,
                              cols, pad_w, phases, Hp * Wq)


def direct_forward(const floating[:, ::1] x, const floating[:, ::1] wt,
                   const floating[::1] bias, floating[:, ::1] out, floating[::1] workspace,
                   const Py_ssize_t[::1] offsets, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                   Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp, Py_ssize_t Wp,
                   Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                   bint by_rows, bint relu, int num_threads, tuple out_layout=None):
    """out (N, C_out*oH*oW) = the convolution of x (N, C*H*W) with wt (K, cpad) (the
    weight transposed, C_out padded to cpad) and bias (cpad), then max(out, 0) if relu (as the
    kernel stores). Each sample is copied into its thread's workspace as C zero-bordered planes
    of Hp x Wp, the input at (pad_h, pad_w); ``offsets`` (K,) are the taps' positions in those
    planes (see _conv_direct.h). ``by_rows``: the kernel vectorized along output rows instead
    of output channels; with stride_w > 1 each plane is stored as stride_w planes of its
    column phases (column j at phase j % stride_w, position j // stride_w, rows Wq =
    ceil(Wp / stride_w) long), so that a tap's inputs for consecutive outputs are contiguous
    (``offsets`` then address that layout). ``out_layout`` = (C_out, offset, channel, row,
    column strides) places the row kernel's output (co, oh, ow) of sample n at out[n, offset +
    co * channel + oh * row + ow * column] (one phase of a transposed convolution); by default
    out[n] is (C_out, out_h, out_w)."""
    cdef Py_ssize_t N = x.shape[0], K = wt.shape[0], cpad = wt.shape[1]
    cdef Py_ssize_t C_out = out.shape[1] // (out_h * out_w)
    cdef Py_ssize_t y0 = 0, yc = out_h * out_w, yh = out_w, yw = 1
    if out_layout is not None:
        C_out, y0, yc, yh, yw = out_layout
    cdef Py_ssize_t phases = stride_w if by_rows else 1
    cdef Py_ssize_t Wq = _phase_width(Wp, phases)
    cdef Py_ssize_t stride = _direct_scratch(C, Hp, Wp, stride_h, stride_w, phases)
    cdef Py_ssize_t n
    cdef floating* xp
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            xp = &workspace[0] + threadid() * stride
            _pad_sample(&x[n, 0], xp, stride, C, H, W, pad_h, pad_w, Hp, Wp, phases)
            if by_rows:
                _rows_kernel(xp, &wt[0, 0], &bias[0], &out[n, y0], &offsets[0], K, C_out, cpad,
                             out_h, out_w, Wq, stride_h, relu, yc, yh, yw)
            elif floating is float:
                fc_direct_conv_f(xp, &wt[0, 0], &bias[0], &out[n, 0], &offsets[0], K, C_out,
                                 cpad, out_h, out_w, Wp, stride_h, stride_w, relu)
            else:
                fc_direct_conv_d(xp, &wt[0, 0], &bias[0], &out[n, 0], &offsets[0], K, C_out,
                                 cpad, out_h, out_w, Wp, stride_h, stride_w, relu)


# The kernels' layout constants (_conv_direct.h), for the Python side that prepares operands.
CO_PAD = FC_CO_PAD     # the forward kernels' weight and bias: C_out padded to a multiple of it


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


def direct_weight_grad(const floating[:, ::1] x, const floating[:, ::1] dy,
                       double[:, ::1] parts, floating[::1] workspace,
                       const Py_ssize_t[::1] offsets, Py_ssize_t K, Py_ssize_t C, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t Hp,
                       Py_ssize_t Wp, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t stride_h,
                       Py_ssize_t stride_w, int num_threads):
    """parts (n_chunks, C_out*K): the weight gradient of a 2-D convolution (one group) without
    im2col, one partial per fixed chunk of samples (chunk j: samples [j*N//n_chunks,
    (j+1)*N//n_chunks), in order; summed in chunk order by the caller). Each sample is padded
    as for direct_forward's row kernel (column phases for stride_w > 1) and its dy copied with
    rows padded to whole vectors (direct_weight_grad_layout), and _conv_direct.h's fc_dw_rows
    adds its products into per-lane accumulators, whose lanes are added up (in double, in a
    fixed order) at the end of the chunk. Thread workspace:
    direct_weight_grad_workspace_size(...) elements. ``offsets`` has kpad entries (the extra
    ones 0)."""
    cdef Py_ssize_t N = x.shape[0], n_chunks = parts.shape[0], L = out_h * out_w
    cdef Py_ssize_t C_out = dy.shape[1] // L if L > 0 else 0
    cdef Py_ssize_t cpad, kpad, ldy
    cpad, kpad, ldy = direct_weight_grad_layout(C_out, K, out_w)
    cdef Py_ssize_t V = FC_DW_LANES * sizeof(float) // sizeof(floating)   # one slot
    cdef Py_ssize_t Wq = _phase_width(Wp, stride_w)
    cdef Py_ssize_t xp_size = _direct_scratch(C, Hp, Wp, stride_h, stride_w, stride_w)
    cdef Py_ssize_t dy_size = cpad * out_h * ldy, acc_size = cpad * kpad * FC_DW_LANES
    cdef Py_ssize_t stride = direct_weight_grad_workspace_size(C, Hp, Wp, stride_h, stride_w,
                                                               C_out, K, out_h, out_w)
    cdef Py_ssize_t j, n, co, r, k, lane
    cdef double t
    cdef floating* xp
    cdef floating* dyp
    cdef floating* acc
    memset(&parts[0, 0], 0, n_chunks * parts.shape[1] * sizeof(double))
    if N == 0 or L == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            xp = &workspace[0] + threadid() * stride
            dyp = xp + xp_size
            acc = dyp + dy_size
            memset(acc, 0, acc_size * sizeof(floating))
            memset(dyp, 0, dy_size * sizeof(floating))     # the padding: never written below
            for n in range(j * N // n_chunks, (j + 1) * N // n_chunks):
                _pad_sample(&x[n, 0], xp, xp_size, C, H, W, pad_h, pad_w, Hp, Wp, stride_w)
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
