"""The handler registry: op type -> the handlers covering ranges of opsets."""
from __future__ import annotations

from fastcnn.onnx._reading import MAX_IMPORT_OPSET

__all__ = ["HANDLERS", "handler", "find_handler"]

HANDLERS: dict = {}      # op type -> [(first opset, last opset, fn)], sorted by first opset


def handler(op_type, since=13, until=MAX_IMPORT_OPSET):
    """Register ``fn(node, cx)`` for ``op_type`` at opsets ``since`` to ``until``."""
    def register(fn):
        entries = HANDLERS.setdefault(op_type, [])
        entries.append((since, until, fn))
        entries.sort(key=lambda e: e[0])
        return fn
    return register


def find_handler(op_type, opset):
    """The newest handler for ``op_type`` whose first opset is <= ``opset`` (None if none, or
    if it stops before ``opset``)."""
    best = None
    for since, until, fn in HANDLERS.get(op_type, ()):
        if since <= opset:
            best = (until, fn)
    if best is None or opset > best[0]:
        return None
    return best[1]
