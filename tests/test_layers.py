"""Every built-in layer through the model API against the same torch.nn module: outputs, input
gradients and parameter gradients (float64), with the state_dict loaded into torch."""
import numpy as np
import pytest

import fastcnn

# (fastcnn layer config, per-sample input shape, torch module factory (nn) -> Module)
LAYERS = [
    ({"type": "conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}, (3, 11),
     lambda nn: nn.Conv1d(3, 4, 3, 2, 1)),
    ({"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same", "groups": 2}, (2, 7, 6),
     lambda nn: nn.Conv2d(2, 4, 3, padding="same", groups=2)),
    ({"type": "conv3d", "out_channels": 2, "kernel_size": 2, "bias": False}, (2, 4, 4, 3),
     lambda nn: nn.Conv3d(2, 2, 2, bias=False)),
    ({"type": "conv_transpose2d", "out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
     (2, 5, 5), lambda nn: nn.ConvTranspose2d(2, 3, 4, 2, 1)),
    ({"type": "conv_transpose1d", "out_channels": 2, "kernel_size": 3, "stride": 2,
      "output_padding": 1}, (3, 6), lambda nn: nn.ConvTranspose1d(3, 2, 3, 2, output_padding=1)),
    ({"type": "linear", "out_features": 5}, (7,), lambda nn: nn.Linear(7, 5)),
    ({"type": "linear", "out_features": 3, "bias": False}, (2, 4), lambda nn: nn.Linear(4, 3, bias=False)),
    ({"type": "relu"}, (3, 4, 4), lambda nn: nn.ReLU()),
    ({"type": "leaky_relu", "negative_slope": 0.2}, (3, 5), lambda nn: nn.LeakyReLU(0.2)),
    ({"type": "elu", "alpha": 0.7}, (6,), lambda nn: nn.ELU(0.7)),
    ({"type": "selu"}, (6,), lambda nn: nn.SELU()),
    ({"type": "gelu"}, (6,), lambda nn: nn.GELU()),
    ({"type": "gelu", "approximate": "tanh"}, (6,), lambda nn: nn.GELU(approximate="tanh")),
    ({"type": "sigmoid"}, (2, 3), lambda nn: nn.Sigmoid()),
    ({"type": "tanh"}, (2, 3), lambda nn: nn.Tanh()),
    ({"type": "softmax", "dim": 1}, (5, 2), lambda nn: nn.Softmax(dim=1)),
    ({"type": "log_softmax", "dim": -1}, (5,), lambda nn: nn.LogSoftmax(dim=-1)),
    ({"type": "prelu", "num_parameters": 3}, (3, 4, 4), lambda nn: nn.PReLU(3)),
    ({"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1}, (2, 7, 7),
     lambda nn: nn.MaxPool2d(3, 2, 1)),
    ({"type": "max_pool1d", "kernel_size": 2}, (2, 9), lambda nn: nn.MaxPool1d(2)),
    ({"type": "max_pool3d", "kernel_size": 2, "ceil_mode": True}, (1, 5, 5, 5),
     lambda nn: nn.MaxPool3d(2, ceil_mode=True)),
    ({"type": "avg_pool2d", "kernel_size": 2, "padding": 1, "count_include_pad": False}, (2, 5, 6),
     lambda nn: nn.AvgPool2d(2, padding=1, count_include_pad=False)),
    ({"type": "avg_pool1d", "kernel_size": 3, "stride": 2}, (2, 9), lambda nn: nn.AvgPool1d(3, 2)),
    ({"type": "adaptive_avg_pool2d", "output_size": [3, 2]}, (2, 7, 5),
     lambda nn: nn.AdaptiveAvgPool2d((3, 2))),
    ({"type": "adaptive_max_pool2d", "output_size": 2}, (2, 5, 5), lambda nn: nn.AdaptiveMaxPool2d(2)),
    ({"type": "global_avg_pool2d"}, (3, 4, 5), lambda nn: nn.AdaptiveAvgPool2d(1)),
    ({"type": "batch_norm2d"}, (3, 4, 4), lambda nn: nn.BatchNorm2d(3)),
    ({"type": "batch_norm1d", "momentum": None}, (4,), lambda nn: nn.BatchNorm1d(4, momentum=None)),
    ({"type": "batch_norm1d", "affine": False}, (3, 6), lambda nn: nn.BatchNorm1d(3, affine=False)),
    ({"type": "batch_norm3d", "eps": 1e-3}, (2, 3, 3, 3), lambda nn: nn.BatchNorm3d(2, eps=1e-3)),
    ({"type": "layer_norm", "normalized_shape": [4, 4]}, (3, 4, 4), lambda nn: nn.LayerNorm([4, 4])),
    ({"type": "group_norm", "num_groups": 2}, (4, 3, 3), lambda nn: nn.GroupNorm(2, 4)),
    ({"type": "instance_norm2d", "affine": True}, (3, 4, 4), lambda nn: nn.InstanceNorm2d(3, affine=True)),
    ({"type": "instance_norm1d", "track_running_stats": True}, (2, 6),
     lambda nn: nn.InstanceNorm1d(2, track_running_stats=True)),
    ({"type": "upsample", "scale_factor": 2, "mode": "nearest"}, (2, 3, 4),
     lambda nn: nn.Upsample(scale_factor=2, mode="nearest")),
    ({"type": "upsample", "size": [5, 7], "mode": "bilinear", "align_corners": True}, (2, 3, 4),
     lambda nn: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True)),
    ({"type": "flatten"}, (2, 3, 4), lambda nn: nn.Flatten()),
    ({"type": "identity"}, (2, 3), lambda nn: nn.Identity()),
    ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 2, "stride": 2}, (2, 2, 3, 2),
     lambda nn: nn.ConvTranspose3d(2, 2, 2, 2)),
    ({"type": "avg_pool3d", "kernel_size": 2}, (2, 4, 4, 5), lambda nn: nn.AvgPool3d(2)),
    ({"type": "adaptive_avg_pool1d", "output_size": 3}, (2, 7), lambda nn: nn.AdaptiveAvgPool1d(3)),
    ({"type": "instance_norm3d", "affine": True}, (2, 3, 3, 3),
     lambda nn: nn.InstanceNorm3d(2, affine=True)),
    ({"type": "pad", "pad": [1, 2, -1, 0], "value": 0.5}, (2, 4, 5),
     lambda nn: nn.ConstantPad2d((1, 2, -1, 0), 0.5)),
    ({"type": "pad", "pad": [1, 2, 2, 0], "mode": "reflect"}, (2, 4, 5),
     lambda nn: nn.ReflectionPad2d((1, 2, 2, 0))),
    ({"type": "pad", "pad": [3, 1], "mode": "replicate"}, (2, 4), lambda nn: nn.ReplicationPad1d((3, 1))),
    ({"type": "pad", "pad": [1, 2, 2, 1], "mode": "circular"}, (2, 4, 5),
     lambda nn: nn.CircularPad2d((1, 2, 2, 1))),
    ({"type": "hardtanh", "min_val": -0.5, "max_val": 2.0}, (3, 5), lambda nn: nn.Hardtanh(-0.5, 2.0)),
    ({"type": "relu6"}, (3, 5), lambda nn: nn.ReLU6()),
    ({"type": "reshape", "shape": [4, -1, 2]}, (2, 3, 4),
     lambda nn: nn.Sequential(nn.Flatten(), nn.Unflatten(1, (4, 3, 2)))),
]


