"""The training job: ``fastcnn train [CONFIG]`` and its Python API ``fastcnn.train(config)``.

A training config has the sections ``model`` (a model config, a path, or a bundled name such as
"lenet5"), ``data`` (see :mod:`fastcnn.data`), ``loss``, ``optimizer``, ``schedule`` and ``train``
(epochs, batch_size, seed, early_stopping, clip_grad_norm/value, num_threads); the validation
split is ``data.validation_split`` (default 0.1). The run folder receives config.json (resolved), history.json (per epoch),
metrics.json (final), best.fcnn / last.fcnn checkpoints, curves.png and confusion.png; every file
is written atomically.

Resuming (``resume=True``) reloads last.fcnn, which holds the model, the optimizer and scheduler
state, the random generator's state, the history and the early-stopping counters at the end of
the last completed epoch, so the resumed run produces the same weights as one never stopped.

``distributed=True`` (``fastcnn train --distributed`` under ``mpiexec -n K``) trains on the K
processes of an MPI job, data-parallel (:mod:`fastcnn.distributed`): ``batch_size`` is the
global batch, and only rank 0 prints and writes the run folder. Without it the same code runs
with a single-process communicator.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import zlib

import numpy as np

import fastcnn
from fastcnn import data as datamod
from fastcnn.checkpoint import atomic_write, load_checkpoint, save
from fastcnn.distributed import DataParallel, communicator, default_num_threads
from fastcnn.losses import build_loss
from fastcnn.model import build_model, bundled_config, load_config
from fastcnn.optim import build_optimizer, clip_grad_norm, clip_grad_value
from fastcnn.registry import SCHEDULERS
from fastcnn.schedulers import ReduceLROnPlateau, build_scheduler

__all__ = ["Trainer", "train", "evaluate", "resolve_config", "apply_overrides", "bundled_config",
           "TrainingDiverged", "RunFolderError"]

TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 64, "seed": 0, "early_stopping": None, "clip_grad_norm": None, "clip_grad_value": None,
                  "num_threads": None, "eval_batch_size": 500, "sync_batch_norm": False,
                  # a .fcnn or .onnx file whose weights the model starts from (fine-tuning)
                  "init_weights": None}
SECTIONS = ("name", "model", "data", "loss", "optimizer", "schedule", "train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _load_any(value):
    """A config dict from a dict (copied), a .json/.yaml path or a bundled name; a path that
    does not exist is a FileNotFoundError naming it (and the bundled names)."""
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if _is_onnx(value):                  # an .onnx model: its (converted) fastcnn config
        from fastcnn.onnx import load_model
        return load_model(value).to_config()
    if isinstance(value, (str, os.PathLike)):
        return copy.deepcopy(load_config(value))
    raise ValueError(f"expected a config dict, a file path or a bundled config name, got {value!r}")


def _is_onnx(value):
    return isinstance(value, (str, os.PathLike)) and os.fspath(value).lower().endswith(".onnx")


def _initial_weights(path):
    """The state_dict a run starts from (train.init_weights): an .onnx file's (fine-tuning an
    imported model) or a fastcnn checkpoint's."""
    if _is_onnx(path):
        from fastcnn.onnx import load_model
        return load_model(path).state_dict()
    return load_checkpoint(path).model.state_dict()


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def merge_config(base, update):
    """``update`` merged into a copy of ``base``: dicts key by key, recursively; a ``None``
    (JSON null) value deletes the key; any other value (lists included) replaces. The override
    rule of ``--set``: ``data.augment={"horizontal_flip": true}`` keeps ``random_crop``."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return copy.deepcopy(update)
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_config(merged.get(key), value)
    return merged


def _list_index(node, part, path):
    try:
        index = int(part)
    except ValueError:
        index = None
    if index is None or not -len(node) <= index < len(node):
        raise ValueError(f"--set {path}: {part!r} is not an index of this list of {len(node)} "
                         f"(0 .. {len(node) - 1})")
    return index


def apply_overrides(config: dict, overrides) -> dict:
    """Apply ``["train.epochs=3", "optimizer.lr=0.01", "data.augment={...}"]`` in place: a dotted
    key path (list items by index: ``model.layers.0.out_channels``), ``=``, and a JSON value
    (bare words are strings).

    A dict value is merged into the dict already there (:func:`merge_config`); ``null`` deletes
    the key (the default applies again; in a list, it removes the item); anything else replaces.
    A model given by name or path (``"model": "lenet5"``) is expanded into its config when a key
    inside it is set. Descending into a value that is not a section is an error."""
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"--set: bad key {key!r}")
        value = _parse_value(raw)
        node = config
        for depth, part in enumerate(parts[:-1]):
            path = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, path)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif depth == 0 and part == "model" and isinstance(child, str):
                child = node[part] = _load_any(child)     # "lenet5" -> its layers, to set them
            elif not isinstance(child, (dict, list)):
                raise ValueError(f"--set {key}: {path} is {child!r}, not a section with keys")
            node = child
        last = parts[-1]
        if isinstance(node, list):
            index = _list_index(node, last, key)
            if value is None:
                del node[index]
            else:
                node[index] = merge_config(node[index], value)
        elif not isinstance(node, dict):
            raise ValueError(f"--set {key}: {'.'.join(parts[:-1])} is {node!r}, not a section")
        elif value is None:
            node.pop(last, None)
        else:
            node[last] = merge_config(node.get(last), value)
    return config


# Dataset options that name files or folders: stored absolute in a run's config, so that eval
# and resume work from any directory.
PATH_OPTIONS = ("root", "path")


def _absolute_paths(data: dict) -> dict:
    for key in PATH_OPTIONS:
        if isinstance(data.get(key), str):
            data[key] = os.path.abspath(os.path.expanduser(data[key]))
    return data


def _check_early_stopping(value):
    """``train.early_stopping``: null (none) or {"patience": int >= 1, "min_delta": >= 0}."""
    if value is None:
        return
    if not isinstance(value, dict) or not set(value) <= {"patience", "min_delta"} \
            or "patience" not in value:
        raise ValueError(f"train.early_stopping: expected null or {{\"patience\": N, "
                         f"\"min_delta\": 0.0}} (min_delta optional), got {value!r}")
    patience, delta = value["patience"], value.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"train.early_stopping.patience: expected an int >= 1, got {patience!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta >= 0:
        raise ValueError(f"train.early_stopping.min_delta: expected a number >= 0, got {delta!r}")


def data_seed(config: dict) -> int:
    """The seed of a resolved config's data subset and split: ``data.seed``, else
    ``train.seed``."""
    return config["data"].get("seed", config["train"]["seed"])


def _is_model_config(config: dict) -> bool:
    return "layers" in config and "model" not in config


def resolve_config(config=None, overrides=()) -> dict:
    """The full training config: defaults filled in, the model section expanded, overrides
    applied, dataset paths (``data.root``, ``data.path``) made absolute. ``config=None`` is the
    bundled LeNet-5 on the embedded MNIST sample.

    A model config (one with ``layers``, such as the bundled "lenet5") is trained with the
    default recipe on the default data (``mnist_sample``) when its input is 1x28x28, or on the
    data the overrides name (``data.dataset=...``); otherwise the error says what to add."""
    config = _load_any("mnist_lenet5" if config is None else config)
    model_only = _is_model_config(config)
    if model_only:
        config = {"name": config.get("name", "run"), "model": config}
    apply_overrides(config, overrides)
    for key in config:
        if key not in SECTIONS:
            raise ValueError(f"training config: unknown section {key!r} (sections: "
                             f"{', '.join(SECTIONS)})")
    if "model" not in config:
        raise ValueError("training config: missing the 'model' section")
    if _is_onnx(config["model"]):       # fine-tune an imported model: start from its weights
        config.setdefault("train", {}).setdefault("init_weights",
                                                  os.path.abspath(config["model"]))
    config["model"] = _load_any(config["model"])
    if not isinstance(config.get("data", {}), dict):
        raise ValueError(f"training config: data must be a dict (a data section), got "
                         f"{config['data']!r}")
    if model_only and "dataset" not in config.get("data", {}):
        shape = list(config["model"].get("input_shape", [1, 28, 28]))
        if shape != [1, 28, 28]:
            name = config["name"]
            raise ValueError(
                f"{name} is a model config (input {'x'.join(map(str, shape))}), not a training "
                f"config, and the default data (mnist_sample) holds 1x28x28 images: name the "
                f"data it should learn, e.g. fastcnn train {name} --set data.dataset=cifar10 "
                f"--set data.root=DIR (CIFAR-10 is 3x32x32), or write a training config "
                f'{{"model": "{name}", "data": {{"dataset": ..., ...}}}} (README: training '
                f"configs)")
        config.setdefault("data", {})["dataset"] = "mnist_sample"
    config.setdefault("data", {"dataset": "mnist_sample"})
    _absolute_paths(config["data"])
    datamod.normalization_option(config["data"].get("normalize", True))    # checked early
    config.setdefault("loss", "cross_entropy")
    config.setdefault("optimizer", {"type": "adam", "lr": 1e-3})
    train = dict(TRAIN_DEFAULTS)
    unknown = [k for k in config.get("train", {}) if k not in TRAIN_DEFAULTS]
    if unknown:
        raise ValueError(f"training config: unknown train option(s) {', '.join(map(repr, unknown))}"
                         f" (options: {', '.join(TRAIN_DEFAULTS)})")
    train.update(config.get("train", {}))
    config["train"] = train
    _check_early_stopping(train["early_stopping"])
    schedule = config.get("schedule")
    if (isinstance(schedule, dict) and isinstance(schedule.get("type"), str)
            and SCHEDULERS.canonical(schedule["type"]) == "cosine" and "T_max" not in schedule):
        schedule["T_max"] = int(train["epochs"])    # sized by the run unless set (then recorded)
    config.setdefault("name", config["model"].get("name", "run"))
    return config


def _confusion(y_true, y_pred, classes):
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


class _Progress:
    """tqdm when it is installed and stderr is a terminal; otherwise nothing per batch."""

    def __init__(self, total, desc, enabled):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="sample", leave=False,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def evaluate(model, loss, x, y, batch_size=500):
    """(mean loss, accuracy, predictions) of ``model`` on (x, y), in eval mode and in batches;
    the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    total, correct, preds = 0.0, 0, []
    try:
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size])
            yb = y[start:start + batch_size]
            total += float(loss.value(logits, yb)) * len(yb)
            p = logits.argmax(axis=1)
            preds.append(p)
            correct += int((p == yb).sum())
    finally:
        model.train(was_training)
    n = max(len(x), 1)
    return total / n, correct / n, np.concatenate(preds) if preds else np.zeros(0, int)


