"""ONNX op handlers: each turns one node (sometimes a pattern of nodes) into fastcnn layers.

The registry is keyed by op type and the range of opsets a handler covers: ``find_handler(op,
opset)`` returns the newest handler whose first opset is <= the model's (as tinygrad's ONNX
runner and onnx.reference pick versioned ops), so a model at opset 20 gets the handler written
for the op's version 18 when nothing changed since, and no exact-version table is needed.
Models below opset 13 are upgraded first (``onnx.version_converter``), so handlers start at 13.

A handler is ``fn(node, cx)``, ``cx`` the :class:`~fastcnn.onnx.importer.Converter`: it reads
inputs (``cx.tensor``, ``cx.const``), adds layers (``cx.add_layer``) and raises
``Unsupported(reason)`` for what fastcnn cannot express; the converter collects every such node.
"""
from fastcnn.onnx.handlers.registry import HANDLERS, find_handler, handler

# each module registers its handlers when imported
from fastcnn.onnx.handlers import activations, conv, norm, pool  # noqa: E402,F401
from fastcnn.onnx.handlers import patterns, resize, shapes  # noqa: E402,F401

__all__ = ["HANDLERS", "handler", "find_handler"]
