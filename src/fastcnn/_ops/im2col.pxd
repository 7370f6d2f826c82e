from cython cimport floating

# Geometry of one convolution window sweep. 1-D and 2-D problems are 3-D ones whose leading
# spatial sizes are 1 (kernel 1, stride 1, padding 0, dilation 1), so one kernel serves all three.
ctypedef struct Geom:
    Py_ssize_t D, H, W          # input spatial size
    Py_ssize_t kD, kH, kW       # kernel size
    Py_ssize_t sD, sH, sW       # stride
    Py_ssize_t pD, pH, pW       # padding before each axis (padding after is implied by o*)
    Py_ssize_t dD, dH, dW       # dilation
    Py_ssize_t oD, oH, oW       # output spatial size

cdef inline void valid_range(Py_ssize_t start, Py_ssize_t step, Py_ssize_t size,
                             Py_ssize_t count, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) are those with 0 <= start + o*step < size (step > 0).

    Only non-negative numerators are divided: with cdivision, C division truncates toward zero.
    """
    cdef Py_ssize_t first = 0, last
    if start < 0:
        first = (-start + step - 1) // step
    if size - 1 - start < 0:
        last = 0
    else:
        last = (size - 1 - start) // step + 1
    if last > count:
        last = count
    if first > last:
        first = last
    lo[0] = first
    hi[0] = last


cdef Geom make_geom(tuple in_size, tuple kernel, tuple stride, tuple padding,
                    tuple dilation, tuple out_size) except *

cdef void im2col_plane(const floating* x, floating* cols, const Geom* g,
                       Py_ssize_t ld) noexcept nogil
cdef void col2im_plane(const floating* cols, floating* x, const Geom* g,
                       Py_ssize_t ld) noexcept nogil
