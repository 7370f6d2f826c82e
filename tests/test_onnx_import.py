"""fastcnn.onnx.load_model: lossless re-import of fastcnn's exports; models built in torch and
exported by both torch exporters agree with torch; ONNX constructs (auto_pad, asymmetric pads,
MatMul+Add, ReduceMean, the group-norm pattern, old opsets) checked against onnxruntime; an
imported model trains; bad files give errors naming the file."""
import io
import json
import warnings

import numpy as np
import pytest

import fastcnn
from fastcnn.onnx import OnnxImportError, UnsupportedOnnxError, export, load_model
from onnx_helpers import ort_session, randomize, reference, run_ort

onnx = reference("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def assert_close(got, expected, tol=1e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale)


# -- fastcnn -> ONNX -> fastcnn -------------------------------------------------------------
@pytest.mark.parametrize("name", ["lenet5", "vgg_small", "resnet_small", "unet_small"])
def test_reimport_is_lossless(name, tmp_path):
    model = randomize(fastcnn.build_model(name, seed=0))
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape).astype(np.float32)
    model(x)                                     # a train step moves num_batches_tracked
    path = export(model, tmp_path / "m.onnx")
    again = load_model(path)
    assert again.to_config() == model.to_config()
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].dtype == b[key].dtype


def test_reimport_of_every_layer_case(tmp_path):
    from test_onnx_export import LAYER_CASES, _model

    for case, (layers, shape) in LAYER_CASES.items():
        model = _model(layers, shape)
        path = export(model, tmp_path / f"{case}.onnx")
        again = load_model(path)
        assert again.to_config() == model.to_config(), case
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[key], value)


def test_foreign_path_matches_metadata_path(tmp_path):
    """Without fastcnn's metadata the same file goes through the op handlers, and the model
    they build computes the same function."""
    model = randomize(fastcnn.build_model("resnet_small", seed=0)).eval()
    proto = fastcnn.onnx.to_onnx(model, 13)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "plain.onnx")
    plain = load_model(tmp_path / "plain.onnx").eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert_close(plain(x), model(x))
    kinds = lambda m: [type(l).__name__ for l in m.layers.values() if type(l).__name__ not in  # noqa: E731
                       ("Identity", "Dropout")]
    assert kinds(plain) == kinds(model)


@pytest.mark.parametrize("opset", [13, 17])
def test_foreign_path_reads_fastcnn_forms_back(opset, tmp_path):
    """The forms fastcnn writes below the ops' opsets (layer norm's formula before 17, group
    norm's Reshape/InstanceNormalization form before 21, GELU's erf form before 20) import
    without the metadata as the same layers where a pattern exists."""
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3},
              {"type": "group_norm", "num_groups": 2}, {"type": "gelu"},
              {"type": "global_avg_pool2d"}, {"type": "flatten"},
              {"type": "linear", "out_features": 3}]
    model = randomize(fastcnn.build_model({"input_shape": [2, 6, 6], "seed": 0,
                                           "layers": layers})).eval()
    proto = fastcnn.onnx.to_onnx(model, opset)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "f.onnx")
    plain = load_model(tmp_path / "f.onnx").eval()
    assert [type(l).__name__ for l in plain.layers.values()] == [
        "Conv2d", "GroupNorm", "GELU", "GlobalAvgPool2d", "Flatten", "Linear"]
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    assert_close(plain(x), model(x))


# -- torch-built models, both exporters -----------------------------------------------------
def _torch_models(torch):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out)) if stride > 1 or c_in != c_out
                         else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.down(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                      nn.ReLU())
            self.layer1 = Block(8, 8, 1)
            self.layer2 = Block(8, 16, 2)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def double(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                             nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2 = double(3, 8), double(8, 16)
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.dec = double(16, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            return self.head(self.dec(torch.cat([self.up(e2), e1], dim=1)))

    def separable(c_in, c_out, stride):
        return nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
            nn.ReLU6(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    mobilenet = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        separable(8, 16, 1), separable(16, 32, 2), separable(32, 32, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))
    conv1d = nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 3, dilation=2, padding=2), nn.GroupNorm(4, 16), nn.GELU(),
        nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(64, 5))
    return {"resnet": (ResNet(), (3, 16, 16)), "unet": (UNet(), (3, 16, 16)),
            "mobilenet": (mobilenet, (3, 16, 16)), "conv1d": (conv1d, (2, 32))}


