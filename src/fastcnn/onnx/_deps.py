"""The optional ``onnx`` package, imported only when an ONNX function runs."""
from __future__ import annotations

import importlib

__all__ = ["require_onnx"]

INSTALL_HINT = "pip install 'fastcnn[onnx]'"


def require_onnx():
    """The ``onnx`` module, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ImportError(f"fastcnn.onnx needs the onnx package ({exc}): {INSTALL_HINT}") from None