def _ids():
    return [f"{i}-{cfg['type']}" for i, (cfg, _, _) in enumerate(LAYERS)]


def _compare(th, model, ref, x, dy, training):
    tx = th.tensor(x, requires_grad=True)
    ty = ref(tx)
    y = model(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-10)
    if not training:
        return
    ref.zero_grad()
    ty.backward(th.tensor(dy))
    model.zero_grad()
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-9)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, param in ref.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-8, atol=1e-9,
                                   err_msg=name)


@pytest.mark.parametrize("config,shape,factory", LAYERS, ids=_ids())
def test_layer_matches_torch(th, config, shape, factory):
    model = fastcnn.build_model({"input_shape": list(shape), "dtype": "float64", "seed": 0,
                                 "layers": [dict(config)]})
    ref = th.nn.Sequential(factory(th.nn)).double()
    state = {k: th.tensor(v) for k, v in model.state_dict().items()}
    ref.load_state_dict(state, strict=True)          # same keys, same shapes as torch
    rng = np.random.default_rng(0)
    # parameters away from their neutral init so every term of the gradient is exercised
    for p in model.parameters():
        p.data[...] += rng.uniform(0.1, 0.5, size=p.data.shape)
    ref.load_state_dict({k: th.tensor(v) for k, v in model.state_dict().items()})
    x = rng.standard_normal((3,) + tuple(shape)) * 2
    y_shape = (3,) + tuple(model.output_shape)
    dy = rng.standard_normal(y_shape)
    ref.train()
    model.train()
    for _ in range(2):                                   # running statistics move the same way
        _compare(th, model, ref, x, dy, training=True)
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, ref.state_dict()[key].numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=key)
    ref.eval()
    model.eval()
    _compare(th, model, ref, x, dy, training=False)


