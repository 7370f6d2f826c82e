"""fastcnn.onnx.load_model: an .onnx file as a trainable fastcnn.Model.

A file written by :func:`fastcnn.onnx.export` carries its fastcnn config in ``metadata_props``:
it is rebuilt exactly (same config, same state_dict). Any other graph is converted:

1. read and check the file, upgrade opsets older than 13 (``onnx.version_converter``), inline
   local functions, run ONNX shape inference (its shapes check every converted node's);
2. walk the nodes in order. Values are either *tensors* (computed from the model input: a
   fastcnn layer's output, with its per-sample shape) or *constants* (initializers, Constant
   nodes, and what is computed from them only). A node whose inputs are all constants is
   evaluated at once with ``onnx.reference`` (constant folding); ``Shape`` of a tensor is a
   constant too, computed for two batch sizes, so that shape subgraphs (Shape / Gather /
   Concat / Reshape, as torch's exporters emit for flatten) fold into constants whose batch
   dependence is known;
3. every other node goes to the handler registered for its op type and the model's opset
   (:mod:`fastcnn.onnx.handlers`), which adds fastcnn layers (with their weights);
4. the unsupported nodes, all of them, are reported in one UnsupportedOnnxError; otherwise
   ``build_model(config)`` + ``load_state_dict(state, strict=True)`` give the model.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from fastcnn.onnx._deps import require_onnx
from fastcnn.onnx._reading import default_opset, read_model, upgrade
from fastcnn.onnx.errors import OnnxImportError, UnsupportedOnnxError
from fastcnn.onnx.export import CONFIG_KEY, COUNTERS_KEY

__all__ = ["load_model", "convert", "Tensor", "Const", "Unsupported"]

# Two batch sizes at which batch-dependent constants (Shape of a tensor...) are evaluated:
# a value that differs between them depends on the batch (a graph whose input has a fixed
# batch size is evaluated at that size twice).
BATCHES = (5, 7)
_DTYPES = {1: "float32", 11: "float64"}


class Unsupported(Exception):
    """Raised by a handler: this node (with these attributes) has no fastcnn equivalent."""


class Tensor:
    """A value computed from the model input: the fastcnn layer holding it ("input" for the
    model input) and its per-sample shape."""
    __slots__ = ("ref", "shape")

    def __init__(self, ref, shape):
        self.ref, self.shape = ref, tuple(int(s) for s in shape)

    @property
    def rank(self):
        """Number of axes including the batch."""
        return len(self.shape) + 1


class Const:
    """A value known before the input is: ``values[i]`` is its value at batch size
    ``BATCHES[i]`` (the same array twice when it does not depend on the batch). ``origin``
    names the initializer it comes from, through unary folds (Unsqueeze of "bn.weight")."""
    __slots__ = ("values", "origin")

    def __init__(self, values, origin=None):
        self.values, self.origin = tuple(values), origin

    @classmethod
    def fixed(cls, value, origin=None):
        return cls((value, value), origin)

    @property
    def batched(self):
        a, b = self.values
        return a.shape != b.shape or not np.array_equal(a, b)

    @property
    def value(self):
        return self.values[0]


class _Unknown:
    """The output of an unsupported node: nodes that read it are not converted (nor reported:
    only the first cause is)."""


UNKNOWN = _Unknown()


class Converter:
    """One conversion of a ModelProto; see the module docstring. Handlers use the methods
    below the ``-- for handlers`` line."""

    def __init__(self, proto, where, *, input_shape=None, bound=None):
        self.onnx = require_onnx()
        self.where = where
        self.proto = proto
        self.graph = proto.graph
        self.opset = default_opset(proto)
        self.bound = dict(bound or {})
        self.env = {}
        self.layers = []            # config entries
        self.state = {}
        self.names = set()
        self.unsupported = []
        self.skipped = set()
        self.inferred = {}
        self._input_shape = input_shape
        self.batches = BATCHES
        self.nodes = list(self.graph.node)
        self.consumers = {}
        self.producer = {}
        self.done = set()           # constant nodes a handler evaluated ahead (see _resolve)
        for index, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
        for out in self.graph.output:
            self.consumers.setdefault(out.name, []).append(-1)     # read by the caller

    # -- the walk -----------------------------------------------------------------------------
    def run(self):
        from fastcnn.onnx.handlers import find_handler

        numpy_helper = self.onnx.numpy_helper
        for init in self.graph.initializer:
            self.env[init.name] = Const.fixed(numpy_helper.to_array(init), init.name)
        for name, value in self.bound.items():
            self.env[name] = Const.fixed(np.asarray(value), name)
        data = [i for i in self.graph.input if i.name not in self.env]
        if len(data) != 1:
            raise UnsupportedOnnxError(self.where, [(
                "graph", self.opset, self.graph.name,
                f"a fastcnn model has one input, this graph has {len(data)} "
                f"({', '.join(i.name for i in data) or 'none'}) besides its initializers")])
        self.input_name = data[0].name
        self.dtype = self._input_dtype(data[0])
        dims = data[0].type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            # a graph made for one batch size (often 1, with Reshape(x, [1, -1]) inside):
            # shapes are evaluated at that size, and the layers then take any batch
            self.batches = (int(dims[0].dim_value),) * len(BATCHES)
        self.env[self.input_name] = Tensor("input", self._input_per_sample(data[0]))
        self._infer_shapes()
        for index, node in enumerate(self.nodes):
            if index in self.skipped or index in self.done:
                continue
            inputs = [self.env.get(n, UNKNOWN) if n else None for n in node.input]
            if any(v is UNKNOWN for v in inputs):
                self._mark_unknown(node)
                continue
            if node.domain not in ("", "ai.onnx"):
                self._unsupported(node, f"domain {node.domain!r} (only standard ONNX ops)")
                continue
            try:
                if not self._evaluate(node, inputs):
                    handler = find_handler(node.op_type, self.opset)
                    if handler is None:
                        raise Unsupported("no fastcnn equivalent for this op")
                    handler(node, self)
            except Unsupported as exc:
                self._unsupported(node, str(exc))
        outputs = []
        for out in self.graph.output:
            value = self.env.get(out.name, UNKNOWN)
            if value is UNKNOWN:
                continue
            if not isinstance(value, Tensor):
                self.unsupported.append(("graph output", self.opset, out.name,
                                         "the output does not depend on the input"))
                continue
            if value.ref == "input":
                value = self.add_layer(None, {"type": "identity"}, [value], name=out.name)
            outputs.append(value.ref)
        if self.unsupported:
            raise UnsupportedOnnxError(self.where, self.unsupported)
        config = {"name": _layer_name(self.graph.name) or "onnx_model",
                  "input_shape": list(self.env[self.input_name].shape), "dtype": self.dtype,
                  "layers": self.layers}
        if outputs != [self.layers[-1]["name"]]:
            config["outputs"] = outputs
        return config, self.state

    def _input_dtype(self, value_info):
        elem = value_info.type.tensor_type.elem_type
        if elem not in _DTYPES:
            name = self.onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else "unknown"
            raise UnsupportedOnnxError(self.where, [(
                "graph", self.opset, value_info.name,
                f"the input holds {name}; fastcnn models take float32 or float64")])
        return _DTYPES[elem]

    def _input_per_sample(self, value_info):
        dims = value_info.type.tensor_type.shape.dim
        if self._input_shape is not None:
            shape = tuple(int(s) for s in self._input_shape)
            if len(dims) and len(dims) != len(shape) + 1:
                raise OnnxImportError(f"{self.where}: input_shape {list(shape)} has "
                                      f"{len(shape)} axes, the graph's input {len(dims) - 1} "
                                      f"besides the batch")
            return shape
        if len(dims) < 2:
            raise OnnxImportError(f"{self.where}: the input {value_info.name!r} has "
                                  f"{len(dims)} axes; fastcnn needs (batch, *per-sample shape)")
        shape = []
        for d in dims[1:]:
            if not d.HasField("dim_value") or d.dim_value < 1:
                raise OnnxImportError(
                    f"{self.where}: the input {value_info.name!r} has a symbolic size "
                    f"({d.dim_param or '?'}) besides the batch; pass the per-sample shape: "
                    f"load_model(path, input_shape=[C, H, W])")
            shape.append(d.dim_value)
        return tuple(shape)

    def _infer_shapes(self):
        """ONNX's own shapes of every value (per sample), for checking the converted layers."""
        onnx = self.onnx
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        graph_input = next(i for i in proto.graph.input if i.name == self.input_name)
        dims = graph_input.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for s in self.env[self.input_name].shape:
            dims.add().dim_value = s
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:              # inference is a cross-check only: go on without it
            return
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            tdims = info.type.tensor_type.shape.dim
            if len(tdims) >= 1:
                self.inferred[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                                 for d in tdims[1:])

    def _mark_unknown(self, node):
        for name in node.output:
            self.env[name] = UNKNOWN

    def _unsupported(self, node, reason):
        self.unsupported.append((node.op_type, self.opset, node.name or node.output[0], reason))
        self._mark_unknown(node)

    # -- constants ------------------------------------------------------------------------------
    def _shape_of(self, node, tensor):
        attrs = self.attrs(node)
        values = []
        for batch in self.batches:
            full = np.array((batch,) + tensor.shape, dtype=np.int64)
            if node.op_type == "Size":
                values.append(np.array(full.prod(), dtype=np.int64))
            else:
                start, end = attrs.get("start", 0), attrs.get("end", None)
                values.append(full[slice(start, end)])
        self.env[node.output[0]] = Const(values)

    def _fold(self, node, inputs):
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
        except Exception as exc:
            raise Unsupported(f"cannot evaluate this constant node ({exc})") from None
        names = [n for n in node.input]
        results = []
        for i in range(len(BATCHES)):
            feeds = {n: v.values[i] for n, v in zip(names, inputs) if n and v is not None}
            try:
                results.append(evaluator.run(None, feeds))
            except Exception as exc:
                raise Unsupported(f"cannot evaluate this constant node ({type(exc).__name__}: "
                                  f"{exc})") from None
        sources = [v.origin for v in inputs if v is not None and v.origin]
        origin = sources[0] if len(sources) == 1 else None
        for j, name in enumerate(node.output):
            if name:
                self.env[name] = Const([np.asarray(r[j]) for r in results], origin)

    def _resolve(self, name):
        """The value of ``name``, evaluating its producer ahead of the walk when it is a
        constant (a pattern looks at nodes further down); None when it is not known yet."""
        if name in self.env:
            return self.env[name]
        index = self.producer.get(name)
        if index is None or index in self.skipped:
            return None
        node = self.nodes[index]
        if node.domain not in ("", "ai.onnx"):
            return None
        inputs = [self._resolve(n) if n else None for n in node.input]
        if any(v is None or v is UNKNOWN for n, v in zip(node.input, inputs) if n):
            return None
        try:
            if not self._evaluate(node, inputs):
                return None
        except Unsupported:
            return None
        self.done.add(index)
        return self.env.get(name)

    def _evaluate(self, node, inputs):
        """Compute ``node`` now when it needs no layer: the shape of a tensor, or an op on
        constants (folded); True when it did."""
        if node.op_type in ("Shape", "Size") and isinstance(inputs[0], Tensor):
            self._shape_of(node, inputs[0])
        elif all(v is None or isinstance(v, Const) for v in inputs):
            self._fold(node, inputs)
        else:
            return False
        return True

    # -- for handlers ---------------------------------------------------------------------------
    def attrs(self, node) -> dict:
        """The node's attributes as Python values (strings decoded)."""
        get = self.onnx.helper.get_attribute_value
        out = {}
        for attr in node.attribute:
            value = get(attr)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            out[attr.name] = value
        return out

    def tensor(self, node, i) -> Tensor:
        value = self.env.get(node.input[i]) if i < len(node.input) and node.input[i] else None
        if not isinstance(value, Tensor):
            raise Unsupported(f"input {i} must be computed from the model input, it is a "
                              f"constant" if value is not None else f"input {i} is missing")
        return value

    def const(self, node, i, optional=False):
        """Input ``i`` as a batch-independent numpy array (None when an optional input is
        absent); Unsupported when it is computed from the model input."""
        if i >= len(node.input) or not node.input[i]:
            if optional:
                return None
            raise Unsupported(f"input {i} is missing")
        value = self._resolve(node.input[i])
        if value is None or value is UNKNOWN:
            raise Unsupported(f"input {i} ({node.input[i]!r}) is not known")
        if isinstance(value, Tensor):
            raise Unsupported(f"input {i} ({node.input[i]!r}) must be a constant (weights, "
                              f"shapes), it is computed from the model input")
        if value.batched:
            raise Unsupported(f"input {i} ({node.input[i]!r}) depends on the batch size")
        return value.value

    def const_info(self, name):
        value = self._resolve(name)
        return value if isinstance(value, Const) else None

    def is_const(self, node, i):
        return i < len(node.input) and isinstance(self._resolve(node.input[i]), Const)

    def single_consumer(self, value_name):
        """The index and node that alone read ``value_name`` (None when several, or a graph
        output)."""
        readers = self.consumers.get(value_name, [])
        if len(readers) != 1 or readers[0] < 0 or readers[0] in self.skipped:
            return None
        return readers[0], self.nodes[readers[0]]

    def skip(self, index):
        """A later node a handler converted together with its own (a pattern)."""
        self.skipped.add(index)

    def bind(self, name, value):
        self.env[name] = value

    def add_layer(self, node, spec, inputs, weights=None, *, name=None, output=None,
                  check_shape=True):
        """Add the fastcnn layer ``spec`` reading the tensors ``inputs``, with ``weights``
        ({"weight": array, ...}); bind its output to ``output`` (default: the node's first
        output) and return it. The layer is built once here for its output shape."""
        from fastcnn.layers.base import _InitContext
        from fastcnn.registry import LAYERS

        layer_name = self._unique(name or self._name_for(node, weights))
        spec = dict(spec)
        refs = [t.ref for t in inputs]
        args = {k: v for k, v in spec.items() if k != "type"}
        cls = LAYERS.get(spec["type"])
        try:
            layer = cls(**args)
            layer.name = layer_name
            shapes = [t.shape for t in inputs]
            many = getattr(cls, "num_inputs", 1) is None
            shape = layer._build(shapes if many else shapes[0],
                                 _InitContext(np.dtype(self.dtype), np.random.default_rng(0)))
        except (ValueError, TypeError) as exc:
            raise Unsupported(f"as fastcnn {spec['type']}: {exc}") from None
        for key, value in (weights or {}).items():
            expected = layer.parameters().get(key)
            expected = expected.data if expected is not None else layer.buffers()[key]
            try:
                value = np.broadcast_to(np.asarray(value), expected.shape)
            except ValueError:
                raise Unsupported(f"{key} of shape {np.shape(value)} does not fit fastcnn "
                                  f"{spec['type']}'s {expected.shape}") from None
            self.state[f"{layer_name}.{key}"] = np.array(value, dtype=expected.dtype)
        out_name = output if output is not None else (node.output[0] if node is not None else None)
        if check_shape and out_name in self.inferred:
            onnx_shape = self.inferred[out_name]
            if None not in onnx_shape and tuple(onnx_shape) != tuple(shape):
                raise Unsupported(f"fastcnn {spec['type']} gives per-sample shape {shape}, "
                                  f"ONNX {onnx_shape}")
        entry = dict(spec, name=layer_name)
        previous = self.layers[-1]["name"] if self.layers else "input"
        if refs != [previous]:
            entry["inputs"] = refs
        self.layers.append(entry)
        self.names.add(layer_name)
        result = Tensor(layer_name, shape)
        if out_name is not None:
            self.env[out_name] = result
        return result

    def _name_for(self, node, weights):
        """Layer names after the weights' initializers ("layer1.0.conv1.weight" ->
        "layer1_0_conv1", close to torch's module names), else the node's name."""
        if node is None:
            return "layer"
        for i in range(1, len(node.input)):
            info = self.const_info(node.input[i])
            if info is not None and info.origin and "." in info.origin:
                return _layer_name(info.origin.rsplit(".", 1)[0])
        return _layer_name(node.name) or node.op_type.lower()

    def _unique(self, base):
        base = base or "layer"
        if base == "input":
            base = "input_"
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        return name


