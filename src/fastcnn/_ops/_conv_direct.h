/* Direct convolutions (2-D, one group) computed in place from a zero-bordered copy of each
 * sample, compiled per x86-64 level by _simd.h's dispatch; functional/_conv_algorithms.py picks
 * them by measured rules, and only where the AVX-512 clone runs (their register blocks need its
 * 32 vector registers; the AVX2 clone spills accumulators to the stack and runs 10x slower):
 *   - fc_direct_conv: vectorized along output channels, for small maps (below);
 *   - fc_direct_conv_rows: vectorized along output rows, for wide maps and few taps or
 *     channels (first layers, transposed convolutions' phases, stride-1 input gradients);
 *   - fc_dw_rows: the weight gradient on the row kernel's layout.
 *
 * The channel kernel, for small layers (LeNet's, strided ones): few output channels.
 *
 * im2col + GEMM spends most of such a layer in im2col (LeNet's second convolution: 1,500
 * ten-element row copies per sample, more time than the GEMM) and the GEMM, 16 rows high, is too
 * thin for BLAS. Here each output is computed in place from a zero-bordered copy of the sample:
 *
 *     y[co, oh, ow] = bias[co] + sum_k wt[k, co] * xp[off[k] + oh*sH * Wp + ow*sW]
 *
 * with k = (ci, kh, kw) and off[k] = ci*Hp*Wp + kh*dH*Wp + kw*dW. The innermost loop runs over
 * FC_CO output channels (one AVX-512 vector of floats, two of AVX2), eight outputs (2 rows x
 * FC_POS) share each weight load, and their accumulators stay in registers. The sum over k runs
 * in a fixed order: the result does not depend on threads.
 */
#ifndef FASTCNN_CONV_DIRECT_H
#define FASTCNN_CONV_DIRECT_H

#include "_simd.h"

#define FC_CO 16        /* output channels per block; wt and bias are padded to a multiple */
#define FC_POS 4        /* output positions per block along a row */

/* y (cout, oh_n*ow_n) of one sample from its padded planes xp; wt (K, cpad), bias (cpad);
 * relu: max(y, 0) as it is stored (NaN kept, -0 -> 0, as fastcnn's relu).
 * xp must hold sh + 1 rows and FC_POS * sw elements past the last plane (the tail blocks
 * read them; conv.pyx's direct_workspace_size). Strides sh, sw: output (oh, ow) reads the
 * planes from (oh*sh, ow*sw).
 * The FC_CO channels are one GCC vector (zmm registers in the AVX-512 clone, ymm pairs in the
 * AVX2 one): written as vectors, not left to the auto-vectorizer, which kept the accumulators
 * in memory. */
