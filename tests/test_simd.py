"""The vector loops of _ops/_simd.h: the polynomial exp against numpy over the float32 range
(and float64), the CPU dispatch (the clone picked, and FASTCNN_SIMD=baseline giving the same
results within rounding), and the statistics' second pass when the shift is far from the mean."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn._ops import activation as _act
from fastcnn._ops import parallel as _par

F32 = np.finfo(np.float32)


def _vexp(x):
    out = np.empty_like(x)
    _act.vector_exp(x, out)
    return out


def _float32_sample():
    """Every 509th float32 bit pattern (8.4 million values, both signs, all exponents) and the
    edges: zeros, subnormal inputs, the overflow and underflow thresholds, infinities, NaN."""
    bits = np.arange(0, 2**32, 509, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, F32.tiny, 1.0, -1.0, 88.72283, 88.722832,
                      88.7229, 88.8, 89.0, -87.33654, -87.3366, -103.27893, -103.97208, -103.9721,
                      -104.0, -105.0, 1e30, -1e30, F32.max, -F32.max, np.inf, -np.inf, np.nan],
                     dtype=np.float32)
    return np.concatenate([bits.view(np.float32), edges])


def test_exp_float32_accuracy_over_the_whole_range():
    """Normal results within 1.2 ulp (relative error < 1.5e-7), subnormal results within one
    unit of the smallest subnormal, overflow to +inf, underflow to 0, NaN kept."""
    x = _float32_sample()
    y = _vexp(x)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = np.exp(x.astype(np.float64))
        refc = ref.astype(np.float32)          # correctly rounded (double rounding is harmless)
    nan = np.isnan(x)
    assert np.isnan(y[nan]).all()
    x, y, ref, refc = x[~nan], y[~nan], ref[~nan], refc[~nan]
    over = refc == np.inf
    assert (y[over] == np.inf).all() and (x[over] > 88.72).all()
    assert (y[np.isinf(y)] == np.inf).all() and np.array_equal(np.isinf(y), over)
    zero = refc == 0
    assert (y[zero] == 0).all()
    normal = (ref >= F32.tiny) & ~over
    rel = np.abs(y[normal] - ref[normal]) / ref[normal]
    ulp = np.abs(y[normal] - ref[normal]) / np.spacing(refc[normal]).astype(np.float64)
    assert rel.max() < 1.5e-7 and ulp.max() < 1.2
    sub = ~normal & ~over & ~zero
    assert sub.sum() > 1000                    # the subnormal range is covered
    err = np.abs(y[sub].astype(np.float64) - ref[sub]) / float(F32.smallest_subnormal)
    assert err.max() <= 1.0
    assert (y >= 0).all()


def test_exp_float64_accuracy(rng):
    """Within 1.25 ulp of the long-double exp (where long double is wider than double)."""
    x = np.concatenate([rng.uniform(-745.1, 709.78, 400_000), rng.uniform(-1, 1, 200_000),
                        rng.uniform(-30, 30, 200_000)])
    y = _vexp(x)
    if np.finfo(np.longdouble).nmant > 52:
        ref = np.exp(x.astype(np.longdouble))
    else:                                      # no wider type: numpy's exp, looser bound
        ref = np.exp(x)
    normal = ref >= np.finfo(np.float64).tiny
    ulp = np.spacing(ref[normal].astype(np.float64)).astype(ref.dtype)
    err = (np.abs(y[normal].astype(ref.dtype) - ref[normal]) / ulp).astype(np.float64)
    bound = 1.25 if np.finfo(np.longdouble).nmant > 52 else 2.0
    assert err.max() < bound
    special = np.array([-np.inf, np.inf, np.nan, 0.0, 709.78, 709.79, -745.2, -1e300, 1e300])
    got = _vexp(special)
    assert got[0] == 0 and got[1] == np.inf and np.isnan(got[2]) and got[3] == 1
    assert np.isfinite(got[4]) and got[5] == np.inf and got[6] == 0 and got[7] == 0
    assert got[8] == np.inf


def test_exp_both_dtypes_on_empty_and_mismatched():
    _act.vector_exp(np.empty(0, np.float32), np.empty(0, np.float32))
    with pytest.raises(ValueError, match="out has"):
        _act.vector_exp(np.zeros(3), np.zeros(2))


# ---- dispatch ----------------------------------------------------------------------------------

def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_simd_path_matches_the_cpu():
    path = _par.simd_path()
    assert path in ("x86-64-v4", "x86-64-v3", "baseline", "portable")
    flags = _cpu_flags()
    if path == "portable" or flags is None or platform.machine() != "x86_64":
        pytest.skip("built without dispatch, or CPU flags unknown")
    v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"} <= flags
    v4 = v3 and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags
    cpu = "x86-64-v4" if v4 else "x86-64-v3" if v3 else "baseline"
    assert _par.simd_cpu_path() == cpu
    levels = ["baseline", "x86-64-v3", "x86-64-v4"]
    forced = os.environ.get("FASTCNN_SIMD") or cpu
    assert path == min(forced, cpu, key=levels.index)      # never above the CPU's level


_OPS_SCRIPT = r"""
import json, sys
import numpy as np
import fastcnn.functional as F
from fastcnn._ops import activation as _act
from fastcnn._ops import parallel as _par

