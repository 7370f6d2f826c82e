"""Winograd F(2x2, 3x3) convolution: 3x3 kernels, stride 1, no dilation, one group.

Each 2x2 block of outputs is computed from a 4x4 input tile d with 16 multiplications per
(input, output) channel pair instead of 36 (Lavin & Gray, 2015):

    V = B^T d B          (input tile, 4x4)        B^T = [1  0 -1  0]
    U = G g G^T          (3x3 kernel -> 4x4)            [0  1  1  0]
    M = sum_c U . V      (elementwise, per pair)        [0 -1  1  0]
    Y = A^T M A          (2x2 outputs)                  [0  1  0 -1]

    G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1].

The sum over channels is 16 GEMMs, one per tile position xi: M[xi] (C_out, T) =
U[xi] (C_out, C) @ V[xi] (C, T), T being the tiles of a block of samples. The input gradient of
such a convolution is one too (dy convolved with the flipped, transposed kernels, padding 2 - p),
so functional.py uses this kernel for both. The weight transform (weight_transform) is done
once per call; then come the input transform, the GEMMs and the output transform. Samples go
in fixed blocks (a function of the shapes), each block on one thread with single-threaded
BLAS: the result does not depend on the number of threads.

The weight gradient goes back through the same algebra. With Y = A^T M A, dM = A dY A^T (the
2x2 output gradient of a tile spread to 4x4), and since M = sum_c U . V elementwise,

    dU[xi] (C_out, C) = sum over tiles dM[xi] (C_out, T) @ V[xi]^T (T, C)       dW = G^T dU G

16 GEMMs whose inner dimension is the number of tiles (long: efficient), on 2.25x fewer
products than im2col's dW = dy @ cols^T and without the 9x larger columns matrix. Tiles past an
odd output size get zero gradient, so they add nothing. As conv.pyx's weight gradient, samples
are cut into fixed chunks, each summed in order into its own dU partial.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from libc.string cimport memcpy, memset

from fastcnn._ops._blas cimport gemm
from fastcnn._ops._epilogue cimport bias_relu


cdef void _pad_plane(const floating* plane, floating* pb, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t pad, Py_ssize_t Hp, Py_ssize_t Wp) noexcept nogil:
    """pb (Hp, Wp) = the plane (H, W) with ``pad`` zero rows and columns before it and zeros
    after, up to Hp x Wp (>= H + pad, W + pad)."""
    cdef Py_ssize_t r, ih
    cdef floating* row
    for r in range(Hp):
        row = pb + r * Wp
        ih = r - pad
        if ih < 0 or ih >= H:
            memset(row, 0, Wp * sizeof(floating))
        else:
            memset(row, 0, pad * sizeof(floating))
            memcpy(row + pad, plane + ih * W, W * sizeof(floating))
            memset(row + pad + W, 0, (Wp - pad - W) * sizeof(floating))


cdef void _input_transform(const floating* x, floating* v, floating* pb, Py_ssize_t C,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h,
                           Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xi_stride) noexcept nogil:
    """V for one sample: v[xi * xi_stride + c * ld + tile] (tile = ti * tiles_w + tj).

    Each channel is first copied into the zero-bordered plane ``pb`` (padded_plane_size
    elements), so that every tile reads 4x4 values without bounds checks (a third of the
    tiles touch the border on an 8x8 map)."""
    cdef Py_ssize_t Hp = 2 * tiles_h + 2, Wp = 2 * tiles_w + 2
    cdef Py_ssize_t c, ti, tj, k
    cdef floating t[4][4]
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    cdef floating* dst
    for c in range(C):
        _pad_plane(x + c * H * W, pb, H, W, pad, Hp, Wp)
        for ti in range(tiles_h):
            r0 = pb + 2 * ti * Wp
            r1 = r0 + Wp
            r2 = r1 + Wp
            r3 = r2 + Wp
            dst = v + c * ld + ti * tiles_w
            for tj in range(tiles_w):
                for k in range(4):          # B^T d: combine rows
                    t[0][k] = r0[2 * tj + k] - r2[2 * tj + k]
                    t[1][k] = r1[2 * tj + k] + r2[2 * tj + k]
                    t[2][k] = r2[2 * tj + k] - r1[2 * tj + k]
                    t[3][k] = r1[2 * tj + k] - r3[2 * tj + k]
                for k in range(4):          # (B^T d) B: combine columns
                    dst[(4 * k + 0) * xi_stride + tj] = t[k][0] - t[k][2]
                    dst[(4 * k + 1) * xi_stride + tj] = t[k][1] + t[k][2]
                    dst[(4 * k + 2) * xi_stride + tj] = t[k][2] - t[k][1]
                    dst[(4 * k + 3) * xi_stride + tj] = t[k][1] - t[k][3]


cdef Py_ssize_t padded_plane_size(Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    """Elements of the zero-bordered copy of one input plane the input transform reads."""
    return (2 * ((out_h + 1) // 2) + 2) * (2 * ((out_w + 1) // 2) + 2)


cdef void _output_transform(const floating* m, floating* y, Py_ssize_t K, Py_ssize_t OH,
                            Py_ssize_t OW, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t ld, Py_ssize_t xi_stride, const floating* bias,
                            bint has_bias, bint relu) noexcept nogil:
    """y (K, OH, OW) of one sample from m[xi * xi_stride + k * ld + tile], plus the bias, then
    max(y, 0) if relu."""
    cdef Py_ssize_t k, ti, tj, r, a, b, tile, oh, ow
    cdef floating q[4][4]
    cdef floating u[2][4]
    cdef floating out[2][2]
    cdef floating bk
    cdef const floating* src
    for k in range(K):
        bk = bias[k] if has_bias else 0
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                tile = ti * tiles_w + tj
                src = m + k * ld + tile
                for r in range(4):
                    for a in range(4):
                        q[r][a] = src[(4 * r + a) * xi_stride]
                for a in range(4):          # A^T q: combine rows
                    u[0][a] = q[0][a] + q[1][a] + q[2][a]
                    u[1][a] = q[1][a] - q[2][a] - q[3][a]
                for r in range(2):          # (A^T q) A: combine columns
                    out[r][0] = u[r][0] + u[r][1] + u[r][2]
                    out[r][1] = u[r][1] - u[r][2] - u[r][3]
                oh = 2 * ti
                ow = 2 * tj
                if oh + 1 < OH and ow + 1 < OW:      # all but the last row/column of odd maps
                    y[(k * OH + oh) * OW + ow] = bias_relu(out[0][0], bk, relu)
                    y[(k * OH + oh) * OW + ow + 1] = bias_relu(out[0][1], bk, relu)
                    y[(k * OH + oh + 1) * OW + ow] = bias_relu(out[1][0], bk, relu)
                    y[(k * OH + oh + 1) * OW + ow + 1] = bias_relu(out[1][1], bk, relu)
                    continue
                for a in range(2):
                    if oh + a >= OH:
                        break
                    for b in range(2):
                        if ow + b < OW:
                            y[(k * OH + oh + a) * OW + ow + b] = bias_relu(out[a][b], bk, relu)


cdef void _grad_output_transform(const floating* dy, floating* m, Py_ssize_t K, Py_ssize_t OH,
                                 Py_ssize_t OW, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                                 Py_ssize_t ld, Py_ssize_t xi_stride) noexcept nogil:
    """dM = A dY A^T for one sample's dy (K, OH, OW): m[xi * xi_stride + k * ld + tile]."""
    cdef Py_ssize_t k, ti, tj, a, b, oh, ow, r
    cdef floating y[2][2]
    cdef floating q[4][2]
    cdef floating* dst
    for k in range(K):
        for ti in range(tiles_h):
            for tj in range(tiles_w):
                oh = 2 * ti
                ow = 2 * tj
                if oh + 1 < OH and ow + 1 < OW:      # all but the last row/column of odd maps
                    y[0][0] = dy[(k * OH + oh) * OW + ow]
                    y[0][1] = dy[(k * OH + oh) * OW + ow + 1]
                    y[1][0] = dy[(k * OH + oh + 1) * OW + ow]
                    y[1][1] = dy[(k * OH + oh + 1) * OW + ow + 1]
                else:
                    for a in range(2):
                        for b in range(2):
                            y[a][b] = (dy[(k * OH + oh + a) * OW + ow + b]
                                       if oh + a < OH and ow + b < OW else 0)
                for b in range(2):          # A y: spread rows
                    q[0][b] = y[0][b]
                    q[1][b] = y[0][b] + y[1][b]
                    q[2][b] = y[0][b] - y[1][b]
                    q[3][b] = -y[1][b]
                dst = m + k * ld + ti * tiles_w + tj
                for r in range(4):          # (A y) A^T: spread columns
                    dst[(4 * r + 0) * xi_stride] = q[r][0]
                    dst[(4 * r + 1) * xi_stride] = q[r][0] + q[r][1]
                    dst[(4 * r + 2) * xi_stride] = q[r][0] - q[r][1]
                    dst[(4 * r + 3) * xi_stride] = -q[r][1]


