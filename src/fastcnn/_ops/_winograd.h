/* The transforms of Winograd F(m x m, 3x3) (m = 2 or 4; the algebra is in winograd.pyx's
 * docstring), compiled per x86-64 level and float type (_winograd.inc, through _per_level.inc) and
 * dispatched as _simd.h's kernels are.
 *
 * Layout. winograd.pyx keeps V (and M) as (m + 2)^2 matrices, one per tile position xi, each
 * (channels, tiles) with the tiles of a block of samples contiguous: the GEMMs' operands. The
 * transforms are therefore vectorized along the tiles. Each input plane is first copied into
 * the zero-padded plane split by column phase (fc_wino_split: D[p][r][q] = the value at row r,
 * column m*q + p; each row split m ways by vector shuffles), so that the values of a tile row
 * sit contiguous along tj. On maps with at least 16 bytes of tiles a row (4 floats: 16x16 maps
 * by F(4x4, 3x3)), a whole tile row is loaded from D as vectors and transformed in registers
 * (FC_TILE2/4, one pass); on narrower maps the tiles of several samples (or of several tile
 * rows) are first gathered into d[k][j][tile] and transformed as one run of vectors (a loop
 * along one tile row of an 8x8 map would be 2 elements long). The output transform combines
 * contiguous runs of tiles the same way, then adds the bias, applies the ReLU and interleaves
 * the m column streams of each output row by shuffles (FC_SCATTER4/2) in one pass. Measured,
 * one thread, batch 32, F(4x4, 3x3): the split and the interleave by shuffles took 16->16
 * channels on 32x32 maps 1.30 -> 1.04 ms (AVX2), 1.17 -> 0.89 (AVX-512); 64->64 on 8x8
 * 1.22 -> 0.99 (AVX2). dM = A dY A^T of the weight gradient (fc_wino_grad_output) reads dY
 * split as the input is.
 * fc_wino_gemm multiplies U by V for every xi with register blocks (AVX2 and the baseline,
 * where a BLAS call per xi cost more than its work).
 *
 * Each output is the same fixed sum in every copy, so the result does not depend on threads;
 * copies of different levels may differ in the last bits (FMA contraction).
 */
#ifndef FASTCNN_WINOGRAD_H
#define FASTCNN_WINOGRAD_H

#include "_simd.h"

/* Tiles per chunk of a transform (whole tile rows; at least one row): d and its row transform
 * stay in L1/L2 (2 * 36 * 256 floats = 72 KiB for F(4x4, 3x3)). */
#define FC_WINO_CHUNK 256

static FC_UNUSED inline ptrdiff_t fc_wino_chunk_rows(ptrdiff_t tiles_w)
{
    return tiles_w >= FC_WINO_CHUNK ? 1 : FC_WINO_CHUNK / tiles_w;
}

/* The rows of the plane split by column phase (fc_wino_split): tiles_w + 1 values, rounded up
 * to whole vectors of `lanes` values (FC_WL of the level; 16, the most, for the scratch). */
static FC_UNUSED inline ptrdiff_t fc_wino_split_row(ptrdiff_t tiles_w, ptrdiff_t lanes)
{
    return (tiles_w + lanes) / lanes * lanes;
}

/* Elements of the scratch one call of fc_wino_input or fc_wino_output needs: two chunks of
 * (m + 2)^2 tile values (d; the output's row transform and result), then the input plane split
 * by column phase and the padded rows (fc_wino_split's buffer). */
static FC_UNUSED inline ptrdiff_t fc_wino_scratch(ptrdiff_t m, ptrdiff_t tiles_h,
                                                  ptrdiff_t tiles_w)
{
    const ptrdiff_t Q = fc_wino_split_row(tiles_w, 16);
    return 2 * (m + 2) * (m + 2) * fc_wino_chunk_rows(tiles_w) * tiles_w
           + 2 * m * (m * tiles_h + 2) * Q;
}

/* Winograd on the stride-2 polyphase components (fc_wino_s2_input / _output): the input plane
 * split by row and column phase (fc_s2_split) holds 80 planes (column phases 0-9) of `plane` values (the tile
 * grid's (tiles_h + 1) x tiles_w and a vector's slack), then the input rows packed by row
 * phase; the output transform's 16 streams of a chunk of tiles. Sizes
 * for the widest vectors (16 floats), whatever the level. */
static FC_UNUSED inline ptrdiff_t fc_wino_s2_round(ptrdiff_t n)
{
    return (n + 15) / 16 * 16;
}

static FC_UNUSED inline ptrdiff_t fc_wino_s2_plane(ptrdiff_t tiles_h, ptrdiff_t tiles_w)
{
    return (tiles_h + 1) * tiles_w + fc_wino_s2_round(tiles_w);
}

/* one row phase of the input rows packed by row phase (tiles_h + 1 rows of 8 tiles_w values)
 * and the slack a split's last vectors read */
static FC_UNUSED inline ptrdiff_t fc_wino_s2_buf_rows(ptrdiff_t tiles_h, ptrdiff_t tiles_w)
{
    return (tiles_h + 1) * 8 * tiles_w + 144;
}

static FC_UNUSED inline ptrdiff_t fc_wino_s2_scratch(ptrdiff_t tiles_h, ptrdiff_t tiles_w)
{
    const ptrdiff_t input = 80 * fc_wino_s2_plane(tiles_h, tiles_w)
                            + 8 * fc_wino_s2_buf_rows(tiles_h, tiles_w);
    const ptrdiff_t output = 16 * fc_wino_chunk_rows(tiles_w) * tiles_w;
    return input > output ? input : output;
}

