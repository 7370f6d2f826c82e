# The vectorizable inner loops of _simd.h (exp, row reductions, affine sweeps), one fused
# wrapper per loop so that the kernels call them over `floating` pointers. Each loop is compiled
# for AVX-512, AVX2 + FMA and the baseline and picked per CPU when the module loads; see the
# header for the dispatch, the exp's accuracy and FASTCNN_SIMD. Sums come back as
# doubles and run in a fixed order (lanes, then blocks): the same bits for any thread count.
# Pointers to the "hi, lo" pair take a mean (or a log-sum-exp) split into two floats,
# value = hi + lo (low_part below), so that x - value keeps single precision.
from cython cimport floating


cdef extern from "_simd.h" nogil:
    const char* fc_simd_path()
    const char* fc_simd_cpu_path()
    float fc_exp_f(float x)
    double fc_exp_d(double x)
    float fc_max_f(const float* x, Py_ssize_t n)
    double fc_max_d(const double* x, Py_ssize_t n)
    double fc_sum_f(const float* x, Py_ssize_t n, float shift)
    double fc_sum_d(const double* x, Py_ssize_t n, double shift)
    void fc_moments_f(const float* x, Py_ssize_t n, float shift, double* s1, double* s2)
    void fc_moments_d(const double* x, Py_ssize_t n, double shift, double* s1, double* s2)
    double fc_sum_sq_dev_f(const float* x, Py_ssize_t n, float hi, float lo)
    double fc_sum_sq_dev_d(const double* x, Py_ssize_t n, double hi, double lo)
    double fc_dot_f(const float* a, const float* b, Py_ssize_t n)
    double fc_dot_d(const double* a, const double* b, Py_ssize_t n)
    double fc_sum_exp_f(const float* x, Py_ssize_t n, float shift)
    double fc_sum_exp_d(const double* x, Py_ssize_t n, double shift)
    double fc_exp_store_f(const float* x, float* y, Py_ssize_t n, float shift)
    double fc_exp_store_d(const double* x, double* y, Py_ssize_t n, double shift)
    void fc_grad_sums_f(const float* dy, const float* w, const float* x, Py_ssize_t n,
                        float hi, double lo, double* s1, double* s2)
    void fc_grad_sums_d(const double* dy, const double* w, const double* x, Py_ssize_t n,
                        double hi, double lo, double* s1, double* s2)
    void fc_affine_f(const float* x, float* y, Py_ssize_t n, float hi, float lo, float a,
                     float b)
    void fc_affine_d(const double* x, double* y, Py_ssize_t n, double hi, double lo, double a,
                     double b)
    void fc_affine_relu_f(const float* x, float* y, Py_ssize_t n, float hi, float lo, float a,
                          float b)
    void fc_affine_relu_d(const double* x, double* y, Py_ssize_t n, double hi, double lo,
                          double a, double b)
    void fc_grad_sums_relu_f(const float* dy, const float* x, Py_ssize_t n, float hi, float lo,
                             float fa, float fb, double* s1, double* s2)
    void fc_grad_sums_relu_d(const double* dy, const double* x, Py_ssize_t n, double hi,
                             double lo, double fa, double fb, double* s1, double* s2)
    void fc_grad_apply_relu_f(const float* dy, const float* x, float* dx, Py_ssize_t n,
                              float hi, float lo, float a, float b, float k, float fa, float fb)
    void fc_grad_apply_relu_d(const double* dy, const double* x, double* dx, Py_ssize_t n,
                              double hi, double lo, double a, double b, double k, double fa,
                              double fb)
    void fc_affine_vec_f(const float* x, float* y, Py_ssize_t n, float hi, float lo, float rs,
                         const float* w, const float* b)
    void fc_affine_vec_d(const double* x, double* y, Py_ssize_t n, double hi, double lo,
                         double rs, const double* w, const double* b)
    void fc_grad_apply_f(const float* dy, const float* w, const float* x, float* dx,
                         Py_ssize_t n, float hi, float lo, float a, float b, float k)
    void fc_grad_apply_d(const double* dy, const double* w, const double* x, double* dx,
                         Py_ssize_t n, double hi, double lo, double a, double b, double k)
    void fc_affine_grads_f(const float* dy, const float* x, Py_ssize_t n, float hi, float lo,
                           float rs, double* gw, double* gb)
    void fc_affine_grads_d(const double* dy, const double* x, Py_ssize_t n, double hi,
                           double lo, double rs, double* gw, double* gb)
    void fc_affine_grads4_f(const float* dy, const float* x, Py_ssize_t ld, Py_ssize_t n,
                            const float* hi, const float* lo, const float* rs, double* gw,
                            double* gb)
    void fc_affine_grads4_d(const double* dy, const double* x, Py_ssize_t ld, Py_ssize_t n,
                            const double* hi, const double* lo, const double* rs, double* gw,
                            double* gb)
    void fc_scale_f(float* y, Py_ssize_t n, float a)
    void fc_scale_d(double* y, Py_ssize_t n, double a)
    void fc_mul_sub_f(const float* y, const float* dy, float* dx, Py_ssize_t n, float s)
    void fc_mul_sub_d(const double* y, const double* dy, double* dx, Py_ssize_t n, double s)
    void fc_sub_exp_f(const float* dy, const float* y, float* dx, Py_ssize_t n, float s)
    void fc_sub_exp_d(const double* dy, const double* y, double* dx, Py_ssize_t n, double s)
    void fc_max_cols_f(float* m, const float* x, Py_ssize_t n)
    void fc_max_cols_d(double* m, const double* x, Py_ssize_t n)
    void fc_exp_acc_f(const float* x, const float* shift, float* y, double* acc, Py_ssize_t n)
    void fc_exp_acc_d(const double* x, const double* shift, double* y, double* acc,
                      Py_ssize_t n)
    void fc_sub_exp_cols_f(const float* dy, const float* y, float* dx, const float* s,
                           Py_ssize_t n)
    void fc_sub_exp_cols_d(const double* dy, const double* y, double* dx, const double* s,
                           Py_ssize_t n)


