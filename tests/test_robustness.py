"""Robustness beyond single ops: config values of the wrong type, model misuse, numerics at the
edges (zero variance, huge logits, float32 vs float64), threads, memory growth, damaged files."""
import concurrent.futures
import io
import json
import threading
import zipfile

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn.model import ConfigError

SMALL = {"input_shape": [2, 8, 8], "seed": 0, "layers": [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "batch_norm2d"},
    {"type": "relu"},
    {"type": "max_pool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 3},
]}


# -- configs with values of the wrong type name the offending key ------------------------------

def _conv(**kw):
    return {"input_shape": [3, 8, 8],
            "layers": [dict({"type": "conv2d", "out_channels": 4, "kernel_size": 3}, **kw)]}


@pytest.mark.parametrize("config, match", [
    (_conv(kernel_size="3"), r"layers\[0\] \(conv2d\): kernel_size must be"),
    (_conv(out_channels=2.5), r"layers\[0\] \(conv2d\): out_channels must be"),
    (_conv(out_channels=True), r"layers\[0\] \(conv2d\): out_channels must be"),
    (_conv(padding=None), r"layers\[0\] \(conv2d\): padding must be"),
    (_conv(stride=[1, "2"]), r"layers\[0\] \(conv2d\): stride must be"),
    (_conv(groups=0), r"layers\[0\] \(conv2d\): groups must be"),
    (_conv(inputs=5), r"layers\[0\] \(conv2d\): inputs must be a list"),
    (_conv(inputs=[]), r"layers\[0\] \(conv2d\): inputs must be a list"),
    (_conv(inputs=[0]), r"layers\[0\] \(conv2d\): "),
    (_conv(name=3), r"layers\[0\] \(conv2d\): name must be"),
    ({"input_shape": [3, 8, 8], "layers": {"type": "relu"}}, r"config: layers must be"),
    ({"input_shape": "3,8,8", "layers": [{"type": "relu"}]}, r"config: input_shape must be"),
    ({"input_shape": [3, 8.0, 8], "layers": [{"type": "relu"}]}, r"config: input_shape must be"),
    ({"input_shape": [3, 8, 8], "layers": [{"type": 5}]}, r"layers\[0\]: "),
    ({"input_shape": [3, 8, 8], "layers": [{"type": "dropout", "p": "0.5"}]},
     r"layers\[0\] \(dropout\): p must be"),
    ({"input_shape": [3, 8, 8], "layers": [{"type": "flatten"},
                                           {"type": "linear", "out_features": "10"}]},
     r"layers\[1\] \(linear\): out_features must be"),
])
def test_config_values_of_the_wrong_type_name_the_key(config, match):
    with pytest.raises((ConfigError, ValueError, TypeError), match=match):
        fastcnn.build_model(config)