#define FC_DIRECT_CONV(T, sfx)                                                               \
typedef T fc_vec_##sfx __attribute__((vector_size(FC_CO * sizeof(T))));                     \
FC_KERNEL_VOID(fc_direct_conv_##sfx,                                                         \
    (const T *xp, const T *wt, const T *bias, T *y, const ptrdiff_t *off, ptrdiff_t K,       \
     ptrdiff_t cout, ptrdiff_t cpad, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t wp,           \
     ptrdiff_t sh, ptrdiff_t sw, int relu),                                                  \
    (xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, sw, relu),                     \
{                                                                                            \
    ptrdiff_t co0, oh, ow, k, c, j, r, L = oh_n * ow_n;                                      \
    for (co0 = 0; co0 < cout; co0 += FC_CO) {                                                \
        ptrdiff_t nc = cout - co0 < FC_CO ? cout - co0 : FC_CO;                              \
        fc_vec_##sfx b;                                                                      \
        memcpy(&b, bias + co0, sizeof b);                                                    \
        for (oh = 0; oh < oh_n; oh += 2) {                                                   \
            /* two rows of FC_POS outputs: 8 independent accumulators hide the FMA latency;  \
               an odd last row reads the zero row below it (xp has it) and is not stored */ \
            for (ow = 0; ow < ow_n; ow += FC_POS) {                                          \
                fc_vec_##sfx a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b, w;\
                T out[2 * FC_POS][FC_CO];                                                    \
                const T *base = xp + oh * sh * wp + ow * sw;                                 \
                for (k = 0; k < K; k++) {                                                    \
                    const T *x0 = base + off[k], *x1 = x0 + sh * wp;                         \
                    memcpy(&w, wt + k * cpad + co0, sizeof w);                               \
                    a0 += x0[0 * sw] * w;                                                    \
                    a1 += x0[1 * sw] * w;                                                    \
                    a2 += x0[2 * sw] * w;                                                    \
                    a3 += x0[3 * sw] * w;                                                    \
                    a4 += x1[0 * sw] * w;                                                    \
                    a5 += x1[1 * sw] * w;                                                    \
                    a6 += x1[2 * sw] * w;                                                    \
                    a7 += x1[3 * sw] * w;                                                    \
                }                                                                            \
                memcpy(out[0], &a0, sizeof a0);                                              \
                memcpy(out[1], &a1, sizeof a1);                                              \
                memcpy(out[2], &a2, sizeof a2);                                              \
                memcpy(out[3], &a3, sizeof a3);                                              \
                memcpy(out[4], &a4, sizeof a4);                                              \
                memcpy(out[5], &a5, sizeof a5);                                              \
                memcpy(out[6], &a6, sizeof a6);                                              \
                memcpy(out[7], &a7, sizeof a7);                                              \
                if (relu)                                                                    \
                    for (j = 0; j < 2 * FC_POS; j++)                                         \
                        for (c = 0; c < FC_CO; c++)                                          \
                            out[j][c] = out[j][c] <= 0 ? 0 : out[j][c];                      \
                for (r = 0; r < 2 && oh + r < oh_n; r++)                                     \
                    for (j = 0; j < FC_POS && ow + j < ow_n; j++)                            \
                        for (c = 0; c < nc; c++)                                             \
                            y[(co0 + c) * L + (oh + r) * ow_n + ow + j] = out[r * FC_POS + j][c];\
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
})

FC_DIRECT_CONV(float, f)
FC_DIRECT_CONV(double, d)

/* The same convolution vectorized along the output rows instead of the channels, for wide maps
 * with few taps or few output channels (first layers, among others). There the channel-vector
 * kernel above spends more time transposing its results into place than multiplying. Here one
 * vector of outputs of a row (16 floats or 8 doubles in the wide variant) of up to FC_ROW_CO
 * channels is computed at a time: each tap is one contiguous load of xp and one multiply-add by
 * a broadcast weight per channel, and the results are stored as they lie. The loads are
 * contiguous because xp is read at stride 1 along the width (a width stride: conv.pyx stores
 * each plane as its column phases); any stride sh down the rows. A row's last block reads up to
 * FC_ROW_TAIL - 1 elements past the row (past the last plane for the last row: conv.pyx's
 * workspace has that tail) and stores only the outputs that exist. relu: max(y, 0) with NaN
 * kept and -0 -> 0, as relu.
 * Output (co, oh, ow) goes to y[co * yc + oh * yh + ow * yw]: (oh_n * ow_n, ow_n, 1) for a
 * plain convolution; strided for one phase of a transposed convolution (conv.pyx). */
#define FC_ROW_CO 8     /* channels per block (at most; the narrow variant uses 4) */
/* NAME: the kernel; BYTES: its vector size; NCO: channels (accumulators) per block, 8 or 4.
 * fc_direct_conv_rows: 64-byte vectors and 8 accumulators, for AVX-512's 32 registers.
 * fc_direct_conv_rows_narrow: 32-byte vectors and 4 accumulators, for AVX2's 16 (there the wide
 * variant keeps accumulators on the stack and shuffles its 64-byte vectors through general
 * registers: 9-11 GFLOP/s single-threaded, against 54 for the narrow one, measured on this CPU
 * with a standalone -march=x86-64-v3 build). Blocks of NCO = 4 never touch a4..a7. */
#define FC_DIRECT_CONV_ROWS(T, IT, sfx, NAME, BYTES, NCO)                                    \
typedef T NAME##_vec_##sfx __attribute__((vector_size(BYTES)));                              \
typedef IT NAME##_mask_##sfx __attribute__((vector_size(BYTES)));                            \
FC_KERNEL_VOID(NAME##_##sfx,                                                                 \
    (const T *xp, const T *wt, const T *bias, T *y, const ptrdiff_t *off, ptrdiff_t K,       \
     ptrdiff_t cout, ptrdiff_t cpad, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t wp,           \
     ptrdiff_t sh, int relu, ptrdiff_t yc, ptrdiff_t yh, ptrdiff_t yw),                      \
    (xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, relu, yc, yh, yw),             \
{                                                                                            \
    enum { V = BYTES / sizeof(T) };                                                          \
    const NAME##_vec_##sfx zero = {0};                                                       \
    ptrdiff_t co0, oh, ow, k, c, j;                                                          \
    for (co0 = 0; co0 < cout; co0 += NCO) {                                                  \
        const ptrdiff_t nc = cout - co0 < NCO ? cout - co0 : NCO;                            \
        const T *w = wt + co0;                                                               \
        for (oh = 0; oh < oh_n; oh++)                                                        \
            for (ow = 0; ow < ow_n; ow += V) {                                               \
                NAME##_vec_##sfx a0 = zero + bias[co0], a1 = zero + bias[co0 + 1],           \
                    a2 = zero + bias[co0 + 2], a3 = zero + bias[co0 + 3],                    \
                    a4 = zero, a5 = zero, a6 = zero, a7 = zero, xv;                          \
                NAME##_vec_##sfx acc[8];                                                     \
                const T *base = xp + oh * sh * wp + ow;                                      \
                if (NCO > 4) {                                                               \
                    a4 += bias[co0 + 4]; a5 += bias[co0 + 5];                                \
                    a6 += bias[co0 + 6]; a7 += bias[co0 + 7];                                \
                }                                                                            \
                for (k = 0; k < K; k++) {                                                    \
                    const T *wk = w + k * cpad;                                              \
                    memcpy(&xv, base + off[k], sizeof xv);                                   \
                    a0 += xv * wk[0];                                                        \
                    a1 += xv * wk[1];                                                        \
                    a2 += xv * wk[2];                                                        \
                    a3 += xv * wk[3];                                                        \
                    if (NCO > 4) {                                                           \
                        a4 += xv * wk[4];                                                    \
                        a5 += xv * wk[5];                                                    \
                        a6 += xv * wk[6];                                                    \
                        a7 += xv * wk[7];                                                    \
                    }                                                                        \
                }                                                                            \
                acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;                          \
                acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7;                          \
                for (c = 0; c < nc; c++) {                                                   \
                    T *dst = y + (co0 + c) * yc + oh * yh + ow * yw;                         \
                    if (relu)   /* keep where not (a <= 0): NaN kept, -0 -> +0 */            \
                        acc[c] = (NAME##_vec_##sfx) ((NAME##_mask_##sfx) acc[c]              \
                                                  & ~(NAME##_mask_##sfx) (acc[c] <= zero)); \
                    if (ow + V <= ow_n && yw == 1)                                           \
                        memcpy(dst, &acc[c], sizeof acc[c]);                                 \
                    else                                                                     \
                        for (j = 0; j < V && ow + j < ow_n; j++)                             \
                            dst[j * yw] = acc[c][j];                                         \
                }                                                                            \
            }                                                                                \
    }                                                                                        \
})

FC_DIRECT_CONV_ROWS(float, int32_t, f, fc_direct_conv_rows, 64, 8)
FC_DIRECT_CONV_ROWS(double, int64_t, d, fc_direct_conv_rows, 64, 8)
FC_DIRECT_CONV_ROWS(float, int32_t, f, fc_direct_conv_rows_narrow, 32, 4)
FC_DIRECT_CONV_ROWS(double, int64_t, d, fc_direct_conv_rows_narrow, 32, 4)

/* the row kernel's tail reads: fewer than this many elements past a row (the wide variant's
 * vector; conv.pyx allocates it after each sample) */
#define FC_ROW_TAIL 16

/* The weight gradient on the row kernel's layout: for every (co, k), the lanes of acc (cout
 * rounded up to FC_DW_CO, kpad taps, one 64-byte vector each) accumulate dy[co, oh, ow] *
 * xp[off[k] + oh*sh*wp + ow] over one sample's outputs (a width stride: xp in column phases,
 * as the row kernel). The caller adds the lanes up once per chunk of samples: adding them
 * per sample cost more than the products on small maps. dyp is the sample's dy with rows
 * padded with zeros to ldy (a multiple of the vector length) and zero planes up to a multiple
 * of FC_DW_CO channels; off has kpad entries (a multiple of FC_DW_K; the extra ones 0). Blocks
 * of FC_DW_CO channels by FC_DW_K taps: 16 accumulators in registers across the rows, each step
 * loading FC_DW_CO dy vectors and FC_DW_K x vectors for 16 multiply-adds. The x lanes past a
 * row's end (multiplied by dy's zero padding) are cleared first, so that an inf or NaN there
 * cannot leak in as 0 * inf. */
#define FC_DW_CO 4
#define FC_DW_K 4
#define FC_DW_ROWS(T, IT, sfx)                                                               \
FC_KERNEL_VOID(fc_dw_rows_##sfx,                                                             \
    (const T *xp, const T *dyp, T *acc, const ptrdiff_t *off, ptrdiff_t kpad,                \
     ptrdiff_t cout, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t ldy, ptrdiff_t wp,            \
     ptrdiff_t sh),                                                                          \
    (xp, dyp, acc, off, kpad, cout, oh_n, ow_n, ldy, wp, sh),                                \
{                                                                                            \
    enum { V = 64 / sizeof(T) };                                                             \
    const ptrdiff_t plane = oh_n * ldy;                                                      \
    const ptrdiff_t tail = ow_n % V, full = ow_n - tail;                                     \
    fc_direct_conv_rows_mask_##sfx keep;                                                                     \
    ptrdiff_t co0, k0, oh, ow, c, j, q;                                                      \
    for (j = 0; j < V; j++)                                                                  \
        keep[j] = j < tail ? -1 : 0;                                                         \
    for (co0 = 0; co0 < cout; co0 += FC_DW_CO)                                               \
        for (k0 = 0; k0 < kpad; k0 += FC_DW_K) {                                             \
            fc_direct_conv_rows_vec_##sfx a[FC_DW_CO][FC_DW_K];                                              \
            const T *d = dyp + co0 * plane;                                                  \
            for (c = 0; c < FC_DW_CO; c++)                                                   \
                for (q = 0; q < FC_DW_K; q++)                                                \
                    memcpy(&a[c][q], acc + ((co0 + c) * kpad + k0 + q) * V, sizeof a[c][q]);\
            for (oh = 0; oh < oh_n; oh++) {                                                  \
                const T *xr = xp + oh * sh * wp;                                             \
                const T *dr = d + oh * ldy;                                                  \
                for (ow = 0; ow < ow_n; ow += V) {                                           \
                    fc_direct_conv_rows_vec_##sfx g[FC_DW_CO], xv;                                           \
                    for (c = 0; c < FC_DW_CO; c++)                                           \
                        memcpy(&g[c], dr + c * plane + ow, sizeof xv);                       \
                    for (q = 0; q < FC_DW_K; q++) {                                          \
                        memcpy(&xv, xr + off[k0 + q] + ow, sizeof xv);                       \
                        if (ow >= full)                                                      \
                            xv = (fc_direct_conv_rows_vec_##sfx) ((fc_direct_conv_rows_mask_##sfx) xv & keep);               \
                        for (c = 0; c < FC_DW_CO; c++)                                       \
                            a[c][q] += g[c] * xv;                                            \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
            for (c = 0; c < FC_DW_CO; c++)                                                   \
                for (q = 0; q < FC_DW_K; q++)                                                \
                    memcpy(acc + ((co0 + c) * kpad + k0 + q) * V, &a[c][q], sizeof a[c][q]);\
        }                                                                                    \
})

FC_DW_ROWS(float, int32_t, f)
FC_DW_ROWS(double, int64_t, d)

#endif