def _randomized_torch(torch, module):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _export_torch(torch, module, shape, path, dynamo, preserve=False):
    x = torch.randn(2, *shape)
    kwargs = {}
    if preserve:
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    if dynamo:
        reference("onnxscript")
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with io.StringIO() as sink:
            import contextlib
            with contextlib.redirect_stdout(sink):
                torch.onnx.export(module, (x,), str(path), dynamo=dynamo, input_names=["x"],
                                  **kwargs)
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["resnet", "unet", "mobilenet", "conv1d"])
def test_torch_models_import_and_agree(name, dynamo, th, tmp_path):
    module, shape = _torch_models(th)[name]
    module = _randomized_torch(th, module)
    path = _export_torch(th, module, shape, tmp_path / f"{name}.onnx", dynamo)
    model = load_model(path).eval()
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n,) + shape).astype(np.float32)
        with th.no_grad():
            expected = module(th.from_numpy(x)).numpy()
        assert_close(model(x), expected, 1e-4)


def test_torchscript_preserve_keeps_batch_norms_and_names(th, tmp_path):
    module, shape = _torch_models(th)["resnet"]
    module = _randomized_torch(th, module)
    path = _export_torch(th, module, shape, tmp_path / "r.onnx", False, preserve=True)
    model = load_model(path).eval()
    kinds = [type(layer).__name__ for layer in model.layers.values()]
    assert kinds.count("BatchNorm2d") == 6 and kinds.count("Add") == 2
    state = model.state_dict()
    torch_state = module.state_dict()
    # torch's module names, '.' -> '_': layer1.conv1.weight -> layer1_conv1.weight
    for key in ("layer1.conv1.weight", "layer2.bn2.running_var", "fc.bias"):
        prefix, leaf = key.rsplit(".", 1)
        np.testing.assert_array_equal(state[f"{prefix.replace('.', '_')}.{leaf}"],
                                      torch_state[key].numpy())
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    with th.no_grad():
        assert_close(model(x), module(th.from_numpy(x)).numpy(), 1e-4)


def test_imported_model_trains(th, tmp_path):
    module, shape = _torch_models(th)["mobilenet"]
    module = _randomized_torch(th, module)
    path = _export_torch(th, module, shape, tmp_path / "m.onnx", False, preserve=True)
    model = load_model(path).train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16,) + shape).astype(np.float32)
    y = rng.integers(0, 10, 16)
    loss = fastcnn.build_loss("cross_entropy")
    opt = fastcnn.build_optimizer({"type": "adam", "lr": 0.01}, model.parameters())
    losses = []
    for _ in range(20):
        losses.append(float(loss(model(x), y)))
        model.zero_grad()
        model.backward(loss.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_config_model_may_be_an_onnx_file(th, tmp_path):
    module = th.nn.Sequential(th.nn.Conv2d(1, 4, 3), th.nn.ReLU(), th.nn.Flatten(),
                              th.nn.Linear(4 * 26 * 26, 10)).eval()
    path = _export_torch(th, module, (1, 28, 28), tmp_path / "small.onnx", False)
    config = {"model": str(path), "data": {"dataset": "synthetic", "n": 64, "shape": [1, 28, 28],
                                           "num_classes": 10},
              "optimizer": {"type": "sgd", "lr": 0.0},       # lr 0: the weights stay imported
              "train": {"epochs": 1, "batch_size": 32}}
    trainer = fastcnn.Trainer(config, tmp_path / "run", progress=False, log=None)
    assert trainer.config["train"]["init_weights"] == str(path)
    assert trainer.fit()["epochs_run"] == 1
    imported = load_model(path).state_dict()
    trained = trainer.model.state_dict()
    assert set(trained) == set(imported)
    for key, value in imported.items():
        np.testing.assert_array_equal(trained[key], value)


# -- ONNX constructs, checked against onnxruntime -------------------------------------------
def _graph_model(nodes, input_shape, out_rank, initializers, opset=17, name="g"):
    """A one-input graph x -> y; ``out_rank`` (default: the input's) sizes y's symbolic
    shape."""
    rank = len(input_shape) + 1 if out_rank is None else out_rank
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                    ["N", *input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       ["N"] + [f"d{i}" for i in range(1, rank)])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                             else np.asarray(v), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=helper.find_min_ir_version_for(
                                 [helper.make_opsetid("", opset)]))