cdef inline void _kernel_transform(const floating* g, Py_ssize_t row, Py_ssize_t col,
                                   floating* u, Py_ssize_t xi_stride) noexcept nogil:
    """u[xi * xi_stride] = (G g G^T)[xi] for the 3x3 kernel g[r*row + q*col]."""
    cdef floating t[4][3]
    cdef Py_ssize_t r, q
    for q in range(3):                      # G g: combine rows
        t[0][q] = g[q * col]
        t[1][q] = (g[q * col] + g[row + q * col] + g[2 * row + q * col]) * <floating> 0.5
        t[2][q] = (g[q * col] - g[row + q * col] + g[2 * row + q * col]) * <floating> 0.5
        t[3][q] = g[2 * row + q * col]
    for r in range(4):                      # (G g) G^T: combine columns
        u[(4 * r + 0) * xi_stride] = t[r][0]
        u[(4 * r + 1) * xi_stride] = (t[r][0] + t[r][1] + t[r][2]) * <floating> 0.5
        u[(4 * r + 2) * xi_stride] = (t[r][0] - t[r][1] + t[r][2]) * <floating> 0.5
        u[(4 * r + 3) * xi_stride] = t[r][2]


cdef inline void _kernel_grad_transform(const floating* parts, Py_ssize_t n_chunks,
                                        Py_ssize_t chunk_stride, Py_ssize_t xi_stride,
                                        floating* dw) noexcept nogil:
    """dw (3x3) = G^T dU G, dU[xi] = the sum over chunks j, in order, of
    parts[j * chunk_stride + xi * xi_stride]."""
    cdef floating d[16]
    cdef floating p[3][4]
    cdef Py_ssize_t j, xi, r, q
    for xi in range(16):
        d[xi] = parts[xi * xi_stride]
        for j in range(1, n_chunks):
            d[xi] = d[xi] + parts[j * chunk_stride + xi * xi_stride]
    for q in range(4):                      # G^T dU: combine rows
        p[0][q] = d[q] + (d[4 + q] + d[8 + q]) * <floating> 0.5
        p[1][q] = (d[4 + q] - d[8 + q]) * <floating> 0.5
        p[2][q] = (d[4 + q] + d[8 + q]) * <floating> 0.5 + d[12 + q]
    for r in range(3):                      # (G^T dU) G: combine columns
        dw[3 * r + 0] = p[r][0] + (p[r][1] + p[r][2]) * <floating> 0.5
        dw[3 * r + 1] = (p[r][1] - p[r][2]) * <floating> 0.5
        dw[3 * r + 2] = (p[r][1] + p[r][2]) * <floating> 0.5 + p[r][3]


