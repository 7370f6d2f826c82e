# What a convolution kernel applies to each output as it stores it: the bias, and the ReLU of
# the layer after it when the model fuses them (one pass over the output instead of two).
from cython cimport floating


cdef extern from "_epilogue.h" nogil:
    float fc_relu_f(float v)
    double fc_relu_d(double v)


cdef inline floating bias_relu(floating v, floating b, bint relu) noexcept nogil:
    """v + b, then max(., 0) if relu; NaN kept and -0 -> 0, as fastcnn's relu (without a
    branch on the sign: _epilogue.h)."""
    v = v + b
    if relu:
        if floating is float:
            v = fc_relu_f(v)
        else:
            v = fc_relu_d(v)
    return v
