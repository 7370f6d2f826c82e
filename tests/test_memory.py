"""The output-array pool (fastcnn._memory): reuse only what nobody can observe."""
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn import _memory

SHAPE = (512, 1024)          # 2 MiB of float32: pooled


@pytest.fixture(autouse=True)
def fresh_pool():
    fastcnn.release_memory()
    yield
    fastcnn.set_memory_limit(4096)
    fastcnn.release_memory()


def test_small_arrays_are_plain_numpy():
    a = _memory.empty((10, 10), np.float32)
    assert a.flags.owndata and a.shape == (10, 10) and a.dtype == np.float32


def test_a_dropped_array_is_reused_and_aligned():
    a = _memory.empty(SHAPE, np.float32)
    address = a.ctypes.data
    assert address % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    del a
    b = _memory.empty(SHAPE, np.float32)
    assert b.ctypes.data == address
    assert _memory.memory_stats()["hits"] >= 1


def test_held_arrays_and_their_views_are_never_handed_out():
    a = _memory.empty(SHAPE, np.float32)
    a[...] = 1
    view = a[3:, ::2]
    address = a.ctypes.data
    del a
    b = _memory.empty(SHAPE, np.float32)          # the view keeps a's memory alive
    b[...] = 2
    assert b.ctypes.data != address
    assert (view == 1).all()
    c = np.asarray(memoryview(b))                 # a buffer export holds it too
    del b
    d = _memory.empty(SHAPE, np.float32)
    d[...] = 3
    assert (c == 2).all() and (view == 1).all()


def test_other_dtype_same_bytes_shares_the_buffer():
    a = _memory.empty(SHAPE, np.float32)
    address = a.ctypes.data
    del a
    b = _memory.empty((SHAPE[0], SHAPE[1] // 2), np.float64)
    assert b.ctypes.data == address and b.dtype == np.float64


def test_zeros_are_zero_even_on_reused_memory():
    a = _memory.empty(SHAPE, np.float32)
    a[...] = 7
    del a
    z = _memory.zeros(SHAPE, np.float32)
    assert not z.any()


def test_limit_zero_disables_pooling_and_release_frees():
    fastcnn.set_memory_limit(0)
    a = _memory.empty(SHAPE, np.float32)
    assert a.flags.owndata
    assert fastcnn.memory_stats()["held_bytes"] == 0
    fastcnn.set_memory_limit(64)
    b = _memory.empty(SHAPE, np.float32)
    assert not b.flags.owndata and fastcnn.memory_stats()["held_bytes"] > 0
    fastcnn.release_memory()
    assert fastcnn.memory_stats()["held_bytes"] > 0    # b is still in use: kept
    del b
    fastcnn.release_memory()
    assert fastcnn.memory_stats()["held_bytes"] == 0


def test_the_limit_drops_free_buffers_and_falls_back_when_all_are_used():
    fastcnn.set_memory_limit(5)                         # room for two 2 MiB buffers
    a = _memory.empty(SHAPE, np.float32)
    b = _memory.empty(SHAPE, np.float32)
    c = _memory.empty(SHAPE, np.float32)                # no room, nothing free: plain numpy
    assert not a.flags.owndata and not b.flags.owndata and c.flags.owndata
    del a, b
    d = _memory.empty((SHAPE[0] + 1, SHAPE[1]), np.float32)   # a new size evicts free ones
    assert not d.flags.owndata
    assert fastcnn.memory_stats()["held_bytes"] <= 5 << 20


def test_idle_buffers_are_dropped():
    nbytes = SHAPE[0] * SHAPE[1] * 4
    a = _memory.empty(SHAPE, np.float32)
    del a
    assert nbytes in _memory._pool.free_lists
    other = (SHAPE[0], SHAPE[1] + 16)
    for _ in range(_memory.IDLE_REQUESTS + 2):
        x = _memory.empty(other, np.float32)                  # hits: SHAPE's buffer sits idle
        del x
    assert nbytes in _memory._pool.free_lists                # nothing is swept on hits
    _memory.empty((SHAPE[0], SHAPE[1] + 32), np.float32)     # a miss sweeps idle buffers
    assert nbytes not in _memory._pool.free_lists
    assert _memory.memory_stats()["buffers"] == 2             # the recently used one, the new one


def test_bad_limit_is_refused():
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(ValueError, match="megabytes"):
            fastcnn.set_memory_limit(bad)


def test_threads_never_share_a_buffer():
    errors = []

    def work(value):
        for _ in range(200):
            a = _memory.empty(SHAPE, np.float32)
            a.fill(value)
            if not (a == value).all():
                errors.append(value)

    threads = [threading.Thread(target=work, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_training_steps_stop_allocating():
    model = fastcnn.build_model({"input_shape": [8, 32, 32], "layers": [
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "batch_norm2d"}, {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "flatten"}, {"type": "linear", "out_features": 10}]}, seed=0)
    x = np.random.default_rng(0).standard_normal((64, 8, 32, 32), dtype=np.float32)
    for step in range(4):
        if step == 2:
            before = _memory.memory_stats()
        model.zero_grad()
        model.backward(model(x))
    after = _memory.memory_stats()
    assert after["misses"] == before["misses"] and after["hits"] > before["hits"]
