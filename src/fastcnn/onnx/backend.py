"""fastcnn as an ONNX backend (``onnx.backend.base.Backend``), for ONNX's own conformance tests.

``Backend.prepare(model)`` returns a rep whose ``run(inputs)`` converts the graph with
fastcnn's importer and runs the fastcnn model it builds, in eval mode. The graph's first input
(not an initializer) is the model's input, its first axis the batch; the other inputs are
bound as constants when ``run`` receives them: ONNX's node tests pass weights, biases, shapes,
pads and scales as graph inputs where a model file holds initializers. Graphs that need a
second computed input (``Add(x, y)`` of two inputs, ``MatMul`` of two inputs) therefore fail
with the importer's UnsupportedOnnxError, as a model would: fastcnn models have one input.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend as _OnnxBackend
from onnx.backend.base import BackendRep

__all__ = ["Backend", "FastcnnRep"]


class FastcnnRep(BackendRep):
    """A prepared graph: converted (and built) on each ``run``, when its bound inputs are
    known."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        initialized = {init.name for init in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initialized]

    def build(self, inputs):
        """The fastcnn Model for these input values (the first one is the data)."""
        from fastcnn.model import build_model
        from fastcnn.onnx.importer import convert

        bound = {name: np.asarray(value) for name, value in
                 zip(self.input_names[1:], inputs[1:]) if value is not None}
        config, state = convert(self.model, f"<graph {self.model.graph.name}>", bound=bound)
        model = build_model(config)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            inputs = [inputs.get(name) for name in self.input_names]
        elif not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        model = self.build(list(inputs))
        outputs = model(np.asarray(inputs[0]))
        return list(outputs) if isinstance(outputs, tuple) else [outputs]


class Backend(_OnnxBackend):
    """Runs ONNX graphs through fastcnn models (CPU only)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        super().prepare(model, device, **kwargs)        # onnx.checker on the model
        return FastcnnRep(model)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """One node on ``inputs`` (its first input is the data, the others bound)."""
        helper = onnx.helper
        values = [helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
            for name, v in zip(node.input, inputs) if name]
        outputs = [helper.make_tensor_value_info(name, 0, None) for name in node.output if name]
        graph = helper.make_graph([node], "node", values, outputs)
        opset = kwargs.get("opset_version") or onnx.defs.onnx_opset_version()
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return FastcnnRep(model).run([v for name, v in zip(node.input, inputs) if name])
