"""Thread-count control and BLAS thread limiting."""
import os
import subprocess
import sys

import pytest

import fastcnn
from fastcnn._threads import single_threaded_blas


def test_set_and_get(threads):
    threads(1)
    assert fastcnn.get_num_threads() == 1
    threads(3)
    assert fastcnn.get_num_threads() == (3 if fastcnn._threads._parallel.openmp_enabled() else 1)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_set_num_threads_rejects(bad, exc):
    with pytest.raises(exc, match="set_num_threads: n must be"):
        fastcnn.set_num_threads(bad)


def _threads_in_subprocess(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTCNN_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", "import fastcnn; print(fastcnn.get_num_threads())"],
                          env=env, capture_output=True, text=True)


def test_environment_variables():
    if not fastcnn._threads._parallel.openmp_enabled():
        pytest.skip("built without OpenMP")
    assert _threads_in_subprocess({"FASTCNN_NUM_THREADS": "1"}).stdout.strip() == "1"
    assert _threads_in_subprocess({"OMP_NUM_THREADS": "1"}).stdout.strip() == "1"
    bad = _threads_in_subprocess({"FASTCNN_NUM_THREADS": "zero"})
    assert bad.returncode != 0 and "FASTCNN_NUM_THREADS must be a positive integer" in bad.stderr


def test_blas_is_single_threaded_inside_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call)
    before = {lib["filepath"]: lib["num_threads"]
              for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
    with single_threaded_blas:
        with single_threaded_blas:                       # re-entrant
            inside = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                      if lib["user_api"] == "blas"]
    after = {lib["filepath"]: lib["num_threads"]
             for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
    assert inside and all(n == 1 for n in inside)
    assert after == before


def test_blas_is_single_threaded_from_any_python_thread():
    """threadpoolctl >= 3.6 ignores a thread count set from a Python thread other than the
    first one that set it; OpenBLAS's bits depend on its thread count, so a model run from a
    threading.Thread used to differ from the same call on the main thread."""
    import threading

    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.cython_blas  # noqa: F401
    with single_threaded_blas:                  # the main thread takes threadpoolctl's control
        pass
    seen = {}

    def worker():
        with single_threaded_blas:
            seen["inside"] = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                              if lib["user_api"] == "blas"]
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["inside"] and all(n == 1 for n in seen["inside"])


def test_same_bits_from_any_python_thread():
    import threading

    import numpy as np

    import fastcnn.functional as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 20, 20), dtype=np.float32)
    w = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    a = rng.standard_normal((64, 300), dtype=np.float32)
    b = rng.standard_normal((100, 300), dtype=np.float32)
    model = fastcnn.build_model("resnet_small").eval()
    images = rng.standard_normal((4,) + model.input_shape, dtype=np.float32)

    def run():
        return (F.conv2d(x, w, padding=1), F.conv2d(x, w, stride=2), F.linear(a, b),
                model(images))
    on_main = run()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("values", run()))
    thread.start()
    thread.join()
    for mine, theirs in zip(on_main, result["values"]):
        np.testing.assert_array_equal(mine, theirs)


def test_one_thread_limits_only_the_calling_python_thread(threads):
    import threading

    from fastcnn._threads import get_num_threads, one_thread
    threads(2)
    seen = {}

    def other():
        seen["other"] = get_num_threads()
    with one_thread():
        assert get_num_threads() == 1
        with one_thread():
            assert get_num_threads() == 1
        assert get_num_threads() == 1
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
    assert get_num_threads() == (2 if fastcnn._threads._parallel.openmp_enabled() else 1)
    assert seen["other"] == get_num_threads()


def test_the_guard_in_c_and_through_threadpoolctl_agree():
    """single_threaded_blas runs in C (blas_threads.CountGuard) when every BLAS has C
    functions for its count, else through threadpoolctl: both set one thread inside, nested,
    and restore the counts after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.cython_blas  # noqa: F401
    from fastcnn._ops.blas_threads import CountGuard
    from fastcnn._threads import _SingleThreadedBlas

    def counts():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"]
    before = counts()
    through_python = _SingleThreadedBlas()
    through_python._blas_libs()
    through_python._in_c = None
    for guard in (single_threaded_blas, through_python):
        with guard:
            with guard:
                assert counts() and all(n == 1 for n in counts())
            assert all(n == 1 for n in counts())
        assert counts() == before
    with pytest.raises(RuntimeError, match="without enter"):
        CountGuard([]).exit()
