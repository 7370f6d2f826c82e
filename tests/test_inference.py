"""InferenceSession: the same outputs as the model's own eval forward, from any thread, at any
thread count, on the bundled networks and on random graphs with adds and concatenations."""
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn.inference.steps import builder_for

BUNDLED = ("lenet5", "vgg_small", "resnet_small", "unet_small")


def _with_running_stats(model, seed=0):
    """Batch norms with running statistics far from (0, 1), so that folding them matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers.values():
        if hasattr(layer, "running_var") and layer.running_var is not None:
            layer.running_var[:] = rng.uniform(0.5, 2.0, layer.running_var.shape)
            layer.running_mean[:] = rng.normal(0.0, 0.2, layer.running_mean.shape)
        if getattr(layer, "weight", None) is not None and hasattr(layer, "running_var"):
            layer.weight.data[:] = rng.uniform(0.5, 1.5, layer.weight.data.shape)
    return model.eval()


def assert_float32_close(y, reference):
    """Equal up to float32 rounding through a network: within 1e-4 relative, or 1e-5 of the
    largest output (an output near zero carries the rounding of its layer's scale; through
    U-Net's 15 convolutions, batch norms folded and Winograd F(4x4, 3x3), errors reach ~3e-5
    of outputs up to ~10)."""
    np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


@pytest.fixture(scope="module")
def sessions():
    out = {}
    for name in BUNDLED:
        model = _with_running_stats(fastcnn.build_model(name))
        out[name] = (model, fastcnn.InferenceSession(model, autotune=False))
    return out


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_bundled_networks_agree_with_their_eval_forward(sessions, name, batch):
    model, session = sessions[name]
    x = np.random.default_rng(batch).standard_normal((batch,) + model.input_shape,
                                                      dtype=np.float32)
    y = session(x)
    # the rules' algorithms: the same bits as the session's own folded model layer by layer
    np.testing.assert_array_equal(y, session.model(x))
    # and the unfused model's forward up to float32 rounding (batch norms folded)
    assert_float32_close(y, model(x))
    assert y.dtype == np.float32 and y.shape == (batch,) + model.output_shape


@pytest.mark.parametrize("name", BUNDLED)
def test_autotuned_plans_agree_with_the_eval_forward(name):
    """Autotuning (the default) may pick another algorithm per layer than the rules: the
    outputs agree to float32 rounding, and the choice holds for the plan's life."""
    model = _with_running_stats(fastcnn.build_model(name))
    session = fastcnn.InferenceSession(model)
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape, dtype=np.float32)
    y = session(x)
    assert_float32_close(y, model(x))
    np.testing.assert_array_equal(session(x), y)


def test_odd_sizes_and_batches_replan():
    model = _with_running_stats(fastcnn.build_model({
        "input_shape": [3, 13, 11],
        "layers": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                   {"type": "batch_norm2d"}, {"type": "relu"},
                   {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "ceil_mode": True},
                   {"type": "conv2d", "out_channels": 5, "kernel_size": 2, "stride": 2},
                   {"type": "flatten"}, {"type": "linear", "out_features": 4}]}))
    session = fastcnn.InferenceSession(model, max_shapes=2)      # autotuned
    for batch in (1, 5, 64, 5, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 13, 11), dtype=np.float32)
        np.testing.assert_allclose(session(x), model(x), rtol=1e-4, atol=1e-5)
    assert len(session._templates) == 2          # the two shapes used last


