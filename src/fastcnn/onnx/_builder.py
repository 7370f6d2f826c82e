"""GraphBuilder: what a layer's ONNX exporter writes into (nodes, initializers, constants).

An exporter (``fastcnn.onnx.exporters``, or a layer's own ``export_onnx`` method) receives the
builder and the names of the values its inputs hold, adds nodes, and returns the name of the
value holding the layer's output. Names:

- a parameter or buffer becomes an initializer named by its state_dict key (``b.param("weight")``
  in layer "conv1" is the initializer "conv1.weight");
- helper constants (shapes, ones, the 0.5 of GELU's erf form) are initializers named
  ``<layer>/<hint>``, and intermediate values ``<layer>/<hint>``: "/" never occurs in a layer
  name or state_dict key, so nothing collides;
- a layer's output value is named as the layer (``b.out``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["GraphBuilder"]


class GraphBuilder:
    """Collects the nodes and initializers of one export at one ``opset``."""

    def __init__(self, onnx, opset: int, dtype, state: dict):
        self.onnx = onnx
        self.opset = int(opset)
        self.dtype = np.dtype(dtype)
        self.state = state
        self.nodes = []
        self.initializers = {}
        self._used = set()
        self.layer = None           # the layer being exported
        self.out = None             # the name its output value should take

    # -- names ------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new value name ``<layer>/<hint>`` (numbered when taken)."""
        base = f"{self.out}/{hint}"
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    # -- initializers -----------------------------------------------------------------------
    def param(self, key: str) -> str:
        """The initializer of this layer's state_dict entry ``key`` ("weight", "running_mean"),
        named by its full state_dict key."""
        full = f"{self.out}.{key}"
        if full not in self.initializers:
            self.initializers[full] = self.onnx.numpy_helper.from_array(
                np.ascontiguousarray(self.state[full]), full)
        return full

    def constant(self, value, hint: str, dtype=None) -> str:
        """An initializer holding ``value`` (in the model's float dtype unless ``dtype``)."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype or self.dtype))
        name = self.fresh(hint)
        self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def ints(self, values, hint: str) -> str:
        """An int64 1-D constant (shapes, axes, pads)."""
        return self.constant(np.asarray(list(values), dtype=np.int64), hint, np.int64)

    # -- nodes ------------------------------------------------------------------------------
    def node(self, op_type: str, inputs, hint: str | None = None, *, outputs: int = 1,
             output: str | None = None, **attrs):
        """Add one node; returns its output name (or names when ``outputs`` > 1). ``output``
        names the (single) output explicitly, e.g. ``b.out`` for the layer's final value."""
        if output is not None:
            names = [output]
            self._used.add(output)
        else:
            names = [self.fresh(f"{hint or op_type}" + (f"_{i}" if outputs > 1 else ""))
                     for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(
            op_type, list(inputs), names, name=f"{self.out}/{op_type}_{len(self.nodes)}",
            **attrs))
        return names[0] if outputs == 1 else names

    def reduce(self, op_type: str, x: str, axes, keepdims: bool = True,
               output: str | None = None) -> str:
        """ReduceMean / ReduceMax / ReduceSum over ``axes``: an attribute before opset 18
        (ReduceSum: before 13), an input from then on."""
        axes = [int(a) for a in axes]
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.node(op_type, [x, self.ints(axes, "axes")], op_type, output=output,
                             keepdims=int(keepdims))
        return self.node(op_type, [x], op_type, output=output, axes=axes,
                         keepdims=int(keepdims))

    def reshape(self, x: str, shape, hint: str = "reshape", output: str | None = None) -> str:
        """Reshape to a constant target ``shape`` (0 keeps that axis, -1 infers one)."""
        return self.node("Reshape", [x, self.ints(shape, f"{hint}_shape")], hint, output=output)

    def channel_vector(self, name: str, rank: int) -> str:
        """A per-channel vector (C,) reshaped to (C, 1, ..., 1) so that it broadcasts over a
        (N, C, *spatial) tensor of ``rank`` axes (numpy broadcasting aligns trailing axes)."""
        if rank <= 2:
            return name
        return self.reshape(name, [-1] + [1] * (rank - 2), "per_channel")

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.node("Slice", [x, self.ints([start], "starts"), self.ints([end], "ends"),
                                   self.ints([axis], "axes")], "slice")
