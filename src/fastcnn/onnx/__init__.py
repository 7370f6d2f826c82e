"""ONNX for fastcnn (the optional extra ``pip install 'fastcnn[onnx]'``).

- :func:`export` writes a model's eval-mode forward as an ONNX file (opsets 13 to 21) that
  onnxruntime, TensorRT or a browser runtime can run; :func:`to_onnx` returns the ModelProto.
- :func:`load_model` reads an .onnx file (from fastcnn, torch.onnx, tf2onnx, ...) into a
  trainable :class:`fastcnn.Model`.
- :class:`Backend` runs ONNX graphs through fastcnn with the ``onnx.backend.base.Backend``
  interface, so that ONNX's own node tests run against fastcnn.

Nothing here imports ``onnx`` until a function is called.
"""
from fastcnn.onnx.errors import OnnxExportError, OnnxImportError, UnsupportedOnnxError
from fastcnn.onnx.export import DEFAULT_OPSET, export, to_onnx
from fastcnn.onnx.importer import load_model

__all__ = ["export", "to_onnx", "load_model", "Backend", "DEFAULT_OPSET", "OnnxExportError",
           "OnnxImportError",
           "UnsupportedOnnxError"]


def __getattr__(name):
    # Backend subclasses onnx.backend.base.Backend: importing it imports onnx
    if name == "Backend":
        from fastcnn.onnx._deps import require_onnx
        require_onnx()
        from fastcnn.onnx.backend import Backend
        return Backend
    raise AttributeError(f"module 'fastcnn.onnx' has no attribute {name!r}")