def weight_transform(const floating[:, :, :, ::1] w, floating[:, :, ::1] u, bint flip,
                     int num_threads):
    """u (16, K, C) = G g G^T for every 3x3 kernel g of w (K, C, 3, 3); with ``flip``, of the
    input gradient's kernels instead: w (C, K, 3, 3) read transposed and rotated by 180
    degrees, g[k, c] = w[c, k, ::-1, ::-1]. G's entries are 0, 1/2 and 1: exact."""
    cdef Py_ssize_t K = u.shape[1], C = u.shape[2], KC = K * C
    cdef Py_ssize_t k, c
    with nogil:
        for k in prange(K, schedule='static', num_threads=num_threads):
            for c in range(C):
                if flip:                    # start at [c, k, 2, 2] and walk backwards
                    _kernel_transform(&w[c, k, 2, 2], -3, -1, &u[0, k, c], KC)
                else:
                    _kernel_transform(&w[k, c, 0, 0], 3, 1, &u[0, k, c], KC)


def weight_grad_finish(const floating[:, :, ::1] parts, floating[:, :, :, ::1] dw,
                       int num_threads):
    """dw (K, C, 3, 3) = G^T dU G with dU (16, K*C) the sum of the chunk partials parts
    (n_chunks, 16, K*C), added in chunk order (the same bits for any number of threads)."""
    cdef Py_ssize_t n_chunks = parts.shape[0], K = dw.shape[0], C = dw.shape[1], KC = K * C
    cdef Py_ssize_t k, c
    with nogil:
        for k in prange(K, schedule='static', num_threads=num_threads):
            for c in range(C):
                _kernel_grad_transform(&parts[0, 0, k * C + c], n_chunks, 16 * KC, KC,
                                       &dw[k, c, 0, 0])


