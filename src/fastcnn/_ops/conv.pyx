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

The direct kernels (no im2col, no GEMM) have their own driver module, conv_direct.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memcpy, memset

from fastcnn._ops._blas cimport gemm
from fastcnn._ops._epilogue cimport bias_relu
from fastcnn._ops._simd cimport sum_shifted
from fastcnn._ops.im2col cimport Geom, make_geom, im2col_plane, col2im_plane
from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays


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


# The sizes every driver below needs, derived once from the arguments (the four drivers used to
# repeat this setup). ``g`` is the window geometry of the *convolution*: for conv_* the op itself,
# for conv_transpose_* the convolution whose input gradient it is (see that section). S = g's
# input positions (D*H*W), L = g's output positions (oD*oH*oW), kk = kernel positions.
cdef struct ConvDims:
    Geom g
    Py_ssize_t N                 # samples
    Py_ssize_t C_in, C_out       # the op's input and output channels
    Py_ssize_t Cg, Cog           # per group: C_in / groups, C_out / groups
    Py_ssize_t kk, S, L
    bint pointwise               # 1x1 kernel, stride 1, no padding: no im2col / col2im
    Py_ssize_t cols_size         # workspace elements of one thread's columns
    Py_ssize_t ws_stride         # workspace elements per thread


cdef ConvDims _geometry_dims(Py_ssize_t N, tuple in_size, tuple kernel, tuple stride,
                             tuple padding, tuple dilation, tuple out_size) except *:
    """The part of ConvDims both kinds share: g, N, kk, S, L."""
    cdef ConvDims d
    d.g = make_geom(in_size, kernel, stride, padding, dilation, out_size)
    d.N = N
    d.kk = d.g.kD * d.g.kH * d.g.kW
    d.S, d.L = d.g.D * d.g.H * d.g.W, d.g.oD * d.g.oH * d.g.oW
    return d


cdef ConvDims _conv_dims(Py_ssize_t N, Py_ssize_t C_out, Py_ssize_t K, Py_ssize_t groups,
                         tuple in_size, tuple kernel, tuple stride, tuple padding,
                         tuple dilation, tuple out_size, Py_ssize_t block) except *:
    """conv_forward / conv_backward: weight (C_out, K = Cg*kk); columns (C_in*kk, block*L),
    plus (C_out, block*L) for the GEMM output / gathered grad_output when block > 1."""
    cdef ConvDims d = _geometry_dims(N, in_size, kernel, stride, padding, dilation, out_size)
    d.C_out, d.Cg = C_out, K // d.kk
    d.C_in, d.Cog = d.Cg * groups, C_out // groups
    d.pointwise = _is_pointwise(kernel, stride, padding)
    d.cols_size = 0 if d.pointwise else d.C_in * d.kk * block * d.L
    d.ws_stride = 0 if d.pointwise else d.cols_size + (C_out * block * d.L if block > 1 else 0)
    return d


cdef ConvDims _conv_transpose_dims(Py_ssize_t N, Py_ssize_t C_in, Py_ssize_t M,
                                   Py_ssize_t groups, tuple out_size, tuple kernel,
                                   tuple stride, tuple padding, tuple dilation,
                                   tuple in_size) except *:
    """conv_transpose_forward / _backward: weight (C_in, M = Cog*kk); columns (C_out*kk, L).
    The geometry runs from the transposed conv's output (out_size) to its input (in_size)."""
    cdef ConvDims d = _geometry_dims(N, out_size, kernel, stride, padding, dilation, in_size)
    d.C_in, d.Cog = C_in, M // d.kk
    d.C_out, d.Cg = d.Cog * groups, C_in // groups
    d.pointwise = _transpose_is_pointwise(kernel, stride, padding, out_size, in_size)
    d.cols_size = 0 if d.pointwise else d.C_out * d.kk * d.L
    d.ws_stride = d.cols_size
    return d