def _random_graph(seed):
    """A random network of conv / relu / add / concat / pool layers, every value read by one
    or two later layers."""
    rng = np.random.default_rng(seed)
    layers = [{"type": "conv2d", "name": "c0", "out_channels": 8, "kernel_size": 3,
               "padding": 1, "inputs": ["input"]}]
    values = [("c0", 8)]
    for i in range(1, int(rng.integers(5, 10))):
        kind = rng.choice(["conv", "add", "concat", "relu", "bn"])
        name = f"v{i}"
        a, ca = values[int(rng.integers(len(values)))]
        if kind == "add":
            same = [v for v in values if v[1] == ca and v[0] != a]
            if same:
                b = same[int(rng.integers(len(same)))][0]
                layers.append({"type": "add", "name": name, "inputs": [a, b]})
                values.append((name, ca))
                continue
            kind = "conv"
        if kind == "concat":
            b, cb = values[int(rng.integers(len(values)))]
            layers.append({"type": "concat", "name": name, "inputs": [a, b]})
            values.append((name, ca + cb))
        elif kind == "relu":
            layers.append({"type": "relu", "name": name, "inputs": [a]})
            values.append((name, ca))
        elif kind == "bn":
            layers.append({"type": "batch_norm2d", "name": name, "inputs": [a]})
            values.append((name, ca))
        else:
            c = int(rng.choice([4, 8, 16]))
            k = int(rng.choice([1, 3]))
            layers.append({"type": "conv2d", "name": name, "inputs": [a], "out_channels": c,
                           "kernel_size": k, "padding": k // 2})
            values.append((name, c))
    last, _ = values[-1]
    layers.append({"type": "global_avg_pool2d", "name": "gap", "inputs": [last]})
    layers.append({"type": "flatten", "name": "flat"})
    return {"name": f"graph{seed}", "input_shape": [3, 9, 10], "seed": seed, "layers": layers}


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_agree(seed):
    model = _with_running_stats(fastcnn.build_model(_random_graph(seed)), seed)
    session = fastcnn.InferenceSession(model, autotune=False)
    for batch in (1, 3):
        x = np.random.default_rng(seed).standard_normal((batch, 3, 9, 10), dtype=np.float32)
        np.testing.assert_array_equal(session(x), session.model(x))
        np.testing.assert_allclose(session(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [
    {"type": "conv_transpose2d", "out_channels": 5, "kernel_size": 4, "stride": 2, "padding": 1},
    {"type": "conv_transpose2d", "out_channels": 4, "kernel_size": 3, "stride": 2,
     "output_padding": 1, "groups": 2},
    {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 3, "padding": 1},
    {"type": "conv2d", "out_channels": 6, "kernel_size": 1},
    {"type": "conv2d", "out_channels": 12, "kernel_size": 3, "groups": 6, "stride": 2,
     "padding": 1},
    {"type": "conv1d", "out_channels": 4, "kernel_size": 3},
    {"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"type": "avg_pool2d", "kernel_size": 2, "count_include_pad": False},
    {"type": "avg_pool2d", "kernel_size": 2, "divisor_override": 3},
    {"type": "max_pool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "conv2d", "out_channels": 3, "kernel_size": 5, "padding": 2},
    {"type": "linear", "out_features": 4},
    {"type": "adaptive_avg_pool2d", "output_size": [3, 2]},
    {"type": "global_avg_pool2d"},
    {"type": "max_pool2d", "kernel_size": 3, "stride": 1, "dilation": 2, "padding": 1},
    {"type": "upsample", "scale_factor": 2, "mode": "bilinear", "align_corners": False},
    {"type": "layer_norm", "normalized_shape": [7, 9]},
    {"type": "reshape", "shape": [9, -1, 6]},
])
def test_each_step_agrees_with_its_layer(layer):
    """Every built-in layer, fast step or not, gives its layer's own eval output."""
    shape = [6, 7] if layer["type"] == "conv1d" else [6, 7, 9]
    model = fastcnn.build_model({"input_shape": shape, "layers": [layer]}).eval()
    session = fastcnn.InferenceSession(model, autotune=False)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
        np.testing.assert_array_equal(session(x), model(x))


def test_same_bits_for_any_thread_count(sessions, threads):
    model, session = sessions["resnet_small"]
    x = np.random.default_rng(0).standard_normal((4,) + model.input_shape, dtype=np.float32)
    threads(1)
    one = session(x)
    threads(2)
    np.testing.assert_array_equal(session(x), one)


def test_threads_share_a_session(sessions):
    """Several Python threads calling one session at once get what sequential calls give."""
    model, session = sessions["unet_small"]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b,) + model.input_shape, dtype=np.float32)
              for b in (1, 2, 3, 1, 2, 3)]
    expected = [session(x) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = session(inputs[i])
    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
    # memory stays bounded: a shape has at most as many plans as it had callers at once (two)
    for batch in (1, 2, 3):
        assert 1 <= len(session._idle[(batch,) + model.input_shape]) <= 2


def test_plan_reuses_buffers_and_describes_steps(sessions):
    model, session = sessions["vgg_small"]
    text = session.plan(2).describe()
    assert "winograd" in text and "relu (fused)" in text
    # ten same-size convolutions (each followed by a ReLU) take turns in two buffers (the
    # input's is one of them once the first convolution has read it)
    deep = fastcnn.build_model({"input_shape": [8, 12, 12], "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"}
    ] * 10}).eval()
    from fastcnn.inference.plan import Plan
    plan = Plan(fastcnn.InferenceSession(deep).plan(4))
    assert plan.nbytes == 2 * 4 * 8 * 12 * 12 * 4


def test_plugin_layer_runs_as_python():
    @fastcnn.register_layer("test_inference_double")
    class Double(fastcnn.Layer):
        def __init__(self):
            pass

        def forward(self, x):
            return x * 2

    model = fastcnn.build_model({"input_shape": [2, 6, 6], "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3},
        {"type": "test_inference_double"}, {"type": "relu"}]}).eval()
    session = fastcnn.InferenceSession(model, autotune=False)
    assert "(python)" in session.plan().describe()
    assert builder_for(model["1"]).__name__ == "_python"
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6), dtype=np.float32)
    np.testing.assert_array_equal(session(x), model(x))


