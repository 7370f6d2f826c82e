/* Vectorizable inner loops of the exp- and reduction-bound kernels (softmax, cross-entropy,
 * normalizations), compiled for several x86-64 levels in one wheel.
 *
 * The op structure (rows, blocks, threads, statistics, coefficients) lives in Cython; this
 * header only holds the loops over contiguous elements. Each is written once, as plain C over
 * the float type FC_T, in _simd_kernels.inc, which this header includes once per (level, float
 * type) as _conv_direct.h does with _conv_direct.inc; _simd_entries.inc then gives each kernel
 * its entry point per type (fc_<name>_f, fc_<name>_d). Cython reaches them through _simd.pxd.
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

/* FC_KERNEL (used by _pool.h's kernels; this header's own are in _simd_kernels.inc): its body
 * compiled three times (name_v4 for AVX-512, name_v3 for AVX2 + FMA, name_base for the baseline
 * the module is built for), and the entry point the Cython code calls (name), which runs the
 * copy of the module's level: a branch on a variable set once, always predicted. */
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

/* The entry points name_f and name_d of a void kernel compiled per level and type by
 * _per_level.inc (name_<f|d>_<level>), PARAMS(T) its parameter list and ARGS the names in it:
 * each runs the copy of this module's level. */
#define FC_VOID_ENTRIES(name, PARAMS, ARGS)                                                 \
    static FC_UNUSED inline void name##_f PARAMS(float) { FC_LEVELS_CALL(name##_f, ARGS); } \
    static FC_UNUSED inline void name##_d PARAMS(double) { FC_LEVELS_CALL(name##_d, ARGS); }

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

/* Inside _simd_kernels.inc (FC_T, FC_LANES and FC_TOTAL set by the inclusion):
 * t1 += sum over k < n of TERM1 and t2 += sum of TERM2 (expressions of the index named k), in
 * one sweep. Lane j adds the terms k = j mod LANES of each block of FC_BLOCK elements in the
 * input precision (FC_BLOCK / LANES of them: short sums of values shifted near zero, or of
 * positive terms, lose nothing that matters), then adds its block partial to its own double;
 * the double lanes are added in a fixed tree at the end. Lanes are explicit arrays so that GCC
 * keeps them in vector registers without reassociating anything: the order is the same in
 * every copy. */
/* one step of every lane (terms k = base + j), and a block's lane partials added to the
 * double lanes (parts of FC_LANE_SUM2) */
#define FC_LANES_STEP(base, k, TERM1, TERM2)                                               \
    for (j_ = 0; j_ < FC_LANES; j_++) {                                                    \
        const ptrdiff_t k = (base) + j_;                                                   \
        a_[j_] += (TERM1);                                                                 \
        q_[j_] += (TERM2);                                                                 \
    }
#define FC_LANES_FLUSH()                                                                   \
    for (j_ = 0; j_ < FC_LANES; j_++) {                                                    \
        d_[j_] += a_[j_];                                                                  \
        e_[j_] += q_[j_];                                                                  \
        a_[j_] = q_[j_] = 0;                                                               \
    }

