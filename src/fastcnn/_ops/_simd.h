/* Vectorizable inner loops of the exp- and reduction-bound kernels (softmax, cross-entropy,
 * normalizations), compiled for several x86-64 levels in one wheel.
 *
 * The op structure (rows, blocks, threads, statistics, coefficients) lives in Cython; this
 * header only holds the loops over contiguous elements, each written once (a macro expanded
 * for float and double). Cython reaches them through _simd.pxd.
 *
 * Dispatch. With GCC >= 12 on x86-64 Linux (glibc), each kernel is compiled three times
 * (target attributes: x86-64-v4 = AVX-512, x86-64-v3 = AVX2 + FMA, and the baseline the module
 * is built for) and runs the copy of the best level the CPU supports, chosen once when the
 * module is loaded. FASTCNN_SIMD=x86-64-v3 or FASTCNN_SIMD=baseline in the environment makes
 * every kernel run that lower level instead: a way to test each copy, or to measure AVX2 code,
 * on a machine with more. Elsewhere (other compilers or architectures, musl,
 * -DFASTCNN_NO_DISPATCH) the kernels are plain functions.
 *
 * Determinism. Reductions use explicit lane accumulators (FC_LANES_f / FC_LANES_d partial sums
 * in the input precision, over blocks of FC_BLOCK elements, then one double per lane, added in a
 * fixed tree at the end): the order never depends on the thread count or the data, so a row
 * gives the same bits on every call. It is also the same in every copy; copies may still differ
 * in the last bits because the FMA copies round a*b + c once.
 *
 * exp. fc_exp_f / fc_exp_d: x = k*ln2 + r with |r| <= ln2/2 (k by the round-to-nearest
 * shifter, ln2 split in two so that k*ln2_hi is exact), exp(r) by a minimax polynomial of
 * degree 6 (float) or 11 (double) fitted to relative error (3.1e-9 and 3.6e-18 before
 * rounding), then 2^k applied as two exact power-of-two factors so that subnormal results are
 * rounded once. Measured over every float32 input against numpy's float64 exp: normal results
 * within 0.91 ulp (relative error 7.7e-8) in the FMA copies, 1.17 ulp (9.9e-8) in the
 * baseline; subnormal results within 0.86 of the smallest subnormal; inputs below -103.97 (and
 * -inf) give 0, above 88.72 (and +inf) give +inf, NaN gives NaN. float64, 1e8 random inputs
 * against long double: within 0.92 ulp (FMA copies) and 1.2 ulp (baseline). tests/test_simd.py
 * checks a dense sample of the float32 range and the edges. The baseline (SSE2) copy of the
 * double exp stays scalar: GCC cannot select 64-bit masks from double compares without SSE4.
 */
#ifndef FASTCNN_SIMD_H
#define FASTCNN_SIMD_H

#include <math.h>       /* also defines __GLIBC__ on glibc */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#  define FC_UNUSED __attribute__((unused))
#  define FC_INLINE static inline __attribute__((always_inline))
#else
#  define FC_UNUSED
#  define FC_INLINE static inline
#endif

#if !defined(FASTCNN_NO_DISPATCH) && defined(__x86_64__) && defined(__ELF__)               \
    && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#  define FC_DISPATCH 1
#  define FC_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#  define FC_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#  define FC_DISPATCH 0
#endif

/* The x86-64 levels the kernels are compiled for, in the order of fc_simd_level. */
enum { FC_LEVEL_BASELINE = 0, FC_LEVEL_V3 = 3, FC_LEVEL_V4 = 4 };

#if FC_DISPATCH
/* The level this CPU can run (the test GCC's target_clones resolvers make). */
static FC_UNUSED int fc_simd_cpu_level(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return FC_LEVEL_V4;
    if (__builtin_cpu_supports("x86-64-v3"))
        return FC_LEVEL_V3;
    return FC_LEVEL_BASELINE;
}

/* The level the kernels of this module run, set once when it is loaded: the CPU's, or the
 * lower one FASTCNN_SIMD asks for ("x86-64-v3" or "baseline"). A level above the CPU's is never
 * run (it would be an illegal instruction): the CPU's is, and fastcnn/_ops/__init__.py warns;
 * it also rejects values it does not know. */