cdef inline floating low_part(double v, floating hi) noexcept nogil:
    """lo such that v = hi + lo to twice the input precision, for hi = <floating> v (0 in
    double). ``(x - hi) - lo`` is then x - v to single precision even when v is large against
    x - v: the first difference is exact near v. (Two plain assignments rather than pointer
    outputs, so that hi and lo stay private inside a prange body.)"""
    return <floating> (v - <double> hi)


# ---- row reductions (n >= 1 for row_max) -------------------------------------------------

cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max x (a NaN only as x[0]; the exp of any NaN makes its row NaN anyway)."""
    if floating is float:
        return fc_max_f(x, n)
    else:
        return fc_max_d(x, n)


cdef inline double sum_shifted(const floating* x, Py_ssize_t n, floating shift) noexcept nogil:
    """sum (x - shift)."""
    if floating is float:
        return fc_sum_f(x, n, shift)
    else:
        return fc_sum_d(x, n, shift)


cdef inline void moments(const floating* x, Py_ssize_t n, floating shift, double* s1,
                         double* s2) noexcept nogil:
    """s1 += sum (x - shift), s2 += sum (x - shift)^2, one sweep."""
    if floating is float:
        fc_moments_f(x, n, shift, s1, s2)
    else:
        fc_moments_d(x, n, shift, s1, s2)


cdef inline double sum_sq_dev(const floating* x, Py_ssize_t n, floating hi,
                              floating lo) noexcept nogil:
    """sum (x - (hi + lo))^2."""
    if floating is float:
        return fc_sum_sq_dev_f(x, n, hi, lo)
    else:
        return fc_sum_sq_dev_d(x, n, hi, lo)


cdef inline double dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """sum a * b."""
    if floating is float:
        return fc_dot_f(a, b, n)
    else:
        return fc_dot_d(a, b, n)


cdef inline double sum_exp(const floating* x, Py_ssize_t n, floating shift) noexcept nogil:
    """sum exp(x - shift)."""
    if floating is float:
        return fc_sum_exp_f(x, n, shift)
    else:
        return fc_sum_exp_d(x, n, shift)


cdef inline double exp_store(const floating* x, floating* y, Py_ssize_t n,
                             floating shift) noexcept nogil:
    """y = exp(x - shift) (y may be x); returns sum y."""
    if floating is float:
        return fc_exp_store_f(x, y, n, shift)
    else:
        return fc_exp_store_d(x, y, n, shift)


cdef inline void grad_sums(const floating* dy, const floating* w, const floating* x,
                           Py_ssize_t n, floating hi, double lo, double* s1,
                           double* s2) noexcept nogil:
    """s1 += sum g, s2 += sum g * (x - (hi + lo)), g = dy * w (w may be NULL: g = dy)."""
    if floating is float:
        fc_grad_sums_f(dy, w, x, n, hi, lo, s1, s2)
    else:
        fc_grad_sums_d(dy, w, x, n, hi, lo, s1, s2)


# ---- elementwise sweeps ------------------------------------------------------------------

cdef inline void affine(const floating* x, floating* y, Py_ssize_t n, floating hi, floating lo,
                        floating a, floating b) noexcept nogil:
    """y = ((x - hi) - lo) * a + b."""
    if floating is float:
        fc_affine_f(x, y, n, hi, lo, a, b)
    else:
        fc_affine_d(x, y, n, hi, lo, a, b)


cdef inline void affine_relu(const floating* x, floating* y, Py_ssize_t n, floating hi,
                             floating lo, floating a, floating b) noexcept nogil:
    """y = max(((x - hi) - lo) * a + b, 0) (NaN kept)."""
    if floating is float:
        fc_affine_relu_f(x, y, n, hi, lo, a, b)
    else:
        fc_affine_relu_d(x, y, n, hi, lo, a, b)


cdef inline void grad_sums_relu(const floating* dy, const floating* x, Py_ssize_t n,
                                floating hi, floating lo, floating fa, floating fb, double* s1,
                                double* s2) noexcept nogil:
    """grad_sums (w NULL) of g = dy where affine_relu(x, hi, lo, fa, fb) > 0 else 0."""
    if floating is float:
        fc_grad_sums_relu_f(dy, x, n, hi, lo, fa, fb, s1, s2)
    else:
        fc_grad_sums_relu_d(dy, x, n, hi, lo, fa, fb, s1, s2)


cdef inline void grad_apply_relu(const floating* dy, const floating* x, floating* dx,
                                 Py_ssize_t n, floating hi, floating lo, floating a, floating b,
                                 floating k, floating fa, floating fb) noexcept nogil:
    """grad_apply (w NULL) of g = dy where affine_relu(x, hi, lo, fa, fb) > 0 else 0."""
    if floating is float:
        fc_grad_apply_relu_f(dy, x, dx, n, hi, lo, a, b, k, fa, fb)
    else:
        fc_grad_apply_relu_d(dy, x, dx, n, hi, lo, a, b, k, fa, fb)


cdef inline void affine_vec(const floating* x, floating* y, Py_ssize_t n, floating hi,
                            floating lo, floating rs, const floating* w,
                            const floating* b) noexcept nogil:
    """y = ((x - hi) - lo) * rs * w + b, w and b per element (either may be NULL)."""
    if floating is float:
        fc_affine_vec_f(x, y, n, hi, lo, rs, w, b)
    else:
        fc_affine_vec_d(x, y, n, hi, lo, rs, w, b)


cdef inline void grad_apply(const floating* dy, const floating* w, const floating* x,
                            floating* dx, Py_ssize_t n, floating hi, floating lo, floating a,
                            floating b, floating k) noexcept nogil:
    """dx = dy * w * a + ((x - hi) - lo) * b + k (w may be NULL: 1)."""
    if floating is float:
        fc_grad_apply_f(dy, w, x, dx, n, hi, lo, a, b, k)
    else:
        fc_grad_apply_d(dy, w, x, dx, n, hi, lo, a, b, k)


cdef inline void affine_grads(const floating* dy, const floating* x, Py_ssize_t n, floating hi,
                              floating lo, floating rs, double* gw, double* gb) noexcept nogil:
    """gw += dy * ((x - hi) - lo) * rs, gb += dy (per element, double accumulators)."""
    if floating is float:
        fc_affine_grads_f(dy, x, n, hi, lo, rs, gw, gb)
    else:
        fc_affine_grads_d(dy, x, n, hi, lo, rs, gw, gb)


cdef inline void affine_grads4(const floating* dy, const floating* x, Py_ssize_t ld,
                               Py_ssize_t n, const floating* hi, const floating* lo,
                               const floating* rs, double* gw, double* gb) noexcept nogil:
    """affine_grads of 4 rows ld apart (their own hi, lo, rs), added to gw, gb once."""
    if floating is float:
        fc_affine_grads4_f(dy, x, ld, n, hi, lo, rs, gw, gb)
    else:
        fc_affine_grads4_d(dy, x, ld, n, hi, lo, rs, gw, gb)


cdef inline void scale(floating* y, Py_ssize_t n, floating a) noexcept nogil:
    """y *= a."""
    if floating is float:
        fc_scale_f(y, n, a)
    else:
        fc_scale_d(y, n, a)


cdef inline void mul_sub(const floating* y, const floating* dy, floating* dx, Py_ssize_t n,
                         floating s) noexcept nogil:
    """dx = y * (dy - s)."""
    if floating is float:
        fc_mul_sub_f(y, dy, dx, n, s)
    else:
        fc_mul_sub_d(y, dy, dx, n, s)


cdef inline void sub_exp(const floating* dy, const floating* y, floating* dx, Py_ssize_t n,
                         floating s) noexcept nogil:
    """dx = dy - exp(y) * s."""
    if floating is float:
        fc_sub_exp_f(dy, y, dx, n, s)
    else:
        fc_sub_exp_d(dy, y, dx, n, s)


# ---- column sweeps (one row of a block of columns; per-column state) ---------------------

cdef inline void max_cols(floating* m, const floating* x, Py_ssize_t n) noexcept nogil:
    """m[i] = max(m[i], x[i])."""
    if floating is float:
        fc_max_cols_f(m, x, n)
    else:
        fc_max_cols_d(m, x, n)


cdef inline void exp_acc(const floating* x, const floating* shift, floating* y, double* acc,
                         Py_ssize_t n) noexcept nogil:
    """e = exp(x[i] - shift[i]); acc[i] += e; y[i] = e (y may be NULL)."""
    if floating is float:
        fc_exp_acc_f(x, shift, y, acc, n)
    else:
        fc_exp_acc_d(x, shift, y, acc, n)


cdef inline void sub_exp_cols(const floating* dy, const floating* y, floating* dx,
                              const floating* s, Py_ssize_t n) noexcept nogil:
    """dx[i] = dy[i] - exp(y[i]) * s[i]."""
    if floating is float:
        fc_sub_exp_cols_f(dy, y, dx, s, n)
    else:
        fc_sub_exp_cols_d(dy, y, dx, s, n)
