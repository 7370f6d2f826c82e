"""Optimizer updates in one sweep per parameter.

SGD with momentum (torch's rule, fastcnn.optim.SGD), per element, each product rounded to the
parameter's precision exactly as numpy's separate in-place steps round it (momentum, 1 -
dampening and -lr are cast to that precision first, as numpy casts a Python float):

    buf = buf * momentum + g * (1 - dampening)
    p   = p + (nesterov ? buf * momentum + g : buf) * (-lr)

numpy's version made five passes over the parameter's arrays (buf, a temporary, p), one thread
each; this is one pass on the team. Elementwise: the same bits for any number of threads. The
module is compiled for the baseline (no FMA contraction), so the bits are numpy's too.
"""
from cython cimport floating
from cython.parallel cimport prange


def sgd_momentum(floating[::1] p, const floating[::1] g, floating[::1] buf, double momentum,
                 double keep, double neg_lr, bint nesterov, int num_threads):
    """p, g, buf: a parameter, its gradient and its momentum buffer, flat and of one dtype;
    keep = 1 - dampening, neg_lr = -lr (see the module docstring)."""
    cdef Py_ssize_t n = p.shape[0], i
    cdef floating m = <floating> momentum, k = <floating> keep, a = <floating> neg_lr
    cdef floating b, t
    with nogil:
        for i in prange(n, schedule='static', num_threads=num_threads):
            b = buf[i] * m
            t = g[i] * k
            b = b + t
            buf[i] = b
            if nesterov:
                t = b * m
                t = t + g[i]
            else:
                t = b
            t = t * a
            p[i] = p[i] + t