def test_checkpoint_path_and_preprocessing(tmp_path):
    config = fastcnn.load_config("lenet5")
    config = dict(config, preprocessing={"mean": [0.13], "std": [0.31]})
    model = fastcnn.build_model(config).eval()
    path = tmp_path / "m.fcnn"
    fastcnn.save(model, path)
    raw = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8)
    session = fastcnn.InferenceSession(path)
    np.testing.assert_allclose(session(raw), model(model.preprocess(raw)), rtol=1e-5,
                               atol=1e-6)
    as_given = fastcnn.InferenceSession(model, preprocess=False)
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(as_given(x), model(x), rtol=1e-5, atol=1e-6)


def test_the_session_keeps_its_own_weights(sessions):
    model = fastcnn.build_model("lenet5").eval()
    session = fastcnn.InferenceSession(model)
    x = np.ones((1, 1, 28, 28), np.float32)
    before = session(x)
    model["0"].weight.data[:] = 0
    np.testing.assert_array_equal(session(x), before)


def test_empty_batch_and_multiple_outputs():
    model = fastcnn.build_model({"input_shape": [2, 5, 5], "outputs": ["a", "b"], "layers": [
        {"type": "conv2d", "name": "a", "out_channels": 3, "kernel_size": 3},
        {"type": "flatten", "name": "b"}]}).eval()
    session = fastcnn.InferenceSession(model, autotune=False)
    a, b = session(np.zeros((0, 2, 5, 5), np.float32))
    assert a.shape == (0, 3, 3, 3) and b.shape == (0, 27)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5), dtype=np.float32)
    a, b = session(x)
    want_a, want_b = model(x)
    np.testing.assert_array_equal(a, want_a)
    np.testing.assert_array_equal(b, want_b)
    assert not np.shares_memory(a, b)


@pytest.mark.parametrize("bad,exc,match", [
    (np.zeros((2, 1, 27, 28), np.float32), ValueError, r"shape \(N, 1, 28, 28\), got \(2, 1, 27"),
    (np.zeros((1, 28, 28), np.float32), ValueError, r"shape \(N, 1, 28, 28\)"),
    (np.array([["a"]]), TypeError, "real numbers"),
])
def test_bad_input_is_a_clear_error(bad, exc, match):
    session = fastcnn.InferenceSession(fastcnn.build_model("lenet5"))
    with pytest.raises(exc, match=match):
        session(bad)


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="InferenceSession: model must be"):
        fastcnn.InferenceSession(42)
    with pytest.raises((FileNotFoundError, ValueError), match="nothing.fcnn"):
        fastcnn.InferenceSession(tmp_path / "nothing.fcnn")
    with pytest.raises(ValueError, match="max_shapes"):
        fastcnn.InferenceSession(fastcnn.build_model("lenet5"), max_shapes=0)