class RunFolderError(ValueError):
    """A run folder that cannot be used: it holds another run, or another process trains in it."""


# What a run writes into its folder (all of it replaced by overwrite=True), and its lock file.
RUN_FILES = ("config.json", "history.json", "metrics.json", "best.fcnn", "last.fcnn",
             "curves.png", "confusion.png")
LOCK_FILE = ".fastcnn-train.lock"


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # alive, another user's
        return True
    return True


# What may change when a run is resumed (dotted config keys, and prefixes of them): the rest
# would make it another run.
RESUMABLE = ("train.epochs", "train.num_threads", "train.eval_batch_size",
             "train.early_stopping")


def _flatten(config, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Trainer:
    """Trains the model of a training config; :meth:`fit` runs it and returns the metrics.

    The run folder (``out_dir``, default ``runs/<name>``, or the first of ``runs/<name>-2``,
    ``-3``, ... that holds no run) is claimed when fit starts: a lock file, created exclusively,
    keeps a second process out while this one trains (a lock left by a process that no longer
    runs is taken over). A folder that already holds a run is refused unless ``resume=True``
    (continue it) or ``overwrite=True`` (replace it: its run files are deleted first). A run
    that ends before its first epoch is saved (an error, Ctrl-C) leaves no files behind, and
    no folder if it made the folder.

    ``distributed=True``: train on every process of the MPI job this process belongs to (see
    :mod:`fastcnn.distributed`; needs mpi4py); ``train.sync_batch_norm`` then computes batch
    norm statistics over all of them."""

    def __init__(self, config=None, out_dir=None, *, overrides=(), resume=False,
                 overwrite=False, progress=None, log=print, distributed=False):
        if resume and overwrite:
            raise ValueError("Trainer: resume=True continues the run in out_dir and "
                             "overwrite=True replaces it: pass one of them")
        self.comm = communicator(distributed)
        self.dp = DataParallel(self.comm)
        self._resume_changes = []
        # a resumed run's config is rank 0's (its run folder's); a new run's is each rank's
        # own, checked to agree before the first step
        self.config = (self.dp.on_root(self._resumed_config, out_dir, config, overrides)
                       if resume else self.dp.collective(resolve_config, config, overrides))
        self.tcfg = self.config["train"]
        self.log = (log or (lambda *a, **k: None)) if self.comm.is_root else (lambda *a, **k: None)
        self.progress = ((sys.stderr.isatty() if progress is None else progress)
                         and self.comm.is_root)
        self.resume, self.overwrite = resume, overwrite
        self._auto_named = out_dir is None and not resume
        self.out_dir = (os.fspath(out_dir) if out_dir is not None
                        else os.path.join("runs", str(self.config["name"])))
        self._lock = None
        if self.tcfg["num_threads"]:
            fastcnn.set_num_threads(int(self.tcfg["num_threads"]))
        elif distributed and not (os.environ.get("FASTCNN_NUM_THREADS")
                                  or os.environ.get("OMP_NUM_THREADS")):
            # the ranks on one machine share its cores rather than each taking all of them
            fastcnn.set_num_threads(default_num_threads(self.comm))

    # -- the run folder ----------------------------------------------------------------------
    def _resumed_config(self, out_dir, config, overrides):
        """The run's own resolved config (its config.json), with ``overrides``; a ``config``
        given as well must agree with it but for RESUMABLE keys. Refuses changes that would
        make a different run (model, data, batch size, optimizer...)."""
        path = os.path.join(os.fspath(out_dir), "config.json") if out_dir is not None else None
        if path is None or not os.path.exists(path):
            return resolve_config(config, overrides)    # fit() says there is nothing to resume
        with open(path) as fh:
            run = json.load(fh)
        if isinstance(run.get("data"), dict):     # a run from before paths were stored absolute
            _absolute_paths(run["data"])
        new = resolve_config(run if config is None else config, overrides)
        new = json.loads(json.dumps(new, default=float))        # as config.json holds it
        before, after = _flatten(run), _flatten(new)
        changed = [k for k in sorted(after) if before.get(k, after[k]) != after[k]
                   or (k not in before and not k.startswith("model."))]
        refused = [k for k in changed if not k.startswith(RESUMABLE)]
        if refused:
            details = "; ".join(f"{k}: {before.get(k)!r} -> {after[k]!r}" for k in refused)
            raise RunFolderError(
                f"--resume continues the run in {os.fspath(out_dir)} with its own config "
                f"({path}); this would change {details}. Only {', '.join(RESUMABLE)} may change "
                f"on resume: start a new run (another --out, or --overwrite) instead")
        self._resume_changes = [f"{k} {before.get(k)!r} -> {after[k]!r}" for k in changed]
        return new

    def _existing_run_files(self):
        return [f for f in RUN_FILES if os.path.exists(os.path.join(self.out_dir, f))]

    def _take_lock(self):
        """Create the lock file exclusively; None if a live process holds it (its pid)."""
        lock = os.path.join(self.out_dir, LOCK_FILE)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    with open(lock) as fh:
                        pid = int(fh.read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _process_alive(pid):
                    return pid
                try:
                    os.remove(lock)             # left by a process that no longer runs
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._lock = lock
            return None
        raise RunFolderError(f"run folder {self.out_dir}: could not create {lock}")

    def _claim(self):
        base, n = self.out_dir, 1
        while True:
            self._created = not os.path.isdir(self.out_dir)
            os.makedirs(self.out_dir, exist_ok=True)
            holder = self._take_lock()
            existing = self._existing_run_files() if holder is None else []
            if self._auto_named and (holder is not None or existing):
                if holder is None:
                    self._release()
                n += 1
                self.out_dir = f"{base}-{n}"            # runs/<name>-2, -3, ...
                continue
            break
        if holder is not None:
            raise RunFolderError(f"run folder {self.out_dir} is in use: process {holder} is "
                                 f"training in it ({os.path.join(self.out_dir, LOCK_FILE)}); "
                                 f"wait for it to end or choose another --out")
        if self.resume and "last.fcnn" not in existing:
            self._release()
            raise RunFolderError(f"nothing to resume in {self.out_dir}: it holds no last.fcnn "
                                 f"(start the run without --resume)")
        if not self.resume and existing:
            if not self.overwrite:
                self._release()
                raise RunFolderError(
                    f"run folder {self.out_dir} already holds a run ({', '.join(existing)}): "
                    f"pass --resume to continue it, --overwrite to replace it, or choose "
                    f"another --out")
            for name in existing:
                os.remove(os.path.join(self.out_dir, name))

    def _release(self):
        if self._lock is not None:
            try:
                os.remove(self._lock)
            except FileNotFoundError:
                pass
            self._lock = None

    def _discard_unsaved_run(self):
        """A run that saved no epoch: remove what it wrote, and the folder if it made it."""
        for name in self._existing_run_files():
            os.remove(os.path.join(self.out_dir, name))
        self._release()
        if self._created:
            try:
                os.rmdir(self.out_dir)
            except OSError:                 # not empty: something of the user's is there
                pass

    # -- pieces ------------------------------------------------------------------------------
    def _prepare_data(self):
        splits = datamod.load_dataset(self.config["data"], seed=data_seed(self.config))
        x_train, y_train = splits.train
        x_val, y_val = splits.validation if splits.validation is not None else (None, None)
        for part, arrays in (("training", splits.train), ("validation", splits.validation),
                             ("test", splits.test)):
            if arrays is None:
                continue
            bad = ~np.isfinite(arrays[0].reshape(len(arrays[0]), -1)).all(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                what = "NaN" if np.isnan(arrays[0][i]).any() else "inf"
                raise ValueError(f"data: the {part} images ({splits.name}) contain {what} at "
                                 f"sample {i} ({int(bad.sum())} samples in all): clean or drop "
                                 f"them before training")
        stats = datamod.normalization_stats(self.config["data"].get("normalize", True), x_train)
        if stats is None:                   # data.normalize = false: the pixels as loaded
            self.normalization = None
            norm = lambda x: x  # noqa: E731
        else:
            mean, std = stats
            self.normalization = {"mean": [float(m) for m in mean],
                                  "std": [float(s) for s in std]}
            norm = lambda x: None if x is None else datamod.normalize(x, mean, std)  # noqa: E731
        self.train_set = (norm(x_train), y_train)
        self.val_set = None if x_val is None else (norm(x_val), y_val)
        self.test_set = None if splits.test is None else (norm(splits.test[0]), splits.test[1])
        self.num_classes = splits.num_classes
        self.augment = datamod.Augmenter(self.config["data"].get("augment") or {})
        model_cfg = self.config["model"]
        shape = list(splits.input_shape)
        if "input_shape" not in model_cfg:
            model_cfg["input_shape"] = shape
        elif list(model_cfg["input_shape"]) != shape:
            raise ValueError(f"model input_shape {model_cfg['input_shape']} does not match the "
                             f"data's per-sample shape {shape} ({splits.name}): choose data "
                             f"of the model's shape, or another model (or set "
                             f"model.input_shape={json.dumps(shape)} if its layers fit)")

    def _build(self):
        model_cfg = dict(self.config["model"])
        model_cfg.setdefault("seed", self.tcfg["seed"])
        # the model carries the normalization it is trained with: its checkpoints work on raw
        # images anywhere, through model.preprocess (fastcnn predict, eval)
        model_cfg["preprocessing"] = self.normalization
        self.model = build_model(model_cfg)
        if self.tcfg.get("init_weights"):
            self.model.load_state_dict(_initial_weights(self.tcfg["init_weights"]))
        self.loss = build_loss(self.config["loss"])
        self.optimizer = build_optimizer(self.config["optimizer"], self.model.parameters())
        sched = self.config.get("schedule")
        self.scheduler = build_scheduler(sched, self.optimizer) if sched else None
        self._use_rng(np.random.default_rng(self.tcfg["seed"]))

    def _use_rng(self, rng):
        self.rng = rng
        for layer in self.model.layers.values():       # dropout draws from the run's generator
            if hasattr(layer, "rng"):
                layer.rng = rng

    def evaluate(self, x, y):
        """(mean loss, accuracy, predictions) of the model on (x, y); see :func:`evaluate`.
        Distributed, each rank evaluates its share and the predictions are rank 0's only."""
        return self.dp.evaluate(evaluate, self.model, self.loss, x, y,
                                self.tcfg["eval_batch_size"])

    def _train_epoch(self, epoch):
        x, y = self.train_set
        bar = _Progress(len(x), f"epoch {epoch}/{self.tcfg['epochs']}", self.progress)
        seen, loss_sum, correct = 0, 0.0, 0
        t0 = time.perf_counter()
        clip_norm, clip_value = self.tcfg["clip_grad_norm"], self.tcfg["clip_grad_value"]
        params = self.model.parameters()
        # the permutation comes from (seed, epoch), augmentation and dropout from (seed, epoch,
        # rank): a resumed run draws what the uninterrupted one drew
        seed = self.tcfg["seed"]
        self._use_rng(self.dp.epoch_rng(seed, epoch))
        try:
            for xb, yb, total in self.dp.batches(x, y, self.tcfg["batch_size"], seed, epoch):
                n = len(yb)
                self.model.zero_grad()
                value, hits = 0.0, 0
                if n == 0:          # a share of nothing: join the collectives, add nothing
                    self.dp.idle_forward()
                    self.dp.idle_backward()
                else:
                    if self.augment:
                        xb = self.augment(xb, self.rng)
                    logits = self.model(xb)
                    value = float(self.loss(logits, yb))
                    hits = int((logits.argmax(axis=1) == yb).sum())
                    if math.isfinite(value):
                        grad = self.loss.backward()
                        if n != total:      # this rank's share of the global batch's mean
                            grad = grad * np.asarray(n / total, grad.dtype)
                        self.model.backward(grad, input_grad=False)
                    else:
                        self.dp.idle_backward()
                # gradients summed over the ranks, with the loss and accuracy sums
                batch_loss, hits, n = self.dp.reduce_step(params, value * n, hits, n)
                if not math.isfinite(batch_loss):
                    value = batch_loss / n
                    self.dp.agreed(None)        # every rank sees the reduced loss
                    last = os.path.join(self.out_dir, "last.fcnn")
                    kept = (f"The last good checkpoint is {last}" if os.path.exists(last)
                            else "No epoch was saved")
                    raise TrainingDiverged(
                        f"loss became {value} in epoch {epoch} after {seen} samples; stopped. "
                        f"{kept} (lower optimizer.lr or set train.clip_grad_norm)")
                if clip_value:
                    clip_grad_value(params, clip_value)
                if clip_norm:
                    clip_grad_norm(params, clip_norm)
                self.optimizer.step()
                seen += n
                loss_sum += batch_loss
                correct += hits
                bar.update(n, loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                           ips=f"{seen / (time.perf_counter() - t0):.0f}/s")
        finally:
            bar.close()
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - t0

    def _write_json(self, name, payload):
        text = json.dumps(payload, indent=2, default=float)
        atomic_write(os.path.join(self.out_dir, name), lambda fh: fh.write(text.encode()))

    def _save(self, name, epoch):
        extra = {"epoch": epoch, "normalization": self.normalization,
                 "num_classes": self.num_classes, "history": self.history,
                 "best": self.best, "bad_epochs": self.bad_epochs,
                 "rng_state": self.rng.bit_generator.state, "train_config": self.config}
        save(self.model, os.path.join(self.out_dir, name), optimizer=self.optimizer,
             scheduler=self.scheduler, extra=extra)

    def _restore(self):
        path = os.path.join(self.out_dir, "last.fcnn")
        ck = load_checkpoint(path)
        self.model.load_state_dict(ck.model.state_dict())
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        if self.scheduler is not None and ck.scheduler_state is not None:
            self.scheduler.load_state_dict(ck.scheduler_state)
        extra = ck.extra
        self.history = extra["history"]
        self.best = extra["best"]
        self.bad_epochs = extra["bad_epochs"]
        self.rng.bit_generator.state = extra["rng_state"]
        return int(extra["epoch"])

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        # distributed: an error that not every rank raised ends the whole job (no rank waits
        # forever); rank 0 alone owns the run folder
        with self.dp.guard():
            self.dp.on_root(self._claim)
            self.out_dir = self.comm.bcast(self.out_dir)
            try:
                return self._fit()
            finally:
                # whatever ended the run (an error included): a last.fcnn here is this run's
                # own (an older run's was refused or deleted by _claim), so without one nothing
                # was saved
                if self.comm.is_root:
                    if not self.resume and not os.path.exists(os.path.join(self.out_dir,
                                                                           "last.fcnn")):
                        self._discard_unsaved_run()
                    self._release()

    def _facts(self):
        """What every rank of a distributed run must agree on before the first step."""
        x, y = self.train_set
        flat = _flatten(json.loads(json.dumps(self.config, default=float)))
        facts = {f"config {k}": v for k, v in flat.items()}
        facts["parameters"] = [[p.name, list(p.shape)] for p in self.model.parameters()]
        for part, arrays in (("training", self.train_set), ("validation", self.val_set),
                             ("test", self.test_set)):
            facts[f"{part} samples"] = 0 if arrays is None else len(arrays[1])
        facts["steps per epoch"] = -(-len(y) // int(self.tcfg["batch_size"]))
        facts["training data checksum"] = zlib.adler32(np.ascontiguousarray(y).data,
                                                       zlib.adler32(np.ascontiguousarray(x).data))
        facts["fastcnn version"] = fastcnn.__version__
        return facts

    def _share_resumed_state(self):
        """Rank 0 read last.fcnn: its optimizer, scheduler and run state on every rank."""
        if self.comm.size == 1:
            return
        root = self.comm.is_root
        state = self.comm.bcast({
            "optimizer": self.optimizer.state_dict(), "history": self.history,
            "best": self.best, "bad_epochs": self.bad_epochs,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        } if root else None)
        if not root:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.history, self.best = state["history"], state["best"]
            self.bad_epochs = state["bad_epochs"]
        self.dp.broadcast_state(self.model)

    def _save_epoch(self, epoch, improved):
        if not os.path.exists(os.path.join(self.out_dir, "config.json")):
            self._write_json("config.json", self.config)
        if improved:
            self._save("best.fcnn", epoch)
        self._save("last.fcnn", epoch)
        self._write_json("history.json", self.history)

    def _fit(self) -> dict:
        t_start = time.perf_counter()
        self.dp.collective(self._prepare_data)
        self.dp.collective(self._build)
        self.dp.setup(self.model, bool(self.tcfg["sync_batch_norm"]))
        if self.comm.size == 1:
            self._write_json("config.json", self.config)
        # distributed, config.json comes with the first epoch's files: a job that one rank
        # aborts before then (rank 0 is killed, no clean-up) leaves no run behind
        self.history, self.best, self.bad_epochs = [], None, 0
        start = self.dp.on_root(self._restore) if self.resume else 0
        if self.resume:
            self._share_resumed_state()
        self.dp.check_agreement(self._facts)
        if self.resume:
            changes = "; ".join(self._resume_changes)
            self.log(f"resumed {self.out_dir} after epoch {start}"
                     + (f" (changed: {changes})" if changes else ""))
        stopping = self.tcfg["early_stopping"] or {}
        patience = stopping.get("patience") if isinstance(stopping, dict) else None
        min_delta = stopping.get("min_delta", 0.0) if isinstance(stopping, dict) else 0.0
        epochs = int(self.tcfg["epochs"])
        train_time, samples = 0.0, 0
        interrupted = False
        self.log(f"training {self.config['name']} on {self.config['data'].get('dataset')}: "
                 f"{self.model.num_parameters():,} parameters, "
                 f"{len(self.train_set[0])} training samples, {epochs} epochs, "
                 + (f"{self.comm.size} processes x " if self.comm.size > 1 else "")
                 + f"{fastcnn.get_num_threads()} threads -> {self.out_dir}")
        try:
            for epoch in range(start + 1, epochs + 1):
                loss, acc, seen, seconds = self._train_epoch(epoch)
                train_time += seconds
                samples += seen
                self.dp.sync_buffers(self.model)        # running statistics: the ranks' mean
                self.dp.check_identical(self.model)
                record = {"epoch": epoch, "train_loss": loss, "train_acc": acc,
                          "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
                monitor = loss
                if self.val_set is not None:
                    record["val_loss"], record["val_acc"], _ = self.evaluate(*self.val_set)
                    monitor = record["val_loss"]
                self.history.append(record)
                if self.scheduler is not None:
                    if isinstance(self.scheduler, ReduceLROnPlateau):
                        self.scheduler.step(monitor)
                    else:
                        self.scheduler.step()
                improved = self.best is None or monitor < self.best - min_delta
                if improved:
                    self.best, self.bad_epochs = monitor, 0
                else:
                    self.bad_epochs += 1
                # rank 0 writes (atomically); every rank goes on once it has
                self.dp.on_root(self._save_epoch, epoch, improved)
                val = (f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
                       if "val_loss" in record else "")
                self.log(f"epoch {epoch:3d}/{epochs}  train loss {loss:.4f} acc {acc:.4f}{val}  "
                         f"{seen / seconds:,.0f} samples/s{'  *' if improved else ''}")
                if self.dp.decide(patience is not None and self.bad_epochs >= patience):
                    self.log(f"early stopping: no improvement for {patience} epochs")
                    break
        except KeyboardInterrupt:
            if self.comm.size > 1:
                raise                   # the guard ends every rank
            interrupted = True
            last = os.path.join(self.out_dir, "last.fcnn")
            if not os.path.exists(last):
                self.log("\ninterrupted before the first epoch ended: nothing was saved")
                return {"name": self.config["name"], "epochs_run": 0, "interrupted": True}
            self.log(f"\ninterrupted; {last} holds the last completed epoch; continue with "
                     f"--resume")
        return self._finish(t_start, train_time, samples, interrupted)

    def _finish(self, t_start, train_time, samples, interrupted):
        best_path = os.path.join(self.out_dir, "best.fcnn")

        def load_best():        # rank 0's best epoch: its weights, and its number
            if os.path.exists(best_path):
                best = load_checkpoint(best_path)
                self.model.load_state_dict(best.model.state_dict())
                return best.extra.get("epoch")
            return None
        best_epoch = self.dp.on_root(load_best)
        self.dp.broadcast_state(self.model)
        metrics = {"name": self.config["name"], "epochs_run": len(self.history),
                   "interrupted": interrupted, "train_time_s": train_time,
                   "samples_per_s": samples / train_time if train_time else None,
                   "num_threads": fastcnn.get_num_threads()}
        if self.comm.size > 1:
            metrics["processes"] = self.comm.size
        preds = None
        if self.test_set is not None:
            loss, acc, preds = self.evaluate(*self.test_set)
            metrics.update(test_loss=loss, test_accuracy=acc)
        metrics["wall_time_s"] = time.perf_counter() - t_start
        self.dp.on_root(self._write_results, metrics, preds, best_epoch)
        if "test_accuracy" in metrics:
            self.log(f"test accuracy {metrics['test_accuracy']:.4f}  test loss "
                     f"{metrics['test_loss']:.4f}  ({metrics['wall_time_s']:.1f} s)")
        return metrics

    def _write_results(self, metrics, preds, best_epoch):
        from fastcnn import plots

        if preds is not None:
            matrix = _confusion(self.test_set[1], preds, self.num_classes)
            plots.plot_confusion(matrix, os.path.join(self.out_dir, "confusion.png"),
                                 f"{self.config['name']}: test accuracy "
                                 f"{metrics['test_accuracy']:.4f}")
        plots.plot_curves(self.history, os.path.join(self.out_dir, "curves.png"),
                          self.config["name"], best=best_epoch)
        self._write_json("metrics.json", metrics)


def train(config=None, out_dir=None, **kwargs) -> dict:
    """Run a training config (dict, path, or bundled name; None = LeNet-5 on MNIST sample).
    ``distributed=True`` trains on every process of the MPI job (see :class:`Trainer`)."""
    return Trainer(config, out_dir, **kwargs).fit()
