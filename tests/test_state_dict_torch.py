"""Model.load_state_dict accepts what torch's load_state_dict(strict=True) accepts, and refuses
what it refuses (naming the keys): for each normalization layer and the bundled networks, with
and without the integer num_batches_tracked buffers, numpy arrays or torch tensors, float64
arrays into a float32 model."""
import numpy as np
import pytest

import fastcnn
from compare_torch_loader import to_torch
from fastcnn.training import bundled_config


def bundled(name, seed):
    return fastcnn.build_model(dict(bundled_config(name), seed=seed))

# (fastcnn layer config, input shape, torch module factory)
NORMS = [
    ({"type": "batch_norm1d"}, (4,), lambda nn: nn.BatchNorm1d(4)),
    ({"type": "batch_norm2d"}, (3, 4, 4), lambda nn: nn.BatchNorm2d(3)),
    ({"type": "batch_norm3d"}, (2, 3, 3, 3), lambda nn: nn.BatchNorm3d(2)),
    ({"type": "batch_norm2d", "affine": False}, (3, 4, 4),
     lambda nn: nn.BatchNorm2d(3, affine=False)),
    ({"type": "instance_norm1d", "track_running_stats": True}, (2, 6),
     lambda nn: nn.InstanceNorm1d(2, track_running_stats=True)),
    ({"type": "instance_norm2d", "affine": True, "track_running_stats": True}, (3, 4, 4),
     lambda nn: nn.InstanceNorm2d(3, affine=True, track_running_stats=True)),
    ({"type": "instance_norm2d", "affine": True}, (3, 4, 4),
     lambda nn: nn.InstanceNorm2d(3, affine=True)),
    ({"type": "group_norm", "num_groups": 2}, (4, 3, 3), lambda nn: nn.GroupNorm(2, 4)),
    ({"type": "layer_norm", "normalized_shape": [4, 4]}, (3, 4, 4),
     lambda nn: nn.LayerNorm([4, 4])),
]


def _pair(th, config, shape, factory, dtype="float64"):
    model = fastcnn.build_model({"input_shape": list(shape), "dtype": dtype, "seed": 0,
                                 "layers": [dict(config)]})
    ref = th.nn.Sequential(factory(th.nn))
    return model, (ref.double() if dtype == "float64" else ref)


def _trained_torch_state(th, ref, shape, rng):
    """torch's state_dict after a few training steps: running stats and counts not at init."""
    ref.train()
    with th.no_grad():
        for p in ref.parameters():
            p.add_(th.tensor(rng.uniform(0.1, 0.5, p.shape), dtype=p.dtype))
        for _ in range(3):
            ref(th.tensor(rng.standard_normal((5,) + tuple(shape)) * 2 + 1,
                          dtype=next(iter(ref.state_dict().values())).dtype))
    ref.eval()
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def _variants(state):
    """name -> a state_dict as users make them from torch's: tensors, numpy arrays, the
    floats alone (the integer num_batches_tracked dropped), float64 arrays, the count of
    shape (1,) (older torch)."""
    numpy = {k: v.numpy() for k, v in state.items()}
    return {
        "torch tensors": dict(state),
        "numpy arrays": numpy,
        "floats only": {k: v for k, v in numpy.items() if v.dtype.kind == "f"},
        "float64 arrays": {k: v.astype(np.float64) for k, v in numpy.items()},
        "count of shape (1,)": {k: (v.reshape(1) if k.endswith("num_batches_tracked") else v)
                                for k, v in numpy.items()},
    }


def _torch_accepts(th, factory_model, state):
    try:
        factory_model.load_state_dict({k: th.as_tensor(np.asarray(v)) for k, v in state.items()},
                                      strict=True)
        return True, ""
    except RuntimeError as exc:
        return False, str(exc)


def _check_same_verdict_and_outputs(th, model, ref, state, shape, rng):
    torch_ok, torch_error = _torch_accepts(th, ref, state)
    if not torch_ok:
        with pytest.raises(ValueError, match="load_state_dict"):
            model.load_state_dict(state)
        return torch_error
    model.load_state_dict(state)
    model.eval()
    ref.eval()
    x = rng.standard_normal((2,) + tuple(shape))
    dtype = np.float64 if model.dtype == np.float64 else np.float32
    with th.no_grad():
        expected = ref(th.tensor(x.astype(dtype))).numpy()
    np.testing.assert_allclose(model(x.astype(dtype)), expected, rtol=1e-5, atol=1e-5)
    for key, value in state.items():       # what was given was loaded (counts: as torch keeps)
        np.testing.assert_allclose(model.state_dict()[key],
                                   ref.state_dict()[key].numpy().reshape(np.shape(
                                       model.state_dict()[key])))
    return ""