#define FC_WINO_S2_INPUT_PARAMS(T)                                                         \
    (const T *x, ptrdiff_t sample_stride, ptrdiff_t nb, T *v_ee, T *v_eo, T *v_oe, T *v_oo, \
     T *scratch, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t pad, ptrdiff_t tiles_h,    \
     ptrdiff_t tiles_w, ptrdiff_t ld, ptrdiff_t xs, ptrdiff_t xs4)
#define FC_WINO_S2_INPUT_ARGS                                                              \
    (x, sample_stride, nb, v_ee, v_eo, v_oe, v_oo, scratch, C, H, W, pad, tiles_h, tiles_w, \
     ld, xs, xs4)
#define FC_WINO_S2_OUTPUT_PARAMS(T)                                                        \
    (const T *m_ee, const T *m_eo, const T *m_oe, const T *m_oo, T *y, T *scratch,          \
     ptrdiff_t K, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t tiles_h, ptrdiff_t tiles_w,          \
     ptrdiff_t ld, ptrdiff_t xs, ptrdiff_t xs4, const T *bias, int relu, const T *res)
#define FC_WINO_S2_OUTPUT_ARGS                                                             \
    (m_ee, m_eo, m_oe, m_oo, y, scratch, K, OH, OW, tiles_h, tiles_w, ld, xs, xs4, bias,    \
     relu, res)
#define FC_WINO_K4S2_INPUT_PARAMS(T)                                                       \
    (const T *x, ptrdiff_t sample_stride, ptrdiff_t nb, T *v, T *scratch, ptrdiff_t C,         \
     ptrdiff_t H, ptrdiff_t W, ptrdiff_t pad, ptrdiff_t tiles_h, ptrdiff_t tiles_w,            \
     ptrdiff_t ld, ptrdiff_t xs)
#define FC_WINO_K4S2_INPUT_ARGS                                                            \
    (x, sample_stride, nb, v, scratch, C, H, W, pad, tiles_h, tiles_w, ld, xs)
#define FC_WINO_K4S2_OUTPUT_PARAMS(T)                                                      \
    (const T *m, T *y, T *scratch, ptrdiff_t K, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t tiles_h, \
     ptrdiff_t tiles_w, ptrdiff_t ld, ptrdiff_t xs, const T *bias, int relu, const T *res)
#define FC_WINO_K4S2_OUTPUT_ARGS                                                           \
    (m, y, scratch, K, OH, OW, tiles_h, tiles_w, ld, xs, bias, relu, res)
#define FC_WINO_INPUT_PARAMS(T)                                                            \
    (const T *x, ptrdiff_t sample_stride, ptrdiff_t nb, T *v, T *scratch, ptrdiff_t m,     \
     ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t pad, ptrdiff_t tiles_h,              \
     ptrdiff_t tiles_w, ptrdiff_t ld, ptrdiff_t xs)
#define FC_WINO_INPUT_ARGS                                                                 \
    (x, sample_stride, nb, v, scratch, m, C, H, W, pad, tiles_h, tiles_w, ld, xs)
#define FC_WINO_OUTPUT_PARAMS(T)                                                           \
    (const T *mm, T *y, T *scratch, ptrdiff_t m, ptrdiff_t K, ptrdiff_t OH, ptrdiff_t OW,   \
     ptrdiff_t tiles_h, ptrdiff_t tiles_w, ptrdiff_t ld, ptrdiff_t xs, const T *bias,       \
     int relu, const T *res)
#define FC_WINO_OUTPUT_ARGS                                                                \
    (mm, y, scratch, m, K, OH, OW, tiles_h, tiles_w, ld, xs, bias, relu, res)
#define FC_WINO_GRAD_OUTPUT_PARAMS(T)                                                      \
    (const T *dy, ptrdiff_t sample_stride, ptrdiff_t nb, T *dm, T *scratch, ptrdiff_t m,      \
     ptrdiff_t K, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t tiles_h, ptrdiff_t tiles_w,           \
     ptrdiff_t ld, ptrdiff_t xs)
#define FC_WINO_GRAD_OUTPUT_ARGS                                                           \
    (dy, sample_stride, nb, dm, scratch, m, K, OH, OW, tiles_h, tiles_w, ld, xs)
#define FC_WINO_GEMM_PARAMS(T)                                                             \
    (const T *u, const T *v, T *m, ptrdiff_t xis, ptrdiff_t K, ptrdiff_t C, ptrdiff_t ld,    \
     ptrdiff_t vxs, ptrdiff_t mxs)
#define FC_WINO_GEMM_ARGS (u, v, m, xis, K, C, ld, vxs, mxs)

/* one copy per (level, type) */
#define FC_KERNELS_INC "_winograd.inc"
#include "_per_level.inc"
#undef FC_KERNELS_INC

/* the entry points winograd.pyx calls: the copy of this module's level */
FC_VOID_ENTRIES(fc_wino_input, FC_WINO_INPUT_PARAMS, FC_WINO_INPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_output, FC_WINO_OUTPUT_PARAMS, FC_WINO_OUTPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_grad_output, FC_WINO_GRAD_OUTPUT_PARAMS, FC_WINO_GRAD_OUTPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_gemm, FC_WINO_GEMM_PARAMS, FC_WINO_GEMM_ARGS)
FC_VOID_ENTRIES(fc_wino_s2_input, FC_WINO_S2_INPUT_PARAMS, FC_WINO_S2_INPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_s2_output, FC_WINO_S2_OUTPUT_PARAMS, FC_WINO_S2_OUTPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_k4s2_input, FC_WINO_K4S2_INPUT_PARAMS, FC_WINO_K4S2_INPUT_ARGS)
FC_VOID_ENTRIES(fc_wino_k4s2_output, FC_WINO_K4S2_OUTPUT_PARAMS, FC_WINO_K4S2_OUTPUT_ARGS)

#endif
