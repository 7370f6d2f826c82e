"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions: 3x3 kernels, stride 1, no dilation, one
group.

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
so functional/_conv.py uses this kernel for both. The weight transform (weight_transform) is
done once per call (once per plan in an InferenceSession); then come the input transform, the
GEMMs (single-threaded BLAS, or _winograd.h's own kernel) and the output transform, the
transforms in _winograd.inc. Samples go in fixed blocks (a function of the shapes), each block
on one thread: the result does not depend on the number of threads.

F(4x4, 3x3) computes each 4x4 block of outputs from a 6x6 input tile with 36 multiplications
per channel pair instead of 144 (4x fewer than direct; F(2x2, 3x3) saves 2.25x), on the points
0, +-1, +-2 and infinity (Lavin & Gray's matrices):

    B^T = [4  0 -5  0  1  0]     G = [ 1/4     0     0]     A^T = [1  1  1  1  1  0]
          [0 -4 -4  1  1  0]         [-1/6  -1/6  -1/6]           [0  1 -1  2 -2  0]
          [0  4 -4 -1  1  0]         [-1/6   1/6  -1/6]           [0  1  1  4  4  0]
          [0 -2 -1  2  1  0]         [1/24  1/12   1/6]           [0  1 -1  8 -8  1]
          [0  2 -1 -2  1  0]         [1/24 -1/12   1/6]
          [0  4  0 -5  0  1]         [   0     0     1]

36 GEMMs then, on 4x fewer tiles. Its transforms' larger coefficients cost float32 rounding:
a relative error of about 5e-6 to 1e-5 of the largest output (F(2x2, 3x3): a few 1e-7).
``forward`` and ``weight_grad`` run either, as their u (16 or 36 matrices) and parts say.

The weight gradient goes back through the same algebra. With Y = A^T M A, dM = A dY A^T (the
m x m output gradient of a tile spread to (m + 2)^2), and since M = sum_c U . V elementwise,

    dU[xi] (C_out, C) = sum over tiles dM[xi] (C_out, T) @ V[xi]^T (T, C)       dW = G^T dU G

16 (36) GEMMs whose inner dimension is the number of tiles (long: efficient), on 2.25x (4x) fewer
products than im2col's dW = dy @ cols^T and without the 9x larger columns matrix. Tiles past an
odd output size get zero gradient, so they add nothing. As conv.pyx's weight gradient, samples
are cut into fixed chunks, each summed in order into its own dU partial.

3x3 stride-2 convolutions (forward_s2) by Winograd on the polyphase components. With xp the
padded input, y[i, j] = sum w[ki, kj] xp[2i + ki, 2j + kj]: split xp's rows and columns into
even and odd phases and the three taps of an axis become two (ki = 0, 2) on the even phase,
a correlation F(4, 2) computes 4 outputs from 5 inputs with 5 multiplications instead of
8, and one (ki = 1) on the odd phase, 4 multiplications (the identity). On the points 0, 1,
-1, 2 and infinity:

    B^T = [2 -1 -2  1  0]     G = [1/2    0]     A^T = [1  1  1  1  0]
          [0  2  1 -1  0]         [1/2  1/2]           [0  1 -1  2  0]
          [0 -2  3 -1  0]         [1/6 -1/6]           [0  1  1  4  0]
          [0 -1  0  1  0]         [1/6  1/3]           [0  1 -1  8  1]
          [0  2 -1 -2  1]         [  0    1]

(-1/2 or 1/2 for 2 would put 8/3 into B^T, inexact in binary, or 1/24 and 1/48 into G; with
2, B^T and A^T are small integers, exact, and G alone holds sixths, made in double and rounded
once; the float32 error measured alike, about 2.5e-6 of the largest output.) A tile of 4x4
outputs reads the 9x9 region d[k][j] = xp[8 ti + k][8 tj + j]; its even rows and columns e =
d[0::2, 0::2] (5x5), eo = d[0::2, 1::2] (5x4), oe = d[1::2, 0::2] (4x5), oo = d[1::2, 1::2]
(4x4), with the kernel's g_ee = w[0::2, 0::2], g_eo = w[0::2, 1], g_oe = w[1, 0::2], g_oo =
w[1, 1]:

    V_ee = B^T e B, V_eo = B^T eo, V_oe = oe B, V_oo = oo         (81 values a tile)
    U_ee = G g_ee G^T (25), U_eo = G g_eo (5), U_oe = G g_oe (5), U_oo = g_oo (1)
    M_ee[a, b] = sum_c U_ee[a, b] V_ee[a, b], M_eo[a, b] = sum_c U_eo[a] V_eo[a, b], ...
    Y = A^T (M_ee A + M_eo) + (M_oe A + M_oo)                     (4x4 outputs)

81 multiplications per 16 outputs and channel pair instead of 144 (1.78x fewer). The sums
over channels are 36 GEMMs with U's 36 matrices (weight_transform_s2): 25 for ee on the tiles,
and, because U_eo[a] is the same for the 4 columns b (U_oe[b] for the 4 rows a, U_oo for all
16), 5 + 5 on 4 times the tiles and one on 16 times: V_eo's columns b of a row a side by side
in one operand, and so on.

4x4 stride-2 convolutions (forward_s2 with u of 25 matrices; the input gradient of k4 s2
transposed convolutions is one): every tap of an axis meets one phase twice (ki = 0, 2 on the
even phase, 1, 3 on the odd one), so all four phases (pr, pc) are 2x2 kernels g_ph[p][q] =
w[2 p + pr][2 q + pc] and each takes F(4, 2) on both axes: a tile of 4x4 outputs reads the
10x10 region d, e_ph = d[pr::2, pc::2] (5x5), and

    V_ph = B^T e_ph B, U_ph = G g_ph G^T (25 each), M = sum_c sum_ph U_ph . V_ph, Y = A^T M A

with the same B^T, G, A^T. The sum over the phases joins the sum over channels: 25 GEMMs of
U (25, C_out, 4 C) (column 4 c + ph) by V (25, 4 C, tiles); 100 multiplications per 16 outputs
and channel pair instead of 256 (2.56x fewer).
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from libc.string cimport memcpy, memset

from fastcnn._ops._blas cimport gemm
from fastcnn._ops.plan_steps cimport CompiledStep, address

import numpy as np

from fastcnn._ops.plan_steps import check_arrays

cdef extern from "_winograd.h" nogil:
    Py_ssize_t fc_wino_scratch(Py_ssize_t m, Py_ssize_t tiles_h, Py_ssize_t tiles_w)
    Py_ssize_t fc_wino_s2_scratch(Py_ssize_t tiles_h, Py_ssize_t tiles_w)
    void fc_wino_s2_input_f(const float* x, Py_ssize_t sample_stride, Py_ssize_t nb,
                            float* v_ee, float* v_eo, float* v_oe, float* v_oo, float* scratch,
                            Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad,
                            Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t ld,
                            Py_ssize_t xs, Py_ssize_t xs4)
    void fc_wino_s2_input_d(const double* x, Py_ssize_t sample_stride, Py_ssize_t nb,
                            double* v_ee, double* v_eo, double* v_oe, double* v_oo,
                            double* scratch, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t pad, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t ld, Py_ssize_t xs, Py_ssize_t xs4)
    void fc_wino_s2_output_f(const float* m_ee, const float* m_eo, const float* m_oe,
                             const float* m_oo, float* y, float* scratch, Py_ssize_t K,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                             Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs, Py_ssize_t xs4,
                             const float* bias, int relu, const float* res)
    void fc_wino_s2_output_d(const double* m_ee, const double* m_eo, const double* m_oe,
                             const double* m_oo, double* y, double* scratch, Py_ssize_t K,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                             Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs, Py_ssize_t xs4,
                             const double* bias, int relu, const double* res)
    void fc_wino_k4s2_input_f(const float* x, Py_ssize_t sample_stride, Py_ssize_t nb,
                              float* v, float* scratch, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t pad, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                              Py_ssize_t ld, Py_ssize_t xs)
    void fc_wino_k4s2_input_d(const double* x, Py_ssize_t sample_stride, Py_ssize_t nb,
                              double* v, double* scratch, Py_ssize_t C, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h,
                              Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs)
    void fc_wino_k4s2_output_f(const float* m, float* y, float* scratch, Py_ssize_t K,
                               Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                               Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs,
                               const float* bias, int relu, const float* res)
    void fc_wino_k4s2_output_d(const double* m, double* y, double* scratch, Py_ssize_t K,
                               Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                               Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs,
                               const double* bias, int relu, const double* res)
    void fc_wino_input_f(const float* x, Py_ssize_t sample_stride, Py_ssize_t nb, float* v,
                         float* scratch, Py_ssize_t m, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t pad, Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t ld,
                         Py_ssize_t xs)
    void fc_wino_input_d(const double* x, Py_ssize_t sample_stride, Py_ssize_t nb, double* v,
                         double* scratch, Py_ssize_t m, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                         Py_ssize_t ld, Py_ssize_t xs)
    void fc_wino_output_f(const float* mm, float* y, float* scratch, Py_ssize_t m, Py_ssize_t K,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                          Py_ssize_t ld, Py_ssize_t xs, const float* bias, int relu,
                          const float* res)
    void fc_wino_grad_output_f(const float* dy, Py_ssize_t sample_stride, Py_ssize_t nb,
                               float* dm, float* scratch, Py_ssize_t m, Py_ssize_t K,
                               Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                               Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs)
    void fc_wino_grad_output_d(const double* dy, Py_ssize_t sample_stride, Py_ssize_t nb,
                               double* dm, double* scratch, Py_ssize_t m, Py_ssize_t K,
                               Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                               Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs)
    void fc_wino_gemm_f(const float* u, const float* v, float* m, Py_ssize_t xis, Py_ssize_t K,
                        Py_ssize_t C, Py_ssize_t ld, Py_ssize_t vxs, Py_ssize_t mxs)
    void fc_wino_gemm_d(const double* u, const double* v, double* m, Py_ssize_t xis,
                        Py_ssize_t K, Py_ssize_t C, Py_ssize_t ld, Py_ssize_t vxs,
                        Py_ssize_t mxs)
    void fc_wino_output_d(const double* mm, double* y, double* scratch, Py_ssize_t m,
                          Py_ssize_t K, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h,
                          Py_ssize_t tiles_w, Py_ssize_t ld, Py_ssize_t xs, const double* bias,
                          int relu, const double* res)


cdef inline void _input_transform(const floating* x, Py_ssize_t sample_stride, Py_ssize_t nb,
                                  floating* v, floating* scratch, Py_ssize_t m, Py_ssize_t C,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h,
                                  Py_ssize_t tiles_w, Py_ssize_t ld,
                                  Py_ssize_t xs) noexcept nogil:
    """V = B^T d B of F(m x m, 3x3) for nb samples x (C, H, W), sample_stride apart:
    v[xi * xs + c * ld + s * T + tile] (_winograd.inc, vectorized along the tiles)."""
    if floating is float:
        fc_wino_input_f(x, sample_stride, nb, v, scratch, m, C, H, W, pad, tiles_h, tiles_w,
                        ld, xs)
    else:
        fc_wino_input_d(x, sample_stride, nb, v, scratch, m, C, H, W, pad, tiles_h, tiles_w,
                        ld, xs)


cdef inline void _output_transform(const floating* mm, floating* y, floating* scratch,
                                   Py_ssize_t m, Py_ssize_t K, Py_ssize_t OH, Py_ssize_t OW,
                                   Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t ld,
                                   Py_ssize_t xs, const floating* bias, bint relu,
                                   const floating* res) noexcept nogil:
    """y (K, OH, OW) of one sample = A^T M A of F(m x m, 3x3), M = mm[xi * xs + k * ld +
    tile], plus the bias (NULL: none), plus res (y's shape; NULL: none), then max(y, 0) if
    relu (_winograd.inc)."""
    if floating is float:
        fc_wino_output_f(mm, y, scratch, m, K, OH, OW, tiles_h, tiles_w, ld, xs, bias, relu, res)
    else:
        fc_wino_output_d(mm, y, scratch, m, K, OH, OW, tiles_h, tiles_w, ld, xs, bias, relu, res)


cdef inline void _grad_output_transform(const floating* dy, Py_ssize_t sample_stride,
                                        Py_ssize_t nb, floating* dm, floating* scratch,
                                        Py_ssize_t m, Py_ssize_t K, Py_ssize_t OH, Py_ssize_t OW,
                                        Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t ld,
                                        Py_ssize_t xs) noexcept nogil:
    """dM = A dY A^T of F(m x m, 3x3) for nb samples dy (K, OH, OW), sample_stride apart:
    dm[xi * xs + k * ld + s * T + tile] (_winograd.inc)."""
    if floating is float:
        fc_wino_grad_output_f(dy, sample_stride, nb, dm, scratch, m, K, OH, OW, tiles_h,
                              tiles_w, ld, xs)
    else:
        fc_wino_grad_output_d(dy, sample_stride, nb, dm, scratch, m, K, OH, OW, tiles_h,
                              tiles_w, ld, xs)


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


cdef inline void _kernel_transform4(const floating* g, Py_ssize_t row, Py_ssize_t col,
                                    floating* u, Py_ssize_t xi_stride) noexcept nogil:
    """u[xi * xi_stride] = (G g G^T)[xi] of F(4x4, 3x3) for the 3x3 kernel g[r*row + q*col],
    computed in double (G's sixths and twenty-fourths are not exact in binary) and rounded
    once."""
    cdef double t[6][3]
    cdef double g0, g1, g2
    cdef double sixth = 1.0 / 6, twelfth = 1.0 / 12, twenty_fourth = 1.0 / 24
    cdef Py_ssize_t r, q
    for q in range(3):                      # G g: combine rows
        g0 = g[q * col]
        g1 = g[row + q * col]
        g2 = g[2 * row + q * col]
        t[0][q] = g0 * 0.25
        t[1][q] = -(g0 + g1 + g2) * sixth
        t[2][q] = -(g0 - g1 + g2) * sixth
        t[3][q] = g0 * twenty_fourth + g1 * twelfth + g2 * sixth
        t[4][q] = g0 * twenty_fourth - g1 * twelfth + g2 * sixth
        t[5][q] = g2
    for r in range(6):                      # (G g) G^T: combine columns
        g0 = t[r][0]
        g1 = t[r][1]
        g2 = t[r][2]
        u[0] = <floating> (g0 * 0.25)
        u[xi_stride] = <floating> (-(g0 + g1 + g2) * sixth)
        u[2 * xi_stride] = <floating> (-(g0 - g1 + g2) * sixth)
        u[3 * xi_stride] = <floating> (g0 * twenty_fourth + g1 * twelfth + g2 * sixth)
        u[4 * xi_stride] = <floating> (g0 * twenty_fourth - g1 * twelfth + g2 * sixth)
        u[5 * xi_stride] = <floating> g2
        u = u + 6 * xi_stride


cdef inline void _g2(double g0, double g1, double* out) noexcept nogil:
    """out (5) = G (g0, g1) of F(4, 2): G = [1/2 0; 1/2 1/2; 1/6 -1/6; 1/6 1/3; 0 1]."""
    out[0] = g0 * 0.5
    out[1] = (g0 + g1) * 0.5
    out[2] = (g0 - g1) / 6
    out[3] = (g0 + 2 * g1) / 6
    out[4] = g1


cdef inline void _kernel_transform_s2(const floating* g, Py_ssize_t row, Py_ssize_t col,
                                      floating* u, Py_ssize_t xi_stride) noexcept nogil:
    """u[xi * xi_stride] (36) = the stride-2 algorithm's transformed kernel of the 3x3 kernel
    g[r*row + q*col] (module doc): G g_ee G^T (xi = 5 a + b), G (g01, g21) (xi = 25 + a),
    G (g10, g12) (xi = 30 + b), g11 (xi = 35); in double (G's sixths), rounded once."""
    cdef double t[2][5]
    cdef double r[5]
    cdef Py_ssize_t a, b
    _g2(g[0], g[2 * row], t[0])                     # G along the rows of columns 0 and 2
    _g2(g[2 * col], g[2 * row + 2 * col], t[1])
    for a in range(5):                              # ... then along the columns
        _g2(t[0][a], t[1][a], r)
        for b in range(5):
            u[(5 * a + b) * xi_stride] = <floating> r[b]
    _g2(g[col], g[2 * row + col], r)
    for a in range(5):
        u[(25 + a) * xi_stride] = <floating> r[a]
    _g2(g[row], g[row + 2 * col], r)
    for b in range(5):
        u[(30 + b) * xi_stride] = <floating> r[b]
    u[35 * xi_stride] = g[row + col]


cdef inline void _gi2(double g0, double g1, double* out) noexcept nogil:
    """out (5) = Gi (g0, g1), G = diag(1/2, 1/2, 1/6, 1/6, 1) Gi: Gi's integer rows of F(4, 2)."""
    out[0] = g0
    out[1] = g0 + g1
    out[2] = g0 - g1
    out[3] = g0 + 2 * g1
    out[4] = g1


cdef inline void _kernel_transform_k4s2(const floating* g, floating* u,
                                        Py_ssize_t xi_stride) noexcept nogil:
    """u[xi * xi_stride + ph] (25 x 4) = G g_ph G^T (xi = 5 a + b) of the four phases ph = 2 pr
    + pc of the 4x4 kernel g (row-major): g_ph[p][q] = g[2 p + pr][2 q + pc]; in double, as
    (Gi g_ph Gi^T)[a, b] * d_a d_b (G = diag(d) Gi): one multiplication a value instead of
    _g2's divisions by 6 (2048 kernels: 0.085 ms)."""
    cdef double t[2][5]
    cdef double r[5]
    cdef double d[5]
    cdef Py_ssize_t a, b, pr, pc
    d[0] = 0.5
    d[1] = 0.5
    d[2] = 1.0 / 6
    d[3] = 1.0 / 6
    d[4] = 1.0
    for pr in range(2):
        for pc in range(2):
            _gi2(g[4 * pr + pc], g[4 * (pr + 2) + pc], t[0])         # column q = 0, rows p
            _gi2(g[4 * pr + pc + 2], g[4 * (pr + 2) + pc + 2], t[1])  # column q = 1
            for a in range(5):
                _gi2(t[0][a], t[1][a], r)
                for b in range(5):
                    u[(5 * a + b) * xi_stride + 2 * pr + pc] = <floating> (r[b] * (d[a] * d[b]))


# Kernels transformed per pass of _transform_row: its buffer holds (xis, _ROW_BLOCK) values.
DEF _ROW_BLOCK = 64


cdef void _transform_row(const floating[:, :, :, ::1] w, floating[:, :, ::1] u, Py_ssize_t k,
                         bint flip, bint s2=False) noexcept nogil:
    """u[:, k, :] = G g G^T of the kernels g[k, c] (c < C), _ROW_BLOCK at a time through a
    buffer: u's matrices are K*C elements apart, so one kernel's 16 or 36 values written
    directly would touch as many pages (0.44 ms for 128 x 128 kernels, 27 ns a kernel); a
    block's values go out as contiguous rows of u instead."""
    cdef floating buf[36 * _ROW_BLOCK]
    cdef Py_ssize_t xis = u.shape[0], C = u.shape[2], c0, c, nc, xi
    for c0 in range(0, C, _ROW_BLOCK):
        nc = min(_ROW_BLOCK, C - c0)
        for c in range(nc):
            if s2:
                _kernel_transform_s2(&w[k, c0 + c, 0, 0], 3, 1, &buf[c], _ROW_BLOCK)
            elif flip:                        # start at [c, k, 2, 2] and walk backwards
                if xis == 36:
                    _kernel_transform4(&w[c0 + c, k, 2, 2], -3, -1, &buf[c], _ROW_BLOCK)
                else:
                    _kernel_transform(&w[c0 + c, k, 2, 2], -3, -1, &buf[c], _ROW_BLOCK)
            elif xis == 36:
                _kernel_transform4(&w[k, c0 + c, 0, 0], 3, 1, &buf[c], _ROW_BLOCK)
            else:
                _kernel_transform(&w[k, c0 + c, 0, 0], 3, 1, &buf[c], _ROW_BLOCK)
        for xi in range(xis):
            memcpy(&u[xi, k, c0], &buf[xi * _ROW_BLOCK], nc * sizeof(floating))


def weight_transform(const floating[:, :, :, ::1] w, floating[:, :, ::1] u, bint flip,
                     int num_threads):
    """u (xis, K, C) = G g G^T for every 3x3 kernel g of w (K, C, 3, 3): F(2x2, 3x3)'s 16
    matrices (G's entries are 0, 1/2 and 1: exact) or F(4x4, 3x3)'s 36, as u's first axis
    says. With ``flip``, of the input gradient's kernels instead: w (C, K, 3, 3) read
    transposed and rotated by 180 degrees, g[k, c] = w[c, k, ::-1, ::-1]."""
    cdef Py_ssize_t K = u.shape[1]
    cdef Py_ssize_t k
    if u.shape[0] not in (16, 36):
        raise ValueError(f"u must hold 16 or 36 matrices, got {u.shape[0]}")
    with nogil:
        for k in prange(K, schedule='static', num_threads=num_threads):
            _transform_row(w, u, k, flip)


def weight_transform_s2(const floating[:, :, :, ::1] w, floating[:, :, ::1] u, int num_threads):
    """u (36, K, C) = the stride-2 algorithm's transformed kernels of every 3x3 kernel of w
    (K, C, 3, 3) (_kernel_transform_s2; forward_s2's GEMM operands); for 4x4 kernels, w (K, C,
    4, 4), u (25, K, 4 C): the four phases' G g G^T, u[xi, k, 4 c + ph] (_kernel_transform_k4s2)."""
    cdef Py_ssize_t K = u.shape[1]
    cdef Py_ssize_t k
    cdef bint k4 = w.shape[2] == 4
    shape = (25, w.shape[0], 4 * w.shape[1]) if k4 else (36, w.shape[0], w.shape[1])
    got = (u.shape[0], u.shape[1], u.shape[2])
    if got != shape or w.shape[2] != w.shape[3] or w.shape[2] not in (3, 4):
        raise ValueError(f"u must have shape {shape} for w of shape "
                         f"{(w.shape[0], w.shape[1], w.shape[2], w.shape[3])} (3x3 or 4x4 "
                         f"kernels), got {got}")
    with nogil:
        for k in prange(K, schedule='static', num_threads=num_threads):
            if k4:
                _transform_row_k4s2(w, u, k)
            else:
                _transform_row(w, u, k, False, True)


cdef void _transform_row_k4s2(const floating[:, :, :, ::1] w, floating[:, :, ::1] u,
                              Py_ssize_t k) noexcept nogil:
    """u[:, k, :] (25, 4 C) of the 4x4 kernels w[k, c], through a buffer as _transform_row
    (_ROW_BLOCK // 4 kernels a pass, 4 phases each)."""
    cdef floating buf[25 * _ROW_BLOCK]
    cdef Py_ssize_t C = w.shape[1], c0, c, nc, xi
    for c0 in range(0, C, _ROW_BLOCK // 4):
        nc = min(_ROW_BLOCK // 4, C - c0)
        for c in range(nc):
            _kernel_transform_k4s2(&w[k, c0 + c, 0, 0], &buf[4 * c], _ROW_BLOCK)
        for xi in range(25):
            memcpy(&u[xi, k, 4 * c0], &buf[xi * _ROW_BLOCK], 4 * nc * sizeof(floating))


cdef inline void _kernel_grad_transform4(const floating* parts, Py_ssize_t n_chunks,
                                         Py_ssize_t chunk_stride, Py_ssize_t xi_stride,
                                         floating* dw) noexcept nogil:
    """dw (3x3) = G^T dU G of F(4x4, 3x3) (G 6x3 as in the module doc), dU[xi] = the sum over
    chunks j, in order, of parts[j * chunk_stride + xi * xi_stride]; in double."""
    cdef double d[36]
    cdef double p[3][6]
    cdef double sixth = 1.0 / 6, twelfth = 1.0 / 12, twenty_fourth = 1.0 / 24
    cdef Py_ssize_t j, xi, r, q
    for xi in range(36):
        d[xi] = parts[xi * xi_stride]
        for j in range(1, n_chunks):
            d[xi] = d[xi] + parts[j * chunk_stride + xi * xi_stride]
    for q in range(6):                      # G^T dU: combine rows (G's columns)
        p[0][q] = (0.25 * d[q] - sixth * (d[6 + q] + d[12 + q])
                   + twenty_fourth * (d[18 + q] + d[24 + q]))
        p[1][q] = sixth * (d[12 + q] - d[6 + q]) + twelfth * (d[18 + q] - d[24 + q])
        p[2][q] = (-sixth * (d[6 + q] + d[12 + q]) + sixth * (d[18 + q] + d[24 + q])
                   + d[30 + q])
    for r in range(3):                      # (G^T dU) G: combine columns
        dw[3 * r + 0] = <floating> (0.25 * p[r][0] - sixth * (p[r][1] + p[r][2])
                                    + twenty_fourth * (p[r][3] + p[r][4]))
        dw[3 * r + 1] = <floating> (sixth * (p[r][2] - p[r][1]) + twelfth * (p[r][3] - p[r][4]))
        dw[3 * r + 2] = <floating> (-sixth * (p[r][1] + p[r][2]) + sixth * (p[r][3] + p[r][4])
                                    + p[r][5])


def weight_grad_finish(const floating[:, :, ::1] parts, floating[:, :, :, ::1] dw,
                       int num_threads):
    """dw (K, C, 3, 3) = G^T dU G with dU (xis, K*C) the sum of the chunk partials parts
    (n_chunks, xis, K*C), added in chunk order (the same bits for any number of threads);
    xis = 16 for F(2x2, 3x3), 36 for F(4x4, 3x3)."""
    cdef Py_ssize_t n_chunks = parts.shape[0], xis = parts.shape[1]
    cdef Py_ssize_t K = dw.shape[0], C = dw.shape[1], KC = K * C
    cdef Py_ssize_t k, c
    if xis != 16 and xis != 36:
        raise ValueError(f"parts must hold 16 or 36 matrices, got {xis}")
    with nogil:
        for k in prange(K, schedule='static', num_threads=num_threads):
            for c in range(C):
                if xis == 36:
                    _kernel_grad_transform4(&parts[0, 0, k * C + c], n_chunks, 36 * KC, KC,
                                            &dw[k, c, 0, 0])
                else:
                    _kernel_grad_transform(&parts[0, 0, k * C + c], n_chunks, 16 * KC, KC,
                                           &dw[k, c, 0, 0])


# The 16 (36) matrices of V (and of M) are written (read) together, tile by tile: at a distance of a
# power of two they would all fall in the same cache sets. A small skew spreads them.
DEF SKEW = 16


def block_size(Py_ssize_t n, Py_ssize_t tiles):
    """Samples per block of ``forward`` (``tiles`` a sample): about 32 tiles per GEMM, a
    function of the shapes only (never of the thread count: the same bits for any).

    Measured (AVX-512 and AVX2, batch 32, 2 threads; ms): F(2x2, 3x3) on 8x8 maps (16 tiles)
    128 -> 128 channels 1.79 with 2 samples a block, 2.34 with 8 (the earlier rule of 128
    tiles); F(4x4, 3x3) on 8x8 maps (4 tiles) 1.83 with 8, 2.55 with 2; on 16x16 (16 tiles)
    1.74 with 2, 1.84 with 8; from 32x32 maps one sample a block is fastest at both sizes.
    Blocks of more tiles leave threads idle and V and M out of cache."""
    return max(1, min(n, 32 // tiles)) if tiles < 32 else 1


cdef inline Py_ssize_t _tiles(Py_ssize_t size, Py_ssize_t m) noexcept nogil:
    """Tiles of m outputs along an axis of ``size`` outputs (the last one may be partial)."""
    return (size + m - 1) // m


cdef Py_ssize_t _thread_scratch(Py_ssize_t C, Py_ssize_t K, Py_ssize_t span, Py_ssize_t out_h,
                                Py_ssize_t out_w, Py_ssize_t m) noexcept nogil:
    """One thread's scratch for F(m x m, 3x3) (xis = (m + 2)^2 matrices): V (xis, C, span) and
    M (xis, K, span), each matrix padded by SKEW elements, then the transforms' own scratch
    (fc_wino_scratch). forward and weight_grad carve it up the same way (_after)."""
    cdef Py_ssize_t xis = (m + 2) * (m + 2)
    return xis * ((C + K) * span + 2 * SKEW) + fc_wino_scratch(m, _tiles(out_h, m), _tiles(out_w, m))


cdef inline floating* _after(floating* matrices, Py_ssize_t xis, Py_ssize_t rows,
                             Py_ssize_t span) noexcept nogil:
    """Where the scratch continues after ``xis`` skewed (rows, span) matrices starting at
    ``matrices``: V -> M -> the input plane. (Assigned directly in the prange loops, so that
    Cython makes the pointers thread-private.)"""
    return matrices + xis * (rows * span + SKEW)


def workspace_size(Py_ssize_t channels, Py_ssize_t out_channels, Py_ssize_t out_h,
                   Py_ssize_t out_w, Py_ssize_t block, Py_ssize_t m=2):
    """Per-thread scratch of forward (F(m x m, 3x3), m = 2 or 4) and weight_grad (m = 2), for
    ``block`` samples per GEMM."""
    cdef Py_ssize_t tiles = _tiles(out_h, m) * _tiles(out_w, m)
    if m not in (2, 4):
        raise ValueError(f"m must be 2 or 4, got {m}")
    return _thread_scratch(channels, out_channels, block * tiles, out_h, out_w, m)


cdef inline void _block(const floating* x, Py_ssize_t x_row, Py_ssize_t nb,
                        const floating* u, Py_ssize_t xis, Py_ssize_t K, Py_ssize_t C,
                        const floating* bias, floating* out, Py_ssize_t out_row, floating* v,
                        Py_ssize_t span, Py_ssize_t height, Py_ssize_t width, Py_ssize_t pad,
                        Py_ssize_t out_h, Py_ssize_t out_w, bint relu, bint own_gemm,
                        const floating* res) noexcept nogil:
    """One block of nb samples of _forward on one thread: V, M and the transforms' scratch
    carved from ``v`` (_thread_scratch); res: the block's residual rows (out_row apart) or
    NULL."""
    cdef Py_ssize_t m_ = 4 if xis == 36 else 2
    cdef Py_ssize_t tiles_h = _tiles(out_h, m_), tiles_w = _tiles(out_w, m_)
    cdef Py_ssize_t T = tiles_h * tiles_w, ld = nb * T, s_
    cdef floating* m = _after(v, xis, C, span)
    cdef floating* sc = _after(m, xis, K, span)
    _input_transform(x, x_row, nb, v, sc, m_, C, height, width, pad, tiles_h, tiles_w, ld,
                     C * ld + SKEW)
    _gemms(u, K * C, v, m, 0, xis, K, C, ld, C * ld + SKEW, K * ld + SKEW, own_gemm)
    for s_ in range(nb):
        _output_transform(m + s_ * T, out + s_ * out_row, sc, m_, K, out_h, out_w, tiles_h,
                          tiles_w, ld, K * ld + SKEW, bias, relu,
                          res + s_ * out_row if res != NULL else NULL)


cdef inline void _gemms(const floating* u, Py_ssize_t uxs, const floating* v, floating* m,
                        Py_ssize_t xi0, Py_ssize_t xi1, Py_ssize_t K, Py_ssize_t C, Py_ssize_t ld,
                        Py_ssize_t vxs, Py_ssize_t mxs, bint own_gemm) noexcept nogil:
    """M[xi] (K, ld) = U[xi] (K, C) @ V[xi] (C, ld) for xi in [xi0, xi1), U's matrices uxs
    apart (K * C, or more: K of their rows): one fixed sum per output, whichever thread or
    range computes it."""
    cdef Py_ssize_t xi
    if own_gemm and uxs != K * C:
        for xi in range(xi0, xi1):
            if floating is float:
                fc_wino_gemm_f(u + xi * uxs, v + xi * vxs, m + xi * mxs, 1, K, C, ld, vxs, mxs)
            else:
                fc_wino_gemm_d(u + xi * uxs, v + xi * vxs, m + xi * mxs, 1, K, C, ld, vxs, mxs)
        return
    if own_gemm:
        if floating is float:
            fc_wino_gemm_f(u + xi0 * K * C, v + xi0 * vxs, m + xi0 * mxs, xi1 - xi0, K, C, ld,
                           vxs, mxs)
        else:
            fc_wino_gemm_d(u + xi0 * K * C, v + xi0 * vxs, m + xi0 * mxs, xi1 - xi0, K, C, ld,
                           vxs, mxs)
        return
    for xi in range(xi0, xi1):
        gemm(False, False, <int> K, <int> ld, <int> C, <floating> 1.0, u + xi * uxs, <int> C,
             v + xi * vxs, <int> ld, <floating> 0.0, m + xi * mxs, <int> ld)


cdef void _forward(const floating* x, Py_ssize_t N, Py_ssize_t x_row, const floating* u,
                   Py_ssize_t xis, Py_ssize_t K, Py_ssize_t C, const floating* bias,
                   floating* out, Py_ssize_t out_row, floating* ws, Py_ssize_t height,
                   Py_ssize_t width, Py_ssize_t pad, Py_ssize_t out_h, Py_ssize_t out_w,
                   Py_ssize_t block, bint relu, int num_threads, bint own_gemm,
                   const floating* res) noexcept nogil:
    """forward on pointers (N > 0; bias, res NULL: none; res has out's rows). Blocks of ``block`` samples, each on one
    thread; with fewer blocks than threads (inference at batch 1), each block's three phases
    are cut over the team instead: the input transform by channels, the GEMMs by xi, the
    output transform by output channels, V and M in thread 0's scratch. Every value is
    computed by the same code on the same operands either way: the same bits."""
    cdef Py_ssize_t m_ = 4 if xis == 36 else 2
    cdef Py_ssize_t tiles_h = _tiles(out_h, m_), tiles_w = _tiles(out_w, m_)
    cdef Py_ssize_t T = tiles_h * tiles_w
    cdef Py_ssize_t span = block * T
    cdef Py_ssize_t ws_stride = _thread_scratch(C, K, span, out_h, out_w, m_)
    cdef Py_ssize_t blocks = (N + block - 1) // block
    cdef Py_ssize_t j, n0, nb, ld, s_, part, lo, hi, parts
    cdef floating* v
    cdef floating* m
    cdef floating* sc
    if num_threads == 1:                    # no team to start
        for j in range(blocks):
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            _block(x + n0 * x_row, x_row, nb, u, xis, K, C, bias, out + n0 * out_row, out_row,
                   ws, span, height, width, pad, out_h, out_w, relu, own_gemm,
                   res + n0 * out_row if res != NULL else NULL)
        return
    if blocks >= num_threads:
        for j in prange(blocks, schedule='static', num_threads=num_threads):
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            _block(x + n0 * x_row, x_row, nb, u, xis, K, C, bias, out + n0 * out_row, out_row,
                   ws + threadid() * ws_stride, span, height, width, pad, out_h, out_w, relu,
                   own_gemm, res + n0 * out_row if res != NULL else NULL)
        return
    v = ws
    m = _after(v, xis, C, span)
    parts = num_threads
    for j in range(blocks):
        n0 = j * block
        nb = block if n0 + block <= N else N - n0
        ld = nb * T
        for part in prange(parts, schedule='static', num_threads=num_threads):
            lo = part * C // parts
            hi = (part + 1) * C // parts
            sc = _after(_after(ws + threadid() * ws_stride, xis, C, span), xis, K, span)
            if hi > lo:
                _input_transform(x + n0 * x_row + lo * height * width, x_row, nb, v + lo * ld,
                                 sc, m_, hi - lo, height, width, pad, tiles_h, tiles_w, ld,
                                 C * ld + SKEW)
        for part in prange(parts, schedule='static', num_threads=num_threads):
            _gemms(u, K * C, v, m, part * xis // parts, (part + 1) * xis // parts, K, C, ld,
                   C * ld + SKEW, K * ld + SKEW, own_gemm)
        for part in prange(parts, schedule='static', num_threads=num_threads):
            lo = part * K // parts
            hi = (part + 1) * K // parts
            sc = _after(_after(ws + threadid() * ws_stride, xis, C, span), xis, K, span)
            if hi > lo:
                for s_ in range(nb):
                    _output_transform(m + s_ * T + lo * ld,
                                      out + (n0 + s_) * out_row + lo * out_h * out_w, sc, m_,
                                      hi - lo, out_h, out_w, tiles_h, tiles_w, ld,
                                      K * ld + SKEW, bias + lo if bias != NULL else NULL,
                                      relu,
                                      res + (n0 + s_) * out_row + lo * out_h * out_w
                                      if res != NULL else NULL)


def forward(const floating[:, ::1] x, const floating[:, :, ::1] u, const floating[::1] bias,
            floating[:, ::1] out, floating[::1] workspace, Py_ssize_t height, Py_ssize_t width,
            Py_ssize_t pad, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block, bint relu,
            int num_threads, bint own_gemm=False, const floating[:, ::1] residual=None):
    """out (N, C_out*OH*OW) = conv3x3(x (N, C*H*W), pad) with u (xis, C_out, C) = G g G^T
    (weight_transform: 16 matrices for F(2x2, 3x3), 36 for F(4x4, 3x3)), plus bias, plus
    ``residual`` (out's shape; None: none), then max(out, 0) if relu. The workspace is
    workspace_size(..., block, m) per thread. ``own_gemm``: the GEMMs by fc_wino_gemm rather
    than BLAS (single-threaded: the caller's single_threaded_blas)."""
    cdef Py_ssize_t N = x.shape[0], xis = u.shape[0], K = u.shape[1], C = u.shape[2]
    cdef const floating* res = NULL
    if xis != 16 and xis != 36:
        raise ValueError(f"u must hold 16 or 36 matrices, got {xis}")
    if residual is not None:
        if residual.shape[0] != out.shape[0] or residual.shape[1] != out.shape[1]:
            raise ValueError(f"residual must have out's shape ({out.shape[0]}, "
                             f"{out.shape[1]}), got ({residual.shape[0]}, {residual.shape[1]})")
        if N > 0:
            res = &residual[0, 0]
    if N == 0:
        return
    with nogil:
        _forward(&x[0, 0], N, x.shape[1], &u[0, 0, 0], xis, K, C,
                 &bias[0] if bias.shape[0] > 0 else NULL, &out[0, 0], out.shape[1],
                 &workspace[0], height, width, pad, out_h, out_w, block, relu, num_threads,
                 own_gemm, res)


# ---- 3x3 stride-2 convolutions: Winograd on the polyphase components (module doc) ----------
# V (and M) of a block: four groups after one another, each row c (k) of a channel holding the
# block's ld tiles per column block: ee, 25 matrices (rows, ld), xs apart; eo and oe, 5 matrices
# each (rows, 4 ld), xs4 apart (eo's column blocks are the odd columns b, oe's the odd rows a);
# oo, one matrix (rows, 16 ld). Each group is as many GEMMs with U's 36 matrices: M = U V.


cdef inline Py_ssize_t _s2_size(Py_ssize_t rows, Py_ssize_t span) noexcept nogil:
    """Elements of the four groups of V (rows = C) or M (rows = C_out) for span tiles."""
    return 81 * rows * span + 36 * SKEW


cdef inline void _s2_groups(floating* v, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t r0,
                            floating** g, Py_ssize_t* xs, Py_ssize_t* xs4) noexcept nogil:
    """g[0..3]: row r0 of the groups ee, eo, oe, oo of V or M (``rows`` rows, ld tiles a
    column block) at v; xs, xs4: the matrix strides of ee and of eo / oe."""
    xs[0] = rows * ld + SKEW
    xs4[0] = 4 * rows * ld + SKEW
    g[0] = v + r0 * ld
    g[1] = v + 25 * xs[0] + r0 * 4 * ld
    g[2] = v + 25 * xs[0] + 5 * xs4[0] + r0 * 4 * ld
    g[3] = v + 25 * xs[0] + 10 * xs4[0] + r0 * 16 * ld


cdef inline void _s2_input(const floating* x, Py_ssize_t x_row, Py_ssize_t nb, floating* v,
                           floating* sc, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t C,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h,
                           Py_ssize_t tiles_w, Py_ssize_t ld) noexcept nogil:
    """V of channels [c0, c1) of nb samples x (C, H, W), x_row apart (_winograd.inc)."""
    cdef floating* g[4]
    cdef Py_ssize_t xs, xs4
    _s2_groups(v, C, ld, c0, g, &xs, &xs4)
    if floating is float:
        fc_wino_s2_input_f(x + c0 * H * W, x_row, nb, g[0], g[1], g[2], g[3], sc, c1 - c0, H, W,
                           pad, tiles_h, tiles_w, ld, xs, xs4)
    else:
        fc_wino_s2_input_d(x + c0 * H * W, x_row, nb, g[0], g[1], g[2], g[3], sc, c1 - c0, H, W,
                           pad, tiles_h, tiles_w, ld, xs, xs4)


cdef inline void _s2_output(floating* m, Py_ssize_t rows, Py_ssize_t r0, Py_ssize_t r1,
                            Py_ssize_t s_, Py_ssize_t T, floating* y, floating* sc,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t ld, const floating* bias, bint relu,
                            const floating* res) noexcept nogil:
    """Rows [r0, r1) of M (``rows`` rows: output channels), sample s_ of the block, into y
    (r1 - r0, OH, OW) (+ bias (r1 - r0,), + res (y's shape, or NULL), ReLU) (_winograd.inc)."""
    cdef floating* g[4]
    cdef Py_ssize_t xs, xs4, i
    _s2_groups(m, rows, ld, r0, g, &xs, &xs4)
    for i in range(4):
        g[i] = g[i] + s_ * T
    if floating is float:
        fc_wino_s2_output_f(g[0], g[1], g[2], g[3], y, sc, r1 - r0, OH, OW, tiles_h, tiles_w, ld,
                            xs, xs4, bias, relu, res)
    else:
        fc_wino_s2_output_d(g[0], g[1], g[2], g[3], y, sc, r1 - r0, OH, OW, tiles_h, tiles_w, ld,
                            xs, xs4, bias, relu, res)


cdef inline Py_ssize_t _s2_cost(Py_ssize_t g) noexcept nogil:
    """GEMM units before the group GEMM g (of 36): ee's 25 of 1, eo's and oe's 10 of 4 (column
    blocks), oo's one of 16."""
    if g <= 25:
        return g
    if g <= 35:
        return 25 + 4 * (g - 25)
    return 81


# Output channels per GEMM call of forward_s2 (rows of U): a block's M is made and consumed
# this many channels at a time, so that it stays in L2 with V (64 -> 128 channels from 56x56:
# V 1 MB a sample, M 2 MB).
DEF S2_K_BLOCK = 32


cdef inline void _s2_gemms(const floating* u, Py_ssize_t K, Py_ssize_t k0, Py_ssize_t k1,
                           floating* v, floating* m, Py_ssize_t m_rows, Py_ssize_t m_row0,
                           Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t C, Py_ssize_t ld,
                           bint own_gemm) noexcept nogil:
    """Rows [k0, k1) (a multiple of S2_K_BLOCK from k0, or to K) of the group GEMMs g in
    [g0, g1) of a block (M = U V; g < 25 ee, < 35 eo and oe, 35 oo) into rows m_row0.. of M
    (m_rows rows), S2_K_BLOCK rows a call: the same calls, so the same bits, whichever thread
    runs them and however M is held."""
    cdef floating* gv[4]
    cdef floating* gm[4]
    cdef Py_ssize_t vxs, vxs4, mxs, mxs4, a, b, kb, kn
    cdef const floating* uk
    _s2_groups(v, C, ld, 0, gv, &vxs, &vxs4)
    for kb in range(k0, k1, S2_K_BLOCK):
        kn = min(S2_K_BLOCK, k1 - kb)
        uk = u + kb * C
        _s2_groups(m, m_rows, ld, m_row0 + kb - k0, gm, &mxs, &mxs4)
        a, b = max(g0, 0), min(g1, 25)
        if b > a:
            _gemms(uk, K * C, gv[0], gm[0], a, b, kn, C, ld, vxs, mxs, own_gemm)
        a, b = max(g0, 25), min(g1, 35)
        if b > a:
            _gemms(uk + 25 * K * C, K * C, gv[1], gm[1], a - 25, b - 25, kn, C, 4 * ld, vxs4,
                   mxs4, own_gemm)
        if g0 <= 35 < g1:
            _gemms(uk + 35 * K * C, K * C, gv[3], gm[3], 0, 1, kn, C, 16 * ld, 0, 0, own_gemm)


# ---- 4x4 stride-2 kernels (k4): all four polyphase components are 2x2 kernels, each F(4, 2)
# on both axes (_winograd.inc fc_wino_k4s2_input): V is 25 matrices of 4 C rows (row 4 c + ph:
# channel c, phase ph = 2 pr + pc), M 25 of K rows, U (25, K, 4 C); 25 GEMMs whose inner
# dimension sums over the channels and the phases together (100 products per 4x4 tile and
# channel pair instead of 256 direct).


cdef inline Py_ssize_t _s2_vsize(Py_ssize_t C, Py_ssize_t span, bint k4) noexcept nogil:
    """Elements of V of C input channels for span tiles."""
    return 25 * (4 * C * span + SKEW) if k4 else _s2_size(C, span)


cdef inline Py_ssize_t _s2_msize(Py_ssize_t K, Py_ssize_t span, bint k4) noexcept nogil:
    """Elements of M of K output channels for span tiles."""
    return 25 * (K * span + SKEW) if k4 else _s2_size(K, span)


cdef inline void _k4_input(const floating* x, Py_ssize_t x_row, Py_ssize_t nb, floating* v,
                           floating* sc, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t C,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad, Py_ssize_t tiles_h,
                           Py_ssize_t tiles_w, Py_ssize_t ld) noexcept nogil:
    """V (k4) of channels [c0, c1) of nb samples x (C, H, W), x_row apart."""
    if floating is float:
        fc_wino_k4s2_input_f(x + c0 * H * W, x_row, nb, v + 4 * c0 * ld, sc, c1 - c0, H, W, pad,
                             tiles_h, tiles_w, ld, 4 * C * ld + SKEW)
    else:
        fc_wino_k4s2_input_d(x + c0 * H * W, x_row, nb, v + 4 * c0 * ld, sc, c1 - c0, H, W, pad,
                             tiles_h, tiles_w, ld, 4 * C * ld + SKEW)


cdef inline void _k4_output(floating* m, Py_ssize_t rows, Py_ssize_t r0, Py_ssize_t r1,
                            Py_ssize_t s_, Py_ssize_t T, floating* y, floating* sc,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t ld, const floating* bias, bint relu,
                            const floating* res) noexcept nogil:
    """_s2_output's work for k4's M."""
    if floating is float:
        fc_wino_k4s2_output_f(m + r0 * ld + s_ * T, y, sc, r1 - r0, OH, OW, tiles_h, tiles_w, ld,
                              rows * ld + SKEW, bias, relu, res)
    else:
        fc_wino_k4s2_output_d(m + r0 * ld + s_ * T, y, sc, r1 - r0, OH, OW, tiles_h, tiles_w, ld,
                              rows * ld + SKEW, bias, relu, res)


cdef inline void _k4_gemms(const floating* u, Py_ssize_t K, Py_ssize_t k0, Py_ssize_t k1,
                           floating* v, floating* m, Py_ssize_t m_rows, Py_ssize_t m_row0,
                           Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t C, Py_ssize_t ld,
                           bint own_gemm) noexcept nogil:
    """_s2_gemms' work for k4: the GEMMs xi in [g0, g1) of the 25, S2_K_BLOCK rows a call."""
    cdef Py_ssize_t C4 = 4 * C, kb, kn
    for kb in range(k0, k1, S2_K_BLOCK):
        kn = min(S2_K_BLOCK, k1 - kb)
        _gemms(u + kb * C4, K * C4, v, m + (m_row0 + kb - k0) * ld, g0, g1, kn, C4, ld,
               C4 * ld + SKEW, m_rows * ld + SKEW, own_gemm)


cdef Py_ssize_t _s2_thread_scratch(Py_ssize_t C, Py_ssize_t K, Py_ssize_t span, Py_ssize_t out_h,
                                   Py_ssize_t out_w, bint k4) noexcept nogil:
    """One thread's scratch of forward_s2: V, M (span tiles), the transforms' scratch."""
    return (_s2_vsize(C, span, k4) + _s2_msize(K, span, k4)
            + fc_wino_s2_scratch(_tiles(out_h, 4), _tiles(out_w, 4)))


def workspace_size_s2(Py_ssize_t channels, Py_ssize_t out_channels, Py_ssize_t out_h,
                      Py_ssize_t out_w, Py_ssize_t block, Py_ssize_t kernel=3):
    """Per-thread scratch of forward_s2 for ``block`` samples per GEMM (kernel: 3 or 4)."""
    return _s2_thread_scratch(channels, out_channels,
                              block * _tiles(out_h, 4) * _tiles(out_w, 4), out_h, out_w,
                              kernel == 4)


cdef inline void _s2_block(const floating* x, Py_ssize_t x_row, Py_ssize_t nb,
                           const floating* u, Py_ssize_t K, Py_ssize_t C, const floating* bias,
                           floating* out, Py_ssize_t out_row, floating* v, Py_ssize_t span,
                           Py_ssize_t height, Py_ssize_t width, Py_ssize_t pad, Py_ssize_t out_h,
                           Py_ssize_t out_w, bint relu, bint own_gemm,
                           const floating* res, bint k4) noexcept nogil:
    """One block of nb samples of _forward_s2 on one thread (V, M, scratch carved from v)."""
    cdef Py_ssize_t tiles_h = _tiles(out_h, 4), tiles_w = _tiles(out_w, 4)
    cdef Py_ssize_t T = tiles_h * tiles_w, ld = nb * T, s_
    cdef Py_ssize_t kb, kn, plane = out_h * out_w
    cdef floating* m = v + _s2_vsize(C, span, k4)
    cdef floating* sc = m + _s2_msize(K, span, k4)
    if k4:
        _k4_input(x, x_row, nb, v, sc, 0, C, C, height, width, pad, tiles_h, tiles_w, ld)
    else:
        _s2_input(x, x_row, nb, v, sc, 0, C, C, height, width, pad, tiles_h, tiles_w, ld)
    for kb in range(0, K, S2_K_BLOCK):      # M made and consumed a block of channels at a time
        kn = min(S2_K_BLOCK, K - kb)
        if k4:
            _k4_gemms(u, K, kb, kb + kn, v, m, kn, 0, 0, 25, C, ld, own_gemm)
        else:
            _s2_gemms(u, K, kb, kb + kn, v, m, kn, 0, 0, 36, C, ld, own_gemm)
        for s_ in range(nb):
            if k4:
                _k4_output(m, kn, 0, kn, s_, T, out + s_ * out_row + kb * plane, sc, out_h,
                           out_w, tiles_h, tiles_w, ld, bias + kb if bias != NULL else NULL,
                           relu, res + s_ * out_row + kb * plane if res != NULL else NULL)
            else:
                _s2_output(m, kn, 0, kn, s_, T, out + s_ * out_row + kb * plane, sc, out_h,
                           out_w, tiles_h, tiles_w, ld, bias + kb if bias != NULL else NULL,
                           relu, res + s_ * out_row + kb * plane if res != NULL else NULL)


cdef void _forward_s2(const floating* x, Py_ssize_t N, Py_ssize_t x_row, const floating* u,
                      Py_ssize_t K, Py_ssize_t C, const floating* bias, floating* out,
                      Py_ssize_t out_row, floating* ws, Py_ssize_t height, Py_ssize_t width,
                      Py_ssize_t pad, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block,
                      bint relu, int num_threads, bint own_gemm,
                      const floating* res, bint k4) noexcept nogil:
    """forward_s2 on pointers (N > 0; k4: 4x4 kernels, u (25, K, 4 C)), as _forward: blocks of ``block`` samples each on one
    thread, or with fewer blocks than threads each block's phases cut over the team (the input
    transform by channels, the group GEMMs by their cost, the output transform by output
    channels): the same bits either way."""
    cdef Py_ssize_t tiles_h = _tiles(out_h, 4), tiles_w = _tiles(out_w, 4)
    cdef Py_ssize_t T = tiles_h * tiles_w
    cdef Py_ssize_t span = block * T
    cdef Py_ssize_t ws_stride = _s2_thread_scratch(C, K, span, out_h, out_w, k4)
    cdef Py_ssize_t blocks = (N + block - 1) // block
    cdef Py_ssize_t j, n0, nb, ld, s_, part, lo, hi, parts, g0, g1
    cdef Py_ssize_t vsize = _s2_vsize(C, span, k4), msize = _s2_msize(K, span, k4)
    cdef Py_ssize_t n_gemms = 25 if k4 else 36, units = 25 if k4 else 81
    cdef floating* v
    cdef floating* m
    cdef floating* sc
    if num_threads == 1:
        for j in range(blocks):
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            _s2_block(x + n0 * x_row, x_row, nb, u, K, C, bias, out + n0 * out_row, out_row, ws,
                      span, height, width, pad, out_h, out_w, relu, own_gemm,
                      res + n0 * out_row if res != NULL else NULL, k4)
        return
    if blocks >= num_threads:
        for j in prange(blocks, schedule='static', num_threads=num_threads):
            n0 = j * block
            nb = block if n0 + block <= N else N - n0
            _s2_block(x + n0 * x_row, x_row, nb, u, K, C, bias, out + n0 * out_row, out_row,
                      ws + threadid() * ws_stride, span, height, width, pad, out_h, out_w, relu,
                      own_gemm, res + n0 * out_row if res != NULL else NULL, k4)
        return
    v = ws
    m = v + vsize
    parts = num_threads
    for j in range(blocks):
        n0 = j * block
        nb = block if n0 + block <= N else N - n0
        ld = nb * T
        for part in prange(parts, schedule='static', num_threads=num_threads):
            lo = part * C // parts
            hi = (part + 1) * C // parts
            sc = ws + threadid() * ws_stride + vsize + msize
            if hi > lo and k4:
                _k4_input(x + n0 * x_row, x_row, nb, v, sc, lo, hi, C, height, width, pad,
                          tiles_h, tiles_w, ld)
            elif hi > lo:
                _s2_input(x + n0 * x_row, x_row, nb, v, sc, lo, hi, C, height, width, pad,
                          tiles_h, tiles_w, ld)
        for part in prange(parts, schedule='static', num_threads=num_threads):
            g0 = 0                          # the GEMMs whose cost starts in this part's share
            while (g0 if k4 else _s2_cost(g0)) < part * units // parts:
                g0 = g0 + 1
            g1 = g0
            while g1 < n_gemms and (g1 if k4 else _s2_cost(g1)) < (part + 1) * units // parts:
                g1 = g1 + 1
            if part == parts - 1:
                g1 = n_gemms
            if k4:
                _k4_gemms(u, K, 0, K, v, m, K, 0, g0, g1, C, ld, own_gemm)
            else:
                _s2_gemms(u, K, 0, K, v, m, K, 0, g0, g1, C, ld, own_gemm)
        for part in prange(parts, schedule='static', num_threads=num_threads):
            lo = part * K // parts
            hi = (part + 1) * K // parts
            sc = ws + threadid() * ws_stride + vsize + msize
            if hi > lo:
                for s_ in range(nb):
                    if k4:
                        _k4_output(m, K, lo, hi, s_, T,
                                   out + (n0 + s_) * out_row + lo * out_h * out_w, sc, out_h,
                                   out_w, tiles_h, tiles_w, ld,
                                   bias + lo if bias != NULL else NULL, relu,
                                   res + (n0 + s_) * out_row + lo * out_h * out_w
                                   if res != NULL else NULL)
                        continue
                    _s2_output(m, K, lo, hi, s_, T,
                               out + (n0 + s_) * out_row + lo * out_h * out_w, sc, out_h, out_w,
                               tiles_h, tiles_w, ld, bias + lo if bias != NULL else NULL, relu,
                               res + (n0 + s_) * out_row + lo * out_h * out_w
                               if res != NULL else NULL)


def s2_out_size(Py_ssize_t size, Py_ssize_t pad, Py_ssize_t kernel=3):
    """Outputs along an axis of ``size`` inputs of a 3x3 (kernel=4: 4x4) stride-2 convolution
    padded by pad."""
    return (size + 2 * pad - kernel) // 2 + 1


def forward_s2(const floating[:, ::1] x, const floating[:, :, ::1] u, const floating[::1] bias,
               floating[:, ::1] out, floating[::1] workspace, Py_ssize_t height,
               Py_ssize_t width, Py_ssize_t pad, Py_ssize_t block, bint relu, int num_threads,
               bint own_gemm=False, const floating[:, ::1] residual=None):
    """out (N, C_out*OH*OW) = the 3x3 stride-2 convolution of x (N, C*H*W) padded by ``pad``,
    with u (36, C_out, C) = weight_transform_s2's, by Winograd on the polyphase components
    (module doc), plus bias, plus ``residual`` (out's shape; None: none), then max(out, 0) if
    relu; with u (25, C_out, 4 C), the 4x4 stride-2 convolution instead. The workspace is
    workspace_size_s2(..., block, kernel) per thread; ``own_gemm``: the GEMMs by fc_wino_gemm
    rather than single-threaded BLAS."""
    cdef bint k4 = u.shape[0] == 25
    cdef Py_ssize_t kernel = 4 if k4 else 3
    cdef Py_ssize_t N = x.shape[0], K = u.shape[1], C = u.shape[2] // 4 if k4 else u.shape[2]
    cdef Py_ssize_t out_h = s2_out_size(height, pad, kernel)
    cdef Py_ssize_t out_w = s2_out_size(width, pad, kernel)
    cdef const floating* res = NULL
    _check_s2("forward_s2", x, u, bias, out, residual, height, width, pad, block, num_threads)
    if workspace.shape[0] < num_threads * workspace_size_s2(C, K, out_h, out_w, block, kernel):
        raise ValueError(f"forward_s2: a workspace of {workspace.shape[0]} elements is too small "
                         f"for {num_threads} threads")
    if N == 0:
        return
    if residual is not None:
        res = &residual[0, 0]
    with nogil:
        _forward_s2(&x[0, 0], N, x.shape[1], &u[0, 0, 0], K, C,
                    &bias[0] if bias.shape[0] > 0 else NULL, &out[0, 0], out.shape[1],
                    &workspace[0], height, width, pad, out_h, out_w, block, relu, num_threads,
                    own_gemm, res, k4)


def _check_s2(name, x, u, bias, out, residual, Py_ssize_t height, Py_ssize_t width,
              Py_ssize_t pad, Py_ssize_t block, int num_threads):
    """ValueError unless the arrays fit a 3x3 stride-2 convolution of height x width maps
    padded by pad (0 <= pad <= 2) with u (36, C_out, C), or a 4x4 one (0 <= pad <= 3) with u
    (25, C_out, 4 C)."""
    if u.shape[0] not in (36, 25) or (u.shape[0] == 25 and u.shape[2] % 4):
        raise ValueError(f"{name}: u must hold 36 matrices (36, C_out, C) or 25 (25, C_out, "
                         f"4 C), got shape {tuple(u.shape)}")
    kernel = 4 if u.shape[0] == 25 else 3
    K, C = u.shape[1], u.shape[2] // (4 if kernel == 4 else 1)
    out_h, out_w = s2_out_size(height, pad, kernel), s2_out_size(width, pad, kernel)
    if (x.shape[0] != out.shape[0] or x.shape[1] != C * height * width
            or out.shape[1] != K * out_h * out_w or min(height, width, out_h, out_w) < 1
            or not 0 <= pad <= kernel - 1 or bias.shape[0] not in (0, K) or block < 1
            or num_threads < 1):
        raise ValueError(f"{name}: x {tuple(x.shape)}, u {tuple(u.shape)}, bias "
                         f"{tuple(bias.shape)}, out {tuple(out.shape)} do not match a "
                         f"{kernel}x{kernel} stride-2 convolution of {height}x{width} maps "
                         f"padded by {pad}")
    if residual is not None and tuple(residual.shape) != tuple(out.shape):
        raise ValueError(f"{name}: residual {tuple(residual.shape)} is not out's shape "
                         f"{tuple(out.shape)}")


# The inference plan's Winograd convolution (plan_steps.pxd): forward with its transformed
# kernels (WinogradOperands) and the plan's workspace bound once.
cdef struct _Winograd:
    const void* x
    const void* u
    const void* bias            # NULL: none
    const void* res             # the residual added before the ReLU; NULL: none
    void* out
    void* workspace
    Py_ssize_t N, x_row, out_row, xis, K, C, height, width, pad, out_h, out_w, block
    bint relu, own_gemm, is_double, s2     # s2: forward_s2 (3x3 stride 2)
    bint k4                     # ... of 4x4 kernels
    int max_threads             # the workspace serves this many threads


cdef void _winograd_step(void* args, int num_threads) noexcept nogil:
    cdef _Winograd* p = <_Winograd*> args
    if num_threads > p.max_threads:         # fewer threads: the same bits
        num_threads = p.max_threads
    if p.s2:
        if p.is_double:
            _forward_s2(<const double*> p.x, p.N, p.x_row, <const double*> p.u, p.K, p.C,
                        <const double*> p.bias, <double*> p.out, p.out_row,
                        <double*> p.workspace, p.height, p.width, p.pad, p.out_h, p.out_w,
                        p.block, p.relu, num_threads, p.own_gemm, <const double*> p.res, p.k4)
        else:
            _forward_s2(<const float*> p.x, p.N, p.x_row, <const float*> p.u, p.K, p.C,
                        <const float*> p.bias, <float*> p.out, p.out_row, <float*> p.workspace,
                        p.height, p.width, p.pad, p.out_h, p.out_w, p.block, p.relu,
                        num_threads, p.own_gemm, <const float*> p.res, p.k4)
    elif p.is_double:
        _forward(<const double*> p.x, p.N, p.x_row, <const double*> p.u, p.xis, p.K, p.C,
                 <const double*> p.bias, <double*> p.out, p.out_row, <double*> p.workspace,
                 p.height, p.width, p.pad, p.out_h, p.out_w, p.block, p.relu, num_threads,
                 p.own_gemm, <const double*> p.res)
    else:
        _forward(<const float*> p.x, p.N, p.x_row, <const float*> p.u, p.xis, p.K, p.C,
                 <const float*> p.bias, <float*> p.out, p.out_row, <float*> p.workspace,
                 p.height, p.width, p.pad, p.out_h, p.out_w, p.block, p.relu, num_threads,
                 p.own_gemm, <const float*> p.res)


cdef class WinogradStep(CompiledStep):
    """forward(x, u, bias, out, workspace, height, width, pad, out_h, out_w, block, relu,
    threads, own_gemm, residual) as a plan step, on up to ``max_threads`` threads: ``residual``
    (out's shape, or None) is added before the ReLU (a residual block's add fused into its
    convolution); ``workspace`` holds
    at least max_threads * workspace_size(...) elements (the plan's scratch, shared by its
    steps, which run one at a time); a run asking for more threads uses max_threads. BLAS
    GEMMs (own_gemm False) need single-threaded BLAS, as the plan's run sets. With
    ``stride=2``, forward_s2's work instead (u: weight_transform_s2's 36 matrices, or 25 for
    4x4 kernels; workspace by workspace_size_s2)."""
    cdef _Winograd p

    def __init__(self, x, u, bias, out, workspace, Py_ssize_t height, Py_ssize_t width,
                 Py_ssize_t pad, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block,
                 bint relu, bint own_gemm, int max_threads, residual=None, int stride=1):
        dtype = check_arrays("WinogradStep", [x, u, bias] + ([] if residual is None
                                                                else [residual]),
                             [out, workspace])
        if residual is not None and residual.shape != out.shape:
            raise ValueError(f"WinogradStep: residual {residual.shape} is not out's shape "
                             f"{out.shape}")
        if stride not in (1, 2):
            raise ValueError(f"WinogradStep: stride must be 1 or 2, got {stride}")
        if stride == 2:
            if x.ndim != 2 or out.ndim != 2 or u.ndim != 3 or bias.ndim != 1 or x.shape[0] == 0:
                raise ValueError(f"WinogradStep: x {x.shape}, u {u.shape}, bias {bias.shape}, "
                                 f"out {out.shape} must be 2-D, 3-D, 1-D, 2-D with samples")
            _check_s2("WinogradStep", x, u, bias, out, None, height, width, pad, block,
                      max_threads)
            kernel = 4 if u.shape[0] == 25 else 3
            if (out_h, out_w) != (s2_out_size(height, pad, kernel),
                                  s2_out_size(width, pad, kernel)):
                raise ValueError(f"WinogradStep: out_h, out_w ({out_h}, {out_w}) are not a "
                                 f"{kernel}x{kernel} stride-2 convolution's of "
                                 f"{height}x{width} maps padded by {pad}")
            xis, K, C = u.shape
            if kernel == 4:
                C = C // 4
            need = workspace_size_s2(C, K, out_h, out_w, block, kernel)
        else:
            if u.ndim != 3 or u.shape[0] not in (16, 36):
                raise ValueError(f"WinogradStep: u must hold 16 or 36 matrices (xis, C_out, C), "
                                 f"got shape {u.shape}")
            xis, K, C = u.shape
            m_ = 4 if xis == 36 else 2
            if (x.ndim != 2 or out.ndim != 2 or x.shape[0] != out.shape[0] or x.shape[0] == 0
                    or x.shape[1] != C * height * width or out.shape[1] != K * out_h * out_w
                    or out_h != height + 2 * pad - 2 or out_w != width + 2 * pad - 2
                    or min(height, width, out_h, out_w) < 1 or not 0 <= pad <= 2
                    or bias.shape not in ((0,), (K,)) or block < 1 or max_threads < 1):
                raise ValueError(f"WinogradStep: x {x.shape}, u {u.shape}, bias {bias.shape}, "
                                 f"out {out.shape} do not match a 3x3 convolution of "
                                 f"{height}x{width} maps padded by {pad}")
            need = workspace_size(C, K, out_h, out_w, block, m_)
        if workspace.size < max_threads * need:
            raise ValueError(f"WinogradStep: a workspace of {workspace.size} elements is too "
                             f"small for {max_threads} threads")
        self.keep = (x, u, bias, out, workspace, residual)
        self.p.x, self.p.u, self.p.out = address(x), address(u), address(out)
        self.p.res = address(residual) if residual is not None else NULL
        self.p.bias = address(bias) if bias.shape[0] else NULL
        self.p.workspace = address(workspace)
        self.p.N, self.p.x_row, self.p.out_row = x.shape[0], x.shape[1], out.shape[1]
        self.p.xis, self.p.K, self.p.C = xis, K, C
        self.p.height, self.p.width, self.p.pad = height, width, pad
        self.p.out_h, self.p.out_w, self.p.block = out_h, out_w, block
        self.p.relu, self.p.own_gemm = relu, own_gemm
        self.p.is_double = dtype == np.float64
        self.p.s2 = stride == 2
        self.p.k4 = stride == 2 and u.shape[0] == 25
        self.p.max_threads = max_threads
        self.body = _winograd_step
        self.args = &self.p


def weight_grad(const floating[:, ::1] x, const floating[:, ::1] dy, floating[:, :, ::1] parts,
                floating[::1] workspace, Py_ssize_t height, Py_ssize_t width, Py_ssize_t pad,
                Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t block, int num_threads):
    """parts (n_chunks, xis, C_out*C): dU partials of the 3x3 weight gradient (see module doc)
    by F(2x2, 3x3) (xis = 16) or F(4x4, 3x3) (xis = 36), as parts' second axis says.

    x (N, C*H*W), dy (N, C_out*OH*OW). Chunk j sums samples [j*N//n_chunks, (j+1)*N//n_chunks)
    in order, ``block`` at a time; adding the partials in chunk order and applying
    dW = G^T dU G is the caller's (weight_grad_finish). The workspace is
    workspace_size(..., block, m) per thread.
    """
    cdef Py_ssize_t N = x.shape[0], n_chunks = parts.shape[0], xis = parts.shape[1]
    cdef Py_ssize_t m_ = 4 if xis == 36 else 2
    cdef Py_ssize_t K = dy.shape[1] // (out_h * out_w), C = x.shape[1] // (height * width)
    cdef Py_ssize_t tiles_h = _tiles(out_h, m_), tiles_w = _tiles(out_w, m_)
    cdef Py_ssize_t T = tiles_h * tiles_w
    cdef Py_ssize_t span = block * T
    cdef Py_ssize_t ws_stride = _thread_scratch(C, K, span, out_h, out_w, m_)
    cdef floating* ws = &workspace[0]
    cdef floating* v
    cdef floating* m
    cdef floating* sc
    cdef Py_ssize_t j, n0, n1, m0, nb, ld, xi
    cdef int tid
    if xis != 16 and xis != 36:
        raise ValueError(f"parts must hold 16 or 36 matrices, got {xis}")
    if N == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for j in prange(n_chunks, schedule='dynamic'):
            tid = threadid()
            n0 = j * N // n_chunks
            n1 = (j + 1) * N // n_chunks
            v = ws + tid * ws_stride
            m = _after(v, xis, C, span)
            sc = _after(m, xis, K, span)
            m0 = n0
            while m0 < n1:
                nb = block if m0 + block <= n1 else n1 - m0
                ld = nb * T
                _input_transform(&x[m0, 0], x.shape[1], nb, v, sc, m_, C, height, width, pad,
                                 tiles_h, tiles_w, ld, C * ld + SKEW)
                _grad_output_transform(&dy[m0, 0], dy.shape[1], nb, m, sc, m_, K, out_h,
                                       out_w, tiles_h, tiles_w, ld, K * ld + SKEW)
                for xi in range(xis):
                    gemm(False, True, <int> K, <int> C, <int> ld, <floating> 1.0,
                         m + xi * (K * ld + SKEW), <int> ld, v + xi * (C * ld + SKEW), <int> ld,
                         <floating> (1.0 if m0 > n0 else 0.0), &parts[j, xi, 0], <int> C)
                m0 = m0 + nb
