"""Saving and loading models: one .npz file holding config, weights, buffers, optimizer state.

Why .npz with a JSON header: any NumPy (no fastcnn, no pickle) can read every array
(``np.load(path)["model/0.weight"]``), the header is plain JSON, and loading executes nothing
from the file (``allow_pickle=False``). The archive holds:

- ``__fastcnn__``: a uint8 array with the UTF-8 JSON header: format, version, the model config
  (``model.to_config()``), the optimizer's and scheduler's scalar state, and user ``extra``;
- ``model/<state_dict key>``: each parameter and buffer;
- ``optimizer/<parameter name>/<state key>``: each optimizer state array.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over the
target: a crash or a full disk mid-save leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["save", "load", "load_checkpoint", "Checkpoint"]

FORMAT = "fastcnn-checkpoint"
VERSION = 1
_HEADER = "__fastcnn__"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a run's files get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, rename it over
    ``path``. On any failure the temp file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save(model, path, optimizer=None, scheduler=None, extra: dict | None = None) -> None:
    """Write ``model`` (and optionally its optimizer/scheduler state and a JSON-able ``extra``
    dict) to ``path`` atomically."""
    header = {"format": FORMAT, "version": VERSION, "config": model.to_config(),
              "extra": extra or {}}
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for pname, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer/{pname}/{key}"] = value
                else:
                    scalars.setdefault(pname, {})[key] = value
        header["optimizer"] = {"type": sd["type"], "step_count": sd["step_count"],
                               "groups": sd["groups"], "scalars": scalars}
    if scheduler is not None:
        header["scheduler"] = scheduler.state_dict()
    blob = json.dumps(header, default=_json_default).encode("utf-8")
    arrays[_HEADER] = np.frombuffer(blob, dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


class Checkpoint:
    """What :func:`load_checkpoint` read: ``model``, ``optimizer_state`` (for
    ``optimizer.load_state_dict``), ``scheduler_state``, ``extra``, ``config``."""

    def __init__(self, model, optimizer_state, scheduler_state, extra, config):
        self.model = model
        self.optimizer_state = optimizer_state
        self.scheduler_state = scheduler_state
        self.extra = extra
        self.config = config


def load_checkpoint(path) -> Checkpoint:
    """Read a file written by :func:`save`; ValueError if it is not one (or is damaged)."""
    from fastcnn.model import build_model

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files") or _HEADER not in archive.files:
                raise ValueError(f"{path}: not a fastcnn checkpoint (no {_HEADER} header)")
            header = json.loads(archive[_HEADER].tobytes().decode("utf-8"))
            arrays = {k: archive[k] for k in archive.files if k != _HEADER}
    except ValueError as exc:
        if "not a fastcnn checkpoint" in str(exc):
            raise
        raise ValueError(f"{path}: not a fastcnn checkpoint or damaged ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, UnicodeDecodeError,
            json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path}: not a fastcnn checkpoint, or truncated/corrupted "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a fastcnn checkpoint (the header is a JSON "
                         f"{type(header).__name__}, not an object)")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastcnn checkpoint (format {header.get('format')!r})")
    version = header.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: not a fastcnn checkpoint (format version {version!r})")
    if version > VERSION:
        raise ValueError(f"{path}: written by a newer fastcnn (format version "
                         f"{header['version']}, this one reads {VERSION})")
    try:
        model = build_model(header.get("config"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: the checkpoint's model config is invalid ({exc})") from None
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
    optimizer_state = None
    if "optimizer" in header:
        meta = header["optimizer"]
        state: dict = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                pname, skey = key[len("optimizer/"):].rsplit("/", 1)
                state.setdefault(pname, {})[skey] = value
        for pname, scalars in meta.get("scalars", {}).items():
            state.setdefault(pname, {}).update(scalars)
        optimizer_state = {"type": meta["type"], "step_count": meta["step_count"],
                           "groups": meta["groups"], "state": state}
    return Checkpoint(model, optimizer_state, header.get("scheduler"), header.get("extra", {}),
                      header["config"])


def load(path):
    """The model saved at ``path`` (see :func:`load_checkpoint` for optimizer state)."""
    return load_checkpoint(path).model