# The 16 matrices of V (and of M) are written (read) together, tile by tile: at a distance of a
# power of two they would all fall in the same cache sets. A small skew spreads them.
DEF SKEW = 16


def block_size(Py_ssize_t n, Py_ssize_t tiles):
    """Samples per GEMM block: enough tiles for efficient GEMMs (a function of shapes only)."""
    return max(1, min(n, 128 // tiles)) if tiles < 128 else 1


cdef Py_ssize_t _thread_scratch(Py_ssize_t C, Py_ssize_t K, Py_ssize_t span, Py_ssize_t out_h,
                                Py_ssize_t out_w) noexcept nogil:
    """One thread's scratch: V (16, C, span) and M (16, K, span), each of the 16 matrices
    padded by SKEW elements, then the zero-bordered input plane. forward and weight_grad carve
    it up the same way (_after)."""
    return 16 * ((C + K) * span + 2 * SKEW) + padded_plane_size(out_h, out_w)


cdef inline floating* _after(floating* matrices, Py_ssize_t rows,
                             Py_ssize_t span) noexcept nogil:
    """Where the scratch continues after 16 skewed (rows, span) matrices starting at
    ``matrices``: V -> M -> the input plane. (Assigned directly in the prange loops, so that
    Cython makes the pointers thread-private.)"""
    return matrices + 16 * (rows * span + SKEW)


def workspace_size(Py_ssize_t channels, Py_ssize_t out_channels, Py_ssize_t out_h,
                   Py_ssize_t out_w, Py_ssize_t block):
    """Per-thread scratch of forward and weight_grad, for ``block`` samples per GEMM."""
    cdef Py_ssize_t tiles = ((out_h + 1) // 2) * ((out_w + 1) // 2)
    return _thread_scratch(channels, out_channels, block * tiles, out_h, out_w)


def forward(const floating[:, ::1] x, const floating[:, :, ::1] u, const floating[::1] bias,
            floating[:, ::1] out, floating[::1] workspace, Py_ssize_t height, Py_ssize_t width,
            Py_ssize_t pad, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block, bint relu,
            int num_threads):
    """out (N, C_out*OH*OW) = conv3x3(x (N, C*H*W), pad) with u (16, C_out, C) = G g G^T, plus
    bias, then max(out, 0) if relu."""
    cdef Py_ssize_t N = x.shape[0], K = u.shape[1], C = u.shape[2]
    cdef Py_ssize_t tiles_h = (out_h + 1) // 2, tiles_w = (out_w + 1) // 2
    cdef Py_ssize_t T = tiles_h * tiles_w
    cdef Py_ssize_t span = block * T
    cdef Py_ssize_t ws_stride = _thread_scratch(C, K, span, out_h, out_w)
    cdef Py_ssize_t blocks = (N + block - 1) // block
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* ws = &workspace[0]
    cdef const floating* pbias = &bias[0] if has_bias else NULL
    cdef floating* v
    cdef floating* m
    cdef floating* pb
    cdef Py_ssize_t j, n0, nb, ld, s_, xi
    cdef int tid
    if N == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(blocks, schedule='static'):
            tid = threadid()
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            ld = nb * T
            v = ws + tid * ws_stride
            m = _after(v, C, span)
            pb = _after(m, K, span)
            for s_ in range(nb):
                _input_transform(&x[n0 + s_, 0], v + s_ * T, pb, C, height, width, pad, tiles_h,
                                 tiles_w, ld, C * ld + SKEW)
            for xi in range(16):
                gemm(False, False, <int> K, <int> ld, <int> C, <floating> 1.0,
                     &u[xi, 0, 0], <int> C, v + xi * (C * ld + SKEW), <int> ld,
                     <floating> 0.0, m + xi * (K * ld + SKEW), <int> ld)
            for s_ in range(nb):
                _output_transform(m + s_ * T, &out[n0 + s_, 0], K, out_h, out_w, tiles_h,
                                  tiles_w, ld, K * ld + SKEW, pbias, has_bias, relu)


def weight_grad(const floating[:, ::1] x, const floating[:, ::1] dy, floating[:, :, ::1] parts,
                floating[::1] workspace, Py_ssize_t height, Py_ssize_t width, Py_ssize_t pad,
                Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block, int num_threads):
    """parts (n_chunks, 16, C_out*C): dU partials of the 3x3 weight gradient (see module doc).

    x (N, C*H*W), dy (N, C_out*OH*OW). Chunk j sums samples [j*N//n_chunks, (j+1)*N//n_chunks)
    in order, ``block`` at a time; adding the partials in chunk order and applying
    dW = G^T dU G is the caller's. The workspace is as for ``forward``, per thread.
    """
    cdef Py_ssize_t N = x.shape[0], n_chunks = parts.shape[0]
    cdef Py_ssize_t K = dy.shape[1] // (out_h * out_w), C = x.shape[1] // (height * width)
    cdef Py_ssize_t tiles_h = (out_h + 1) // 2, tiles_w = (out_w + 1) // 2
    cdef Py_ssize_t T = tiles_h * tiles_w
    cdef Py_ssize_t span = block * T
    cdef Py_ssize_t ws_stride = _thread_scratch(C, K, span, out_h, out_w)
    cdef floating* ws = &workspace[0]
    cdef floating* v
    cdef floating* m
    cdef floating* pb
    cdef Py_ssize_t j, n0, n1, m0, nb, ld, s_, xi
    cdef int tid
    if N == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * N // n_chunks
            n1 = (j + 1) * N // n_chunks
            v = ws + tid * ws_stride
            m = _after(v, C, span)
            pb = _after(m, K, span)
            m0 = n0
            while m0 < n1:
                nb = block if m0 + block <= n1 else n1 - m0
                ld = nb * T
                for s_ in range(nb):
                    _input_transform(&x[m0 + s_, 0], v + s_ * T, pb, C, height, width, pad,
                                     tiles_h, tiles_w, ld, C * ld + SKEW)
                    _grad_output_transform(&dy[m0 + s_, 0], m + s_ * T, K, out_h, out_w,
                                           tiles_h, tiles_w, ld, K * ld + SKEW)
                for xi in range(16):
                    gemm(False, True, <int> K, <int> C, <int> ld, <floating> 1.0,
                         m + xi * (K * ld + SKEW), <int> ld, v + xi * (C * ld + SKEW), <int> ld,
                         <floating> (1.0 if m0 > n0 else 0.0), &parts[j, xi, 0], <int> C)
                m0 = m0 + nb
