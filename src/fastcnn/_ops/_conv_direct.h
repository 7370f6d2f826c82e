/* Direct convolutions (2-D, one group) computed in place from a zero-bordered copy of each
 * sample, compiled per x86-64 level (_conv_direct.inc, with register blocks sized for each
 * level's vector registers) and dispatched as _simd.h's kernels are; functional/_conv_algorithms.py
 * picks them by rules measured per level:
 *   - fc_direct_conv: vectorized along output channels, for small maps (below);
 *   - fc_direct_conv_rows: vectorized along output rows, for wide maps and few taps or
 *     channels (first layers, transposed convolutions' phases, stride-1 input gradients);
 *   - fc_dw_rows: the weight gradient on the row kernel's layout;
 *   - fc_dw_channels: the weight gradient with the output channels in the vector lanes;
 *   - fc_pad_sample: the zero-bordered copy of a sample that all of them read.
 *
 * The channel kernel, for small layers (LeNet's, strided ones): few output channels.
 *
 * im2col + GEMM spends most of such a layer in im2col (LeNet's second convolution: 1,500
 * ten-element row copies per sample, more time than the GEMM) and the GEMM, 16 rows high, is too
 * thin for BLAS. Here each output is computed in place from a zero-bordered copy of the sample:
 *
 *     y[co, oh, ow] = bias[co] + sum_k wt[k, co] * xp[off[k] + oh*sH * Wp + ow*sW]
 *
 * with k = (ci, kh, kw) and off[k] = ci*Hp*Wp + kh*dH*Wp + kw*dW (in the column-phase layout
 * with a width stride: see fc_direct_conv). The innermost loop runs over one or two vectors of output
 * channels (16 floats each on AVX-512, 8 on AVX2) by up to 24 (AVX-512) or 12 outputs, whose
 * accumulators stay in registers (_conv_direct.inc). The sum over k runs in a fixed order: the
 * result does not depend on threads nor on the block shape (nor on the level, but for FMA).
 */
#ifndef FASTCNN_CONV_DIRECT_H
#define FASTCNN_CONV_DIRECT_H

#include "_simd.h"

/* Layout constants, shared with conv_direct.pyx (which exports them to Python) and the same on
 * every level: the kernels' blocks divide them. */
#define FC_CO_PAD 16    /* the channel and row kernels' wt and bias: C_out padded to a multiple */
#define FC_ROW_CO 8     /* the row kernel's channels per block */
#define FC_ROW_TAIL 16  /* the row kernel reads fewer than this many elements past a row (its
                           widest vector; conv_direct.pyx allocates it after each sample) */
#define FC_DW_CO 4      /* fc_dw_rows' padded dy: channels rounded up to a multiple */
#define FC_DW_K 4       /* its taps per block: offsets rounded up to a multiple */
#define FC_DW_LANES 16  /* its accumulator slot per (channel, tap): 64 bytes (16 floats or 8
                           doubles); conv_direct.pyx adds each slot up */
#define FC_DWC_CO 16    /* fc_dw_channels' dy^T and accumulators: channels padded to a multiple
                           (whole vectors of either type on every level) */
#define FC_DWC_K 24     /* its taps per block divide this: offsets padded to a multiple */

/* fc_direct_conv: y (cout, oh_n*ow_n) of one sample from its padded planes xp, stored (as the
 * row kernel's) in column phases with rows wp long (a width stride sw makes sw phase planes per
 * channel: output (oh, ow) reads its taps at xp + off[k] + oh*sh*wp + ow); wt in panels of
 * fc_direct_conv_panel() channels, each (K, panel) (cpad, a multiple of the panel, is not read);
 * bias (cpad); relu: max(y, 0) as it is stored (NaN kept, -0 -> 0, as fastcnn's relu). It reads
 * only the planes' elements of real outputs. Output (co, oh, ow) goes to y[co * yc + oh * yh +
 * ow * yw], as the row kernel's (below). The channels are GCC vectors, not left to the
 * auto-vectorizer, which kept the accumulators in memory. */
#define FC_DIRECT_CONV_PARAMS(T)                                                           \
    (const T *xp, const T *wt, const T *bias, T *y, const ptrdiff_t *off, ptrdiff_t K,     \
     ptrdiff_t cout, ptrdiff_t cpad, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t wp,         \
     ptrdiff_t sh, ptrdiff_t sw, int relu, ptrdiff_t yc, ptrdiff_t yh, ptrdiff_t yw)
#define FC_DIRECT_CONV_ARGS                                                                \
    (xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, sw, relu, yc, yh, yw)

/* fc_direct_conv_rows: the same convolution vectorized along the output rows instead of the
 * channels, for wide maps with few taps or few output channels (first layers, among others).
 * There the channel kernel spends more time transposing its results into place than
 * multiplying. Here vectors of outputs along rows of up to FC_ROW_CO channels are computed at
 * a time (one vector on each of several rows on AVX-512, two along one row on AVX2 and SSE2):
 * each tap is one contiguous load of xp per vector and one multiply-add by a broadcast weight
 * per channel, and the results are stored as they lie. The loads are contiguous because xp is read
 * at stride 1 along the width (a width stride: conv_direct.pyx stores each plane as its column
 * phases); any stride sh down the rows. A row's last block reads up to FC_ROW_TAIL - 1 elements
 * past the row (past the last plane for the last row: conv_direct.pyx's workspace has that tail)
 * and stores only the outputs that exist. relu: max(y, 0) with NaN kept and -0 -> 0, as relu.
 * Output (co, oh, ow) goes to y[co * yc + oh * yh + ow * yw]: (oh_n * ow_n, ow_n, 1) for a plain
 * convolution; strided for one phase of a transposed convolution (conv_direct.pyx). */
