/* Pooling loops in C, compiled per x86-64 level (_simd.h's dispatch): max pooling over 2x2
 * windows at stride 2 (the usual pooling) and the interior rows of any window, average pooling
 * over 2x2 windows at stride 2 and its backward (also nearest upsampling's backward).
 *
 * Max pooling, with the window maxima's flat offsets, is written branch-free so that it
 * vectorizes.
 *
 * The comparisons run on integer keys of the floats' bit patterns: GCC will not turn a float
 * select `v > b ? v : b` into a conditional move under the default -ftrapping-math, and the
 * branch it emits instead mispredicts on random data half of the time (0.45 ms for LeNet's first
 * pooling against 0.07 ms without the offsets). The key of a number is its magnitude bits, negated
 * for a negative sign: monotonic in the value, with -0 and +0 equal (a float comparison's
 * rule). NaN gets the largest key and is always taken: as torch, `v > best || isnan(v)` in
 * scan order, so a NaN propagates and the last one's offset is kept; otherwise the first
 * maximum's. The output keeps the chosen input's own bits.
 */
#ifndef FASTCNN_POOL_H
#define FASTCNN_POOL_H

#include "_simd.h"

/* One output of fc_max_2x2 (output row oh, column ow; r0, r1 the window's input rows, yo the
 * output row): the maximum of the 2x2 window by selects on the keys, in scan order (NaN always
 * taken), and its flat offset into ind when STORE (a compile-time 0 drops the offsets' work). */
#define FC_MAX_2X2_ONE(IT, sfx, MAG, STORE)                                                  \
{                                                                                            \
    IT bits = r0[2 * ow], key = fc_pool_key_##sfx(bits), v, k;                               \
    long long tap = 0;                                                                       \
    int take;                                                                                \
    v = r0[2 * ow + 1]; k = fc_pool_key_##sfx(v);                                            \
    take = k > key || k == (MAG);                                                            \
    bits = take ? v : bits; key = take ? k : key; tap = take ? 1 : tap;                      \
    v = r1[2 * ow]; k = fc_pool_key_##sfx(v);                                                \
    take = k > key || k == (MAG);                                                            \
    bits = take ? v : bits; key = take ? k : key; tap = take ? W : tap;                      \
    v = r1[2 * ow + 1]; k = fc_pool_key_##sfx(v);                                            \
    take = k > key || k == (MAG);                                                            \
    bits = take ? v : bits; tap = take ? W + 1 : tap;                                        \
    yo[ow] = bits;                                                                           \
    if (STORE)                                                                               \
        ind[oh * oW + ow] = 2 * oh * W + 2 * ow + tap;                                       \
}

/* The body of fc_max_2x2: a row's first multiple of 8 outputs by the compiler's vector loop,
 * the rest by groups of 4 outputs (a constant count: unrolled and vectorized across the
 * group), then one by one. The vector loop left narrower rows to its scalar tail,
 * 4-5x slower: 64x128x8x8 (4 outputs a row, VGG's third pooling) 0.91 -> 0.18 ms. */
#define FC_MAX_2X2_BODY(IT, sfx, MAG, STORE)                                                 \
{                                                                                            \
    ptrdiff_t oh, ow, ow4;                                                                   \
    for (oh = 0; oh < oH; oh++) {                                                            \
        const fc_bits_##sfx *r0 = (const fc_bits_##sfx *) (x + 2 * oh * W);                  \
        const fc_bits_##sfx *r1 = (const fc_bits_##sfx *) (x + (2 * oh + 1) * W);            \
        fc_bits_##sfx *yo = (fc_bits_##sfx *) (y + oh * oW);                                 \
        for (ow = 0; ow < oW - oW % 8; ow++)                                                 \
            FC_MAX_2X2_ONE(IT, sfx, MAG, STORE)                                              \
        for (ow4 = oW - oW % 8; ow4 + 4 <= oW; ow4 += 4)                                     \
            for (ow = ow4; ow < ow4 + 4; ow++)                                               \
                FC_MAX_2X2_ONE(IT, sfx, MAG, STORE)                                          \
        for (ow = ow4; ow < oW; ow++)                                                        \
            FC_MAX_2X2_ONE(IT, sfx, MAG, STORE)                                              \
    }                                                                                        \
}

#define FC_MAX_2X2(T, IT, sfx, MAG, EXP)                                                     \
typedef IT fc_bits_##sfx __attribute__((may_alias));   /* the floats read as their bits */   \
static inline IT fc_pool_key_##sfx(IT bits)                                                  \
{                                                                                            \
    const IT mag = bits & (MAG), s = bits < 0 ? -1 : 0;    /* arithmetic, no branch */     \
    return mag > (EXP) ? (MAG) : (mag ^ s) - s;                                              \
}                                                                                            \
                                                                                             \
/* y (oH, oW) and ind (oH, oW; NULL: not stored) of one plane x (rows W long) */          \
FC_KERNEL_VOID(fc_max_2x2_##sfx,                                                             \
    (const T *x, T *y, long long *ind, ptrdiff_t W, ptrdiff_t oH, ptrdiff_t oW),             \
    (x, y, ind, W, oH, oW),                                                                  \
    FC_MAX_2X2_BODY(IT, sfx, MAG, ind != NULL))                                              \
                                                                                             \
/* fc_max_2x2 without the offsets (inference): the same body with the offsets' work left out \
 * at compile time (LeNet's first pooling at batch 1: 2.7 -> 2.4 us on one thread) */       \
