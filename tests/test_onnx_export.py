"""fastcnn.onnx.export: onnxruntime runs the exported graph and gives fastcnn's eval outputs
(atol 1e-5) for every built-in layer, every bundled network and random add/concat graphs, at
batch 1 and 3, at the opsets where a mapping changes (13, 17, 20, 21)."""
import json
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn.onnx import OnnxExportError, export, to_onnx
from onnx_helpers import ort_session, randomize, reference, run_ort

onnx = reference("onnx")

TOL = dict(rtol=1e-5, atol=1e-5)


def assert_close(got, expected):
    """atol 1e-5 in units of the output's scale: on unet_small (outputs up to 12.7) both
    onnxruntime and fastcnn are 1.1e-5 away from the float64 forward, float32 rounding over
    18 layers, so a plain 1e-5 would test the rounding, not the export."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)

# (layers, per-sample input shape): every registered built-in layer, and each argument that
# changes its ONNX form
LAYER_CASES = {
    "conv1d": ([{"type": "conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2,
                 "padding": 1}], (3, 11)),
    "conv2d_same_dilated": ([{"type": "conv2d", "out_channels": 4, "kernel_size": 4,
                              "padding": "same", "dilation": 2}], (3, 9, 10)),
    "conv2d_groups_nobias": ([{"type": "conv2d", "out_channels": 4, "kernel_size": 3,
                               "groups": 2, "bias": False, "padding": "valid"}], (4, 7, 7)),
    "conv2d_depthwise": ([{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "groups": 4,
                           "stride": 2, "padding": 1}], (4, 9, 9)),
    "conv3d": ([{"type": "conv3d", "out_channels": 2, "kernel_size": 2, "padding": 1}],
               (2, 4, 5, 4)),
    "conv_transpose1d": ([{"type": "conv_transpose1d", "out_channels": 3, "kernel_size": 3,
                           "stride": 2}], (2, 6)),
    "conv_transpose2d": ([{"type": "conv_transpose2d", "out_channels": 4, "kernel_size": 3,
                           "stride": 2, "padding": 1, "output_padding": 1, "groups": 2}],
                         (4, 5, 6)),
    "conv_transpose3d": ([{"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 2,
                           "stride": 2, "dilation": 1, "bias": False}], (2, 3, 3, 3)),
    "linear": ([{"type": "flatten"}, {"type": "linear", "out_features": 5}], (2, 3, 4)),
    "linear_nobias_3d": ([{"type": "linear", "out_features": 5, "bias": False}], (3, 4)),
    "linear_on_2d": ([{"type": "linear", "out_features": 5}], (3, 4)),
    "dropouts_identity": ([{"type": "dropout", "p": 0.3}, {"type": "dropout2d"},
                           {"type": "identity"}, {"type": "relu"}], (2, 4, 4)),
    "ends_in_dropout": ([{"type": "relu"}, {"type": "dropout"}], (2, 4)),
    "activations": ([{"type": "leaky_relu", "negative_slope": 0.2}, {"type": "elu", "alpha": 0.7},
                     {"type": "selu"}, {"type": "sigmoid"}, {"type": "tanh"}], (3, 5)),
    "gelu": ([{"type": "gelu"}], (3, 5)),
    "hardtanh_relu6": ([{"type": "elementwise", "op": "mul", "shape": [1], "trainable": False},
                        {"type": "hardtanh", "min_val": -0.5, "max_val": 2.0}, {"type": "relu6"}],
                       (3, 5)),
    "gelu_tanh": ([{"type": "gelu", "approximate": "tanh"}], (3, 5)),
    "softmaxes": ([{"type": "softmax", "dim": 1}, {"type": "log_softmax", "dim": -1}], (3, 4, 5)),
    "prelu": ([{"type": "prelu", "num_parameters": 3}, {"type": "prelu"}], (3, 4, 5)),
    "batch_norm1d_features": ([{"type": "batch_norm1d"}], (5,)),
    "batch_norm1d": ([{"type": "batch_norm1d", "momentum": 0.3}], (3, 6)),
    "batch_norm2d": ([{"type": "batch_norm2d", "eps": 1e-3}], (3, 4, 5)),
    "batch_norm3d_no_affine": ([{"type": "batch_norm3d", "affine": False}], (2, 3, 3, 4)),
    "batch_norm2d_batch_stats": ([{"type": "batch_norm2d", "track_running_stats": False}],
                                 (3, 4, 5)),
    "layer_norm": ([{"type": "layer_norm", "normalized_shape": [4, 5]}], (3, 4, 5)),
    "layer_norm_no_affine": ([{"type": "layer_norm", "elementwise_affine": False}], (3, 4)),
    "group_norm": ([{"type": "group_norm", "num_groups": 2}], (4, 3, 5)),
    "group_norm_no_affine": ([{"type": "group_norm", "num_groups": 3, "affine": False}],
                             (6, 5)),
    "instance_norm1d": ([{"type": "instance_norm1d"}], (3, 7)),
    "instance_norm2d_affine": ([{"type": "instance_norm2d", "affine": True}], (3, 4, 5)),
    "instance_norm3d": ([{"type": "instance_norm3d"}], (2, 3, 4, 3)),
    "instance_norm2d_running": ([{"type": "instance_norm2d", "track_running_stats": True,
                                  "affine": True}], (3, 4, 5)),
    "max_pools": ([{"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1,
                    "ceil_mode": True}, {"type": "max_pool2d", "kernel_size": 2,
                                         "dilation": 2}], (2, 11, 12)),
    "max_pool1d": ([{"type": "max_pool1d", "kernel_size": 3, "stride": 2}], (2, 9)),
    "max_pool3d": ([{"type": "max_pool3d", "kernel_size": 2}], (2, 4, 4, 5)),
    "avg_pool2d": ([{"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1,
                     "count_include_pad": False}], (2, 9, 10)),
    "avg_pool2d_ceil": ([{"type": "avg_pool2d", "kernel_size": 3, "stride": 2,
                          "ceil_mode": True}], (2, 10, 10)),
    "avg_pool2d_divisor": ([{"type": "avg_pool2d", "kernel_size": 2, "padding": 1,
                             "divisor_override": 3}], (2, 6, 6)),
    "avg_pool1d": ([{"type": "avg_pool1d", "kernel_size": 2}], (2, 9)),
    "avg_pool3d": ([{"type": "avg_pool3d", "kernel_size": 2, "padding": 1}], (2, 4, 4, 4)),
    "adaptive_avg_pool1d_uneven": ([{"type": "adaptive_avg_pool1d", "output_size": 3}], (2, 7)),
    "adaptive_avg_pool2d_even": ([{"type": "adaptive_avg_pool2d", "output_size": [2, 3]}],
                                 (2, 4, 6)),
    "adaptive_avg_pool2d_uneven": ([{"type": "adaptive_avg_pool2d", "output_size": [3, 4]}],
                                   (2, 7, 5)),
    "adaptive_avg_pool2d_global": ([{"type": "adaptive_avg_pool2d", "output_size": 1}],
                                   (2, 5, 5)),
    "adaptive_max_pool2d": ([{"type": "adaptive_max_pool2d", "output_size": [2, 3]}],
                            (2, 4, 6)),
    "adaptive_max_pool2d_uneven": ([{"type": "adaptive_max_pool2d", "output_size": [3, 4]}],
                                   (2, 7, 5)),
    "adaptive_max_pool2d_global": ([{"type": "adaptive_max_pool2d", "output_size": 1}],
                                   (2, 5, 5)),
    "global_avg_pool2d": ([{"type": "global_avg_pool2d"}, {"type": "flatten"}], (3, 4, 5)),
    "upsample_nearest": ([{"type": "upsample", "scale_factor": 2}], (2, 3, 4)),
    "upsample_nearest_size": ([{"type": "upsample", "size": [5, 7]}], (2, 3, 4)),
    "upsample_nearest_exact": ([{"type": "upsample", "size": [5, 7], "mode": "nearest-exact"}],
                               (2, 3, 4)),
    "upsample_bilinear": ([{"type": "upsample", "scale_factor": 2, "mode": "bilinear"}],
                          (2, 3, 4)),
    "upsample_bilinear_corners": ([{"type": "upsample", "size": [5, 7], "mode": "bilinear",
                                    "align_corners": True}], (2, 3, 4)),
    "upsample_linear": ([{"type": "upsample", "scale_factor": 1.5, "mode": "linear"}], (2, 6)),
    "upsample_area": ([{"type": "upsample", "size": [3, 2], "mode": "area"}], (2, 7, 5)),
    "reshape": ([{"type": "reshape", "shape": [4, -1, 2]}], (2, 3, 4)),
    "pad_constant_crop": ([{"type": "pad", "pad": [1, 2, -1, 0], "value": 0.5}], (2, 4, 5)),
    "pad_reflect": ([{"type": "pad", "pad": [1, 2, 2, 0], "mode": "reflect"}], (2, 4, 5)),
    "pad_replicate": ([{"type": "pad", "pad": [3, 1], "mode": "replicate"}], (2, 4)),
    "elementwise": ([{"type": "elementwise", "op": "sub", "shape": [3, 1, 1]},
                     {"type": "elementwise", "op": "div", "shape": [4, 5], "reverse": True},
                     {"type": "elementwise", "op": "mul", "trainable": False},
                     {"type": "elementwise", "op": "add", "shape": [5]}], (3, 4, 5)),
    "flatten_middle": ([{"type": "flatten", "start_dim": 2}], (2, 3, 4)),
    "add_concat": ([{"type": "conv2d", "name": "a", "out_channels": 3, "kernel_size": 1},
                    {"type": "relu", "name": "b"},
                    {"type": "add", "name": "sum", "inputs": ["a", "b", "input"]},
                    {"type": "concat", "name": "cat", "inputs": ["sum", "input"]}], (3, 4, 4)),
}

OPSETS = (13, 17, 20, 21)


def _model(layers, shape, dtype="float32"):
    model = fastcnn.build_model({"name": "case", "input_shape": list(shape), "seed": 0,
                                 "dtype": dtype, "layers": layers})
    return randomize(model).eval()


def _check_against_ort(model, opset, batches=(1, 3)):
    proto = to_onnx(model, opset)
    onnx.checker.check_model(proto, full_check=True)
    session = ort_session(proto.SerializeToString())
    rng = np.random.default_rng(opset)
    for n in batches:
        x = rng.standard_normal((n,) + model.input_shape).astype(model.dtype)
        expected = model(x)
        got = run_ort(session, x)
        if isinstance(expected, tuple):
            for e, g in zip(expected, got):
                assert_close(g, e)
        else:
            assert_close(got, expected)
    return proto


def test_every_builtin_layer_has_a_case():
    covered = {spec["type"] for layers, _ in LAYER_CASES.values() for spec in layers}
    from fastcnn.registry import LAYERS
    builtin = {name for name in LAYERS.names()
               if LAYERS.get(name).__module__.startswith("fastcnn.layers")
               and LAYERS.canonical(name) == name}
    assert builtin <= covered, sorted(builtin - covered)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_onnxruntime(case, opset):
    layers, shape = LAYER_CASES[case]
    _check_against_ort(_model(layers, shape), opset)


def test_float64_model_exports_as_double():
    # (onnxruntime's CPU kernels of Conv and the norms are float32 only)
    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 7}, {"type": "relu"},
              {"type": "linear", "out_features": 3}, {"type": "tanh"}]
    model = _model(layers, (2, 6, 6), dtype="float64")
    proto = _check_against_ort(model, 17)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


@pytest.mark.parametrize("name", ["lenet5", "vgg_small", "resnet_small", "unet_small"])
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_bundled_network_matches_onnxruntime(name, opset):
    model = randomize(fastcnn.build_model(name, seed=0)).eval()
    _check_against_ort(model, opset)


def _random_graph(seed):
    """A random DAG of convolutions, ReLUs, adds (2-3 inputs) and concats, all at one spatial
    size, with two outputs."""
    rng = np.random.default_rng(seed)
    layers = [{"type": "conv2d", "name": "n0", "out_channels": 4, "kernel_size": 3,
               "padding": 1, "inputs": ["input"]}]
    channels = {"input": 3, "n0": 4}
    for i in range(1, 12):
        name = f"n{i}"
        names = list(channels)
        kind = rng.choice(["conv", "relu", "add", "concat"])
        if kind == "add":
            first = str(rng.choice(names))
            same = [n for n in names if channels[n] == channels[first] and n != first]
            if same:
                picks = [first] + list(rng.choice(same, size=min(len(same), rng.integers(1, 3)),
                                                  replace=False))
                layers.append({"type": "add", "name": name, "inputs": [str(p) for p in picks]})
                channels[name] = channels[first]
                continue
            kind = "conv"
        if kind == "concat":
            picks = [str(p) for p in rng.choice(names, size=2, replace=False)]
            layers.append({"type": "concat", "name": name, "inputs": picks})
            channels[name] = sum(channels[p] for p in picks)
        elif kind == "relu":
            source = str(rng.choice(names[1:]))
            layers.append({"type": "relu", "name": name, "inputs": [source]})
            channels[name] = channels[source]
        else:
            source = str(rng.choice(names))
            out = int(rng.choice([channels[source], 4]))
            layers.append({"type": "conv2d", "name": name, "inputs": [source],
                           "out_channels": out, "kernel_size": 3, "padding": 1})
            channels[name] = out
    return {"name": f"random{seed}", "input_shape": [3, 6, 6], "seed": seed, "layers": layers,
            "outputs": [layers[-1]["name"], layers[-3]["name"]]}


@pytest.mark.parametrize("seed", range(6))
def test_random_add_concat_graph_matches_onnxruntime(seed):
    model = randomize(fastcnn.build_model(_random_graph(seed)), seed).eval()
    _check_against_ort(model, 17)


def test_graph_layout(tmp_path):
    model = randomize(fastcnn.build_model("resnet_small", seed=0))
    path = export(model, tmp_path / "r.onnx")
    proto = onnx.load(path)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["input"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    state = model.state_dict()
    floats = {k for k, v in state.items() if v.dtype.kind == "f"}
    assert {i.name for i in graph.initializer} == floats
    for init in graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), state[init.name])
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["fastcnn.config"]) == model.to_config()
    counters = json.loads(props["fastcnn.counters"])
    assert set(counters) == {k for k in state if k.endswith("num_batches_tracked")}
    assert proto.opset_import[0].version == 17
    assert not any(a.name == "auto_pad" for n in graph.node for a in n.attribute)
    assert not any(n.op_type == "Dropout" for n in graph.node)


def test_eval_forward_is_exported_whatever_the_mode():
    model = randomize(fastcnn.build_model("vgg_small", seed=0)).train()
    proto = to_onnx(model)
    assert model.training               # export does not change the model's mode
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(ort_session(proto.SerializeToString()), x),
                               model.eval()(x), **TOL)


@pytest.mark.parametrize("opset", [12, 22, "17", 17.0, True, None])
def test_opset_out_of_range(opset, tmp_path):
    model = fastcnn.build_model("lenet5")
    with pytest.raises(ValueError, match="opset must be an int from 13 to 21"):
        export(model, tmp_path / "m.onnx", opset=opset)


def test_bad_model_and_path(tmp_path):
    with pytest.raises(TypeError, match="fastcnn.Model"):
        export({"layers": []}, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="path"):
        export(fastcnn.build_model("lenet5"), 3)


class _Doubler(fastcnn.Layer):
    def forward(self, x):
        return x * 2


def _plugin_model(cls, name):
    fastcnn.register_layer(name)(cls)
    return fastcnn.build_model({"input_shape": [2, 3], "layers": [
        {"type": "relu"}, {"type": name}, {"type": "sigmoid"}]})


def test_layer_without_mapping_is_named_and_nothing_is_written(tmp_path):
    model = _plugin_model(type("Doubler", (_Doubler,), {}), "test_onnx_doubler")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(OnnxExportError, match=r"layers\[1\].*'1' \(test_onnx_doubler\).*"
                                              r"export_onnx"):
        export(model, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]     # no temp file left


def test_layer_export_hook(tmp_path):
    def export_onnx(self, builder, inputs):
        return builder.node("Mul", [inputs[0], builder.constant(2.0, "two")], output=builder.out)

    model = _plugin_model(type("HookedDoubler", (_Doubler,), {"export_onnx": export_onnx}),
                          "test_onnx_hooked_doubler")
    path = export(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(ort_session(str(path)), x), model(x), **TOL)


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastcnn\[onnx\]'"):
        to_onnx(fastcnn.build_model("lenet5"))


def test_cli_export(tmp_path, capsys):
    from fastcnn.cli import main

    model = randomize(fastcnn.build_model("lenet5", seed=0)).eval()
    fastcnn.save(model, tmp_path / "m.fcnn")
    assert main(["export", str(tmp_path / "m.fcnn"), str(tmp_path / "m.onnx"),
                 "--opset", "13"]) == 0
    assert "m.onnx" in capsys.readouterr().out
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == 13
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(run_ort(ort_session(str(tmp_path / "m.onnx")), x), model(x),
                               **TOL)
    assert main(["export", str(tmp_path / "m.fcnn"), str(tmp_path / "x.onnx"),
                 "--opset", "9"]) == 2
    assert "opset must be" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