#define FC_LANE_SUM2(t1, t2, n, k, TERM1, TERM2)                                           \
    do {                                                                                   \
        FC_T a_[FC_LANES], q_[FC_LANES];                                                   \
        double d_[FC_LANES], e_[FC_LANES];                                                 \
        const ptrdiff_t full_ = (n) / FC_BLOCK * FC_BLOCK;                                 \
        ptrdiff_t i_ = 0, b_;                                                              \
        int j_;                                                                            \
        for (j_ = 0; j_ < FC_LANES; j_++) {                                                \
            d_[j_] = e_[j_] = 0.0;                                                         \
            a_[j_] = q_[j_] = 0;                                                           \
        }                                                                                  \
        for (; i_ < full_; i_ += FC_BLOCK) {          /* full blocks: a fixed trip count */ \
            for (b_ = 0; b_ < FC_BLOCK; b_ += FC_LANES)                                    \
                FC_LANES_STEP(i_ + b_, k, TERM1, TERM2)                                    \
            FC_LANES_FLUSH()                                                               \
        }                                                                                  \
        if (i_ < (n)) {                               /* the last, partial block */        \
            for (; i_ + FC_LANES <= (n); i_ += FC_LANES)                                   \
                FC_LANES_STEP(i_, k, TERM1, TERM2)                                         \
            for (j_ = 0; i_ < (n); i_++, j_++) {                                           \
                const ptrdiff_t k = i_;                                                    \
                a_[j_] += (TERM1);                                                         \
                q_[j_] += (TERM2);                                                         \
            }                                                                              \
            FC_LANES_FLUSH()                                                               \
        }                                                                                  \
        t1 += FC_TOTAL(d_);                                                                \
        t2 += FC_TOTAL(e_);                                                                \
    } while (0)

/* total += sum over k < n of TERM, as FC_LANE_SUM2 with a second sum of zeros that nothing
 * reads (the compiler drops it: the same instructions as a one-sum loop, measured) */
#define FC_LANE_SUM(total, n, k, TERM)                                                     \
    do {                                                                                   \
        double fc_unused_ = 0.0;                                                           \
        FC_LANE_SUM2(total, fc_unused_, n, k, TERM, (FC_T) 0);                             \
        (void) fc_unused_;                                                                 \
    } while (0)

/* ---- the kernels: _simd_kernels.inc, once per (level, float type) ----------------------- */

/* Names inside the included files: FC_KERNEL_NAME(fc_max) is fc_max_f_v4 (float, AVX-512 copy)
 * and so on, FC_ENTRY_NAME(fc_max) is fc_max_f, and FC_CALL(fc_max, args) calls the copy of this
 * module's level. */
#define FC_KERNEL_NAME(name) FC_NAME_AT_(name, FC_S, FC_LEVEL)
#define FC_ENTRY_NAME(name) FC_ENTRY_NAME_(name, FC_S)
#define FC_NAME_AT(name, level) FC_NAME_AT_(name, FC_S, level)
#define FC_NAME_AT_(name, s, level) FC_NAME_AT__(name, s, level)
#define FC_NAME_AT__(name, s, level) name##_##s##_##level
#define FC_ENTRY_NAME_(name, s) FC_ENTRY_NAME__(name, s)
#define FC_ENTRY_NAME__(name, s) name##_##s
#if FC_DISPATCH
#  define FC_CALL(name, args)                                                              \
    (fc_simd_level == FC_LEVEL_V4 ? FC_NAME_AT(name, v4) args                              \
     : fc_simd_level == FC_LEVEL_V3 ? FC_NAME_AT(name, v3) args : FC_NAME_AT(name, base) args)
#else
#  define FC_CALL(name, args) (FC_NAME_AT(name, base) args)
#endif

#define FC_SIMD_INC "_simd_kernels.inc"
#if FC_DISPATCH
#  pragma GCC push_options
#  pragma GCC target("arch=x86-64-v4")
#  define FC_LEVEL v4
#  include "_simd_types.inc"
#  undef FC_LEVEL
#  pragma GCC pop_options
#  pragma GCC push_options
#  pragma GCC target("arch=x86-64-v3")
#  define FC_LEVEL v3
#  include "_simd_types.inc"
#  undef FC_LEVEL
#  pragma GCC pop_options
#endif
/* the baseline the module is built for: the only copy without dispatch */
#define FC_LEVEL base
#include "_simd_types.inc"
#undef FC_LEVEL
#undef FC_SIMD_INC

/* the entry points the Cython code calls: fc_max_f, fc_max_d, ... */
#define FC_SIMD_INC "_simd_entries.inc"
#include "_simd_types.inc"
#undef FC_SIMD_INC

#endif /* FASTCNN_SIMD_H */
