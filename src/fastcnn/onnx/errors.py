"""Errors of fastcnn.onnx: all are ValueErrors (bad input), each naming the file or layer."""
from __future__ import annotations

__all__ = ["OnnxExportError", "OnnxImportError", "UnsupportedOnnxError"]


class OnnxExportError(ValueError):
    """A model that cannot be written as ONNX: the message names every layer without a mapping."""


class OnnxImportError(ValueError):
    """An .onnx file that cannot be read into a fastcnn model (damaged, wrong opset, missing
    external data...): the message names the file and what is wrong."""


class UnsupportedOnnxError(OnnxImportError):
    """The graph uses ops (or attribute values) fastcnn has no layer for. ``unsupported`` lists
    every ``(op_type, opset, node name, reason)`` found, not only the first."""

    def __init__(self, path, unsupported):
        self.path = path
        self.unsupported = list(unsupported)
        lines = [f"  {op} (opset {opset}) at node {node!r}: {why}"
                 for op, opset, node, why in self.unsupported]
        super().__init__(f"{path}: {len(self.unsupported)} node(s) have no fastcnn equivalent:\n"
                         + "\n".join(lines))
