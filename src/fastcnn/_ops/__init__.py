"""Compiled kernels (Cython, OpenMP, BLAS). Private: call them through :mod:`fastcnn.functional`.

Every function here trusts its arguments (shapes, contiguity, dtypes), which the Python layer
has checked; none of them may be called with unchecked user input.
"""