def test_dropout_layers_train_and_eval():
    model = fastcnn.build_model({"input_shape": [4, 8, 8], "seed": 1, "layers": [
        {"type": "dropout", "p": 0.25}, {"type": "dropout2d", "p": 0.5}]})
    x = np.ones((16, 4, 8, 8), np.float32)
    y = model(x)
    kept = y != 0
    assert 0.2 < 1 - kept.mean() < 0.75
    np.testing.assert_allclose(y[kept], 1 / (0.75 * 0.5), rtol=1e-6)
    dx = model.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx != 0, kept)
    model.eval()
    np.testing.assert_array_equal(model(x), x)


def _vgg_like():
    return {"input_shape": [3, 8, 8], "dtype": "float64", "seed": 0, "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "batch_norm2d"}, {"type": "relu"},
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "bias": False},
        {"type": "batch_norm2d", "momentum": 0.3}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "out_features": 8},
        {"type": "batch_norm1d"}, {"type": "linear", "out_features": 3}]}


def _train_steps(model, xs):
    """A forward and backward per input of xs (dL/dy = cos(y)): each output, input gradient
    and the parameters' gradients, in order."""
    outs = []
    for x in xs:
        y = model(x)
        model.zero_grad()
        outs += [y, model.backward(np.cos(y))]
        outs += [p.grad.copy() for p in model.parameters()]
    return outs