cdef void _conv_forward(const floating* x, Py_ssize_t x_row, const floating* weight,
                        Py_ssize_t K, const floating* bias, floating* out, Py_ssize_t out_row,
                        floating* ws, const ConvDims* d, Py_ssize_t groups, Py_ssize_t block,
                        bint relu, int num_threads) noexcept nogil:
    """conv_forward on pointers: x (N, x_row), weight (C_out, K), bias (C_out) or NULL,
    out (N, out_row), ws num_threads * d.ws_stride elements (NULL for 1x1); d.N, d.L > 0."""
    cdef Py_ssize_t blocks = (d.N + block - 1) // block
    cdef bint has_bias = bias != NULL
    cdef const floating* cols
    cdef floating* cols_w
    cdef floating* dst
    cdef floating* row
    cdef floating b
    cdef Py_ssize_t j, n0, nb, ld, s_, n, gi, co, l
    cdef int tid
    with parallel(num_threads=num_threads):
        for j in prange(blocks, schedule='static'):
            tid = threadid()
            n0 = j * block
            nb = block if n0 + block <= d.N else d.N - n0
            ld = nb * d.L
            if d.pointwise:
                cols = x + n0 * x_row               # nb == 1: the columns are the sample
            else:
                cols_w = ws + tid * d.ws_stride
                for s_ in range(nb):
                    _im2col_sample(x + (n0 + s_) * x_row, cols_w + s_ * d.L, d.C_in, d.S, ld,
                                   &d.g)
                cols = cols_w
            # one sample: straight into out[n0]; several: into scratch, then to each sample
            dst = out + n0 * out_row if nb == 1 else ws + tid * d.ws_stride + d.cols_size
            for gi in range(groups):
                gemm(False, False, <int> d.Cog, <int> ld, <int> K, <floating> 1.0,
                     weight + gi * d.Cog * K, <int> K, cols + gi * K * ld, <int> ld,
                     <floating> 0.0, dst + gi * d.Cog * ld, <int> ld)
            for s_ in range(nb):
                n = n0 + s_
                for co in range(d.C_out):
                    b = bias[co] if has_bias else 0
                    row = out + n * out_row + co * d.L
                    if nb == 1:
                        if has_bias or relu:
                            for l in range(d.L):
                                row[l] = bias_relu(row[l], b, relu)
                    else:
                        for l in range(d.L):
                            row[l] = bias_relu(dst[co * ld + s_ * d.L + l], b, relu)


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
    cdef ConvDims d = _conv_dims(x.shape[0], weight.shape[0], weight.shape[1], groups,
                                 in_size, kernel, stride, padding, dilation, out_size, block)
    if d.N == 0 or d.L == 0:
        return
    with nogil:
        _conv_forward(&x[0, 0], x.shape[1], &weight[0, 0], weight.shape[1],
                      &bias[0] if bias.shape[0] > 0 else NULL, &out[0, 0], out.shape[1],
                      &workspace[0] if workspace.shape[0] > 0 else NULL, &d, groups, block,
                      relu, num_threads)


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
    cdef ConvDims d = _conv_dims(x.shape[0], weight.shape[0], weight.shape[1], groups,
                                 in_size, kernel, stride, padding, dilation, out_size, block)
    cdef Py_ssize_t K = weight.shape[1]
    cdef Py_ssize_t n_chunks = grad_w_parts.shape[0] if need_w else d.N
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* dyb
    cdef floating* dwp
    cdef const floating* dy
    cdef floating* dxn
    cdef Py_ssize_t j, n0, n1, m0, nb, ld, s_, co, gi
    cdef int tid
    if d.N == 0:
        return
    if need_w and d.L == 0:
        memset(&grad_w_parts[0, 0], 0, n_chunks * d.C_out * K * sizeof(floating))
    if need_x and d.L == 0:
        memset(&grad_x[0, 0], 0, d.N * d.C_in * d.S * sizeof(floating))
    if d.L == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * d.N // n_chunks
            n1 = (j + 1) * d.N // n_chunks
            if need_w:
                dwp = &grad_w_parts[j, 0]
            m0 = n0
            while m0 < n1:
                nb = block if m0 + block <= n1 else n1 - m0
                ld = nb * d.L
                # grad_output of the block as one (C_out, nb*L) matrix
                if nb == 1:
                    dy = &grad_out[m0, 0]
                else:
                    dyb = ws + tid * d.ws_stride + d.cols_size
                    for s_ in range(nb):
                        for co in range(d.C_out):
                            memcpy(dyb + co * ld + s_ * d.L, &grad_out[m0 + s_, co * d.L],
                                   d.L * sizeof(floating))
                    dy = dyb
                if need_w:
                    if d.pointwise:
                        cols = <floating*> &x[m0, 0]     # nb == 1; read only below
                    else:
                        cols = ws + tid * d.ws_stride
                        for s_ in range(nb):
                            _im2col_sample(&x[m0 + s_, 0], cols + s_ * d.L, d.C_in, d.S, ld, &d.g)
                    for gi in range(groups):
                        gemm(False, True, <int> d.Cog, <int> K, <int> ld, <floating> 1.0,
                             dy + gi * d.Cog * ld, <int> ld, cols + gi * K * ld, <int> ld,
                             <floating> (1.0 if m0 > n0 else 0.0), dwp + gi * d.Cog * K, <int> K)
                if need_x:
                    if d.pointwise:
                        # K == Cg: dx[n, group g] = W[g]^T dy[n, group g], written in place.
                        dxn = &grad_x[m0, 0]
                        for gi in range(groups):
                            gemm(True, False, <int> K, <int> d.L, <int> d.Cog, <floating> 1.0,
                                 &weight[gi * d.Cog, 0], <int> K, dy + gi * d.Cog * d.L, <int> d.L,
                                 <floating> 0.0, dxn + gi * K * d.L, <int> d.L)
                    else:
                        cols = ws + tid * d.ws_stride
                        for gi in range(groups):
                            gemm(True, False, <int> K, <int> ld, <int> d.Cog, <floating> 1.0,
                                 &weight[gi * d.Cog, 0], <int> K, dy + gi * d.Cog * ld, <int> ld,
                                 <floating> 0.0, cols + gi * K * ld, <int> ld)
                        for s_ in range(nb):
                            _col2im_sample(cols + s_ * d.L, &grad_x[m0 + s_, 0], d.C_in, d.S,
                                           ld, &d.g)
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