def _agree_with_ort(proto, tmp_path, input_shape, batches=(1, 3)):
    path = tmp_path / "g.onnx"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    model = load_model(path).eval()
    session = ort_session(str(path))
    for n in batches:
        x = np.random.default_rng(n).standard_normal((n, *input_shape)).astype(np.float32)
        assert_close(model(x), run_ort(session, x))
    return model


W = np.random.default_rng(5).standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("pad", [dict(auto_pad="SAME_UPPER"), dict(auto_pad="SAME_LOWER"),
                                 dict(pads=[0, 1, 2, 1]), dict(auto_pad="VALID")])
def test_conv_auto_pad_and_asymmetric_pads(pad, tmp_path):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            **pad)
    proto = _graph_model([node], (3, 8, 9), None, {"w": W, "b": np.arange(4.0)})
    model = _agree_with_ort(proto, tmp_path, (3, 8, 9))
    if pad.get("auto_pad") != "VALID":
        assert "Pad" in [type(l).__name__ for l in model.layers.values()]


@pytest.mark.parametrize("op, extra", [("MaxPool", {}), ("AveragePool",
                                                         {"count_include_pad": 1})])
def test_pool_asymmetric_pads(op, extra, tmp_path):
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 0, 2, 1], **extra)
    _agree_with_ort(_graph_model([node], (2, 7, 8), None, {}), tmp_path, (2, 7, 8))


def test_conv_transpose_output_shape_and_asymmetric_pads(tmp_path):
    w = np.random.default_rng(2).standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2],
                              output_shape=[10, 12]),
             helper.make_node("ConvTranspose", ["x", "w"], ["u"], strides=[2, 2],
                              pads=[0, 1, 1, 0]),
             helper.make_node("Relu", ["t"], ["y"])]
    proto = _graph_model(nodes[:1] + nodes[2:], (3, 5, 6), None, {"w": w})
    _agree_with_ort(proto, tmp_path, (3, 5, 6))
    proto = _graph_model([nodes[1], helper.make_node("Relu", ["u"], ["y"])], (3, 5, 6), None,
                         {"w": w})
    _agree_with_ort(proto, tmp_path, (3, 5, 6))