#define FC_DIRECT_CONV_ROWS_PARAMS(T)                                                      \
    (const T *xp, const T *wt, const T *bias, T *y, const ptrdiff_t *off, ptrdiff_t K,     \
     ptrdiff_t cout, ptrdiff_t cpad, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t wp,         \
     ptrdiff_t sh, int relu, ptrdiff_t yc, ptrdiff_t yh, ptrdiff_t yw)
#define FC_DIRECT_CONV_ROWS_ARGS                                                           \
    (xp, wt, bias, y, off, K, cout, cpad, oh_n, ow_n, wp, sh, relu, yc, yh, yw)

/* fc_dw_rows: the weight gradient on the row kernel's layout. For every (co, k), the lanes of
 * acc (cout rounded up to FC_DW_CO, kpad taps, one FC_DW_LANES slot each) accumulate
 * dy[co, oh, ow] * xp[off[k] + oh*sh*wp + ow] over one sample's outputs (a width stride: xp in
 * column phases, as the row kernel). The caller adds the lanes up once per chunk of samples:
 * adding them per sample cost more than the products on small maps. dyp is the sample's dy with
 * rows padded with zeros to ldy (a multiple of FC_DW_LANES) and zero planes up to a multiple of
 * FC_DW_CO channels; off has kpad entries (a multiple of FC_DW_K; the extra ones 0). The x lanes
 * past a row's end (multiplied by dy's zero padding) are cleared first, so that an inf or NaN
 * there cannot leak in as 0 * inf. */
#define FC_DW_ROWS_PARAMS(T)                                                               \
    (const T *xp, const T *dyp, T *acc, const ptrdiff_t *off, ptrdiff_t kpad,              \
     ptrdiff_t cout, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t ldy, ptrdiff_t wp,          \
     ptrdiff_t sh)
#define FC_DW_ROWS_ARGS (xp, dyp, acc, off, kpad, cout, oh_n, ow_n, ldy, wp, sh)

/* fc_dw_channels: the weight gradient with the output channels in the vector lanes, an
 * implicit GEMM over one sample's outputs p = (oh, ow) with no im2col:
 *
 *     acc[k, co] += sum_p xp[off[k] + oh*sh*wp + ow] * dyt[p, co]
 *
 * dyt is the sample's dy transposed to (oh_n * ow_n, cpad), its channels padded with zeros to
 * cpad (a multiple of FC_DWC_CO); acc is (kpad, cpad); off has kpad entries (a multiple of
 * FC_DWC_K, the extra ones 0: their sums are never read); xp as the row kernel's (column phases
 * with a width stride). Each product is one vector of dy times one broadcast input: few output
 * channels fill the lanes (LeNet's 16, a transposed convolution's 32 or 64) where fc_dw_rows'
 * lanes, along rows, stay part empty on narrow maps, and large maps cost no im2col. The sums
 * over p run in order: the result does not depend on the block shape nor on threads. */
#define FC_DW_CHANNELS_PARAMS(T)                                                           \
    (const T *xp, const T *dyt, T *acc, const ptrdiff_t *off, ptrdiff_t kpad,              \
     ptrdiff_t cpad, ptrdiff_t oh_n, ptrdiff_t ow_n, ptrdiff_t wp, ptrdiff_t sh)
#define FC_DW_CHANNELS_ARGS (xp, dyt, acc, off, kpad, cpad, oh_n, ow_n, wp, sh)

/* one copy per (level, type) */
#define FC_KERNELS_INC "_conv_direct.inc"
#include "_per_level.inc"
#undef FC_KERNELS_INC

/* the entry points conv_direct.pyx calls: the copy of this module's level */
FC_VOID_ENTRIES(fc_direct_conv, FC_DIRECT_CONV_PARAMS, FC_DIRECT_CONV_ARGS)
static FC_UNUSED inline ptrdiff_t fc_direct_conv_panel_f(void)
{ return FC_LEVELS_CALL(fc_direct_conv_panel_f, ()); }
static FC_UNUSED inline ptrdiff_t fc_direct_conv_panel_d(void)
{ return FC_LEVELS_CALL(fc_direct_conv_panel_d, ()); }
FC_VOID_ENTRIES(fc_direct_conv_rows, FC_DIRECT_CONV_ROWS_PARAMS, FC_DIRECT_CONV_ROWS_ARGS)
FC_VOID_ENTRIES(fc_dw_rows, FC_DW_ROWS_PARAMS, FC_DW_ROWS_ARGS)
FC_VOID_ENTRIES(fc_dw_channels, FC_DW_CHANNELS_PARAMS, FC_DW_CHANNELS_ARGS)
#define FC_PAD_SAMPLE_PARAMS(T)                                                            \
    (const T *x, T *xp, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t rows,             \
     ptrdiff_t cols, ptrdiff_t pad_h, ptrdiff_t pad_w, ptrdiff_t Hp, ptrdiff_t wq,         \
     ptrdiff_t phases)
FC_VOID_ENTRIES(fc_pad_sample, FC_PAD_SAMPLE_PARAMS,
                (x, xp, C, H, W, rows, cols, pad_h, pad_w, Hp, wq, phases))
#define FC_DW_CHANNELS_TRANSPOSE_PARAMS(T)                                                 \
    (const T *dy, T *dyt, ptrdiff_t cout, ptrdiff_t L, ptrdiff_t cpad)
FC_VOID_ENTRIES(fc_dw_channels_transpose, FC_DW_CHANNELS_TRANSPOSE_PARAMS,
                (dy, dyt, cout, L, cpad))

#endif