cdef void _conv_transpose_forward(const floating* x, Py_ssize_t x_row,
                                  const floating* weight, Py_ssize_t M, const floating* bias,
                                  floating* out, Py_ssize_t out_row, floating* ws,
                                  const ConvDims* d, Py_ssize_t groups,
                                  int num_threads) noexcept nogil:
    """conv_transpose_forward on pointers: x (N, x_row), weight (C_in, M), bias (C_out) or
    NULL, out (N, out_row), ws num_threads * d.ws_stride elements (NULL for 1x1); d.N, d.S >
    0."""
    cdef floating* cols
    cdef floating* yn
    cdef floating* row
    cdef floating b
    cdef Py_ssize_t n, gi, co, l
    cdef int tid
    with parallel(num_threads=num_threads):
        for n in prange(d.N, schedule='static'):
            tid = threadid()
            yn = out + n * out_row
            cols = yn if d.pointwise else ws + tid * d.ws_stride
            for gi in range(groups):
                gemm(True, False, <int> M, <int> d.L, <int> d.Cg, <floating> 1.0,
                     weight + gi * d.Cg * M, <int> M, x + n * x_row + gi * d.Cg * d.L,
                     <int> d.L, <floating> 0.0, cols + gi * M * d.L, <int> d.L)
            if not d.pointwise:
                _col2im_sample(cols, yn, d.C_out, d.S, d.L, &d.g)
            if bias != NULL:
                for co in range(d.C_out):
                    b = bias[co]
                    row = yn + co * d.S
                    for l in range(d.S):
                        row[l] = row[l] + b


