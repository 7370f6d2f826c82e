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
