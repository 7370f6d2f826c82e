"""unfold / fold (im2col / col2im): torch agreement, a direct reference for 1-D/3-D, adjointness."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import fastcnn.functional as F


def reference_unfold(x, kernel, dilation, padding, stride):
    """Direct loops over (n, c, offset, block) on an explicitly zero-padded copy."""
    pad = [(0, 0), (0, 0)] + [(p, p) for p in padding]
    xp = np.pad(x, pad)
    blocks = [F.conv_output_size(i, k, s, p, d) for i, k, s, p, d in
              zip(x.shape[2:], kernel, stride, padding, dilation)]
    n, c = x.shape[:2]
    out = np.zeros((n, c * int(np.prod(kernel)), int(np.prod(blocks))), x.dtype)
    for ci in range(c):
        for r, off in enumerate(itertools.product(*[range(k) for k in kernel])):
            for l, blk in enumerate(itertools.product(*[range(b) for b in blocks])):
                idx = tuple(b * s + o * d for b, s, o, d in zip(blk, stride, off, dilation))
                out[:, ci * int(np.prod(kernel)) + r, l] = xp[(slice(None), ci) + idx]
    return out


@st.composite
def windows(draw, nd):
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    size = tuple(max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 4))
                 for k, d, p in zip(kernel, dilation, padding))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + size, kernel, dilation, padding, stride


@settings(max_examples=60, deadline=None)
@given(problem=st.sampled_from([1, 2, 3]).flatmap(windows))
def test_unfold_matches_direct_reference(problem):
    shape, kernel, dilation, padding, stride = problem
    x = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_array_equal(F.unfold(x, kernel, dilation, padding, stride),
                                  reference_unfold(x, kernel, dilation, padding, stride))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=windows(2), dtype=st.sampled_from([np.float32, np.float64]))
def test_unfold_fold_match_torch(th, problem, dtype):
    shape, kernel, dilation, padding, stride = problem
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    cols = F.unfold(x, kernel, dilation, padding, stride)
    ref = th.nn.functional.unfold(th.tensor(x), kernel, dilation, padding, stride).numpy()
    np.testing.assert_array_equal(cols, ref)
    back = F.fold(cols, shape[2:], kernel, dilation, padding, stride)
    ref = th.nn.functional.fold(th.tensor(cols), shape[2:], kernel, dilation, padding,
                                stride).numpy()
    np.testing.assert_allclose(back, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,kernel,kw", [
    ((2, 3, 11), (3,), dict(dilation=2, padding=1, stride=2)),
    ((1, 2, 7, 8), (3, 2), dict(dilation=(1, 2), padding=(2, 1), stride=(2, 3))),
    ((2, 2, 5, 4, 6), (2, 3, 2), dict(dilation=1, padding=1, stride=(1, 2, 2))),
])
def test_fold_is_the_adjoint_of_unfold(rng, shape, kernel, kw):
    """<unfold(x), c> == <x, fold(c)>: fold is unfold's gradient, and unfold fold's."""
    x = rng.standard_normal(shape)
    cols = F.unfold(x, kernel, **kw)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * F.fold(c, shape[2:], kernel, **kw)),
                               rtol=1e-12)
    np.testing.assert_array_equal(F.unfold_backward(c, x.shape, kernel, **kw),
                                  F.fold(c, shape[2:], kernel, **kw))
    np.testing.assert_array_equal(F.fold_backward(x, kernel, **kw), cols)


def test_unbatched_and_empty(rng):
    x = rng.standard_normal((3, 6, 6))
    cols = F.unfold(x, 3, padding=1)
    assert cols.shape == (27, 36)
    np.testing.assert_array_equal(cols, F.unfold(x[None], 3, padding=1)[0])
    assert F.fold(cols, (6, 6), 3, padding=1).shape == (3, 6, 6)
    assert F.unfold(np.zeros((0, 3, 6, 6)), 3).shape == (0, 27, 16)
    assert F.fold(np.zeros((0, 27, 16)), 6, 3).shape == (0, 3, 6, 6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.unfold(np.zeros((2, 3)), 2), ValueError, r"unfold: input must be 3 or 4-D"),
    (lambda: F.unfold(np.zeros((1, 1, 4, 4)), 5), ValueError, r"unfold: .* gives no sliding block"),
    (lambda: F.unfold(np.zeros((1, 1, 4, 4)), 0), ValueError, r"unfold: kernel_size must be"),
    (lambda: F.unfold(np.zeros((1, 1, 4, 4)), (2,)), ValueError, r"input must be 2 or 3-D"),
    (lambda: F.fold(np.zeros((1, 5, 9)), (4, 4), 2), ValueError, r"fold: input.shape\[-2\] = 5"),
    (lambda: F.fold(np.zeros((1, 4, 8)), (4, 4), 2), ValueError, r"fold: input.shape\[-1\] = 8"),
    (lambda: F.fold(np.zeros((1, 4, 9)), (4, 4, 4, 4), 2), TypeError, r"fold: output_size must be"),
])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
