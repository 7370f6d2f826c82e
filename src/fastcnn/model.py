"""Model: a graph of layers built from a config dict (or a .json / .yaml file).

Config (README.md, "A model from a dict", lists every key)::

    {"name": "lenet5", "input_shape": [1, 28, 28], "dtype": "float32", "seed": 0,
     "init": {"weight": "kaiming_normal", "bias": "zeros"},
     "layers": [{"type": "conv2d", "out_channels": 6, "kernel_size": 5, "padding": 2}, ...],
     "outputs": ["logits"]}

A layer's input is the previous layer's output unless it says ``"inputs": [...]`` (``"input"`` is
the model input); layers without a ``name`` are named by their index, so a sequential model's
state_dict keys are those of the same ``torch.nn.Sequential``. Layers may only refer to layers
above them, which rules out cycles by construction.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from importlib import resources

import numpy as np

from fastcnn._threads import single_threaded_blas
from fastcnn.functional._activation import _add
from fastcnn.layers.base import Layer, _InitContext
from fastcnn.registry import LAYERS, ConfigError, strip_prefix, suggest

__all__ = ["Model", "build_model", "load_config"]

_TOP_KEYS = ("name", "input_shape", "dtype", "init", "seed", "layers", "outputs",
             "preprocessing")
_LAYER_KEYS = ("type", "name", "inputs")
_DTYPES = ("float32", "float64")


def _check_preprocessing(value, input_shape):
    """``{"mean": [...], "std": [...]}``, one number per input channel (std >= 0), or None."""
    if value is None:
        return None
    channels = input_shape[0] if input_shape else 1
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ConfigError(f"config: preprocessing must be {{'mean': [...], 'std': [...]}}, got "
                          f"{value!r}")
    out = {}
    for key in ("mean", "std"):
        numbers = np.asarray(value[key], dtype=np.float64).reshape(-1)
        if numbers.size != channels or not np.isfinite(numbers).all():
            raise ConfigError(f"config: preprocessing.{key} must hold {channels} finite numbers "
                              f"(one per input channel), got {value[key]!r}")
        out[key] = tuple(float(v) for v in numbers)
    if min(out["std"]) < 0:
        raise ConfigError(f"config: preprocessing.std must be >= 0, got {value['std']!r}")
    return out


def bundled_config(name: str) -> dict:
    """A config shipped in ``fastcnn/configs`` ("lenet5", "mnist_lenet5", "resnet_small", ...)."""
    base = resources.files("fastcnn") / "configs"
    path = base / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no bundled config {name!r} (bundled: {', '.join(bundled_names())})")
    return json.loads(path.read_text(encoding="utf-8"))


def bundled_names() -> list[str]:
    base = resources.files("fastcnn") / "configs"
    return sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".json"))


def load_config(config):
    """A config dict from a dict, a path to a .json / .yaml / .yml file, or the name of a
    bundled config ("resnet_small")."""
    if isinstance(config, dict):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.exists(path):
            if isinstance(config, str) and config in bundled_names():
                return bundled_config(config)
            from fastcnn.registry import suggest
            raise FileNotFoundError(f"config file not found: {path} (nor a bundled config: "
                                    f"{', '.join(bundled_names())})"
                                    f"{suggest(path, bundled_names())}")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a config (a .json or .yaml text file); a checkpoint "
                              f"(.fcnn) is read with fastcnn.load") from None
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ImportError(f"reading {path} needs PyYAML: pip install 'fastcnn[yaml]'") from None
            data = yaml.safe_load(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping, got {type(data).__name__}")
        return data
    raise TypeError(f"build_model: config must be a dict or a path, got {type(config).__name__}")


class _Node:
    __slots__ = ("name", "layer", "inputs", "where")

    def __init__(self, name, layer, inputs, where):
        self.name, self.layer, self.inputs, self.where = name, layer, inputs, where


def build_model(config, *, seed=None) -> "Model":
    """Build a :class:`Model` from a config dict or a .json / .yaml path (see module doc)."""
    config = load_config(config)
    for key in config:
        if key not in _TOP_KEYS:
            raise ConfigError(f"config: unknown key {key!r}{suggest(key, _TOP_KEYS)} "
                              f"(keys: {', '.join(_TOP_KEYS)})")
    shape = config.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or not shape or
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(f"config: input_shape must be a non-empty list of positive ints (the "
                          f"per-sample shape, batch excluded), got {shape!r}")
    dtype = config.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ConfigError(f"config: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    init = config.get("init", {}) or {}
    if not isinstance(init, dict):
        raise ConfigError(f"config: init must map parameter names to initializers, e.g. "
                          f"{{'weight': 'kaiming_normal'}}, got {init!r}")
    seed = config.get("seed") if seed is None else seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"config: seed must be an int, got {seed!r}")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"config: layers must be a non-empty list of layer dicts, got {layers!r}")

    context = _InitContext(np.dtype(dtype), np.random.default_rng(seed), init)
    shapes = {"input": tuple(shape)}
    nodes = []
    previous = "input"
    for i, spec in enumerate(layers):
        where = f"layers[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: a layer is a dict with a 'type', got {spec!r}")
        layer = LAYERS.build(spec, where=where, reserved=_LAYER_KEYS)
        if not isinstance(layer, Layer):
            raise ConfigError(f"{where}: {spec['type']!r} is not a fastcnn.Layer")
        type_name = spec["type"]
        cls = type(layer)
        where = f"layers[{i}] ({type_name})"
        prefixes = (layer.where(), LAYERS.canonical(type_name),
                    getattr(cls, "registered_name", ""), type_name)
        name = spec.get("name", str(i))
        if not isinstance(name, str) or not name or "." in name or name == "input":
            raise ConfigError(f"{where}: name must be a non-empty string without '.' and not "
                              f"'input', got {name!r}")
        if name in shapes:
            raise ConfigError(f"{where}: duplicate layer name {name!r}")
        inputs = spec.get("inputs", [previous])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(n, str) for n in inputs):
            raise ConfigError(f"{where}: inputs must be a list of layer names, got {inputs!r}")
        for ref in inputs:
            if ref not in shapes:
                later = any(isinstance(s, dict) and s.get("name") == ref for s in layers[i:])
                why = (" (a layer can only take the outputs of layers above it: no cycles or "
                       "forward references)" if later else suggest(ref, shapes))
                raise ConfigError(f"{where}: unknown input {ref!r}{why}")
        many = getattr(cls, "num_inputs", 1) is None
        if many and len(inputs) < 2:
            raise ConfigError(f"{where}: a merge layer needs at least 2 inputs, got {inputs}")
        if not many and len(inputs) != 1:
            raise ConfigError(f"{where}: takes exactly 1 input, got {len(inputs)}: {inputs}")
        layer.name = name
        layer._where = where
        in_shapes = [shapes[n] for n in inputs]
        try:
            out_shape = layer._build(in_shapes if many else in_shapes[0], context)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{where}: {strip_prefix(str(exc), prefixes)}") from None
        shapes[name] = out_shape
        nodes.append(_Node(name, layer, inputs, where))
        previous = name
    outputs = config.get("outputs", [previous])
    if isinstance(outputs, str):
        outputs = [outputs]
    for ref in outputs if isinstance(outputs, list) else [outputs]:
        if not isinstance(ref, str) or ref not in shapes or ref == "input":
            raise ConfigError(f"config: outputs: unknown layer {ref!r}{suggest(ref, shapes)}")
    return Model(nodes, tuple(shape), outputs, np.dtype(dtype), config)


class Model:
    """A built network: call it, backpropagate through it, inspect and save it."""

    def __init__(self, nodes, input_shape, outputs, dtype, config):
        self._nodes = nodes
        self.input_shape = tuple(input_shape)
        self.outputs = list(outputs)
        self.dtype = np.dtype(dtype)
        self.name = config.get("name", "model")
        self._config = config
        self.preprocessing = _check_preprocessing(config.get("preprocessing"), self.input_shape)
        self.training = True
        for node in nodes:
            for pname, param in node.layer.parameters().items():
                param.name = f"{node.name}.{pname}"
        # After its last reader ran, an activation is dropped (outputs are kept).
        last_use = {}
        for index, node in enumerate(nodes):
            for ref in node.inputs:
                last_use[ref] = index
        self._release_after = {i: [n for n, last in last_use.items()
                                   if last == i and n not in self.outputs]
                               for i in range(len(nodes))}
        self.set_activation_fusion(True)

    def set_activation_fusion(self, enabled: bool = True) -> "Model":
        """Fuse each ReLU layer into the layer before it (looking through identities, which
        is what ``fuse()`` leaves of a batch norm) when that layer can apply it in its own pass
        (convolution, batch norm, add) and nothing else reads the value before the ReLU: the activation is then not read and written once more, and the ReLU's backward
        happens inside the other layer's (batch norm recomputes the mask from its input). On by
        default; results are the same bits either way. The ReLU layer stays in the graph
        (names, summary, state) and passes its argument through."""
        if not isinstance(enabled, bool):
            raise TypeError(f"set_activation_fusion: enabled must be True or False, got "
                            f"{enabled!r}")
        from fastcnn.layers.activation import ReLU
        from fastcnn.layers.shape import Identity

        readers = {}
        for node in self._nodes:
            for ref in node.inputs:
                readers[ref] = readers.get(ref, 0) + 1
        producers = {node.name: node.layer for node in self._nodes}
        for node in self._nodes:
            node.layer.fused_activation = None
            if type(node.layer) is ReLU:
                node.layer.fused_into = None
        inputs_of = {node.name: node.inputs for node in self._nodes}
        for node in self._nodes if enabled else ():
            ref = node.inputs[0]
            # through identities (a batch norm folded by fuse() becomes one): the ReLU then
            # applies to the value the identity passes on
            while (ref in producers and type(producers[ref]) is Identity and readers[ref] == 1
                   and ref not in self.outputs):
                ref = inputs_of[ref][0]
            if (type(node.layer) is ReLU and ref in producers and readers[ref] == 1
                    and ref not in self.outputs
                    and "relu" in producers[ref].fusable_activations
                    and producers[ref].fused_activation is None):
                producers[ref].fused_activation = "relu"
                node.layer.fused_into = ref
        # A layer may overwrite its input when that input is another layer's output that no one
        # else reads, that is not a model output, and that its producer declares private (a new
        # array, not kept for its backward, no view of its own input). The model input (the
        # caller's array) is never overwritten.
        for node in self._nodes:
            ref = node.inputs[0]
            node.layer.may_overwrite_input = (
                len(node.inputs) == 1 and ref in producers and readers[ref] == 1
                and ref not in self.outputs and producers[ref].output_is_private)
        return self

    # -- structure --------------------------------------------------------------------------
    @property
    def layers(self) -> "OrderedDict[str, Layer]":
        return OrderedDict((node.name, node.layer) for node in self._nodes)

    def __getitem__(self, name) -> Layer:
        return self.layers[str(name)]

    @property
    def output_shape(self):
        shapes = {node.name: node.layer.output_shape for node in self._nodes}
        out = [shapes[o] for o in self.outputs]
        return out[0] if len(out) == 1 else out

    # -- running ----------------------------------------------------------------------------
    def _check_input(self, x):
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}: input must hold real numbers, got dtype {x.dtype}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            first = self._nodes[0]
            raise ValueError(f"{self.name}: input must have shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"as declared by input_shape (first layer: {first.where}), got {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x):
        """Run the network on a batch ``x`` of shape (N, *input_shape)."""
        # BLAS held at one thread for the whole pass (the kernels call it from their OpenMP
        # team), instead of being set and restored around each of them (~16 us a layer)
        with single_threaded_blas:
            return self._forward(x)

    def _forward(self, x):
        values = {"input": self._check_input(x)}
        for index, node in enumerate(self._nodes):
            args = [values[ref] for ref in node.inputs]
            try:
                values[node.name] = node.layer.forward(*args)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{node.where} '{node.name}': {exc}") from exc
            for ref in self._release_after[index]:
                del values[ref]
        out = [values[o] for o in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)

    __call__ = forward

    def backward(self, grad, *, input_grad: bool = True):
        """Backpropagate dL/d(output) (a tuple for several outputs); accumulates every
        parameter's ``grad`` and returns dL/d(input) (None with ``input_grad=False``, which
        skips that work in the first layers)."""
        with single_threaded_blas:
            return self._backward(grad, input_grad)

    def _backward(self, grad, input_grad):
        grads = {}
        given = grad if len(self.outputs) > 1 else (grad,)
        if len(given) != len(self.outputs):
            raise ValueError(f"{self.name}: backward needs one gradient per output "
                             f"({len(self.outputs)}), got {len(given)}")
        for name, g in zip(self.outputs, given):
            grads[name] = np.asarray(g, dtype=self.dtype)
        for node in reversed(self._nodes):
            g = grads.pop(node.name, None)
            if g is None:
                node.layer._saved = None        # does not reach an output: nothing flows back
                continue
            expected = (g.shape[0],) + node.layer.output_shape
            if g.shape != expected:
                raise ValueError(f"{node.where} '{node.name}': gradient of shape {g.shape} does "
                                 f"not match its output shape {expected}")
            node.layer.needs_input_grad = input_grad or any(r != "input" for r in node.inputs)
            back = node.layer.backward(g)
            backs = back if node.layer.num_inputs is None else (back,)
            for ref, gi in zip(node.inputs, backs):
                if gi is None or (ref == "input" and not input_grad):
                    continue
                if ref in grads:        # fan-out: the gradients of every use add up
                    grads[ref] = _add(grads[ref], gi)
                else:
                    grads[ref] = gi
        return grads.get("input") if input_grad else None

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for node in self._nodes:
            node.layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- parameters and state ---------------------------------------------------------------
    def parameters(self):
        """Every Parameter, named as its state_dict key ("0.weight", "conv1.bias", ...)."""
        return [p for node in self._nodes for p in node.layer.parameters().values()]

    def named_parameters(self):
        return [(p.name, p) for p in self.parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def _state_items(self):
        for node in self._nodes:
            for pname, param in node.layer.parameters().items():
                yield f"{node.name}.{pname}", param.data
            for bname, buf in node.layer.buffers().items():
                yield f"{node.name}.{bname}", buf

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers (copies), keyed as torch keys the same network."""
        return OrderedDict((k, np.array(v, copy=True)) for k, v in self._state_items())

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays (numpy arrays, torch tensors, anything ``np.asarray`` takes) into the
        model, as torch's ``load_state_dict`` does: with ``strict``, missing and unexpected keys
        are errors; wrong shapes always are (a one-element array fits a scalar buffer, as torch's
        old ``num_batches_tracked`` of shape (1,) does). A missing ``num_batches_tracked`` keeps
        the layer's count (0 on a new model), as torch does. Values are cast to the model's
        dtypes (float64 into a float32 model). All problems are listed at once. Returns
        ``{"missing": [...], "unexpected": [...]}``."""
        own = OrderedDict(self._state_items())
        optional = {f"{node.name}.{b}" for node in self._nodes
                    for b in node.layer.optional_buffers()}
        missing = [k for k in own if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own]

        def fits(key):
            shape, target = tuple(np.shape(state[key])), own[key].shape
            return shape == target or (target == () and shape == (1,))
        wrong = [f"{k}: expected {own[k].shape}, got {np.shape(state[k])}"
                 for k in own if k in state and not fits(k)]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong:
            problems.append(f"wrong shapes: {'; '.join(wrong)}")
        values = {}
        for key in own:
            if key in state:
                value = np.asarray(state[key])
                if value.dtype.kind not in "biuf":
                    problems.append(f"{key} has dtype {value.dtype}, expected numbers")
                values[key] = value
        if problems:
            raise ValueError(f"{self.name}: load_state_dict: " + " | ".join(problems))
        for key, value in values.items():   # nothing is copied unless everything fits
            np.copyto(own[key], value.reshape(own[key].shape), casting="unsafe")
        return {"missing": missing, "unexpected": unexpected}

    def fuse(self) -> "Model":
        """An inference copy (eval mode) where each batch norm that directly follows a conv or
        linear layer (its only reader) is folded into that layer's weight and bias:
        ``W' = W * g/sqrt(var+eps)``, ``b' = (b - mean) * g/sqrt(var+eps) + beta`` per output
        channel, and the batch norm becomes an identity. The original model is unchanged."""
        from fastcnn import functional as F
        from fastcnn.layers.conv import _ConvNd
        from fastcnn.layers.linear import Linear
        from fastcnn.layers.norm import _BatchNorm

        config = self.to_config()
        state = self.state_dict()
        readers = {}
        for node in self._nodes:
            for ref in node.inputs:
                readers[ref] = readers.get(ref, 0) + 1
        by_name = {node.name: (index, node) for index, node in enumerate(self._nodes)}
        for index, node in enumerate(self._nodes):
            bn = node.layer
            if not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
                continue
            source = node.inputs[0]
            if source not in by_name or readers.get(source) != 1 or source in self.outputs:
                continue
            src_index, src = by_name[source]
            if not isinstance(src.layer, (_ConvNd, Linear)):
                continue
            w = state[f"{source}.weight"]
            b = state.get(f"{source}.bias")
            weight, bias = F.fuse_conv_bn(
                w, b, bn.running_mean, bn.running_var,
                None if bn.weight is None else bn.weight.data,
                None if bn.bias is None else bn.bias.data, eps=bn.eps)
            state[f"{source}.weight"] = weight
            state[f"{source}.bias"] = bias
            config["layers"][src_index]["bias"] = True
            for key in [k for k in state if k.startswith(f"{node.name}.")]:
                del state[key]
            entry = {"type": "identity"}
            for key in ("name", "inputs"):
                if key in config["layers"][index]:
                    entry[key] = config["layers"][index][key]
            config["layers"][index] = entry
        fused = build_model(config)
        fused.load_state_dict(state)
        return fused.eval()

    # -- description ------------------------------------------------------------------------
    def preprocess(self, x):
        """Raw images ``(N, C, ...)`` as the model was trained to see them: ``(x - mean[c]) /
        std[c]`` per channel in float32 (fastcnn.data.normalize: a std of 0 only centres), with
        the ``preprocessing`` that a training run stores in its models (the training set's
        channel statistics); x unchanged when there is none. ``model(model.preprocess(x))`` on
        raw images is what ``fastcnn predict`` and ``fastcnn eval`` run."""
        if self.preprocessing is None:
            return np.asarray(x)
        from fastcnn.data import normalize
        return normalize(x, self.preprocessing["mean"], self.preprocessing["std"])

    def to_config(self) -> dict:
        """A config that build_model turns back into this architecture."""
        config = {"name": self.name, "input_shape": list(self.input_shape),
                  "dtype": self.dtype.name}
        for key in ("init", "seed"):
            if self._config.get(key) is not None:
                config[key] = self._config[key]
        if self.preprocessing is not None:
            config["preprocessing"] = {k: list(v) for k, v in self.preprocessing.items()}
        layers = []
        previous = "input"
        for index, node in enumerate(self._nodes):
            entry = node.layer.to_config()
            if node.name != str(index):
                entry["name"] = node.name
            if node.inputs != [previous]:
                entry["inputs"] = list(node.inputs)
            layers.append(entry)
            previous = node.name
        config["layers"] = layers
        if self.outputs != [previous]:
            config["outputs"] = list(self.outputs)
        return config

    def summary(self, batch_size: int = 1) -> str:
        """A table of layers: name, type, output shape, parameters, FLOPs (per batch of
        ``batch_size``), with totals."""
        rows = [("name", "type", "output shape", "params", "FLOPs")]
        total_flops = 0
        for node in self._nodes:
            layer = node.layer
            params = sum(p.data.size for p in layer.parameters().values())
            flops = layer.flops() * batch_size
            total_flops += flops
            rows.append((node.name, layer.type_name,
                         str((batch_size,) + layer.output_shape), f"{params:,}", _si(flops)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        line = "  ".join("-" * w for w in widths)
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        total = self.num_parameters()
        nbytes = sum(p.data.nbytes for p in self.parameters())
        out = [f"{self.name}: input {(batch_size,) + self.input_shape}, {self.dtype.name}",
               fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [line]
        out.append(f"parameters: {total:,} ({nbytes / 2**20:.2f} MiB)   "
                   f"FLOPs per forward: {_si(total_flops)}")
        return "\n".join(out)

    def __repr__(self):
        return (f"Model({self.name!r}, input_shape={self.input_shape}, layers={len(self._nodes)}, "
                f"parameters={self.num_parameters():,})")


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