static int fc_simd_level = FC_LEVEL_BASELINE;

__attribute__((constructor)) static void fc_simd_init(void)
{
    const char *s = getenv("FASTCNN_SIMD");
    int level = fc_simd_cpu_level();
    if (s != NULL && strcmp(s, "baseline") == 0)
        level = FC_LEVEL_BASELINE;
    else if (s != NULL && strcmp(s, "x86-64-v3") == 0 && level > FC_LEVEL_V3)
        level = FC_LEVEL_V3;
    fc_simd_level = level;
}

/* name##_v4, name##_v3, name##_base: one call of the copy for this module's level */
#  define FC_LEVELS_CALL(name, args)                                                       \
    (fc_simd_level == FC_LEVEL_V4 ? name##_v4 args                                         \
     : fc_simd_level == FC_LEVEL_V3 ? name##_v3 args : name##_base args)

/* Each kernel: its body compiled three times (name_v4 for AVX-512, name_v3 for AVX2 + FMA,
 * name_base for the baseline the module is built for), and the entry point the Cython code
 * calls (name), which runs the copy of the module's level: a branch on a variable set once,
 * always predicted. */
#  define FC_KERNEL(ret, name, params, args, ...)                                          \
    static FC_UNUSED FC_TARGET_V4 ret name##_v4 params __VA_ARGS__                         \
    static FC_UNUSED FC_TARGET_V3 ret name##_v3 params __VA_ARGS__                         \
    static FC_UNUSED ret name##_base params __VA_ARGS__                                    \
    static FC_UNUSED inline ret name params { return FC_LEVELS_CALL(name, args); }
#  define FC_KERNEL_VOID(name, params, args, ...)                                          \
    static FC_UNUSED FC_TARGET_V4 void name##_v4 params __VA_ARGS__                        \
    static FC_UNUSED FC_TARGET_V3 void name##_v3 params __VA_ARGS__                        \
    static FC_UNUSED void name##_base params __VA_ARGS__                                   \
    static FC_UNUSED inline void name params { FC_LEVELS_CALL(name, args); }
#else
static FC_UNUSED int fc_simd_cpu_level(void) { return FC_LEVEL_BASELINE; }
#  define FC_LEVELS_CALL(name, args) (name##_base args)
#  define FC_KERNEL(ret, name, params, args, ...) static FC_UNUSED ret name params __VA_ARGS__
#  define FC_KERNEL_VOID(name, params, args, ...)                                          \
    static FC_UNUSED void name params __VA_ARGS__
#endif

static FC_UNUSED const char *fc_level_name(int level)
{
    return level == FC_LEVEL_V4 ? "x86-64-v4" : level == FC_LEVEL_V3 ? "x86-64-v3" : "baseline";
}

/* Which code the kernels of this module run: "x86-64-v4", "x86-64-v3", "baseline", or
 * "portable" (built without dispatch: one copy, for the compiler's target). */
static FC_UNUSED const char *fc_simd_path(void)
{
#if FC_DISPATCH
    return fc_level_name(fc_simd_level);
#else
    return "portable";
#endif
}

/* The best level this CPU can run ("portable" without dispatch), whatever FASTCNN_SIMD asks. */
static FC_UNUSED const char *fc_simd_cpu_path(void)
{
#if FC_DISPATCH
    return fc_level_name(fc_simd_cpu_level());
#else
    return "portable";
#endif
}

/* ---- exp: branch-free scalar code that the loops below vectorize ---------------------- */

FC_INLINE float fc_bits_to_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
FC_INLINE uint32_t fc_f_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FC_INLINE double fc_bits_to_d(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
FC_INLINE uint64_t fc_d_to_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }

/* Out-of-range inputs are not clamped first: the polynomial and the scaling run on every
 * input (garbage, harmlessly, beyond the range) and integer masks select inf or 0 at the end.
 * A float clamp `x > hi ? hi : x` would be turned into a branch that GCC, under the default
 * -ftrapping-math, will not if-convert: the AVX2 and baseline copies would not vectorize. */
FC_INLINE float fc_exp_f(float x)
{
    /* t = round(x / ln2) + 254 + 1.5 * 2^23: its low bits hold K = k + 2 * 127 (the exponent bias
     * twice), so that the halves of 2^k come out biased: K >> 1 and K - (K >> 1) */
    const float shifter = 12583166.0f;          /* 1.5 * 2^23 + 254 */
    float t, kf, r, p, v;
    uint32_t kb, n1, n2, over, under;
    t = x * 1.44269502f + shifter;
    kf = t - shifter;                           /* k = round(x / ln2) */
    r = x - kf * 0.693145751953125f;            /* ln2_hi: 16 bits, k * ln2_hi exact */
    r = r - kf * 1.42860677e-06f;               /* ln2_lo */
    p = 1.38146104e-03f;                        /* exp(r) = 1 + r + r^2 (c2 + ... + c6 r^4) */
    p = p * r + 8.36871099e-03f;
    p = p * r + 4.16683890e-02f;
    p = p * r + 1.66665211e-01f;
    p = p * r + 4.99999940e-01f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    kb = fc_f_to_bits(t) - 0x4b400000u;         /* K = k + 254 in [104, 382] where it matters */
    n1 = kb >> 1;                               /* 2^k = 2^(n1 - 127) * 2^(n2 - 127), */
    n2 = kb - n1;                               /* both normal: subnormal results round once */
    v = (p * fc_bits_to_f(n1 << 23)) * fc_bits_to_f(n2 << 23);
    over = 0u - (uint32_t) (x > 88.8f);         /* exp(88.8) overflows: +inf */
    under = 0u - (uint32_t) (x < -104.0f);      /* exp(-104) rounds to 0 */
    return fc_bits_to_f(((fc_f_to_bits(v) & ~over) | (0x7f800000u & over)) & ~under);
}

FC_INLINE double fc_exp_d(double x)
{
    const double shifter = 6755399441057790.0;  /* 1.5 * 2^52 + 2046 */
    double t, kf, r, p, v;
    uint64_t kb, n1, n2, over, under;
    t = x * 1.4426950408889634 + shifter;
    kf = t - shifter;
    r = x - kf * 0.6931471805598903;            /* ln2_hi: 42 bits */
    r = r - kf * 5.497923018708371e-14;
    p = 2.5000070740978613e-08;
    p = p * r + 2.763023395980329e-07;
    p = p * r + 2.7557586270834445e-06;
    p = p * r + 2.4801493136077073e-05;
    p = p * r + 1.9841269506775294e-04;
    p = p * r + 1.3888888943597796e-03;
    p = p * r + 8.333333333494335e-03;
    p = p * r + 4.1666666666530267e-02;
    p = p * r + 1.6666666666666413e-01;
    p = p * r + 5.000000000000011e-01;
    p = p * r + 1.0;
    p = p * r + 1.0;
    kb = fc_d_to_bits(t) - 0x4338000000000000u; /* K = k + 2046 in [970, 3070] */
    n1 = kb >> 1;
    n2 = kb - n1;
    v = (p * fc_bits_to_d(n1 << 52)) * fc_bits_to_d(n2 << 52);
    over = 0u - (uint64_t) (x > 709.9);
    under = 0u - (uint64_t) (x < -746.0);
    return fc_bits_to_d(((fc_d_to_bits(v) & ~over) | (0x7ff0000000000000u & over)) & ~under);
}

/* ---- reductions: lanes and blocks -------------------------------------------------------- */

#define FC_LANES_f 32     /* partial sums: 2 zmm, 4 ymm or 8 xmm registers */
#define FC_LANES_d 16
#define FC_BLOCK 512      /* elements per block: then each lane's partial goes into a double */

/* the double lane totals, added in a fixed tree */
FC_INLINE double fc_total_f(const double *a)
{
    double s[8];
    int j;
    for (j = 0; j < 8; j++)
        s[j] = (a[j] + a[j + 8]) + (a[j + 16] + a[j + 24]);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

FC_INLINE double fc_total_d(const double *a)
{
    double s[4];
    int j;
    for (j = 0; j < 4; j++)
        s[j] = (a[j] + a[j + 4]) + (a[j + 8] + a[j + 12]);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* batch norm's value before a fused ReLU (see fc_affine_relu) */
#define FC_BN_VALUE(x, hi, a, c) (((x) - (hi)) * (a) + (c))

/* t1 += sum over k < n of TERM1 and t2 += sum of TERM2 (expressions of the index named k), in
 * one sweep. Lane j adds the terms k = j mod LANES of each block of FC_BLOCK elements in the
 * input precision (FC_BLOCK / LANES of them: short sums of values shifted near zero, or of
 * positive terms, lose nothing that matters), then adds its block partial to its own double;
 * the double lanes are added in a fixed tree at the end. Lanes are explicit arrays so that GCC
 * keeps them in vector registers without reassociating anything: the order is the same in
 * every copy. */
/* one step of every lane (terms k = base + j), and a block's lane partials added to the
 * double lanes (parts of FC_LANE_SUM2) */
#define FC_LANES_STEP(S, base, k, TERM1, TERM2)                                            \
    for (j_ = 0; j_ < FC_LANES_##S; j_++) {                                                \
        const ptrdiff_t k = (base) + j_;                                                   \
        a_[j_] += (TERM1);                                                                 \
        q_[j_] += (TERM2);                                                                 \
    }
#define FC_LANES_FLUSH(S)                                                                  \
    for (j_ = 0; j_ < FC_LANES_##S; j_++) {                                                \
        d_[j_] += a_[j_];                                                                  \
        e_[j_] += q_[j_];                                                                  \
        a_[j_] = q_[j_] = 0;                                                               \
    }

#define FC_LANE_SUM2(T, S, t1, t2, n, k, TERM1, TERM2)                                     \
    do {                                                                                   \
        T a_[FC_LANES_##S], q_[FC_LANES_##S];                                              \
        double d_[FC_LANES_##S], e_[FC_LANES_##S];                                         \
        const ptrdiff_t full_ = (n) / FC_BLOCK * FC_BLOCK;                                 \
        ptrdiff_t i_ = 0, b_;                                                              \
        int j_;                                                                            \
        for (j_ = 0; j_ < FC_LANES_##S; j_++) {                                            \
            d_[j_] = e_[j_] = 0.0;                                                         \
            a_[j_] = q_[j_] = 0;                                                           \
        }                                                                                  \
        for (; i_ < full_; i_ += FC_BLOCK) {          /* full blocks: a fixed trip count */ \
            for (b_ = 0; b_ < FC_BLOCK; b_ += FC_LANES_##S)                                \
                FC_LANES_STEP(S, i_ + b_, k, TERM1, TERM2)                                 \
            FC_LANES_FLUSH(S)                                                              \
        }                                                                                  \
        if (i_ < (n)) {                               /* the last, partial block */        \
            for (; i_ + FC_LANES_##S <= (n); i_ += FC_LANES_##S)                           \
                FC_LANES_STEP(S, i_, k, TERM1, TERM2)                                      \
            for (j_ = 0; i_ < (n); i_++, j_++) {                                           \
                const ptrdiff_t k = i_;                                                    \
                a_[j_] += (TERM1);                                                         \
                q_[j_] += (TERM2);                                                         \
            }                                                                              \
            FC_LANES_FLUSH(S)                                                              \
        }                                                                                  \
        t1 += fc_total_##S(d_);                                                            \
        t2 += fc_total_##S(e_);                                                            \
    } while (0)

/* total += sum over k < n of TERM, as FC_LANE_SUM2 with a second sum of zeros that nothing
 * reads (the compiler drops it: the same instructions as a one-sum loop, measured) */
#define FC_LANE_SUM(T, S, total, n, k, TERM)                                               \
    do {                                                                                   \
        double fc_unused_ = 0.0;                                                           \
        FC_LANE_SUM2(T, S, total, fc_unused_, n, k, TERM, (T) 0);                          \
        (void) fc_unused_;                                                                 \
    } while (0)

/* ---- the kernels, for T = float (suffix _f) and double (_d) ----------------------------- */

#define FC_DEFINE_KERNELS(T, S)                                                            \
                                                                                           \
/* max of x[0..n), n >= 1 (a NaN is kept only as x[0]: the exp of a NaN makes its row      \
 * NaN anyway) */                                                                          \
FC_KERNEL(T, fc_max_##S, (const T *x, ptrdiff_t n), (x, n), {                              \
    T a[FC_LANES_##S];                                                                     \
    ptrdiff_t i = 0;                                                                       \
    int j;                                                                                 \
    T m;                                                                                   \
    for (j = 0; j < FC_LANES_##S; j++)                                                     \
        a[j] = x[0];                                                                       \
    for (; i + FC_LANES_##S <= n; i += FC_LANES_##S)                                       \
        for (j = 0; j < FC_LANES_##S; j++)                                                 \
            a[j] = x[i + j] > a[j] ? x[i + j] : a[j];                                      \
    for (j = 0; i < n; i++, j++)                                                           \
        a[j] = x[i] > a[j] ? x[i] : a[j];                                                  \
    m = a[0];                                                                              \
    for (j = 1; j < FC_LANES_##S; j++)                                                     \
        m = a[j] > m ? a[j] : m;                                                           \
    return m;                                                                              \
})                                                                                         \
                                                                                           \
/* sum (x - shift) */                                                                      \
FC_KERNEL(double, fc_sum_##S, (const T *x, ptrdiff_t n, T shift), (x, n, shift), {         \
    double total = 0.0;                                                                    \
    FC_LANE_SUM(T, S, total, n, k, x[k] - shift);                                          \
    return total;                                                                          \
})                                                                                         \
                                                                                           \
/* s1 += sum (x - shift), s2 += sum (x - shift)^2, one sweep */                            \
FC_KERNEL_VOID(fc_moments_##S, (const T *x, ptrdiff_t n, T shift, double *s1, double *s2), \
               (x, n, shift, s1, s2), {                                                    \
    double a = 0.0, q = 0.0;                                                               \
    FC_LANE_SUM2(T, S, a, q, n, k, x[k] - shift, (x[k] - shift) * (x[k] - shift));         \
    *s1 += a;                                                                              \
    *s2 += q;                                                                              \
})                                                                                         \
                                                                                           \
/* sum (x - mean)^2 for mean = hi + lo, as sum (x - hi)^2 - n lo^2: the cross term         \
 * 2 lo sum (x - hi - lo) is 2 lo n (mean_exact - mean), relatively ~1e-14 |mean| / std */ \
FC_KERNEL(double, fc_sum_sq_dev_##S, (const T *x, ptrdiff_t n, T hi, T lo),                \
          (x, n, hi, lo), {                                                                \
    double total = 0.0;                                                                    \
    FC_LANE_SUM(T, S, total, n, k, (x[k] - hi) * (x[k] - hi));                             \
    return total - (double) n * lo * lo;                                                   \
})                                                                                         \
                                                                                           \
/* sum a * b */                                                                            \
FC_KERNEL(double, fc_dot_##S, (const T *a, const T *b, ptrdiff_t n), (a, b, n), {          \
    double total = 0.0;                                                                    \
    FC_LANE_SUM(T, S, total, n, k, a[k] * b[k]);                                           \
    return total;                                                                          \
})                                                                                         \
                                                                                           \
/* sum exp(x - shift) */                                                                   \
FC_KERNEL(double, fc_sum_exp_##S, (const T *x, ptrdiff_t n, T shift), (x, n, shift), {     \
    double total = 0.0;                                                                    \
    FC_LANE_SUM(T, S, total, n, k, fc_exp_##S(x[k] - shift));                              \
    return total;                                                                          \
})                                                                                         \
                                                                                           \
/* y = exp(x - shift); returns sum y (y may be x) */                                       \
FC_KERNEL(double, fc_exp_store_##S, (const T *x, T *y, ptrdiff_t n, T shift),              \
          (x, y, n, shift), {                                                              \
    double total = 0.0;                                                                    \
    FC_LANE_SUM(T, S, total, n, k, y[k] = fc_exp_##S(x[k] - shift));                       \
    return total;                                                                          \
})                                                                                         \
                                                                                           \
/* s1 += sum g, s2 += sum g * ((x - hi) - lo) with g = dy * w (w NULL: g = dy). The loop   \
 * subtracts hi only; lo * sum g comes off afterwards (lo is below half an ulp of hi). */  \
FC_KERNEL_VOID(fc_grad_sums_##S, (const T *dy, const T *w, const T *x, ptrdiff_t n,        \
                                  T hi, double lo, double *s1, double *s2),                \
               (dy, w, x, n, hi, lo, s1, s2), {                                            \
    double g = 0.0, gx = 0.0;                                                              \
    if (w == NULL)                                                                         \
        FC_LANE_SUM2(T, S, g, gx, n, k, dy[k], dy[k] * (x[k] - hi));                       \
    else                                                                                   \
        FC_LANE_SUM2(T, S, g, gx, n, k, dy[k] * w[k], dy[k] * w[k] * (x[k] - hi));         \
    *s1 += g;                                                                              \
    *s2 += gx - g * lo;                                                                    \
})                                                                                         \
                                                                                           \
/* y = (x - (hi + lo)) * a + b, as (x - hi) * a + c with c = b - lo * a formed in double   \
 * (x - hi is exact near the mean) */                                                      \
FC_KERNEL_VOID(fc_affine_##S, (const T *x, T *y, ptrdiff_t n, T hi, T lo, T a, T b),       \
               (x, y, n, hi, lo, a, b), {                                                  \
    const T c = (T) ((double) b - (double) lo * a);                                        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        y[i] = FC_BN_VALUE(x[i], hi, a, c);                                                \
})                                                                                         \
                                                                                           \
/* Batch norm followed by ReLU, fused (the ReLU's own read and write of the activation       \
 * saved). FC_BN_VALUE is the normalized value before the ReLU, formed as in fc_affine; the  \
 * gradient kernels recompute it from x with the same expression in the same copy (the       \
 * same contraction into FMA or not), so that their mask is exactly y > 0. */               \
FC_KERNEL_VOID(fc_affine_relu_##S, (const T *x, T *y, ptrdiff_t n, T hi, T lo, T a, T b),  \
               (x, y, n, hi, lo, a, b), {                                                  \
    const T c = (T) ((double) b - (double) lo * a);                                        \
    ptrdiff_t i;                                                                           \
    T v;                                                                                   \
    for (i = 0; i < n; i++) {                                                              \
        v = FC_BN_VALUE(x[i], hi, a, c);                                                   \
        y[i] = !(v <= 0) ? v : 0;           /* NaN kept, -0 -> 0: as relu */               \
    }                                                                                      \
})                                                                                         \
                                                                                           \
/* grad_sums of g = dy masked by relu's y > 0, y = FC_BN_VALUE(x, hi, fa, fb - lo * fa)    \
 * (fa, fb: the forward's scale and shift) */                                              \
FC_KERNEL_VOID(fc_grad_sums_relu_##S, (const T *dy, const T *x, ptrdiff_t n, T hi, T lo,   \
                                       T fa, T fb, double *s1, double *s2),                \
               (dy, x, n, hi, lo, fa, fb, s1, s2), {                                       \
    const T fc = (T) ((double) fb - (double) lo * fa);                                     \
    double g = 0.0, gx = 0.0;                                                              \
    FC_LANE_SUM2(T, S, g, gx, n, k,                                                        \
                 FC_BN_VALUE(x[k], hi, fa, fc) > 0 ? dy[k] : 0,                            \
                 (FC_BN_VALUE(x[k], hi, fa, fc) > 0 ? dy[k] : 0) * (x[k] - hi));           \
    *s1 += g;                                                                              \
    *s2 += gx - g * (double) lo;                                                           \
})                                                                                         \
                                                                                           \
/* grad_apply of the masked g (as fc_grad_sums_relu) */                                    \
FC_KERNEL_VOID(fc_grad_apply_relu_##S, (const T *dy, const T *x, T *dx, ptrdiff_t n, T hi, \
                                        T lo, T a, T b, T k, T fa, T fb),                  \
               (dy, x, dx, n, hi, lo, a, b, k, fa, fb), {                                  \
    const T c = (T) ((double) k - (double) lo * b);                                        \
    const T fc = (T) ((double) fb - (double) lo * fa);                                     \
    ptrdiff_t i;                                                                           \
    T g;                                                                                   \
    for (i = 0; i < n; i++) {                                                              \
        g = FC_BN_VALUE(x[i], hi, fa, fc) > 0 ? dy[i] : 0;                                 \
        dx[i] = g * a + ((x[i] - hi) * b + c);                                             \
    }                                                                                      \
})                                                                                         \
                                                                                           \
/* y = xhat * w + b with xhat = (x - (hi + lo)) * rs = (x - hi) * rs + c, c = -lo * rs;    \
 * w and b per element (either may be NULL) */                                             \
FC_KERNEL_VOID(fc_affine_vec_##S, (const T *x, T *y, ptrdiff_t n, T hi, T lo, T rs,        \
                                   const T *w, const T *b),                                \
               (x, y, n, hi, lo, rs, w, b), {                                              \
    const T c = (T) (-(double) lo * rs);                                                   \
    ptrdiff_t i;                                                                           \
    if (w != NULL && b != NULL)                                                            \
        for (i = 0; i < n; i++)                                                            \
            y[i] = ((x[i] - hi) * rs + c) * w[i] + b[i];                                   \
    else if (w != NULL)                                                                    \
        for (i = 0; i < n; i++)                                                            \
            y[i] = ((x[i] - hi) * rs + c) * w[i];                                          \
    else if (b != NULL)                                                                    \
        for (i = 0; i < n; i++)                                                            \
            y[i] = ((x[i] - hi) * rs + c) + b[i];                                          \
    else                                                                                   \
        for (i = 0; i < n; i++)                                                            \
            y[i] = (x[i] - hi) * rs + c;                                                   \
})                                                                                         \
                                                                                           \
/* dx = g * a + (x - (hi + lo)) * b + k with g = dy * w (w NULL: g = dy), as               \
 * g * a + ((x - hi) * b + c), c = k - lo * b formed in double */                          \
FC_KERNEL_VOID(fc_grad_apply_##S, (const T *dy, const T *w, const T *x, T *dx,             \
                                   ptrdiff_t n, T hi, T lo, T a, T b, T k),                \
               (dy, w, x, dx, n, hi, lo, a, b, k), {                                       \
    const T c = (T) ((double) k - (double) lo * b);                                        \
    ptrdiff_t i;                                                                           \
    if (w == NULL)                                                                         \
        for (i = 0; i < n; i++)                                                            \
            dx[i] = dy[i] * a + ((x[i] - hi) * b + c);                                     \
    else                                                                                   \
        for (i = 0; i < n; i++)                                                            \
            dx[i] = dy[i] * w[i] * a + ((x[i] - hi) * b + c);                              \
})                                                                                         \
                                                                                           \
/* per-element affine-gradient partials: gw += dy * xhat, gb += dy, with                   \
 * xhat = (x - (hi + lo)) * rs = (x - hi) * rs + c; gw and gb alias nothing else           \
 * (restrict: in double, GCC would otherwise give up on the alias checks) */               \
FC_KERNEL_VOID(fc_affine_grads_##S, (const T *dy, const T *x, ptrdiff_t n, T hi, T lo,     \
                                     T rs, double *restrict gw, double *restrict gb),      \
               (dy, x, n, hi, lo, rs, gw, gb), {                                           \
    const T c = (T) (-(double) lo * rs);                                                   \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) {                                                              \
        gw[i] += dy[i] * ((x[i] - hi) * rs + c);                                           \
        gb[i] += dy[i];                                                                    \
    }                                                                                      \
})                                                                                         \
                                                                                           \
/* the same for 4 rows ld apart, with their own hi, lo, rs: the 4 rows' terms are added in \
 * the input precision first, then once to gw and gb (a quarter of the double traffic) */  \
FC_KERNEL_VOID(fc_affine_grads4_##S, (const T *dy, const T *x, ptrdiff_t ld, ptrdiff_t n,  \
                                      const T *hi, const T *lo, const T *rs,               \
                                      double *restrict gw, double *restrict gb),           \
               (dy, x, ld, n, hi, lo, rs, gw, gb), {                                       \
    const T h0 = hi[0], h1 = hi[1], h2 = hi[2], h3 = hi[3];                                \
    const T r0 = rs[0], r1 = rs[1], r2 = rs[2], r3 = rs[3];                                \
    const T c0 = (T) (-(double) lo[0] * r0), c1 = (T) (-(double) lo[1] * r1);              \
    const T c2 = (T) (-(double) lo[2] * r2), c3 = (T) (-(double) lo[3] * r3);              \
    const T *y0 = dy, *y1 = dy + ld, *y2 = dy + 2 * ld, *y3 = dy + 3 * ld;                 \
    const T *x0 = x, *x1 = x + ld, *x2 = x + 2 * ld, *x3 = x + 3 * ld;                     \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) {                                                              \
        gw[i] += (y0[i] * ((x0[i] - h0) * r0 + c0) + y1[i] * ((x1[i] - h1) * r1 + c1))     \
                 + (y2[i] * ((x2[i] - h2) * r2 + c2) + y3[i] * ((x3[i] - h3) * r3 + c3));  \
        gb[i] += (y0[i] + y1[i]) + (y2[i] + y3[i]);                                        \
    }                                                                                      \
})                                                                                         \
                                                                                           \
/* y *= a */                                                                               \
FC_KERNEL_VOID(fc_scale_##S, (T *y, ptrdiff_t n, T a), (y, n, a), {                        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        y[i] *= a;                                                                         \
})                                                                                         \
                                                                                           \