def test_a_session_stands_in_for_a_model_in_evaluation_code():
    """fastcnn eval hands a session to training.evaluate, which calls eval() and restores
    train(mode): a session is always in eval mode and refuses training."""
    from fastcnn.losses import build_loss
    from fastcnn.training import evaluate
    model = fastcnn.build_model("lenet5").eval()
    session = fastcnn.InferenceSession(model, autotune=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 10)
    got = evaluate(session, build_loss("cross_entropy"), x, y, batch_size=4)
    want = evaluate(model, build_loss("cross_entropy"), x, y, batch_size=4)
    assert got[:2] == want[:2] and (got[2] == want[2]).all()
    assert session.eval() is session and session.train(False) is session
    with pytest.raises(TypeError, match="eval forward only"):
        session.train()


def test_an_onnx_file_runs_in_a_session(tmp_path):
    pytest.importorskip("onnx")
    from fastcnn import onnx as fastcnn_onnx
    model = _with_running_stats(fastcnn.build_model("resnet_small"))
    path = fastcnn_onnx.export(model, tmp_path / "resnet_small.onnx")
    session = fastcnn.InferenceSession(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    assert_float32_close(session(x), model(x))


def test_a_float64_model_runs_in_float64():
    config = dict(fastcnn.load_config("resnet_small"), dtype="float64")
    model = _with_running_stats(fastcnn.build_model(config))
    session = fastcnn.InferenceSession(model)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32))
    y = session(x.astype(np.float32))              # cast to the model's dtype
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, model(x.astype(np.float32)), rtol=1e-10, atol=1e-12)


def test_a_sequential_network_runs_as_one_compiled_run(sessions, threads):
    """LeNet-5's steps (direct convolutions, pooling, linear, ReLU) all have a compiled form:
    a run is one call into C; the same bits with the steps on one thread or on the team."""
    from fastcnn._ops.plan_steps import CompiledRun
    from fastcnn.inference.plan import Plan
    model, session = sessions["lenet5"]
    plan = Plan(session.plan(2))
    assert len(plan._runs) == 1 and isinstance(plan._runs[0], CompiledRun)
    assert len(plan._runs[0]) == len(plan._steps) == 9
    # the convolutions' workspaces are one buffer, the size of the largest (steps run in turn)
    assert plan.scratch.size == max(spec.scratch for _, spec in plan.template.steps) > 0
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28), dtype=np.float32)
    want = session.model(x)
    np.testing.assert_array_equal(plan.run(x)[0], want)
    alone = CompiledRun(plan._steps, [True] * 9)          # every step on one thread
    times = alone.times(True)
    assert len(times) == 9 and all(t >= 0 for t in times)
    plan._runs = [alone]
    np.testing.assert_array_equal(plan.run(x)[0], want)
    # more threads than the direct kernels' workspaces were made for: they use what they have
    from fastcnn._ops.parallel import openmp_max_threads
    threads(openmp_max_threads() + 2)
    np.testing.assert_array_equal(session(x), want)


def test_compiled_steps_refuse_what_they_cannot_run():
    from fastcnn._ops.activation import EltwiseStep
    from fastcnn._ops.gemm import LinearStep
    from fastcnn._ops.plan_steps import CompiledRun, ConcatStep
    x, y = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        EltwiseStep(x.astype(np.int64), None, y)
    with pytest.raises(TypeError, match="C-contiguous"):
        EltwiseStep(np.zeros(8, np.float32)[::2], None, y)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        EltwiseStep(x, None, y)
    with pytest.raises(ValueError, match="sizes differ"):
        EltwiseStep(x, np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="do not make a product"):
        LinearStep(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32), None,
                   np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="add up"):
        ConcatStep([x.reshape(1, 4), x.reshape(1, 4)], np.zeros((1, 9), np.float32), 1)
    with pytest.raises(TypeError):
        CompiledRun([lambda: None], [False])
    unbound = EltwiseStep.__new__(EltwiseStep)          # never crashes the process
    with pytest.raises(TypeError, match="not bound"):
        unbound()
    with pytest.raises(TypeError, match="not bound"):
        CompiledRun([unbound], [False])
    with pytest.raises(ValueError, match="flags"):
        CompiledRun([EltwiseStep(x, None, np.zeros(4, np.float32))], [])


