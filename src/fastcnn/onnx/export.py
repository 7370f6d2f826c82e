"""fastcnn.onnx.export: a fastcnn model as an ONNX file (its eval-mode forward).

The graph has one input ``input`` of shape (batch, *model.input_shape), the batch symbolic, and
one output per model output, named as the layer. Initializers are named by their state_dict
keys. ``metadata_props`` hold the model's config (``fastcnn.config``, JSON) and the integer
buffers no node reads (``fastcnn.counters``: batch norms' ``num_batches_tracked``), so that
:func:`fastcnn.onnx.load_model` rebuilds the very same model.
"""
from __future__ import annotations

import json
import os

import numpy as np

from fastcnn.onnx._builder import GraphBuilder
from fastcnn.onnx._deps import require_onnx
from fastcnn.onnx.errors import OnnxExportError
from fastcnn.onnx.exporters import EXPORTERS

__all__ = ["export", "to_onnx", "MIN_EXPORT_OPSET", "MAX_EXPORT_OPSET", "DEFAULT_OPSET",
           "CONFIG_KEY", "COUNTERS_KEY"]

MIN_EXPORT_OPSET, MAX_EXPORT_OPSET, DEFAULT_OPSET = 13, 21, 17
CONFIG_KEY = "fastcnn.config"
COUNTERS_KEY = "fastcnn.counters"
_ELEM_TYPES = {"float32": 1, "float64": 11}       # TensorProto.FLOAT, TensorProto.DOUBLE


def _check_opset(opset):
    if (isinstance(opset, bool) or not isinstance(opset, (int, np.integer))
            or not MIN_EXPORT_OPSET <= opset <= MAX_EXPORT_OPSET):
        raise ValueError(f"export: opset must be an int from {MIN_EXPORT_OPSET} to "
                         f"{MAX_EXPORT_OPSET}, got {opset!r}")
    return int(opset)


def to_onnx(model, opset: int = DEFAULT_OPSET):
    """The ``onnx.ModelProto`` of ``model`` (not yet checked; :func:`export` checks and writes
    it). Raises OnnxExportError naming every layer that has no ONNX mapping."""
    onnx = require_onnx()
    from fastcnn.model import Model

    if not isinstance(model, Model):
        raise TypeError(f"export: model must be a fastcnn.Model, got {type(model).__name__}")
    opset = _check_opset(opset)
    from fastcnn import __version__

    state = model.state_dict()
    b = GraphBuilder(onnx, opset, model.dtype, state)
    values = {"input": "input"}
    missing = []
    for node in model._nodes:
        layer = node.layer
        hook = getattr(layer, "export_onnx", None)
        fn = EXPORTERS.get(layer.type_name) if hook is None else None
        if hook is None and fn is None:
            missing.append(f"{node.where} '{node.name}' ({layer.type_name})")
            values[node.name] = node.name       # go on: every such layer is named at once
            continue
        b.layer, b.out = layer, node.name
        inputs = [values[ref] for ref in node.inputs]
        values[node.name] = hook(b, inputs) if hook is not None else fn(layer, b, inputs)
    if missing:
        raise OnnxExportError(
            f"export: no ONNX mapping for {len(missing)} layer(s): {'; '.join(missing)}. A "
            f"layer of your own can define export_onnx(self, builder, inputs) -> output name "
            f"(see fastcnn.onnx.exporters for examples)")
    helper = onnx.helper
    elem = _ELEM_TYPES[model.dtype.name]
    outputs = []
    for name in model.outputs:
        if values[name] != name:           # a layer that vanished (dropout) ends the model
            b.out = name
            b.nodes.append(helper.make_node("Identity", [values[name]], [name],
                                            name=f"{name}/Identity"))
        shape = model[name].output_shape
        outputs.append(helper.make_tensor_value_info(name, elem, ["batch", *shape]))
    graph_input = helper.make_tensor_value_info("input", elem, ["batch", *model.input_shape])
    counters = {k: int(v) for k, v in state.items()
                if k not in b.initializers and np.ndim(v) == 0 and v.dtype.kind in "iu"}
    unread = [k for k in state if k not in b.initializers and k not in counters]
    for key in unread:                      # kept so that a re-import is lossless
        b.initializers[key] = onnx.numpy_helper.from_array(np.ascontiguousarray(state[key]), key)
    graph = helper.make_graph(b.nodes, model.name, [graph_input], outputs,
                              initializer=list(b.initializers.values()))
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastcnn",
                              producer_version=__version__,
                              # the oldest IR version that carries this opset: older runtimes
                              # read the file too
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, {CONFIG_KEY: json.dumps(model.to_config()),
                                   COUNTERS_KEY: json.dumps(counters)})
    return proto


def export(model, path, opset: int = DEFAULT_OPSET):
    """Write ``model`` (its eval-mode forward) to ``path`` as ONNX at ``opset`` (13 to 21).

    The file is checked with ``onnx.checker.check_model(full_check=True)`` and written
    atomically (a temp file beside ``path``, then renamed): a failure leaves ``path`` as it was.
    Returns ``path``."""
    onnx = require_onnx()
    from fastcnn.checkpoint import atomic_write

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"export: path must be a file path, got {type(path).__name__}")
    proto = to_onnx(model, opset)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:                # a mapping bug, never the user's: say which model
        raise OnnxExportError(f"export: the ONNX graph of {model.name!r} fails onnx.checker "
                              f"({type(exc).__name__}: {exc})") from exc
    data = proto.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))
    return path
