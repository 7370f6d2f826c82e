"""Shared fixtures: the torch reference, tolerances per dtype, thread-count control."""
import os

import numpy as np
import pytest

import fastcnn

try:
    import torch
except ImportError:  # torch is a test reference only
    torch = None

if torch is None and os.environ.get("FASTCNN_REQUIRE_TORCH") == "1":
    raise RuntimeError("FASTCNN_REQUIRE_TORCH=1 but torch is not importable: "
                       "pip install torch==2.13.0")

if torch is not None:
    torch.set_num_threads(1)

# Absolute/relative tolerance per dtype for comparisons against torch (float32 sums of a few
# thousand terms in a different order differ in the last bits).
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture
def th():
    """The torch module, or skip (CI sets FASTCNN_REQUIRE_TORCH=1 so this cannot skip there)."""
    if torch is None:
        pytest.skip("torch not installed")
    return torch


@pytest.fixture
def threads():
    """Set the kernel thread count inside a test; restored afterwards."""
    before = fastcnn.get_num_threads()
    yield fastcnn.set_num_threads
    fastcnn.set_num_threads(before)


@pytest.fixture
def same_bits_for_1_and_2_threads(threads):
    """check(compute): ``compute()`` returns a sequence of arrays; they must be the same bits
    with 1 and with 2 kernel threads (reductions are cut by the shapes, never by threads)."""
    def check(compute):
        results = []
        for t in (1, 2):
            threads(t)
            results.append(list(compute()))
        assert len(results[0]) == len(results[1])
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
    return check


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
