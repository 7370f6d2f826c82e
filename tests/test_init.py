"""Initializers: the variances the seeds derive, determinism, errors."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import init

SHAPE = (256, 128, 3, 3)              # fan_in 1152, fan_out 2304
FAN_IN, FAN_OUT = 128 * 9, 256 * 9


@pytest.mark.parametrize("name,options,std", [
    ("xavier_uniform", {}, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("xavier_normal", {"gain": 2.0}, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("kaiming_uniform", {}, math.sqrt(2 / FAN_IN)),
    ("kaiming_normal", {"mode": "fan_out"}, math.sqrt(2 / FAN_OUT)),
    ("kaiming_normal", {"nonlinearity": "leaky_relu", "a": 0.2}, math.sqrt(2 / (1.04 * FAN_IN))),
    ("trunc_normal", {}, math.sqrt(2 / FAN_IN)),
    ("trunc_normal", {"std": 0.02}, 0.02),
    ("normal", {"std": 0.5}, 0.5),
])
def test_standard_deviation(name, options, std):
    w = init.initialize({"type": name, **options}, SHAPE, np.random.default_rng(0), np.float64)
    assert w.shape == SHAPE and w.dtype == np.float64
    assert abs(w.mean()) < 0.02 * std + 1e-4
    assert w.std() == pytest.approx(std, rel=0.01)


def test_trunc_normal_is_truncated():
    w = init.initialize({"type": "trunc_normal", "std": 1.0, "bound": 2.0}, (100000,),
                        np.random.default_rng(0), np.float64)
    sigma = 1.0 / init._truncated_std_factor(2.0)
    assert np.abs(w).max() <= 2.0 * sigma
    assert w.std() == pytest.approx(1.0, rel=0.01)


def test_orthogonal():
    for shape in [(6, 10), (10, 6), (4, 2, 3, 3)]:
        w = init.initialize({"type": "orthogonal", "gain": 2.0}, shape, np.random.default_rng(0),
                            np.float64).reshape(shape[0], -1)
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        np.testing.assert_allclose(small, 4 * np.eye(small.shape[0]), atol=1e-12)


def test_constant_initializers_and_fans():
    rng = np.random.default_rng(0)
    assert (init.initialize("zeros", (2, 3), rng, np.float32) == 0).all()
    assert (init.initialize("ones", (2, 3), rng, np.float32) == 1).all()
    assert (init.initialize({"type": "constant", "value": 0.5}, (2,), rng, np.float32) == 0.5).all()
    assert init.fans((8, 4, 3, 3)) == (36, 72)
    assert init.fans((8, 4)) == (4, 8)


def test_gains_match_torch(th):
    for nl, param in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("selu", None),
                      ("linear", None), ("sigmoid", None)]:
        assert init.calculate_gain(nl, param) == pytest.approx(th.nn.init.calculate_gain(nl, param))


def test_seeded_build_is_deterministic_and_init_precedence():
    config = {"input_shape": [3, 8, 8], "seed": 7,
              "init": {"weight": {"type": "normal", "std": 0.5}, "bias": "ones"},
              "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3},
                         {"type": "conv2d", "out_channels": 4, "kernel_size": 3,
                          "weight_init": "zeros", "bias_init": {"type": "constant", "value": 2}}]}
    a, b = fastcnn.build_model(config), fastcnn.build_model(config)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb)
    sd = a.state_dict()
    assert sd["0.weight"].std() == pytest.approx(0.5, rel=0.2)
    assert (sd["0.bias"] == 1).all() and (sd["1.weight"] == 0).all() and (sd["1.bias"] == 2).all()
    assert not np.array_equal(fastcnn.build_model(config, seed=8).state_dict()["0.weight"],
                              sd["0.weight"])


@pytest.mark.parametrize("spec,match", [
    ("kaiming_normall", "unknown initializer 'kaiming_normall'; did you mean 'kaiming_normal'"),
    ({"type": "normal", "sdt": 1.0}, "bad options"),
    ({"std": 1.0}, "an initializer is a name or a dict with 'type'"),
    ({"type": "kaiming_normal", "mode": "fan_avg"}, "mode must be 'fan_in' or 'fan_out'"),
])
def test_bad_specs(spec, match):
    config = {"input_shape": [3, 8, 8],
              "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "weight_init": spec}]}
    with pytest.raises(ValueError, match=r"layers\[0\] \(conv2d\): .*" + match):
        fastcnn.build_model(config)
