"""Reading an .onnx file: every way it can be wrong becomes an OnnxImportError naming the file.

- missing file: FileNotFoundError; a folder, a truncated file, a file that is not ONNX: the
  protobuf error or "no graph";
- external data (tensors kept in side files, as for models over 2 GB): each file must exist
  beside the model; a missing one is named with the tensor that needs it;
- opsets: the default domain's opset must be in [MIN_IMPORT_OPSET, MAX_IMPORT_OPSET]; models
  older than opset 13 are upgraded with ``onnx.version_converter`` (the handlers are written
  for opset 13 and newer);
- ``onnx.checker.check_model`` on what was read.
"""
from __future__ import annotations

import os

from fastcnn.onnx._deps import require_onnx
from fastcnn.onnx.errors import OnnxImportError

__all__ = ["read_model", "default_opset", "upgrade", "MIN_IMPORT_OPSET", "MAX_IMPORT_OPSET",
           "CONVERT_BELOW"]

MIN_IMPORT_OPSET = 1
# The newest opset the handlers are checked against (onnx 1.23's schemas): after opset 21 the
# ops they read changed only by new tensor types (bfloat16, float8, int4, float4...), which
# fastcnn refuses anyway (its models are float32 or float64).
MAX_IMPORT_OPSET = 28
CONVERT_BELOW = 13


def default_opset(proto) -> int | None:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def read_model(path):
    """The checked ModelProto of the file at ``path`` (external data loaded)."""
    onnx = require_onnx()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_model: path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    if os.path.isdir(path):
        raise OnnxImportError(f"{path}: is a folder, not an .onnx file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:               # protobuf's DecodeError, or a read error
        raise OnnxImportError(f"{path}: not an ONNX model, or truncated/corrupted "
                              f"({type(exc).__name__}: {exc})") from None
    if not proto.HasField("graph") or not proto.graph.node or default_opset(proto) is None:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph with nodes and no opset of "
                              f"the default domain: is it an ONNX file?)")
    _load_external_data(onnx, proto, path)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxImportError(f"{path}: not a valid ONNX model ({type(exc).__name__}: "
                              f"{str(exc).strip()})") from None
    return proto


def _load_external_data(onnx, proto, path):
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    base = os.path.dirname(os.path.abspath(path))
    missing = []
    tensors = list(proto.graph.initializer) + [
        attr.t for node in proto.graph.node for attr in node.attribute if attr.HasField("t")]
    for tensor in tensors:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            full = os.path.join(base, location)
            if not os.path.isfile(full):
                missing.append(f"{tensor.name!r} in {location!r}")
    if missing:
        raise OnnxImportError(f"{path}: external data missing (expected beside the model, in "
                              f"{base}): {'; '.join(missing)}")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, base)
    except Exception as exc:
        raise OnnxImportError(f"{path}: cannot read its external data ({type(exc).__name__}: "
                              f"{exc})") from None


def upgrade(proto, where):
    """``proto`` at opset 13 or newer (version_converter for older ones); an error for opsets
    outside [MIN_IMPORT_OPSET, MAX_IMPORT_OPSET]."""
    onnx = require_onnx()
    opset = default_opset(proto)
    if opset is None or not MIN_IMPORT_OPSET <= opset <= MAX_IMPORT_OPSET:
        raise OnnxImportError(f"{where}: opset {opset} is outside the range fastcnn reads "
                              f"({MIN_IMPORT_OPSET} to {MAX_IMPORT_OPSET})")
    if opset >= CONVERT_BELOW:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, CONVERT_BELOW)
    except Exception as exc:
        raise OnnxImportError(f"{where}: cannot upgrade opset {opset} to {CONVERT_BELOW} with "
                              f"onnx.version_converter ({type(exc).__name__}: {exc})") from None
