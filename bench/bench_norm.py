"""pytest-benchmark suite for the normalizations (run: python -m pytest bench --benchmark-only)."""
import numpy as np
import pytest

import fastcnn.functional as F

SHAPES = {"bn_32x64x32x32": (32, 64, 32, 32), "gn_16x64x28x28": (16, 64, 28, 28)}


def _data(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    c = shape[1]
    return x, dy, np.ones(c, np.float32), np.zeros(c, np.float32)


@pytest.mark.parametrize("name", SHAPES)
def test_batch_norm_train_forward(benchmark, name):
    x, _, w, b = _data(SHAPES[name])
    rm, rv = np.zeros_like(w), np.ones_like(w)
    benchmark(F.batch_norm, x, rm, rv, w, b, True)


@pytest.mark.parametrize("name", SHAPES)
def test_batch_norm_train_backward(benchmark, name):
    x, dy, w, b = _data(SHAPES[name])
    _, mean, invstd = F.batch_norm(x, None, None, w, b, True, return_stats=True)
    benchmark(lambda: F.batch_norm_backward(dy, x, w, save_mean=mean, save_invstd=invstd))


@pytest.mark.parametrize("name", SHAPES)
def test_group_norm_forward(benchmark, name):
    x, _, w, b = _data(SHAPES[name])
    benchmark(F.group_norm, x, 32, w, b)


@pytest.mark.parametrize("name", SHAPES)
def test_group_norm_backward(benchmark, name):
    x, dy, w, b = _data(SHAPES[name])
    benchmark(F.group_norm_backward, dy, x, 32, w, b)


def test_layer_norm_forward_backward(benchmark):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 512), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    w, b = np.ones(512, np.float32), np.zeros(512, np.float32)
    benchmark(lambda: (F.layer_norm(x, 512, w, b), F.layer_norm_backward(dy, x, 512, w, b)))