def _layer_name(text):
    """A valid fastcnn layer name from an ONNX name ("/layer1/conv/Conv" -> "layer1_conv_Conv")."""
    if isinstance(text, bytes):               # a damaged file's names need not be UTF-8
        text = text.decode("utf-8", "replace")
    return re.sub(r"[^A-Za-z0-9_]+", "_", text or "").strip("_")


def convert(proto, where="<model>", *, input_shape=None, bound=None):
    """(config, state_dict) of a ModelProto; ``bound`` maps graph input names to arrays that
    are then constants (the backend binds node tests' weight inputs this way)."""
    onnx = require_onnx()
    proto = upgrade(proto, where)
    if len(proto.functions):
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as exc:
            raise OnnxImportError(f"{where}: cannot inline its local functions ({exc})") from None
    try:
        return Converter(proto, where, input_shape=input_shape, bound=bound).run()
    except (OnnxImportError, FileNotFoundError):
        raise
    except Exception as exc:
        # a graph the checker let through but that no handler foresaw (a damaged file's
        # fields): an error naming the file, never an internal traceback
        raise OnnxImportError(f"{where}: cannot convert this graph ({type(exc).__name__}: "
                              f"{exc})") from exc


def _from_metadata(proto, where, props):
    """A model exported by fastcnn: its own config and state."""
    from fastcnn.model import build_model

    numpy_helper = require_onnx().numpy_helper
    try:
        config = json.loads(props[CONFIG_KEY])
        counters = json.loads(props.get(COUNTERS_KEY, "{}"))
        model = build_model(config)
    except (ValueError, TypeError) as exc:
        raise OnnxImportError(f"{where}: its fastcnn config (metadata {CONFIG_KEY}) is invalid "
                              f"({exc})") from None
    state = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer
             if "/" not in init.name}
    state.update({k: np.asarray(v, dtype=np.int64) for k, v in counters.items()})
    try:
        model.load_state_dict(state, strict=True)
    except ValueError as exc:
        raise OnnxImportError(f"{where}: its weights do not fit its fastcnn config "
                              f"({exc})") from None
    return model


def load_model(path, *, input_shape=None):
    """The model in the .onnx file at ``path``, as a trainable :class:`fastcnn.Model`.

    ``input_shape`` (per sample, batch excluded) is needed only when the file leaves sizes
    other than the batch symbolic. Raises FileNotFoundError, OnnxImportError (damaged file,
    opset out of range, missing external data...) or UnsupportedOnnxError (listing every node
    fastcnn has no layer for); never returns a partly built model."""
    from fastcnn.model import build_model

    proto = read_model(path)
    where = os.fspath(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY in props:
        return _from_metadata(proto, where, props)
    config, state = convert(proto, where, input_shape=input_shape)
    if not config["name"] or config["name"] == "onnx_model":
        config["name"] = _layer_name(os.path.splitext(os.path.basename(where))[0]) or "onnx_model"
    try:
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError) as exc:       # a handler's bug, never the file's: say so
        raise OnnxImportError(f"{where}: the converted model does not build ({exc})") from exc
    return model