def test_input_shape_mismatch_names_the_model_input_and_expected_shape():
    model = fastcnn.build_model(SMALL)
    with pytest.raises(ValueError, match=r"\(N, 2, 8, 8\).*\(1, 2, 9, 8\)"):
        model(np.ones((1, 2, 9, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 2, 8, 8\)"):
        model(np.ones((2, 8, 8), np.float32))


# -- numerics at the edges -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norms_of_constant_input_are_finite(dtype):
    x = np.full((4, 3, 5, 5), 7.0, dtype)
    y = F.batch_norm(x, np.zeros(3, dtype), np.ones(3, dtype), training=True)
    assert np.isfinite(y).all() and np.abs(y).max() < 1e-3
    dx, dw, db = F.batch_norm_backward(np.ones_like(x), x, np.ones(3, dtype), training=True)
    assert all(np.isfinite(a).all() for a in (dx, dw, db))
    for y in (F.layer_norm(x, (3, 5, 5)), F.group_norm(x, 3), F.instance_norm(x)):
        assert np.isfinite(y).all() and np.abs(y).max() < 1e-3
    grads = F.layer_norm_backward(np.ones_like(x), x, (3, 5, 5))
    assert all(np.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_cross_entropy_with_huge_logits_are_finite(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    target = np.array([1, 0, 2])
    for out in (F.softmax(logits, 1), F.log_softmax(logits, 1),
                F.cross_entropy(logits, target), F.cross_entropy(logits, target, reduction="none"),
                F.cross_entropy_backward(np.ones((), dtype), logits, target),
                F.binary_cross_entropy_with_logits(logits, np.ones_like(logits))):
        assert np.isfinite(out).all()
    np.testing.assert_allclose(F.softmax(logits, 1).sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(F.cross_entropy(logits, target, reduction="none"),
                               [2e4, np.log(3), 2e4 + np.log(2)], rtol=1e-6)


# Documented float32 accuracy: max |f32 - f64| / max(1, max |f64|) on unit-normal inputs.
FLOAT32_TOLERANCE = {
    "conv2d (3x3, 16 -> 8 channels)": 1e-5,
    "conv_transpose2d (3x3, stride 2)": 1e-5,
    "batch_norm (training)": 1e-5,
    "layer_norm": 1e-5,
    "group_norm": 1e-5,
    "softmax": 1e-6,
    "log_softmax": 1e-5,
}


def _f32_vs_f64(name, rng):
    x = rng.standard_normal((4, 16, 12, 12))
    w = rng.standard_normal((8, 16, 3, 3)) / 12
    wt = rng.standard_normal((16, 8, 3, 3)) / 12
    ops = {
        "conv2d (3x3, 16 -> 8 channels)": lambda a: F.conv2d(a, w.astype(a.dtype), padding=1),
        "conv_transpose2d (3x3, stride 2)": lambda a: F.conv_transpose2d(a, wt.astype(a.dtype),
                                                                          stride=2),
        "batch_norm (training)": lambda a: F.batch_norm(a, np.zeros(16, a.dtype),
                                                        np.ones(16, a.dtype), training=True),
        "layer_norm": lambda a: F.layer_norm(a, (16, 12, 12)),
        "group_norm": lambda a: F.group_norm(a, 4),
        "softmax": lambda a: F.softmax(a, 1),
        "log_softmax": lambda a: F.log_softmax(a, 1),
    }
    return ops[name](x.astype(np.float32)), ops[name](x)


@pytest.mark.parametrize("name", sorted(FLOAT32_TOLERANCE))
def test_float32_is_within_documented_tolerance_of_float64(name, rng):
    y32, y64 = _f32_vs_f64(name, rng)
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    err = np.abs(y32 - y64).max() / max(1.0, np.abs(y64).max())
    assert err < FLOAT32_TOLERANCE[name], f"{name}: relative error {err:.2e}"


# -- threads ---------------------------------------------------------------------------------

def test_ops_from_many_python_threads_match_serial_calls(rng):
    xs = [rng.standard_normal((2, 4, 10, 10)).astype(np.float32) for _ in range(8)]
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)

    def work(x):
        y = F.conv2d(x, w, padding=1)
        y = F.max_pool2d(F.relu(y), 2)
        y = F.batch_norm(y, np.zeros(6, np.float32), np.ones(6, np.float32), training=True)
        return F.softmax(y.reshape(2, -1), 1)
    serial = [work(x) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            parallel = list(pool.map(work, xs))
            for a, b in zip(serial, parallel):
                np.testing.assert_array_equal(a, b)


def test_model_inference_from_threads_matches_serial(rng):
    model = fastcnn.build_model(SMALL)
    model.eval()
    xs = [rng.standard_normal((3, 2, 8, 8)).astype(np.float32) for _ in range(6)]
    serial = [model(x) for x in xs]
    results = [None] * len(xs)

    def run(i):
        results[i] = model(xs[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


def _train(steps, seed=0):
    model = fastcnn.build_model(SMALL, seed=seed)
    opt = fastcnn.build_optimizer({"type": "adam", "lr": 0.01}, model.parameters())
    loss = fastcnn.build_loss("cross_entropy")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
    t = rng.integers(0, 3, 8)
    for _ in range(steps):
        model.zero_grad()
        loss(model(x), t)
        model.backward(loss.backward())
        opt.step()
    return model


@pytest.mark.parametrize("n_threads", [1, 2])
def test_training_is_deterministic_for_a_seed_and_thread_count(threads, n_threads):
    threads(n_threads)
    a, b = _train(5).state_dict(), _train(5).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# -- memory ----------------------------------------------------------------------------------

def _rss_bytes():
    import resource
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_training_steps_do_not_grow_resident_memory():
    tiny = {"input_shape": [1, 6, 6], "seed": 0, "layers": [
        {"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "out_features": 2}]}
    model = fastcnn.build_model(tiny)
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.01, "momentum": 0.9},
                                  model.parameters())
    loss = fastcnn.build_loss("cross_entropy")
    x = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    t = np.array([0, 1, 0, 1])

    def step():
        model.zero_grad()
        loss(model(x), t)
        model.backward(loss.backward())
        opt.step()
    for _ in range(100):      # warm-up: workspaces, caches
        step()
    before = _rss_bytes()
    for _ in range(1000):
        step()
    grown = _rss_bytes() - before
    assert grown < 20 * 2 ** 20, f"resident memory grew by {grown / 2 ** 20:.1f} MB"


# -- damaged checkpoint files ----------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = fastcnn.build_model(SMALL)
    path = tmp_path / "m.fcnn"
    fastcnn.save(model, path)
    return model, path


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoints_are_refused(saved, fraction):
    _, path = saved
    data = path.read_bytes()
    bad = path.with_name("bad.fcnn")
    bad.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match="bad.fcnn: not a fastcnn checkpoint"):
        fastcnn.load(bad)


def test_flipped_bytes_are_refused_or_load_the_exact_weights(saved):
    model, path = saved
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    bad = path.with_name("flipped.fcnn")
    for pos in rng.integers(0, len(data), 25):
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        bad.write_bytes(bytes(damaged))
        try:
            loaded = fastcnn.load(bad)
        except ValueError as exc:
            assert "flipped.fcnn" in str(exc)
            continue
        # zip CRCs cover every member: a load that succeeds must give the saved weights (a flip
        # in unchecked metadata, e.g. a timestamp, is harmless).
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value)


def _rewrite_header(path, out, edit):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info.filename)
            if info.filename == "__fastcnn__.npy":
                header = np.load(io.BytesIO(blob), allow_pickle=False)
                text = edit(header.tobytes().decode("utf-8"))
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(text.encode("utf-8"), np.uint8))
                blob = buf.getvalue()
            zout.writestr(info.filename, blob)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t[: len(t) // 2], "not a fastcnn checkpoint"),
    (lambda t: "[1, 2, 3]", "not a fastcnn checkpoint"),
    (lambda t: json.dumps(dict(json.loads(t), format="other")), "not a fastcnn checkpoint"),
    (lambda t: json.dumps(dict(json.loads(t), version=999)), "written by a newer fastcnn"),
    (lambda t: json.dumps(dict(json.loads(t), version="1")), "not a fastcnn checkpoint"),
    (lambda t: json.dumps(dict(json.loads(t), config={"layers": 3})),
     r"hdr.fcnn: the checkpoint's model config is invalid"),
])
def test_wrong_header_json_is_refused(saved, edit, match):
    _, path = saved
    bad = path.with_name("hdr.fcnn")
    _rewrite_header(path, bad, edit)
    with pytest.raises(ValueError, match=match):
        fastcnn.load(bad)


def test_loading_never_unpickles(saved, monkeypatch):
    import pickle
    _, path = saved

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    fastcnn.load(path)
    # an object array smuggled in as a weight is refused, not unpickled
    bad = path.with_name("obj.fcnn")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info.filename)
            if info.filename.startswith("model/") and "weight" in info.filename:
                buf = io.BytesIO()
                np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
                blob = buf.getvalue()
            zout.writestr(info.filename, blob)
    with pytest.raises(ValueError, match="obj.fcnn"):
        fastcnn.load(bad)
