"""The Layer base class and Parameter.

A layer is built once the shape flowing into it is known (``build``), which is when it infers its
input size (in_channels, in_features, ...) and creates its parameters. ``forward`` computes the
output and, in train mode, saves what ``backward`` needs; ``backward`` takes dL/d(output),
*accumulates* dL/d(parameter) into each parameter's ``grad`` and returns dL/d(input).

Subclass it, register it with ``@fastcnn.register_layer("name")``, and it works in configs,
summaries, save/load and optimizers like a built-in layer. Constructor arguments are recorded
automatically, so ``to_config()`` needs no code in subclasses.
"""
from __future__ import annotations

import inspect

import numpy as np

from fastcnn.init import initialize

__all__ = ["Layer", "Parameter"]


class Parameter:
    """A trainable array and its gradient. ``name`` is the model-level key ("0.weight")."""

    __slots__ = ("name", "data", "grad", "weight_decay")

    def __init__(self, data: np.ndarray, name: str = "", weight_decay: bool = True):
        self.data = data
        self.grad = np.zeros_like(data)
        self.name = name
        # Whether "no decay on biases and norm parameters" style rules should treat it as a weight.
        self.weight_decay = weight_decay

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self):
        self.grad.fill(0)

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class _InitContext:
    """What the model gives a layer while it builds: dtype, random generator, model-wide init."""

    def __init__(self, dtype=np.float32, rng=None, defaults=None):
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.defaults = defaults or {}