def test_sequential_state_dict_runs_in_torch(th):
    model = fastcnn.build_model(_vgg_like())
    nn = th.nn
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(216, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double()
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8))
    model(x)                                           # one training step of statistics
    ref.load_state_dict({k: th.tensor(v) for k, v in model.state_dict().items()})
    model.eval()
    ref.eval()
    np.testing.assert_allclose(model(x), ref(th.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_layers_fast_path_same_bits_as_the_functional_calls(monkeypatch, dtype):
    """A batch norm layer's training forward and backward skip batch_norm's checks for its own
    operands (_norm._batch_norm_train): two train steps give the same bits as through
    F.batch_norm / F.batch_norm_backward (outputs, every gradient, running statistics, the
    batch counter); with a fused ReLU, without, in 1-D and 2-D layers, without affine."""
    from fastcnn.functional import _norm
    config = _vgg_like() | {"dtype": dtype}
    config["layers"] = config["layers"] + [{"type": "batch_norm1d", "affine": False}]
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((5, 3, 8, 8)).astype(dtype) for _ in range(2)]
    taken = []
    fast = _norm._batch_norm_train
    monkeypatch.setattr(_norm, "_batch_norm_train", lambda *a: taken.append(1) or fast(*a))
    runs = []
    for ready in (_norm._layer_ready, lambda *a: False):
        monkeypatch.setattr(_norm, "_layer_ready", ready)
        model = fastcnn.build_model(config)
        runs.append(_train_steps(model, xs) + list(model.state_dict().values()))
    assert len(taken) == 8                          # 4 batch norms, 2 steps, fast run only
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_fuse_folds_batch_norm_and_keeps_outputs():
    model = fastcnn.build_model(_vgg_like())
    rng = np.random.default_rng(0)
    for _ in range(3):
        model(rng.standard_normal((6, 3, 8, 8)))      # move the running statistics
    model.eval()
    fused = model.fuse()
    types = [layer.type_name for layer in fused.layers.values()]
    assert types.count("batch_norm2d") == 0 and types.count("batch_norm1d") == 0
    assert types.count("identity") == 3
    x = rng.standard_normal((4, 3, 8, 8))
    np.testing.assert_allclose(fused(x), model(x), rtol=1e-10, atol=1e-12)
    assert model.training is False and "1.running_mean" in model.state_dict()


def test_every_registered_layer_is_tested():
    covered = {cfg["type"] for cfg, _, _ in LAYERS} | {"dropout", "dropout2d", "add", "concat",
                                                       "elementwise"}
    registry = fastcnn.registry.LAYERS
    builtin = {n for n in registry.names() if registry.get(n).__module__.startswith("fastcnn.")}
    assert builtin <= covered, builtin - covered


@pytest.mark.parametrize("spec, shape, match", [
    ({"type": "pad", "pad": [1]}, (2, 3), "pairs"),
    ({"type": "pad", "pad": [1, 1], "mode": "mirror"}, (2, 3), "mode must be one of"),
    ({"type": "pad", "pad": [1, 1], "value": float("nan")}, (2, 3), "finite"),
    ({"type": "pad", "pad": [1, 1, 1, 1, 1, 1]}, (2, 3), "never padded"),
    ({"type": "pad", "pad": [4, 0], "mode": "reflect"}, (2, 3), "smaller than the dim"),
    ({"type": "reshape", "shape": [-1, -1]}, (2, 3), "one may be -1"),
    ({"type": "reshape", "shape": [4]}, (2, 3), "cannot reshape"),
])
def test_pad_and_reshape_refuse_bad_arguments(spec, shape, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastcnn.build_model({"input_shape": list(shape), "layers": [spec]})


@pytest.mark.parametrize("shape", [(), (3, 1, 1), (4, 5), (1, 5)])
@pytest.mark.parametrize("op, reverse", [("add", False), ("sub", False), ("sub", True),
                                         ("mul", False), ("div", False), ("div", True)])
def test_elementwise_against_numpy_and_finite_differences(op, reverse, shape):
    from gradcheck import assert_grad_close, numerical_grad

    model = fastcnn.build_model({"input_shape": [3, 4, 5], "dtype": "float64", "layers": [
        {"type": "elementwise", "op": op, "shape": list(shape), "reverse": reverse}]})
    rng = np.random.default_rng(0)
    shape = shape or (1,)                        # a scalar is held as (1,)
    value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)
    model.load_state_dict({"0.value": value})
    x = rng.uniform(0.5, 1.5, (2, 3, 4, 5)) * rng.choice([-1, 1], (2, 3, 4, 5))
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    expected = fn(value, x) if reverse else fn(x, value)
    np.testing.assert_allclose(model(x), expected, rtol=1e-14)
    dy = rng.standard_normal(expected.shape)
    model.zero_grad()
    dx = model.backward(dy)
    assert_grad_close(dx, numerical_grad(lambda t: model(t), x, dy))

    def with_value(v):
        model.load_state_dict({"0.value": v})
        return model(x)
    (param,) = model.parameters()
    grad = param.grad.copy()
    assert_grad_close(grad, numerical_grad(with_value, value, dy))


def test_elementwise_buffer_and_bad_arguments():
    model = fastcnn.build_model({"input_shape": [2, 3], "layers": [
        {"type": "elementwise", "op": "mul", "shape": [3], "trainable": False}]})
    assert model.parameters() == [] and list(model.state_dict()) == ["0.value"]
    np.testing.assert_array_equal(model(np.ones((1, 2, 3), np.float32)), np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="op must be one of"):
        fastcnn.build_model({"input_shape": [2, 3], "layers": [{"type": "elementwise", "op": "pow"}]})
    with pytest.raises(ValueError, match="does not broadcast"):
        fastcnn.build_model({"input_shape": [2, 3], "layers": [
            {"type": "elementwise", "op": "add", "shape": [4]}]})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_layers_fast_path_same_bits_as_the_functional_calls(monkeypatch, dtype):
    """Convolution layers run their cached plans (_conv._layer_forward / _layer_backward,
    skipping conv2d's checks for their own operands): two train steps give the same bits as
    through F.conv{1,2}d / F.conv{1,2}d_backward (outputs, input and parameter gradients),
    with a fused ReLU, 'same' padding, stride, groups, depthwise, 1x1, no bias, 1-D; an input
    of another dtype takes the checked path, a wrong one gets conv2d's error."""
    from fastcnn.functional import _conv
    configs = [
        {"input_shape": [3, 12, 12], "seed": 0, "layers": [
            {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"type": "relu"},
            {"type": "conv2d", "out_channels": 16, "kernel_size": 5, "padding": "same",
             "bias": False},
            {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "stride": 2, "groups": 2},
            {"type": "relu"},
            {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1,
             "groups": 16},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 1},
            {"type": "flatten"}, {"type": "linear", "out_features": 3}]},
        {"input_shape": [3, 20], "seed": 0, "layers": [
            {"type": "conv1d", "out_channels": 5, "kernel_size": 3, "padding": 1},
            {"type": "relu"}, {"type": "flatten"}]},
    ]
    rng = np.random.default_rng(7)
    fast_forward, fast_backward = _conv._layer_forward, _conv._layer_backward
    for config in configs:
        config = config | {"dtype": dtype}
        shape = (4,) + tuple(config["input_shape"])
        xs = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
        runs, taken = [], []
        for fast in (True, False):
            if fast:
                monkeypatch.setattr(_conv, "_layer_forward",
                                    lambda *a: taken.append(1) or fast_forward(*a))
                monkeypatch.setattr(_conv, "_layer_backward", fast_backward)
            else:
                monkeypatch.setattr(_conv, "_layer_forward", lambda *a: None)
                monkeypatch.setattr(_conv, "_layer_backward", lambda nd, dy, x, w, s, p, d, g,
                                    mask: _conv._conv_backward(f"conv{nd}d_backward", nd, dy,
                                                               x, w, s, p, d, g, mask))
            runs.append(_train_steps(fastcnn.build_model(config), xs))
        convs = sum(layer["type"].startswith("conv") for layer in config["layers"])
        assert len(taken) == 2 * convs
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(_conv, "_layer_forward", fast_forward)
    monkeypatch.setattr(_conv, "_layer_backward", fast_backward)
    model = fastcnn.build_model(configs[0] | {"dtype": dtype})
    other = "float64" if dtype == "float32" else "float32"
    x = rng.standard_normal((2, 3, 12, 12))
    np.testing.assert_allclose(model(x.astype(other)), model(x.astype(dtype)), rtol=1e-4,
                               atol=1e-4)
    first = model.layers[next(iter(model.layers))]
    with pytest.raises(ValueError, match="conv2d: input has 4 channels"):
        first(np.zeros((2, 4, 12, 12), dtype))
    x = x.astype(dtype)
    expected = first(x)
    first.padding = [1, 1]                      # a list, not hashable: the checked path
    np.testing.assert_array_equal(first(x), expected)
    first.backward(np.ones_like(expected))