def conv_transpose_forward(const floating[:, ::1] x, const floating[:, ::1] weight,
                           const floating[::1] bias, floating[:, ::1] out,
                           floating[::1] workspace, Py_ssize_t groups, tuple out_size,
                           tuple kernel, tuple stride, tuple padding, tuple dilation,
                           tuple in_size, int num_threads):
    """out (N, C_out*S) = conv_transpose(x (N, C_in*L), weight (C_in, Cog*kk)) + bias.

    ``out_size`` is the transposed conv's output (the geometry's input), ``in_size`` its input.
    """
    cdef ConvDims d = _conv_transpose_dims(x.shape[0], weight.shape[0], weight.shape[1], groups,
                                           out_size, kernel, stride, padding, dilation, in_size)
    if d.N == 0 or d.S == 0:
        return
    with nogil:
        _conv_transpose_forward(&x[0, 0], x.shape[1], &weight[0, 0], weight.shape[1],
                                &bias[0] if bias.shape[0] > 0 else NULL, &out[0, 0],
                                out.shape[1], &workspace[0] if workspace.shape[0] > 0 else NULL,
                                &d, groups, num_threads)


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
    cdef ConvDims d = _conv_transpose_dims(x.shape[0], weight.shape[0], weight.shape[1], groups,
                                           out_size, kernel, stride, padding, dilation, in_size)
    cdef Py_ssize_t M = weight.shape[1]
    cdef Py_ssize_t n_chunks = grad_w_parts.shape[0] if need_w else d.N
    cdef floating* ws = &workspace[0] if workspace.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* dwp
    cdef const floating* dyn
    cdef Py_ssize_t j, n, n0, n1, gi
    cdef int tid
    if d.N == 0:
        return
    if d.L == 0:
        if need_w:
            memset(&grad_w_parts[0, 0], 0, n_chunks * d.C_in * M * sizeof(floating))
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * d.N // n_chunks
            n1 = (j + 1) * d.N // n_chunks
            for n in range(n0, n1):
                dyn = &grad_out[n, 0]
                if d.pointwise:
                    cols = <floating*> dyn      # read only below
                else:
                    cols = ws + tid * d.ws_stride
                    _im2col_sample(dyn, cols, d.C_out, d.S, d.L, &d.g)
                for gi in range(groups):
                    if need_w:
                        gemm(False, True, <int> d.Cg, <int> M, <int> d.L, <floating> 1.0,
                             &x[n, gi * d.Cg * d.L], <int> d.L, cols + gi * M * d.L, <int> d.L,
                             <floating> (1.0 if n > n0 else 0.0),
                             &grad_w_parts[j, gi * d.Cg * M], <int> M)
                    if need_x:
                        gemm(False, False, <int> d.Cg, <int> d.L, <int> M, <floating> 1.0,
                             &weight[gi * d.Cg, 0], <int> M, cols + gi * M * d.L, <int> d.L,
                             <floating> 0.0, &grad_x[n, gi * d.Cg * d.L], <int> d.L)


# The inference plan's im2col + GEMM convolution and transposed convolution (plan_steps.pxd):
# conv_forward / conv_transpose_forward with their geometry and a workspace of their own
# bound once.
cdef struct _Im2col:
    const void* x
    const void* weight
    const void* bias            # NULL: none
    void* out
    void* workspace             # NULL: 1x1, none needed
    Py_ssize_t x_row, out_row, K, groups, block
    ConvDims d
    bint transposed, relu, is_double
    int max_threads             # the workspace serves this many threads