def test_a_depthwise_network_runs_as_one_compiled_run():
    from fastcnn._ops.plan_steps import CompiledRun
    from fastcnn.inference.plan import Plan
    model = _with_running_stats(fastcnn.build_model({"input_shape": [4, 9, 9], "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "groups": 4, "padding": 1},
        {"type": "batch_norm2d"}, {"type": "relu"},
        {"type": "conv2d", "out_channels": 6, "kernel_size": 1}]}))
    session = fastcnn.InferenceSession(model, autotune=False)
    assert "depthwise" in session.plan(2).describe()
    plan = Plan(session.plan(2))
    assert len(plan._runs) == 1 and isinstance(plan._runs[0], CompiledRun)
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 9), dtype=np.float32)
    np.testing.assert_array_equal(plan.run(x)[0], session.model(x))
    np.testing.assert_allclose(session(x), model(x), rtol=1e-4, atol=1e-5)


def _two_convolutions_run_compiled(threads, algorithm, input_shape, first, second):
    """Two convolutions forced to ``algorithm`` (``first`` and ``second``: their layer
    arguments besides out_channels; the first with a batch norm and a ReLU folded into it)
    are compiled steps: a plan is one CompiledRun, the same bits as the folded model at 1, 2
    and more threads than the workspace was made for, at batch 1 (one block or sample cut over
    the threads) and 5 (blocks over the threads); and the unfused model by im2col up to
    float32 rounding."""
    from fastcnn._ops.plan_steps import CompiledRun
    from fastcnn._ops.parallel import openmp_max_threads
    from fastcnn.functional import conv_algorithms
    from fastcnn.inference.plan import Plan
    model = _with_running_stats(fastcnn.build_model({"input_shape": list(input_shape),
                                                     "layers": [
        {"type": "conv2d", "out_channels": 7, **first},
        {"type": "batch_norm2d"}, {"type": "relu"},
        {"type": "conv2d", "out_channels": 6, **second}]}))
    with conv_algorithms(forward=algorithm):
        session = fastcnn.InferenceSession(model, autotune=False)
        for batch in (1, 5):
            assert session.plan(batch).describe().count(f"{algorithm} ") == 2
            plan = Plan(session.plan(batch))
            assert len(plan._runs) == 1 and isinstance(plan._runs[0], CompiledRun)
            x = np.random.default_rng(batch).standard_normal((batch,) + tuple(input_shape),
                                                             dtype=np.float32)
            want = session.model(x)
            for count in (1, 2, openmp_max_threads() + 2):
                threads(count)
                np.testing.assert_array_equal(plan.run(x)[0], want)
                np.testing.assert_array_equal(session(x), want)
            threads(2)
            with conv_algorithms(forward="im2col"):     # another algorithm, unfused
                assert_float32_close(want, model(x))


@pytest.mark.parametrize("winograd", ["winograd", "winograd4"])
def test_winograd_layers_run_compiled(threads, winograd):
    """Winograd convolutions (F(2x2) and F(4x4), bias + ReLU fused, padding 1 and 0, odd
    maps) are compiled steps (see _two_convolutions_run_compiled)."""
    _two_convolutions_run_compiled(threads, winograd, (5, 11, 9),
                                   {"kernel_size": 3, "padding": 1},
                                   {"kernel_size": 3, "padding": 0})


