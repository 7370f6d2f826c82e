"""pytest-benchmark suite for pooling, resampling and transposed convolution
(run: python -m pytest bench/bench_pool.py --benchmark-only)."""
import numpy as np
import pytest

import fastcnn.functional as F

POOLS = {  # shape, kernel, stride, padding
    "2x2": ((32, 64, 32, 32), 2, 2, 0),
    "3x3s2p1": ((16, 64, 56, 56), 3, 2, 1),
}


def _x(shape):
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("name", POOLS)
def test_max_pool2d_forward(benchmark, name):
    shape, k, s, p = POOLS[name]
    benchmark(F.max_pool2d, _x(shape), k, s, p, return_indices=True)


@pytest.mark.parametrize("name", POOLS)
def test_max_pool2d_backward(benchmark, name):
    shape, k, s, p = POOLS[name]
    x = _x(shape)
    y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
    benchmark(F.max_pool2d_backward, np.ones_like(y), x, ind, k, s, p)


@pytest.mark.parametrize("name", POOLS)
def test_avg_pool2d_forward(benchmark, name):
    shape, k, s, p = POOLS[name]
    benchmark(F.avg_pool2d, _x(shape), k, s, p)


@pytest.mark.parametrize("name", POOLS)
def test_avg_pool2d_backward(benchmark, name):
    shape, k, s, p = POOLS[name]
    x = _x(shape)
    benchmark(F.avg_pool2d_backward, np.ones_like(F.avg_pool2d(x, k, s, p)), x, k, s, p)


def test_adaptive_avg_pool2d(benchmark):
    benchmark(F.adaptive_avg_pool2d, _x((32, 512, 7, 7)), 1)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_x2_forward(benchmark, mode):
    benchmark(F.interpolate, _x((16, 64, 32, 32)), scale_factor=2, mode=mode)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_x2_backward(benchmark, mode):
    dy = _x((16, 64, 64, 64))
    benchmark(F.interpolate_backward, dy, (16, 64, 32, 32), scale_factor=2, mode=mode)


def test_conv_transpose2d_forward(benchmark):
    w = _x((64, 32, 4, 4)) * 0.1
    benchmark(F.conv_transpose2d, _x((16, 64, 16, 16)), w, None, 2, 1)


def test_conv_transpose2d_backward(benchmark):
    x, w = _x((16, 64, 16, 16)), _x((64, 32, 4, 4)) * 0.1
    dy = np.ones_like(F.conv_transpose2d(x, w, None, 2, 1))
    benchmark(F.conv_transpose2d_backward, dy, x, w, 2, 1)