@pytest.mark.parametrize("config,shape,factory", NORMS,
                         ids=[f"{c['type']}-{i}" for i, (c, _, _) in enumerate(NORMS)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_norm_layers_load_what_torch_loads(th, config, shape, factory, dtype):
    rng = np.random.default_rng(1)
    model, ref = _pair(th, config, shape, factory, dtype)
    trained = _trained_torch_state(th, _pair(th, config, shape, factory, dtype)[1], shape, rng)
    for name, state in _variants(trained).items():
        fresh_model, fresh_ref = _pair(th, config, shape, factory, dtype)
        error = _check_same_verdict_and_outputs(th, fresh_model, fresh_ref, state, shape, rng)
        assert not error, f"{name}: torch refused: {error}"
    if not any(k.endswith("num_batches_tracked") for k in trained):
        return
    # the count a state_dict leaves out keeps the layer's own, as torch: 0 on a new model
    floats = _variants(trained)["floats only"]
    fresh_model, fresh_ref = _pair(th, config, shape, factory, dtype)
    fresh_model.load_state_dict(floats)
    fresh_ref.load_state_dict({k: th.as_tensor(v) for k, v in floats.items()})
    for key in trained:
        if key.endswith("num_batches_tracked"):
            assert int(fresh_model.state_dict()[key]) == int(fresh_ref.state_dict()[key]) == 0


@pytest.mark.parametrize("name", ["lenet5", "vgg_small", "resnet_small"])
def test_bundled_networks_load_what_torch_loads(th, name):
    rng = np.random.default_rng(2)
    model = bundled(name, 0)
    ref = to_torch(model, th)
    shape = tuple(model.input_shape)
    trained = _trained_torch_state(th, ref, shape, rng)
    counts = [k for k in trained if k.endswith("num_batches_tracked")]
    assert counts or name == "lenet5"
    for variant, state in _variants(trained).items():
        fresh = bundled(name, 1)
        error = _check_same_verdict_and_outputs(th, fresh, to_torch(fresh, th), state, shape,
                                                rng)
        assert not error, f"{variant}: torch refused: {error}"


def test_what_torch_refuses_is_refused_with_the_keys_named(th):
    """Missing weights (not counts), unexpected keys, wrong shapes: torch refuses each, and so
    does fastcnn, naming every key at once; nothing is copied."""
    model = bundled("vgg_small", 0)
    ref = to_torch(model, th)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    weight = next(k for k in state if k.endswith(".weight"))
    mean = next(k for k in state if k.endswith(".running_mean"))
    count = next(k for k in state if k.endswith(".num_batches_tracked"))
    bad = {k: v for k, v in state.items() if k not in (weight, count)}
    bad["head.extra"] = np.zeros(3)
    bad[mean] = np.zeros(7)
    assert not _torch_accepts(th, to_torch(model, th), bad)[0]
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    assert f"missing keys: {weight}" in message
    assert count not in message                     # a missing count is not a problem
    assert "unexpected keys: head.extra" in message
    assert f"{mean}: expected" in message and "got (7,)" in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    # each problem alone: torch refuses it too
    for broken in ({k: v for k, v in state.items() if k != weight},
                   dict(state, **{"head.extra": np.zeros(3)}),
                   dict(state, **{mean: np.zeros(7)})):
        assert not _torch_accepts(th, to_torch(model, th), broken)[0]
        with pytest.raises(ValueError, match="load_state_dict"):
            model.load_state_dict(broken)


def test_checkpoints_without_counts_still_load(tmp_path):
    """fastcnn's own checkpoints go through load_state_dict too: one saved before the count
    existed (or with the counts removed) loads, the counts at 0."""
    model = bundled("vgg_small", 0)
    state = {k: v for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    again = bundled("vgg_small", 1)
    again.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2,) + tuple(model.input_shape))
    np.testing.assert_array_equal(again.eval()(x), model.eval()(x))