@pytest.mark.parametrize("kernel", [3, 4])
def test_stride2_winograd_layers_run_compiled(threads, kernel):
    """3x3 (4x4) stride-2 convolutions by Winograd on the polyphase components (bias + ReLU
    fused, padding 1 and 0, odd maps) are compiled steps."""
    _two_convolutions_run_compiled(threads, "winograd_s2", (5, 23, 21),
                                   {"kernel_size": kernel, "stride": 2, "padding": 1},
                                   {"kernel_size": kernel, "stride": 2, "padding": 0})


def test_pointwise_layers_run_compiled(threads):
    """1x1 convolutions by the pointwise kernel (bias + ReLU fused; 99 positions a sample,
    cut into ranges at batch 1) are compiled steps (PointwiseStep)."""
    _two_convolutions_run_compiled(threads, "pointwise", (5, 11, 9), {"kernel_size": 1},
                                   {"kernel_size": 1})


def test_winograd_step_refuses_what_it_cannot_run():
    from fastcnn._ops.winograd import WinogradStep, workspace_size
    u = np.zeros((36, 4, 3), np.float32)
    x, out = np.zeros((2, 3 * 8 * 8), np.float32), np.zeros((2, 4 * 8 * 8), np.float32)
    ws = np.zeros(2 * workspace_size(3, 4, 8, 8, 1, 4), np.float32)
    b = np.zeros(4, np.float32)
    WinogradStep(x, u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2)       # fits
    with pytest.raises(TypeError, match="float32 or float64"):
        WinogradStep(x.astype(np.int32), u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2)
    with pytest.raises(TypeError, match="C-contiguous"):
        WinogradStep(x, u, b, np.zeros((2, 512), np.float32)[:, ::2], ws, 8, 8, 1, 8, 8, 1,
                     True, False, 2)
    with pytest.raises(ValueError, match="16 or 36"):
        WinogradStep(x, u[:20], b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2)
    with pytest.raises(ValueError, match="do not match"):
        WinogradStep(x, u, b, out, ws, 8, 8, 0, 8, 8, 1, True, False, 2)      # out 6x6
    with pytest.raises(ValueError, match="do not match"):
        WinogradStep(x, u, b[:3], out, ws, 8, 8, 1, 8, 8, 1, True, False, 2)
    with pytest.raises(ValueError, match="too small"):
        WinogradStep(x, u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 3)
    with pytest.raises(ValueError, match="residual"):
        WinogradStep(x, u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2, residual=x)
    with pytest.raises(TypeError, match="C-contiguous"):
        WinogradStep(x, u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2,
                     residual=out.astype(np.float64))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        WinogradStep(x, u, b, out, ws, 8, 8, 1, 8, 8, 1, True, False, 2)
    unbound = WinogradStep.__new__(WinogradStep)
    with pytest.raises(TypeError, match="not bound"):
        unbound()


@pytest.mark.parametrize("winograd", ["winograd", "winograd4"])
def test_residual_adds_go_into_winograd_convolutions(threads, winograd):
    """A residual add (with and without its ReLU; the convolution either input; batch norms
    folded between) is fused into the Winograd convolution that makes one of its inputs, the
    shortcut's own convolution moved before it: the same bits as the folded model run layer by
    layer, at 1 and 2 threads, batch 1 (phases over the threads) and 3."""
    from fastcnn._ops.plan_steps import CompiledRun
    from fastcnn.functional import conv_algorithms
    from fastcnn.inference.plan import Plan
    conv3 = {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}
    model = _with_running_stats(fastcnn.build_model({"input_shape": [6, 9, 10], "layers": [
        dict(conv3, name="c0", inputs=["input"]), {"type": "batch_norm2d", "name": "c0_bn"},
        {"type": "relu", "name": "c0_relu"},
        dict(conv3, name="a", inputs=["c0_relu"]), {"type": "batch_norm2d", "name": "a_bn"},
        {"type": "conv2d", "name": "down", "inputs": ["input"], "out_channels": 8,
         "kernel_size": 1},
        {"type": "batch_norm2d", "name": "down_bn"},
        {"type": "add", "name": "add1", "inputs": ["down_bn", "a_bn"]},
        {"type": "relu", "name": "add1_relu"},
        dict(conv3, name="b", inputs=["add1_relu"]),
        {"type": "add", "name": "add2", "inputs": ["add1_relu", "b"]},
        {"type": "global_avg_pool2d", "name": "gap"}, {"type": "flatten", "name": "flat"}]}))
    with conv_algorithms(forward=winograd):
        session = fastcnn.InferenceSession(model, autotune=False)
        described = session.plan(3).describe()
        assert described.count(f"{winograd} + add + relu") == 1      # add1 (and its ReLU)
        assert described.count(f"{winograd} + add ") == 2            # and add2
        assert described.count("(fused)") == 2 + 2          # the adds; c0_relu, add1_relu
        for batch in (1, 3):
            plan = Plan(session.plan(batch))
            assert len(plan._runs) == 1 and isinstance(plan._runs[0], CompiledRun)
            x = np.random.default_rng(batch).standard_normal((batch, 6, 9, 10),
                                                             dtype=np.float32)
            want = session.model(x)
            for count in (1, 2):
                threads(count)
                np.testing.assert_array_equal(plan.run(x)[0], want)
        with conv_algorithms(forward="im2col"):     # another algorithm, unfused
            assert_float32_close(session(x), model(x))