cdef void _im2col_step(void* args, int num_threads) noexcept nogil:
    cdef _Im2col* p = <_Im2col*> args
    if num_threads > p.max_threads:         # fewer threads: the same bits
        num_threads = p.max_threads
    if p.transposed:
        if p.is_double:
            _conv_transpose_forward(<const double*> p.x, p.x_row, <const double*> p.weight,
                                    p.K, <const double*> p.bias, <double*> p.out, p.out_row,
                                    <double*> p.workspace, &p.d, p.groups, num_threads)
        else:
            _conv_transpose_forward(<const float*> p.x, p.x_row, <const float*> p.weight, p.K,
                                    <const float*> p.bias, <float*> p.out, p.out_row,
                                    <float*> p.workspace, &p.d, p.groups, num_threads)
    elif p.is_double:
        _conv_forward(<const double*> p.x, p.x_row, <const double*> p.weight, p.K,
                      <const double*> p.bias, <double*> p.out, p.out_row,
                      <double*> p.workspace, &p.d, p.groups, p.block, p.relu, num_threads)
    else:
        _conv_forward(<const float*> p.x, p.x_row, <const float*> p.weight, p.K,
                      <const float*> p.bias, <float*> p.out, p.out_row, <float*> p.workspace,
                      &p.d, p.groups, p.block, p.relu, num_threads)


cdef class Im2colStep(CompiledStep):
    """conv_forward (``block`` samples at a time) or, with ``transposed``, conv_transpose_forward
    (block 1, no relu) of x into out as a plan step, with the same arguments after the arrays:
    ``geometry`` = (in_size, kernel, stride, padding, dilation, out_size) as those functions
    take them; ``per_thread`` = their workspace size, ``workspace`` at least max_threads *
    per_thread elements (a plan's scratch, shared by its steps); on up to ``max_threads``
    threads."""
    cdef _Im2col p

    def __init__(self, x, weight, bias, out, workspace, Py_ssize_t groups, tuple geometry,
                 Py_ssize_t block, bint relu, bint transposed, Py_ssize_t per_thread,
                 int max_threads):
        inputs = [x, weight] if bias.size == 0 else [x, weight, bias]
        dtype = check_arrays("Im2colStep", inputs, [out, workspace])
        if (x.ndim != 2 or out.ndim != 2 or weight.ndim != 2 or x.shape[0] != out.shape[0]
                or x.shape[0] == 0 or block < 1 or max_threads < 1 or groups < 1
                or (transposed and (block != 1 or relu))):
            raise ValueError(f"Im2colStep: x {x.shape}, weight {weight.shape}, out "
                             f"{out.shape} do not make a convolution")
        first, kernel, stride, padding, dilation, last = geometry
        if transposed:
            self.p.d = _conv_transpose_dims(x.shape[0], weight.shape[0], weight.shape[1],
                                            groups, first, kernel, stride, padding, dilation,
                                            last)
            size_in, size_out = self.p.d.C_in * self.p.d.L, self.p.d.C_out * self.p.d.S
        else:
            self.p.d = _conv_dims(x.shape[0], weight.shape[0], weight.shape[1], groups,
                                  first, kernel, stride, padding, dilation, last, block)
            size_in, size_out = self.p.d.C_in * self.p.d.S, self.p.d.C_out * self.p.d.L
        if (x.shape[1] != size_in or out.shape[1] != size_out
                or (bias.size and bias.shape != (self.p.d.C_out,))
                or per_thread < self.p.d.ws_stride):
            raise ValueError(f"Im2colStep: x {x.shape}, weight {weight.shape}, out "
                             f"{out.shape} do not match the geometry {geometry}")
        if workspace.size < per_thread * max_threads:
            raise ValueError(f"Im2colStep: a workspace of {workspace.size} elements is too "
                             f"small for {max_threads} threads")
        self.keep = (x, weight, bias, out, workspace)
        self.p.x, self.p.weight, self.p.out = address(x), address(weight), address(out)
        self.p.bias = address(bias) if bias.size else NULL
        self.p.workspace = address(workspace) if per_thread > 0 else NULL
        self.p.x_row, self.p.out_row = x.shape[1], out.shape[1]
        self.p.K, self.p.groups, self.p.block = weight.shape[1], groups, block
        self.p.transposed, self.p.relu = transposed, relu
        self.p.is_double = dtype == np.float64
        self.p.max_threads = max_threads
        self.body = _im2col_step
        self.args = &self.p
