"""pytest-benchmark suite for convolution (run: python -m pytest bench --benchmark-only)."""
import numpy as np
import pytest

import fastcnn.functional as F

SHAPES = {  # N, C_in, H, W, C_out, k, s, p
    "lenet1": (64, 1, 28, 28, 6, 5, 1, 2),
    "lenet2": (64, 6, 14, 14, 16, 5, 1, 0),
    "vgg3x3": (32, 64, 32, 32, 64, 3, 1, 1),
    "resnet3x3": (16, 128, 28, 28, 128, 3, 1, 1),
    "strided": (16, 64, 56, 56, 128, 3, 2, 1),
    "pointwise": (16, 256, 14, 14, 64, 1, 1, 0),
}


def _problem(name):
    n, c, h, w, co, k, s, p = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((co, c, k, k), dtype=np.float32)
    b = np.zeros(co, np.float32)
    return x, wt, b, s, p


@pytest.mark.parametrize("name", SHAPES)
def test_conv2d_forward(benchmark, name):
    x, w, b, s, p = _problem(name)
    benchmark(F.conv2d, x, w, b, s, p)


@pytest.mark.parametrize("name", SHAPES)
def test_conv2d_backward(benchmark, name):
    x, w, b, s, p = _problem(name)
    dy = np.ones_like(F.conv2d(x, w, b, s, p))
    benchmark(F.conv2d_backward, dy, x, w, s, p)