@pytest.mark.parametrize("layer", [
    {"type": "conv_transpose2d", "out_channels": 5, "kernel_size": 4, "stride": 2, "padding": 1},
    {"type": "conv_transpose2d", "out_channels": 16, "kernel_size": 3, "stride": 2,
     "output_padding": 1},
    {"type": "conv_transpose2d", "out_channels": 4, "kernel_size": 2, "stride": 2},
])
def test_transposed_convolutions_by_phases_run_compiled(threads, layer):
    """A transposed convolution by output phases is one compiled step for all its phases
    (each phase's outputs interleaved by its output layout): the plan is one CompiledRun, the
    same bits as the layer at 1, 2 and more threads than the workspace was made for."""
    from fastcnn._ops.conv_direct import SubpixelStep
    from fastcnn._ops.parallel import openmp_max_threads
    from fastcnn._ops.plan_steps import CompiledRun
    from fastcnn.functional import conv_algorithms
    from fastcnn.inference.plan import Plan
    model = fastcnn.build_model({"input_shape": [6, 7, 9], "layers": [layer]}).eval()
    with conv_algorithms(transposed="subpixel"):
        session = fastcnn.InferenceSession(model, autotune=False)
        for batch in (1, 3):
            assert "subpixel" in session.plan(batch).describe()
            plan = Plan(session.plan(batch))
            assert len(plan._runs) == 1 and isinstance(plan._runs[0], CompiledRun)
            assert [type(step) for step in plan._steps] == [SubpixelStep]
            x = np.random.default_rng(batch).standard_normal((batch, 6, 7, 9),
                                                             dtype=np.float32)
            want = model(x)
            for count in (1, 2, openmp_max_threads() + 2):
                threads(count)
                np.testing.assert_array_equal(plan.run(x)[0], want)


def test_direct_step_refuses_an_output_that_does_not_fit():
    """out must be whole channels of out_h x out_w, no more of them than wt's columns."""
    from fastcnn._ops.conv_direct import DirectStep, direct_workspace_size
    x = np.zeros((1, 2 * 4 * 4), np.float32)
    wt, bias = np.zeros((18, 8), np.float32), np.zeros(8, np.float32)
    offsets = np.zeros(18, np.intp)
    ws = np.zeros(direct_workspace_size(2, 6, 6, 1, 1, True), np.float32)
    args = (2, 4, 4, 1, 1, 6, 6, 4, 4, 1, 1, True, False, 1)
    DirectStep(x, wt, bias, np.zeros((1, 8 * 16), np.float32), ws, offsets, *args)   # fits
    for columns in (9 * 16, 3 * 16 + 1, 0):
        with pytest.raises(ValueError, match="channels|geometry"):
            DirectStep(x, wt, bias, np.zeros((1, columns), np.float32), ws, offsets, *args)
