/* The pointwise convolution: a 1x1 kernel at stride 1 without padding, y = W x + bias for each
 * sample, x (C, P) and y (C_out, P) with their P = prod(spatial) positions contiguous: a GEMM
 * per sample whose operands are already in the layout a vector kernel wants, so it runs on them
 * in place (pointwise.pyx drives it; _pointwise.inc holds the kernel, compiled per x86-64 level
 * and float type and dispatched as _simd.h's kernels are). OpenBLAS's sgemm packs both
 * operands on every call: on 256 -> 64 channels over 14x14 maps that was a third of its time.
 */
#ifndef FASTCNN_POINTWISE_H
#define FASTCNN_POINTWISE_H

#include "_simd.h"

/* fc_pointwise: y (cout, P) = bias + W x of one sample's x (C, P), a 1x1 convolution at stride 1
 * without padding, over the positions [p0, p1) (a thread's share). wt (C, cpad) is the weight
 * transposed, its columns from cout on zero: cpad at least fc_pointwise_cpad(cout) (the kernel
 * computes whole blocks of channels); bias (cpad). panel: C * FC_PW_PANEL elements of the
 * thread's scratch. relu: max(y, 0) with NaN kept and -0 -> 0, as relu. Every output is the
 * same sum in the same order whichever block or range computes it. */
#define FC_POINTWISE_PARAMS(T)                                                             \
    (const T *x, const T *wt, const T *bias, T *y, T *panel, ptrdiff_t C, ptrdiff_t P,      \
     ptrdiff_t cout, ptrdiff_t cpad, ptrdiff_t p0, ptrdiff_t p1, int relu)
#define FC_POINTWISE_ARGS (x, wt, bias, y, panel, C, P, cout, cpad, p0, p1, relu)
#define FC_PW_PANEL 32  /* the panel's row: two vectors of the widest level (AVX-512 floats) */

#define FC_PW_PAD 16    /* wt's and bias's columns: a multiple of this */

/* The columns fc_pointwise may read: cout and its last block's padding (12 channels at most). */
static FC_UNUSED inline ptrdiff_t fc_pointwise_cpad(ptrdiff_t cout)
{
    return (cout + 12 + FC_PW_PAD - 1) / FC_PW_PAD * FC_PW_PAD;
}

/* one copy per (level, type) */
#define FC_KERNELS_INC "_pointwise.inc"
#include "_per_level.inc"
#undef FC_KERNELS_INC

FC_VOID_ENTRIES(fc_pointwise, FC_POINTWISE_PARAMS, FC_POINTWISE_ARGS)

#endif
