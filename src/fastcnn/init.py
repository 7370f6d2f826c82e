"""Weight initializers (registered by name), following the seeds' variance derivations.

Each initializer is ``fn(shape, rng, **options) -> ndarray(float64)``. Fans follow torch: for a
weight of shape (out, in, *kernel), ``fan_in = in * prod(kernel)`` and
``fan_out = out * prod(kernel)`` (a linear weight is (out, in)).

- xavier (Glorot): Var = gain^2 * 2 / (fan_in + fan_out); uniform on +-sqrt(3 Var).
- kaiming (He): Var = gain^2 / fan (fan_in keeps forward activations' variance, fan_out the
  gradients'); ReLU's gain is sqrt(2), so Var = 2 / fan_in.
- trunc_normal: a normal truncated at +-bound standard deviations, rescaled so that the *kept*
  values have the intended std (truncation at 2 sigma alone would shrink the variance to 0.774x).
"""
from __future__ import annotations

import math

import numpy as np

from fastcnn.registry import INITIALIZERS, register_initializer

__all__ = ["calculate_gain", "fans", "initialize", "resolve_init"]


def calculate_gain(nonlinearity: str = "relu", param: float | None = None) -> float:
    """torch.nn.init.calculate_gain: the std multiplier that keeps variance through a layer."""
    linear = ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
              "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r} (expected one of "
                     f"{', '.join(linear + ('tanh', 'relu', 'leaky_relu', 'selu'))})")


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape, as torch computes them."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan_in/fan_out need a weight with at least 2 axes, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape, mode):
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


@register_initializer("zeros")
def zeros(shape, rng):
    return np.zeros(shape)


@register_initializer("ones")
def ones(shape, rng):
    return np.ones(shape)


@register_initializer("constant")
def constant(shape, rng, value: float = 0.0):
    return np.full(shape, float(value))


@register_initializer("uniform")
def uniform(shape, rng, a: float = 0.0, b: float = 1.0):
    if not a < b:
        raise ValueError(f"uniform: need a < b, got a={a}, b={b}")
    return rng.uniform(a, b, size=shape)


@register_initializer("normal")
def normal(shape, rng, mean: float = 0.0, std: float = 1.0):
    if std < 0:
        raise ValueError(f"normal: std must be >= 0, got {std}")
    return rng.normal(mean, std, size=shape)


@register_initializer("xavier_uniform", aliases=("glorot_uniform",))
def xavier_uniform(shape, rng, gain: float = 1.0):
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


@register_initializer("xavier_normal", aliases=("glorot_normal",))
def xavier_normal(shape, rng, gain: float = 1.0):
    fan_in, fan_out = fans(shape)
    return rng.normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


@register_initializer("kaiming_uniform", aliases=("he_uniform",))
def kaiming_uniform(shape, rng, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "relu"):
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    bound = math.sqrt(3.0) * std
    return rng.uniform(-bound, bound, size=shape)


@register_initializer("kaiming_normal", aliases=("he_normal",))
def kaiming_normal(shape, rng, a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "relu"):
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return rng.normal(0.0, std, size=shape)


def _truncated_std_factor(bound: float) -> float:
    """std of a standard normal truncated to [-bound, bound]."""
    phi = math.exp(-0.5 * bound * bound) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1.0 - 2.0 * bound * phi / mass)


@register_initializer("trunc_normal", aliases=("truncated_normal",))
def trunc_normal(shape, rng, std: float | None = None, mean: float = 0.0, bound: float = 2.0,
                 mode: str = "fan_in", nonlinearity: str = "relu"):
    """Normal truncated at ``mean +- bound * sigma``, with sigma chosen so the result has
    standard deviation ``std`` (default: He's gain / sqrt(fan))."""
    if bound <= 0:
        raise ValueError(f"trunc_normal: bound must be > 0, got {bound}")
    if std is None:
        std = calculate_gain(nonlinearity) / math.sqrt(_fan(shape, mode))
    sigma = std / _truncated_std_factor(bound)
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > bound
    while bad.any():                      # rejection: redraw only what fell outside
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > bound
    return mean + sigma * out


@register_initializer("orthogonal")
def orthogonal(shape, rng, gain: float = 1.0):
    """Rows (or columns) orthonormal after flattening to (shape[0], prod(rest)), times gain."""
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))              # a uniform (Haar) draw, not QR's sign convention
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def resolve_init(spec, where: str):
    """A spec (a name, or a dict with "type" and options) -> (function, options)."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict) and "type" in spec:
        options = dict(spec)
        name = options.pop("type")
    else:
        raise ValueError(f"{where}: an initializer is a name or a dict with 'type', got {spec!r}")
    try:
        fn = INITIALIZERS.get(name)
    except KeyError as exc:
        raise ValueError(f"{where}: {exc.args[0]}") from None
    return fn, options


def initialize(spec, shape, rng, dtype, where: str = "init") -> np.ndarray:
    fn, options = resolve_init(spec, where)
    try:
        values = fn(tuple(shape), rng, **options)
    except TypeError as exc:
        raise ValueError(f"{where}: bad options {options} for initializer {spec!r}: {exc}") from None
    return np.ascontiguousarray(values, dtype=dtype)