FC_KERNEL_VOID(fc_max_2x2_values_##sfx,                                                      \
    (const T *x, T *y, ptrdiff_t W, ptrdiff_t oH, ptrdiff_t oW),                             \
    (x, y, W, oH, oW),                                                                       \
    { long long *ind = NULL; FC_MAX_2X2_BODY(IT, sfx, MAG, 0) })                             \
                                                                                             \
/* A run of n interior outputs of one output row, any window (max_pool's general path):    \
 * output i's taps are at flat offsets start + i * sw + a * step_a + b * step_b + e * dw     \
 * (a < na, b < nb, e < kw: depth rows, rows, columns), swept tap by tap over the run in   \
 * scan order under the same rule. A window with no row inside (na or nb = 0) gives -inf at \
 * its first tap's offset. */                                                               \
FC_KERNEL_VOID(fc_max_row_##sfx,                                                             \
    (const T *x, T *y, long long *ind, ptrdiff_t n, ptrdiff_t sw, long long start,           \
     ptrdiff_t na, ptrdiff_t step_a, ptrdiff_t nb, ptrdiff_t step_b, ptrdiff_t kw,           \
     ptrdiff_t dw),                                                                          \
    (x, y, ind, n, sw, start, na, step_a, nb, step_b, kw, dw),                               \
{                                                                                            \
    const fc_bits_##sfx *xb = (const fc_bits_##sfx *) x;                                     \
    fc_bits_##sfx *yb = (fc_bits_##sfx *) y;                                                 \
    ptrdiff_t a, b, e, i;                                                                    \
    if (na == 0 || nb == 0) {                                                                \
        for (i = 0; i < n; i++) {                                                            \
            y[i] = (T) -INFINITY;                                                            \
            if (ind != NULL)                                                                 \
                ind[i] = start + i * sw;                                                     \
        }                                                                                    \
        return;                                                                              \
    }                                                                                        \
    for (i = 0; i < n; i++) {                    /* the first tap, as torch's first take */  \
        yb[i] = xb[start + i * sw];                                                          \
        if (ind != NULL)                                                                     \
            ind[i] = start + i * sw;                                                         \
    }                                                                                        \
    for (a = 0; a < na; a++)                                                                 \
        for (b = 0; b < nb; b++)                                                             \
            for (e = (a == 0 && b == 0); e < kw; e++) {                                      \
                const long long off = start + a * step_a + b * step_b + e * dw;              \
                for (i = 0; i < n; i++) {                                                    \
                    const IT v = xb[off + i * sw], c = yb[i], k = fc_pool_key_##sfx(v);      \
                    const int take = k > fc_pool_key_##sfx(c) || k == (MAG);                 \
                    yb[i] = take ? v : c;                                                    \
                    if (ind != NULL)                                                         \
                        ind[i] = take ? off + i * sw : ind[i];                               \
                }                                                                            \
            }                                                                                \
})

/* Average pooling over 2x2 windows at stride 2 (no padding: every window full), the sum in
 * _avg_plane's order (from 0, row by row) divided by div; and its backward, each input cell
 * of a window receiving 0 + dy / div (the cells no window covers: 0). */
#define FC_AVG_2X2(T, sfx)                                                                   \
FC_KERNEL_VOID(fc_avg_2x2_##sfx,                                                             \
    (const T *x, T *y, ptrdiff_t W, ptrdiff_t oH, ptrdiff_t oW, T div),                      \
    (x, y, W, oH, oW, div),                                                                  \
{                                                                                            \
    ptrdiff_t oh, ow;                                                                        \
    for (oh = 0; oh < oH; oh++) {                                                            \
        const T *r0 = x + 2 * oh * W, *r1 = r0 + W;                                          \
        T *yo = y + oh * oW;                                                                 \
        for (ow = 0; ow < oW; ow++) {                                                        \
            T t = 0;                                                                         \
            t += r0[2 * ow];                                                                 \
            t += r0[2 * ow + 1];                                                             \
            t += r1[2 * ow];                                                                 \
            t += r1[2 * ow + 1];                                                             \
            yo[ow] = t / div;                                                                \
        }                                                                                    \
    }                                                                                        \
})                                                                                           \
                                                                                             \
FC_KERNEL_VOID(fc_avg_2x2_backward_##sfx,                                                    \
    (const T *dy, T *dx, ptrdiff_t H, ptrdiff_t W, ptrdiff_t oH, ptrdiff_t oW, T div),       \
    (dy, dx, H, W, oH, oW, div),                                                             \
{                                                                                            \
    ptrdiff_t oh, ow, c;                                                                     \
    for (oh = 0; oh < oH; oh++) {                                                            \
        T *d0 = dx + 2 * oh * W, *d1 = d0 + W;                                               \
        const T *g = dy + oh * oW;                                                           \
        for (c = 0; c < 2 * oW; c++)                                                         \
            d0[c] = d1[c] = (T) 0 + g[c >> 1] / div;                                         \
        for (c = 2 * oW; c < W; c++)                                                         \
            d0[c] = d1[c] = 0;                                                               \
    }                                                                                        \
    for (c = 2 * oH * W; c < H * W; c++)                                                     \
        dx[c] = 0;                                                                           \
})

FC_AVG_2X2(float, f)
FC_AVG_2X2(double, d)

FC_MAX_2X2(float, int32_t, f, (int32_t) 0x7fffffff, (int32_t) 0x7f800000)
FC_MAX_2X2(double, int64_t, d, (int64_t) 0x7fffffffffffffffLL, (int64_t) 0x7ff0000000000000LL)

#endif /* FASTCNN_POOL_H */