def ops(dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 10, 9, 13)) * 4).astype(dtype)
    x[0, 0, 0, :3] = -np.inf                       # masked logits
    dy = rng.standard_normal(x.shape).astype(dtype)
    t = rng.integers(0, 10, (6, 9, 13))
    w, b = rng.standard_normal(10).astype(dtype), rng.standard_normal(10).astype(dtype)
    z = (rng.standard_normal((4, 10, 6, 6)) + 100).astype(dtype)
    dz = rng.standard_normal(z.shape).astype(dtype)
    lg = (rng.standard_normal((33, 1000)) * 3).astype(dtype)
    lt = rng.integers(0, 1000, 33)
    out = [F.softmax(x, 1), F.log_softmax(x, -1), F.softmax(x, 3),
           F.softmax_backward(dy, F.softmax(x, 1), 1), F.log_softmax_backward(dy, x, -1),
           F.cross_entropy(x, t), F.cross_entropy_backward(1.0, x, t, label_smoothing=0.1),
           F.cross_entropy(lg, lt), F.cross_entropy_backward(1.0, lg, lt),
           F.batch_norm(z, None, None, w, b, training=True), *F.batch_norm_backward(dz, z, w),
           F.layer_norm(z, (6, 6)), *F.layer_norm_backward(dz, z, (6, 6), z[0, 0], z[0, 1]),
           F.layer_norm(z, (10, 6, 6), np.ones((10, 6, 6), dtype)),
           F.group_norm(z, 5, w, b), *F.group_norm_backward(dz, z, 5, w, b),
           F.instance_norm(z, None, None, w, b)]
    e = np.linspace(-110, 90, 100_001).astype(dtype)
    ve = np.empty_like(e)
    _act.vector_exp(e, ve)
    return [np.asarray(a, np.float64).tolist() for a in out] + [ve.astype(np.float64).tolist()]

json.dump({"path": _par.simd_path(), "float32": ops(np.float32), "float64": ops(np.float64)},
          sys.stdout)
"""


def _run_ops(simd):
    env = dict(os.environ)
    env.pop("FASTCNN_SIMD", None)
    if simd is not None:
        env["FASTCNN_SIMD"] = simd
    res = subprocess.run([sys.executable, "-c", _OPS_SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout)


@pytest.mark.parametrize("level", ["x86-64-v3", "baseline"])
def test_lower_levels_give_the_same_results_within_rounding(level):
    """FASTCNN_SIMD=x86-64-v3 or baseline runs that level's copies of every loop: softmax,
    log_softmax, cross-entropy and the four norms, forward and backward, agree with the CPU's
    own level to a few ulp (the FMA copies round a*b + c once; the order of every sum is the
    same). A level above the CPU's runs the CPU's (tested in test_conv_algorithms)."""
    cpu = _par.simd_cpu_path()
    if cpu == "portable":
        pytest.skip("built without dispatch")
    if level == "x86-64-v3" and cpu == "baseline":
        pytest.skip("this CPU has no AVX2")
    base = _run_ops(level)
    best = _run_ops(cpu)
    assert base["path"] == level
    assert best["path"] == cpu
    tol = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-13}}
    for dtype in ("float32", "float64"):
        for i, (a, b) in enumerate(zip(base[dtype], best[dtype])):
            np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float),
                                       equal_nan=True, err_msg=f"{dtype} output {i}",
                                       **tol[dtype])


# ---- statistics: the second pass when the shift is far from the mean ---------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_statistics_with_a_trend_take_the_second_pass(dtype):
    """Rows and channels whose first values (the shift) lie far from the mean, a trend along
    each row, and a large offset: the one-pass variance would cancel, the second pass does not."""
    m = 4096
    row = (1e4 + np.arange(m) * 0.01 + np.sin(np.arange(m))).astype(dtype)
    x = np.stack([row, row[::-1], row - 1e4, np.zeros(m, dtype) + 5]).astype(dtype)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    tol = {"rtol": 0, "atol": 3e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(F.layer_norm(x, m), ref, **tol)
    # batch norm: the channel is (N, S) = (4, 1024) of the same trend
    xb = x[:1].reshape(1, 1, 4, 1024).transpose(2, 1, 0, 3).copy()     # (4, 1, 1, 1024)
    yb = F.batch_norm(xb, None, None, training=True)
    np.testing.assert_allclose(yb.reshape(-1), ref[0], **tol)
    _, mean, invstd = F.batch_norm(xb, None, None, training=True, return_stats=True)
    np.testing.assert_allclose(mean, x64[0].mean(), rtol=1e-12 if dtype == np.float64 else 1e-9)
    np.testing.assert_allclose(1 / invstd**2 - 1e-5, x64[0].var(),
                               rtol=1e-10 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_statistics_when_the_first_values_are_outliers(dtype):
    """The shift is the mean of the first 8 values: make those 0 and the rest 1e4 + noise. The
    one-pass variance would lose ~500x the sums' precision; the second pass keeps it."""
    from fastcnn._ops import norm as _norm
    rng = np.random.default_rng(3)
    m = 4096
    x = (1e4 + rng.standard_normal((3, m))).astype(dtype)
    x[:, :8] = 0
    x64 = x.astype(np.float64)
    stats = np.empty((2, 3))
    _norm.rows_forward(x, np.empty(0, dtype), np.empty(0, dtype), 1, 1, 1e-5, np.empty_like(x),
                       stats, 1)
    mean, rstd = stats
    var = 1 / rstd**2 - 1e-5
    tight = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mean, x64.mean(1), rtol=tight)
    np.testing.assert_allclose(var, x64.var(1), rtol=tight)
    cm, cv = np.empty(1), np.empty(1)
    _norm.channel_stats(x.reshape(3, 1, m), cm, cv, 1)       # one channel of 3 segments
    np.testing.assert_allclose(cm, x64.mean(), rtol=tight)
    np.testing.assert_allclose(cv, x64.var(), rtol=tight)