class Layer:
    """Base class of every layer. See the module docstring for the contract."""

    #: How many inputs ``forward`` takes: 1, or None for merge layers (2 or more).
    num_inputs = 1
    #: True when forward returns a new array that this layer does not keep (for its backward)
    #: and that is no view of its input: the next layer may then overwrite it in place. False by
    #: default, so that a user's layer is never surprised.
    output_is_private = False
    #: Activations this layer can apply to its own output in the pass that computes it: a model
    #: then fuses a following ReLU layer into it (see ``Model.set_activation_fusion``).
    fusable_activations = ()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError:
            bound = None          # __init__ raises the proper error itself
        if bound is not None:
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(arguments)))         # self
            extra = arguments.pop("kwargs", None)
            if isinstance(extra, dict):
                arguments.update(extra)
            for key, value in arguments.items():
                _check_config_value(cls.__name__, key, value)
            self._init_args = arguments
        else:
            self._init_args = {}
        self.training = True
        self.name = None
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._optional_buffers: set[str] = set()
        self._saved = None
        self._init_context = _InitContext()
        # Set by the model: this layer's input is read by nobody else, so it may be overwritten.
        self.may_overwrite_input = False
        # Set by the model: the activation (one of fusable_activations) this layer applies to
        # its output in place of the activation layer that follows it.
        self.fused_activation = None
        return self

    # -- building ---------------------------------------------------------------------------
    @property
    def type_name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def where(self) -> str:
        """How error messages name this layer: its place in the config when built from one."""
        placed = self.__dict__.get("_where")
        if placed:
            return placed
        if self.name is None:
            return self.type_name
        return f"layer {self.name!r} ({self.type_name})"

    def build(self, input_shape):
        """Create parameters for a per-sample ``input_shape`` (batch excluded); return the
        per-sample output shape. The default keeps the shape and has no parameters."""
        return tuple(input_shape)

    def probe_output_shape(self, input_shape):
        """The per-sample output shape, found by running ``forward`` in eval mode on one zero
        sample: for parameter-free layers whose output size rule lives in the functional op
        (pooling, resampling), so that shape inference and forward can never disagree."""
        mode = self.training
        self.training = False
        try:
            x = np.zeros((1,) + tuple(input_shape), dtype=self._init_context.dtype)
            return tuple(self.forward(x).shape[1:])
        finally:
            self.training = mode

    def _build(self, input_shape, context: _InitContext | None = None):
        if context is not None:
            self._init_context = context
        out = self.build(input_shape)
        self.input_shape = input_shape
        self.output_shape = tuple(int(s) for s in out)
        self.built = True
        return self.output_shape

    def input_channels(self, input_shape, ranks=None, declared=None, name="in_channels") -> int:
        """C of a per-sample input (C, *spatial), after checking its number of axes against
        ``ranks`` and C against a count the config ``declared`` under ``name``."""
        shape = tuple(input_shape)
        if not shape or (ranks is not None and len(shape) not in ranks):
            want = " or ".join(str(r) for r in ranks) if ranks else "at least 1"
            raise ValueError(f"{self.where()}: expects a per-sample input (C, *spatial) with "
                             f"{want} axes, got shape {shape}")
        c = shape[0]
        if declared is not None and declared != c:
            raise ValueError(f"{self.where()}: {name}={declared} but the input has {c} channels "
                             f"(shape {shape})")
        return c

    def add_parameter(self, name: str, shape, default_init, *, init=None,
                      use_model_default: bool = True, weight_decay: bool = True) -> Parameter:
        """Create, initialize and register a parameter.

        The initializer is, by precedence: ``init`` (the layer's own ``weight_init`` /
        ``bias_init`` argument), the model-wide ``init[name]``, then ``default_init``.
        """
        ctx = self._init_context
        spec = init
        if spec is None and use_model_default:
            spec = ctx.defaults.get(name)
        if spec is None:
            spec = default_init
        data = initialize(spec, shape, ctx.rng, ctx.dtype, where=f"{self.where()}: {name}")
        param = Parameter(data, name, weight_decay=weight_decay)
        self._params[name] = param
        return param

    def add_buffer(self, name: str, value: np.ndarray, optional: bool = False) -> np.ndarray:
        """Register a non-trainable array saved in the state_dict (running statistics...).
        ``optional``: a state_dict may leave it out, and loading one that does keeps its value
        (as torch's norm layers do for ``num_batches_tracked``, a buffer older checkpoints and
        float-only conversions lack)."""
        self._buffers[name] = value
        if optional:
            self._optional_buffers.add(name)
        return value

    def optional_buffers(self) -> frozenset[str]:
        """Names of the buffers a state_dict may omit (see add_buffer)."""
        return frozenset(self._optional_buffers)

    # -- running ----------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *inputs):
        return self.forward(*inputs)

    def save_for_backward(self, *values):
        """Keep what backward needs, in train mode only (eval mode keeps nothing)."""
        if self.training:
            self._saved = values

    def saved(self):
        """What forward saved; consumed, so a second backward is an error, not a silent reuse."""
        if self._saved is None:
            mode = "train" if self.training else "eval"
            raise RuntimeError(
                f"{self.where()}: backward() needs a forward() in train mode first (model is in "
                f"{mode} mode{'; call model.train()' if mode == 'eval' else ''}), and can run only "
                f"once per forward()")
        values, self._saved = self._saved, None
        return values

    def train(self, mode: bool = True):
        self.training = bool(mode)
        if not mode:
            self._saved = None
        return self

    def eval(self):
        return self.train(False)

    # -- state ------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Parameter]:
        return dict(self._params)

    def buffers(self) -> dict[str, np.ndarray]:
        return dict(self._buffers)

    def to_config(self) -> dict:
        """``{"type": name, **constructor arguments}``: build_model re-creates the layer."""
        config = {"type": self.type_name}
        for key, value in self._init_args.items():
            config[key] = _jsonable(value)
        return config

    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, per sample, of one forward pass (0 if negligible)."""
        return 0

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._init_args.items())

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _check_config_value(layer, key, value, path=None):
    """The constructor arguments a layer records become its config (to_config, save): a value
    JSON cannot hold is refused when the layer is made, naming it, rather than failing at save
    time (as Keras 3 checks its layers' arguments)."""
    path = key if path is None else path
    if value is None or isinstance(value, (bool, int, float, str, np.bool_, np.integer,
                                           np.floating)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_config_value(layer, key, item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{layer}: argument {path!r} has a key {k!r}: config dicts "
                                f"need string keys")
            _check_config_value(layer, key, item, f"{path}[{k!r}]")
        return
    raise TypeError(
        f"{layer}: argument {path!r} is a {type(value).__name__}, which a config cannot hold "
        f"(to_config and save store numbers, strings, booleans, None, and lists and dicts of "
        f"them); pass a name or numbers instead (an initializer's name, a shape as a list), or "
        f"set arrays in build() or on the layer after it is made")


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
