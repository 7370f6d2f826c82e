"""Models from dicts: graphs, shape inference, gradients, state, config round trips, errors."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn.model import ConfigError
from gradcheck import numerical_grad

RESIDUAL = {
    "name": "tiny_residual", "input_shape": [2, 6, 6], "dtype": "float64", "seed": 0,
    "layers": [
        {"type": "conv2d", "name": "stem", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "name": "a", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "name": "b", "out_channels": 4, "kernel_size": 1},
        {"type": "add", "name": "sum", "inputs": ["stem", "b"]},
        {"type": "concat", "name": "cat", "inputs": ["sum", "a", "input"]},
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2, "groups": 1},
        {"type": "flatten"},
    ],
}


def test_graph_shapes_and_summary():
    model = fastcnn.build_model(RESIDUAL)
    assert model["cat"].output_shape == (10, 6, 6)
    assert model.output_shape == (12,)
    text = model.summary()
    for word in ("stem", "concat", "(1, 10, 6, 6)", "parameters:", "FLOPs"):
        assert word in text
    assert model.num_parameters() == sum(v.size for v in model.state_dict().values())


def test_model_gradients_by_finite_differences():
    model = fastcnn.build_model(RESIDUAL)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 6))
    dy = rng.standard_normal((2, 12))
    model.zero_grad()
    model(x)
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, numerical_grad(model, x, dy), rtol=1e-6, atol=1e-7)
    w = model["a"].weight
    analytic = w.grad.copy()

    def f(values):
        w.data[...] = values
        return model(x)
    original = w.data.copy()
    numeric = numerical_grad(f, original, dy)
    w.data[...] = original
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def test_gradients_accumulate_and_input_grad_can_be_skipped():
    model = fastcnn.build_model(RESIDUAL)
    x = np.ones((1, 2, 6, 6))
    model(x)
    model.backward(np.ones((1, 12)))
    once = model["stem"].weight.grad.copy()
    model(x)
    assert model.backward(np.ones((1, 12)), input_grad=False) is None
    np.testing.assert_allclose(model["stem"].weight.grad, 2 * once)


def test_backward_errors():
    model = fastcnn.build_model(RESIDUAL)
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward\\(\\) in train mode"):
        model.backward(np.ones((1, 12)))
    model(np.ones((1, 2, 6, 6)))
    model.backward(np.ones((1, 12)))
    with pytest.raises(RuntimeError, match="only once per forward"):
        model.backward(np.ones((1, 12)))
    model.eval()
    model(np.ones((1, 2, 6, 6)))
    with pytest.raises(RuntimeError, match="eval mode; call model.train\\(\\)"):
        model.backward(np.ones((1, 12)))
    model.train()
    model(np.ones((1, 2, 6, 6)))
    with pytest.raises(ValueError, match="gradient of shape"):
        model.backward(np.ones((1, 13)))


def test_input_checks():
    model = fastcnn.build_model(RESIDUAL)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 2, 6, 6\).*got \(1, 3, 6, 6\)"):
        model(np.ones((1, 3, 6, 6)))
    with pytest.raises(TypeError, match="input must hold real numbers"):
        model(np.ones((1, 2, 6, 6), dtype=complex))
    assert model(np.ones((1, 2, 6, 6), dtype=np.uint8)).dtype == np.float64


def test_state_dict_round_trip_and_load_errors():
    a, b = fastcnn.build_model(RESIDUAL), fastcnn.build_model(RESIDUAL, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    assert not np.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x), b(x))
    sd = a.state_dict()
    del sd["a.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["b.weight"] = np.zeros((4, 4, 3, 3))
    with pytest.raises(ValueError) as info:
        b.load_state_dict(sd)
    message = str(info.value)
    assert "missing keys: a.bias" in message and "unexpected keys: extra.weight" in message
    assert "b.weight: expected (4, 4, 1, 1), got (4, 4, 3, 3)" in message
    del sd["extra.weight"]
    sd["b.weight"] = np.zeros((4, 4, 1, 1))
    result = b.load_state_dict(sd, strict=False)
    assert result["missing"] == ["a.bias"]


def test_to_config_round_trip_through_json(tmp_path):
    model = fastcnn.build_model(RESIDUAL)
    config = model.to_config()
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    again = fastcnn.build_model(str(path))
    assert again.to_config() == config
    again.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
    np.testing.assert_array_equal(again(x), model(x))


def test_torch_names_are_aliases_and_sequential_keys():
    model = fastcnn.build_model({"input_shape": [1, 5, 5], "layers": [
        {"type": "Conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "Flatten"}]})
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    assert model.to_config()["layers"][0]["type"] == "conv2d"


def test_conv_state_dict_loads_into_torch(th):
    config = {"input_shape": [3, 9, 9], "dtype": "float64", "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 2, "dilation": 2},
        {"type": "flatten"}]}
    model = fastcnn.build_model(config)
    ref = th.nn.Sequential(th.nn.Conv2d(3, 4, 3, 2, 1), th.nn.Conv2d(4, 6, 3, groups=2, dilation=2),
                           th.nn.Flatten()).double()
    ref.load_state_dict({k: th.tensor(v) for k, v in model.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9))
    np.testing.assert_allclose(model(x), ref(th.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


# -- a user's layer is a first-class citizen ----------------------------------------------------

@fastcnn.register_layer("channel_scale")
class ChannelScale(fastcnn.Layer):
    """y = x * s[c] with a learned per-channel scale."""

    def __init__(self, init_value=1.0):
        self.init_value = init_value

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", (input_shape[0],),
                                        {"type": "constant", "value": self.init_value})
        return input_shape

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.scale.data.reshape(-1, *([1] * (x.ndim - 2)))

    def backward(self, grad):
        (x,) = self.saved()
        axes = (0,) + tuple(range(2, x.ndim))
        self.scale.grad += (grad * x).sum(axis=axes)
        return grad * self.scale.data.reshape(-1, *([1] * (x.ndim - 2)))


def test_plugin_layer_everywhere(tmp_path):
    config = {"input_shape": [2, 4, 4], "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "channel_scale", "init_value": 0.5}, {"type": "flatten"}]}
    model = fastcnn.build_model(config)
    assert "channel_scale" in model.summary()
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "1.scale"]
    assert model.to_config()["layers"][1] == {"type": "channel_scale", "init_value": 0.5}
    x = np.ones((2, 2, 4, 4), np.float32)
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.1}, model.parameters())
    model(x)
    model.backward(np.ones((2, 48), np.float32))
    opt.step()
    assert not np.allclose(model["1"].scale.data, 0.5)
    fastcnn.save(model, tmp_path / "m.fcnn")
    again = fastcnn.load(tmp_path / "m.fcnn")
    np.testing.assert_array_equal(again(x), model(x))


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'conv2d' is already registered"):
        fastcnn.register_layer("conv2d")(ChannelScale)


# -- config errors name the place ---------------------------------------------------------------

def _layers(*layers, **top):
    return {"input_shape": [3, 8, 8], "layers": list(layers), **top}


CONV = {"type": "conv2d", "out_channels": 4, "kernel_size": 3}


@pytest.mark.parametrize("config,match", [
    (_layers(dict(CONV, kernal_size=3)), r"layers\[0\] \(conv2d\): unknown argument 'kernal_size'; did you mean 'kernel_size'\?"),
    (_layers({"type": "conv2dd"}), r"layers\[0\]: unknown layer 'conv2dd'; did you mean 'conv2d'"),
    (_layers({"out_channels": 3}), r"layers\[0\]: missing 'type'"),
    (_layers({"type": "conv2d", "kernel_size": 3}), r"layers\[0\] \(conv2d\): missing required argument 'out_channels'"),
    (_layers(CONV, dict(CONV, inputs=["nope"])), r"layers\[1\] \(conv2d\): unknown input 'nope'"),
    (_layers(dict(CONV, inputs=["later"]), dict(CONV, name="later")), r"no cycles or forward references"),
    (_layers(CONV, dict(CONV, name="0")), r"layers\[1\] \(conv2d\): duplicate layer name '0'"),
    (_layers(CONV, {"type": "add", "inputs": ["0"]}), r"a merge layer needs at least 2 inputs"),
    (_layers(CONV, dict(CONV, inputs=["0", "input"])), r"takes exactly 1 input"),
    (_layers(CONV, dict(CONV, out_channels=5, name="x", inputs=["input"]), {"type": "add", "inputs": ["0", "x"]}),
     r"layers\[2\] \(add\): inputs must have the same shape, got \(4, 6, 6\) \(input 0\) and \(5, 6, 6\)"),
    (_layers(CONV, {"type": "concat", "inputs": ["0", "input"]}), r"layers\[1\] \(concat\): inputs must match except along dim 1"),
    (_layers(dict(CONV, in_channels=4)), r"layers\[0\] \(conv2d\): in_channels=4 but the input has 3 channels"),
    (_layers(dict(CONV, stride=0)), r"layers\[0\] \(conv2d\): stride must be a positive int"),
    (_layers(dict(CONV, name="a.b")), r"name must be a non-empty string without '.'"),
    (_layers(CONV, outputs=["zz"]), r"config: outputs: unknown layer 'zz'"),
    (_layers(CONV, inputshape=[1]), r"config: unknown key 'inputshape'; did you mean 'input_shape'\?"),
    ({"input_shape": [3, -8, 8], "layers": [CONV]}, r"config: input_shape must be a non-empty list of positive ints"),
    (_layers(CONV, dtype="float16"), r"config: dtype must be one of float32, float64"),
    (_layers(), r"config: layers must be a non-empty list"),
    (_layers("conv2d"), r"layers\[0\]: a layer is a dict with a 'type'"),
])
def test_config_errors(config, match):
    with pytest.raises((ConfigError, ValueError, TypeError), match=match):
        fastcnn.build_model(config)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        fastcnn.build_model(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        fastcnn.build_model(str(bad))


def test_plugin_layers_load_lazily_from_entry_points(monkeypatch):
    from importlib import metadata

    from fastcnn.registry import Registry

    class FakeEntryPoint:
        name = "doubler"

        def load(self):
            class Doubler(fastcnn.Layer):
                def __init__(self):
                    pass

                def forward(self, x):
                    self.save_for_backward(True)
                    return 2 * x

                def backward(self, grad):
                    self.saved()
                    return 2 * grad
            return Doubler

    calls = []

    def entry_points(group):
        calls.append(group)
        return [FakeEntryPoint()] if group == "fastcnn.test_layers" else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    registry = Registry("layer", "fastcnn.test_layers")
    registry.register("identity", fastcnn.layers.Identity)
    assert "identity" in registry and calls == []            # nothing loaded until needed
    cls = registry.get("doubler")
    assert calls == ["fastcnn.test_layers"] and cls().forward(np.ones(2)).tolist() == [2, 2]
    registry.get("doubler")
    assert calls == ["fastcnn.test_layers"]                   # loaded once


def test_yaml_config(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(RESIDUAL))
    assert fastcnn.build_model(str(path)).to_config() == fastcnn.build_model(RESIDUAL).to_config()


@pytest.mark.parametrize("name,shape", [("resnet_small", (3, 16, 16)), ("unet_small", (1, 16, 16)),
                                        ("vgg_small", (3, 32, 32))])
def test_whole_bundled_networks_match_torch(th, name, shape):
    """Residual additions, concatenations, transposed convolutions and batch norms together:
    outputs, input gradient and every parameter gradient against the same torch graph."""
    from compare_torch_loader import to_torch
    from fastcnn.training import bundled_config

    config = dict(bundled_config(name), input_shape=list(shape), dtype="float64", seed=0)
    config["layers"] = [dict(l, p=0.0) if l["type"] == "dropout" else l for l in config["layers"]]
    model = fastcnn.build_model(config)
    ref = to_torch(model, th).double()
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    tx = th.tensor(x, requires_grad=True)
    ty = ref(tx)
    y = model(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-9)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(th.tensor(dy))
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-9)
    grads = dict(model.named_parameters())
    for pname, param in ref.named_parameters():
        np.testing.assert_allclose(grads[pname].grad, param.grad.numpy(), rtol=1e-7, atol=1e-9,
                                   err_msg=pname)


def test_in_place_relu_never_overwrites_what_others_read():
    """relu overwrites its input only when that array is private to it: the same results as
    relu on a copy, for shared outputs, views (identity, flatten) and the model input."""
    config = {"input_shape": [2, 5, 5], "dtype": "float64", "seed": 0, "layers": [
        {"type": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "identity", "name": "same", "inputs": ["c"]},
        {"type": "relu", "name": "r1", "inputs": ["same"]},
        {"type": "relu", "name": "r2", "inputs": ["c"]},
        {"type": "add", "name": "sum", "inputs": ["r1", "r2", "c"]},
        {"type": "conv2d", "name": "d", "out_channels": 3, "kernel_size": 1},
        {"type": "relu", "name": "r3"},
        {"type": "relu", "name": "r4", "inputs": ["input"]},
        {"type": "flatten", "name": "f", "inputs": ["r3"]},
    ], "outputs": ["f", "r4"]}
    model = fastcnn.build_model(config)
    for fusion in (False, True):
        model.set_activation_fusion(fusion)
        assert [model[n].may_overwrite_input for n in ("r1", "r2", "r3", "r4")] == [
            False, False, not fusion, False]
        assert model["r3"].fused_into == ("d" if fusion else None)   # conv d applies it
        x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
        x_before = x.copy()
        c = fastcnn.functional.conv2d(x, model["c"].weight.data, model["c"].bias.data, padding=1)
        s = np.maximum(c, 0) * 2 + c
        d = fastcnn.functional.conv2d(s, model["d"].weight.data, model["d"].bias.data)
        f, r4 = model(x)
        np.testing.assert_allclose(f, np.maximum(d, 0).reshape(2, -1), rtol=1e-12)
        np.testing.assert_array_equal(r4, np.maximum(x_before, 0))
        np.testing.assert_array_equal(x, x_before)


def _train_step_results(model, x, dy):
    model.zero_grad()
    y = model(x)
    dx = model.backward(dy)
    return [y, dx] + [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("name,shape", [("resnet_small", (3, 16, 16)), ("vgg_small", (3, 16, 16)),
                                        ("lenet5", (1, 28, 28)), ("unet_small", (1, 16, 16))])
def test_activation_fusion_changes_no_bit(name, shape):
    """ReLUs fused into the convolutions, batch norms and residual adds before them: the same
    bits as the layers run one by one, in train mode (outputs, every gradient, running
    statistics) and in eval mode."""
    from fastcnn.training import bundled_config

    config = dict(bundled_config(name), input_shape=list(shape), seed=0)
    config["layers"] = [dict(l, p=0.0) if l["type"] == "dropout" else l for l in config["layers"]]
    fused, plain = fastcnn.build_model(config), fastcnn.build_model(config)
    plain.set_activation_fusion(False)
    names = list(fused.layers)
    relus = [n for i, n in enumerate(names) if fused[n].type_name == "relu"
             and fused[names[i - 1]].type_name in ("batch_norm2d", "add", "conv2d")]
    assert len(relus) >= 2 and all(fused[n].fused_into for n in relus)
    assert not any(plain[n].fused_into for n in relus)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    dy = rng.standard_normal((4,) + fused.output_shape).astype(np.float32)
    for _ in range(2):
        for a, b in zip(_train_step_results(fused, x, dy), _train_step_results(plain, x, dy)):
            np.testing.assert_array_equal(a, b)
    for key, value in fused.state_dict().items():
        np.testing.assert_array_equal(value, plain.state_dict()[key], err_msg=key)
    np.testing.assert_array_equal(fused.eval()(x), plain.eval()(x))


def test_activation_fusion_reaches_through_identities():
    """A ReLU after an identity (what fuse() leaves of a batch norm) is applied by the layer
    before the identity: the same bits in train mode (output and every gradient) and in the
    fused inference copy of a network with batch norms."""
    config = {"input_shape": [3, 8, 8], "seed": 0, "layers": [
        {"type": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3},
        {"type": "identity", "name": "i"}, {"type": "relu", "name": "r"},
        {"type": "flatten"}, {"type": "linear", "out_features": 3}]}
    fused, plain = fastcnn.build_model(config), fastcnn.build_model(config)
    plain.set_activation_fusion(False)
    assert fused["r"].fused_into == "c" and fused["c"].fused_activation == "relu"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    for a, b in zip(_train_step_results(fused, x, dy), _train_step_results(plain, x, dy)):
        np.testing.assert_array_equal(a, b)
    folded = fastcnn.build_model("vgg_small").eval().fuse()
    assert folded["b0a_relu"].fused_into == "b0a_conv"
    unfused = folded.fuse()
    unfused.set_activation_fusion(False)
    images = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(folded(images), unfused(images))


def test_activation_fusion_only_where_nothing_else_reads_the_pre_activation():
    config = {"input_shape": [2, 5, 5], "dtype": "float64", "seed": 0, "layers": [
        {"type": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "batch_norm2d", "name": "bn1"},
        {"type": "relu", "name": "r1"},                              # fused
        {"type": "batch_norm2d", "name": "bn2"},
        {"type": "relu", "name": "r2"},                              # bn2 also read by sum
        {"type": "add", "name": "sum", "inputs": ["r2", "bn2"]},
        {"type": "relu", "name": "r3"},                              # fused
        {"type": "batch_norm2d", "name": "bn3"},
        {"type": "relu", "name": "r4"},                              # bn3 is a model output
        {"type": "conv2d", "name": "d", "out_channels": 3, "kernel_size": 1, "inputs": ["r3"]},
        {"type": "relu", "name": "r5"},                              # fused into conv d
        {"type": "max_pool2d", "name": "p", "kernel_size": 2, "inputs": ["r3"]},
        {"type": "relu", "name": "r6"},                              # pooling: not fusable
    ], "outputs": ["r4", "bn3", "r5", "r6"]}
    model = fastcnn.build_model(config)
    assert {n: model[n].fused_into for n in ("r1", "r2", "r3", "r4", "r5", "r6")} == {
        "r1": "bn1", "r2": None, "r3": "sum", "r4": None, "r5": "d", "r6": None}
    assert model["bn1"].fused_activation == "relu" and model["bn2"].fused_activation is None
    assert model["sum"].output_is_private is False      # kept: its backward's mask
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 5))
    outputs = model(x)
    dys = [np.random.default_rng(i).standard_normal(o.shape) for i, o in enumerate(outputs)]
    dx = model.backward(tuple(dys))
    def loss(v):
        return sum(np.sum(o * d) for o, d in zip(model(v), dys))
    np.testing.assert_allclose(dx, numerical_grad(loss, x, 1.0), rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        model.set_activation_fusion("yes")


def test_fused_relu_after_a_sum_of_three():
    """A residual add of three inputs with its ReLU fused gives the unfused model's bits."""
    config = {"input_shape": [2, 6, 6], "dtype": "float32", "seed": 0, "layers": [
        {"type": "conv2d", "name": "a", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "name": "b", "out_channels": 3, "kernel_size": 1, "inputs": ["input"]},
        {"type": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 3, "padding": 1,
         "inputs": ["input"]},
        {"type": "add", "name": "sum", "inputs": ["a", "b", "c"]},
        {"type": "relu", "name": "r"},
        {"type": "flatten"},
    ]}
    fused, plain = fastcnn.build_model(config), fastcnn.build_model(config)
    plain.set_activation_fusion(False)
    assert fused["r"].fused_into == "sum" and plain["r"].fused_into is None
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((4, 108)).astype(np.float32)
    for a, b in zip(_train_step_results(fused, x, dy), _train_step_results(plain, x, dy)):
        np.testing.assert_array_equal(a, b)


def test_layer_arguments_a_config_cannot_hold_are_refused_when_the_layer_is_made():
    """Layer.__new__ records the constructor arguments as the layer's config: an ndarray (or a
    function, an object) is a clear TypeError naming the argument at construction, not a
    json.dumps failure when the model is saved."""
    from fastcnn.layers.base import Layer

    class Scale(Layer):
        def __init__(self, factor=1.0, shape=(1,), options=None):
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    Scale(2.0, [3, 4], {"mode": "a", "sizes": [1, 2]})          # JSON values: fine
    Scale(np.float32(2.0), (np.int64(3),))                       # numpy scalars too
    with pytest.raises(TypeError, match=r"Scale: argument 'factor' is a ndarray, which a config "
                                        r"cannot hold"):
        Scale(np.ones(3))
    with pytest.raises(TypeError, match=r"argument 'shape\[1\]' is a function"):
        Scale(1.0, (1, lambda: 2))
    with pytest.raises(TypeError, match=r"argument 'options' has a key 1: config dicts need "
                                        r"string keys"):
        Scale(1.0, options={1: "a"})
