# What a convolution kernel applies to each output as it stores it: the bias, and the ReLU of
# the layer after it when the model fuses them (one pass over the output instead of two).
from cython cimport floating


cdef inline floating bias_relu(floating v, floating b, bint relu) noexcept nogil:
    """v + b, then max(., 0) if relu; NaN kept and -0 -> 0, as fastcnn's relu."""
    v = v + b
    return 0 if relu and v <= 0 else v