def test_matmul_add_is_one_linear_and_reducemean_a_global_pool(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    proto = _graph_model(nodes, (4, 5, 6), 2, {"axes": np.array([2, 3]),
                                                  "w": rng.standard_normal((4, 7)),
                                                  "b": rng.standard_normal(7)}, opset=18)
    model = _agree_with_ort(proto, tmp_path, (4, 5, 6))
    assert [type(l).__name__ for l in model.layers.values()] == ["GlobalAvgPool2d", "Flatten",
                                                                  "Linear"]


def test_shape_subgraph_folds_into_a_flatten(tmp_path):
    """Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape: torch's old flatten."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    proto = _graph_model(nodes, (2, 3, 4), 2, {"zero": np.array(0), "axes0": np.array([0]),
                                                  "minus1": np.array([-1])})
    model = _agree_with_ort(proto, tmp_path, (2, 3, 4))
    assert [type(l).__name__ for l in model.layers.values()] == ["Flatten"]


def test_group_norm_pattern_is_one_layer(tmp_path):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Reshape", ["x", "grouped"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["i"],
                              epsilon=1e-3),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["i", "s"], ["back"]),
             helper.make_node("Mul", ["back", "gamma"], ["scaled"]),
             helper.make_node("Add", ["scaled", "beta"], ["y"])]
    proto = _graph_model(nodes, (6, 4, 5), None, {
        "grouped": np.array([0, 3, -1]), "ones": np.ones(3), "zeros": np.zeros(3),
        "gamma": rng.uniform(0.5, 1.5, (6, 1, 1)), "beta": rng.standard_normal((6, 1, 1))})
    model = _agree_with_ort(proto, tmp_path, (6, 4, 5))
    (layer,) = model.layers.values()
    assert type(layer).__name__ == "GroupNorm" and layer.num_groups == 3 and layer.eps == 1e-3


def test_old_opset_is_upgraded(th, tmp_path):
    module = th.nn.Sequential(th.nn.Conv2d(3, 4, 3), th.nn.ReLU(), th.nn.Flatten(),
                              th.nn.Linear(4 * 6 * 6, 3), th.nn.Softmax(dim=1)).eval()
    path = tmp_path / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        th.onnx.export(module, (th.randn(1, 3, 8, 8),), str(path), dynamo=False,
                       opset_version=9, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert onnx.load(path).opset_import[0].version == 9
    model = load_model(path).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with th.no_grad():
        assert_close(model(x), module(th.from_numpy(x)).numpy())


def test_handler_registry_picks_newest_not_above_opset():
    from fastcnn.onnx import handlers

    assert handlers.find_handler("GroupNormalization", 18) is handlers.norm._group_norm_18
    assert handlers.find_handler("GroupNormalization", 20) is handlers.norm._group_norm_18
    assert handlers.find_handler("GroupNormalization", 21) is handlers.norm._group_norm_21
    assert handlers.find_handler("GroupNormalization", 17) is None
    assert handlers.find_handler("ReduceMean", 17) is handlers.pool._reduce_mean_13
    assert handlers.find_handler("ReduceMean", 28) is handlers.pool._reduce_mean_18
    assert handlers.find_handler("ReduceMean", 29) is None
    assert handlers.find_handler("NoSuchOp", 17) is None


# -- bad input ------------------------------------------------------------------------------
def test_every_unsupported_node_is_reported_at_once(tmp_path):
    nodes = [helper.make_node("HardSwish", ["x"], ["a"], name="hs"),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 3, 2], name="tr"),
             helper.make_node("Relu", ["x"], ["c"]),
             helper.make_node("Mul", ["c", "c"], ["d"], name="square"),
             helper.make_node("Add", ["d", "b"], ["y"])]
    proto = _graph_model(nodes, (2, 4, 4), None, {})
    onnx.save(proto, tmp_path / "u.onnx")
    with pytest.raises(UnsupportedOnnxError) as info:
        load_model(tmp_path / "u.onnx")
    message = str(info.value)
    assert str(tmp_path / "u.onnx") in message
    assert "HardSwish (opset 17) at node 'hs'" in message
    assert "Mul (opset 17) at node 'square'" in message
    assert [u[0] for u in info.value.unsupported] == ["HardSwish", "Mul"]


def test_bad_files_name_the_file(tmp_path):
    model = fastcnn.build_model("lenet5", seed=0)
    good = export(model, tmp_path / "good.onnx")
    data = open(good, "rb").read()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("trunc.onnx", "text.onnx", "empty.onnx"):
        with pytest.raises(OnnxImportError, match=rf"{name}: not (an|a valid) ONNX model"):
            load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(OnnxImportError, match="is a folder"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match="path"):
        load_model(3)


def test_missing_external_data(tmp_path):
    model = randomize(fastcnn.build_model("lenet5", seed=0))
    proto = fastcnn.onnx.to_onnx(model)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    assert load_model(tmp_path / "ext.onnx")        # with its data: fine
    (tmp_path / "ext.data").unlink()
    with pytest.raises(OnnxImportError, match=r"ext.onnx: external data missing.*ext.data"):
        load_model(tmp_path / "ext.onnx")


@pytest.mark.parametrize("opset", [29, 40])
def test_opset_out_of_range(opset, tmp_path):
    proto = _graph_model([helper.make_node("Relu", ["x"], ["y"])], (2, 3), None, {}, opset=17)
    proto.opset_import[0].version = opset
    onnx.save(proto, tmp_path / "o.onnx")
    with pytest.raises(OnnxImportError, match=rf"o.onnx: opset {opset} is outside the range "
                                              rf"fastcnn reads \(1 to 28\)"):
        load_model(tmp_path / "o.onnx")


def test_symbolic_sizes_need_input_shape(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["N", 3, "H", "W"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "s.onnx")
    with pytest.raises(OnnxImportError, match=r"symbolic size \(H\).*input_shape"):
        load_model(tmp_path / "s.onnx")
    assert load_model(tmp_path / "s.onnx", input_shape=[3, 5, 6]).input_shape == (3, 5, 6)


def test_cli_reads_onnx(tmp_path, capsys):
    from fastcnn.cli import main

    model = randomize(fastcnn.build_model("lenet5", seed=0))
    export(model, tmp_path / "m.onnx")
    assert main(["summary", str(tmp_path / "m.onnx")]) == 0
    assert "61,706" in capsys.readouterr().out
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = model.eval()(x).argmax(axis=1)
    assert [p["prediction"] for p in out["predictions"]] == list(expected)


def test_arithmetic_with_constants_becomes_elementwise_layers(tmp_path):
    """(x - mean) / std before a convolution, and 1 - x, as exporters write input
    normalization and such."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["normed"]),
             helper.make_node("Conv", ["normed", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Sub", ["one", "c"], ["y"])]
    proto = _graph_model(nodes, (3, 6, 7), None, {
        "mean": rng.uniform(0, 1, (1, 3, 1, 1)), "std": rng.uniform(0.5, 1, (3, 1, 1)),
        "w": W, "one": np.ones(1)})
    model = _agree_with_ort(proto, tmp_path, (3, 6, 7))
    kinds = [(type(l).__name__, getattr(l, "op", None)) for l in model.layers.values()]
    assert kinds == [("Elementwise", "sub"), ("Elementwise", "div"), ("Conv2d", "conv"),
                     ("Elementwise", "sub")]
    first = next(iter(model.layers.values()))
    assert first.trainable and first.shape == (3, 1, 1)          # an initializer: learnable


def test_damaged_files_give_clear_errors_or_a_model(tmp_path):
    """Bytes of a valid file changed at random: each load returns a model or raises a
    ValueError (OnnxImportError) naming the file; nothing else escapes, nothing crashes."""
    proto = fastcnn.onnx.to_onnx(fastcnn.build_model("lenet5", seed=0))
    del proto.metadata_props[:]
    data = proto.SerializeToString()
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.onnx"
    outcomes = set()
    for _ in range(20):
        damaged = bytearray(data)
        for _ in range(rng.integers(1, 8)):
            damaged[rng.integers(0, len(damaged))] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            load_model(path)
            outcomes.add("model")
        except OnnxImportError as exc:
            assert str(path) in str(exc)
            outcomes.add(type(exc).__name__)
    assert outcomes


def test_names_that_are_not_utf8(tmp_path):
    """A damaged file's node name may not decode (protobuf then hands over bytes): the layer
    is still named (this raised TypeError from re.sub once)."""
    proto = _graph_model([helper.make_node("Relu", ["x"], ["y"], name="QQQQ")], (2, 3), None, {})
    data = proto.SerializeToString().replace(b"QQQQ", b"Q\xff\xfeQ")
    (tmp_path / "n.onnx").write_bytes(data)
    model = load_model(tmp_path / "n.onnx")
    assert type(next(iter(model.layers.values()))).__name__ == "ReLU"


def test_gelu_erf_form_is_one_gelu(th, tmp_path):
    """Before opset 20 torch writes GELU as x * 0.5 * (1 + erf(x / sqrt 2)): one gelu layer."""
    module = th.nn.Sequential(th.nn.Conv1d(2, 4, 3), th.nn.GELU(), th.nn.Flatten(),
                              th.nn.Linear(4 * 6, 3)).eval()
    path = tmp_path / "gelu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        th.onnx.export(module, (th.randn(1, 2, 8),), str(path), dynamo=False, opset_version=17,
                       input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert "Erf" in [n.op_type for n in onnx.load(path).graph.node]
    model = load_model(path).eval()
    assert [type(l).__name__ for l in model.layers.values()] == ["Conv1d", "GELU", "Flatten",
                                                                  "Linear"]
    x = np.random.default_rng(0).standard_normal((3, 2, 8)).astype(np.float32)
    with th.no_grad():
        assert_close(model(x), module(th.from_numpy(x)).numpy())