/* dx = y * (dy - s): softmax's backward */                                                \
FC_KERNEL_VOID(fc_mul_sub_##S, (const T *y, const T *dy, T *dx, ptrdiff_t n, T s),         \
               (y, dy, dx, n, s), {                                                        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        dx[i] = y[i] * (dy[i] - s);                                                        \
})                                                                                         \
                                                                                           \
/* dx = dy - exp(y) * s: log_softmax's backward */                                         \
FC_KERNEL_VOID(fc_sub_exp_##S, (const T *dy, const T *y, T *dx, ptrdiff_t n, T s),         \
               (dy, y, dx, n, s), {                                                        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        dx[i] = dy[i] - fc_exp_##S(y[i]) * s;                                              \
})                                                                                         \
                                                                                           \
/* columns: m[i] = max(m[i], x[i]) (a NaN in x is skipped, as in fc_max) */                \
FC_KERNEL_VOID(fc_max_cols_##S, (T *m, const T *x, ptrdiff_t n), (m, x, n), {              \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        m[i] = x[i] > m[i] ? x[i] : m[i];                                                  \
})                                                                                         \
                                                                                           \
/* columns: e = exp(x - shift[i]); acc[i] += e; y[i] = e (y may be NULL) */                \
FC_KERNEL_VOID(fc_exp_acc_##S, (const T *x, const T *shift, T *y, double *acc,             \
                                ptrdiff_t n),                                              \
               (x, shift, y, acc, n), {                                                    \
    ptrdiff_t i;                                                                           \
    T e;                                                                                   \
    if (y == NULL)                                                                         \
        for (i = 0; i < n; i++)                                                            \
            acc[i] += fc_exp_##S(x[i] - shift[i]);                                         \
    else                                                                                   \
        for (i = 0; i < n; i++) {                                                          \
            e = fc_exp_##S(x[i] - shift[i]);                                               \
            acc[i] += e;                                                                   \
            y[i] = e;                                                                      \
        }                                                                                  \
})                                                                                         \
                                                                                           \
/* columns: dx = dy - exp(y) * s[i] */                                                     \
FC_KERNEL_VOID(fc_sub_exp_cols_##S, (const T *dy, const T *y, T *dx, const T *s,           \
                                     ptrdiff_t n),                                         \
               (dy, y, dx, s, n), {                                                        \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++)                                                                \
        dx[i] = dy[i] - fc_exp_##S(y[i]) * s[i];                                           \
})

FC_DEFINE_KERNELS(float, f)
FC_DEFINE_KERNELS(double, d)

#endif /* FASTCNN_SIMD_H */
