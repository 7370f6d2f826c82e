"""The ``fastcnn`` command (also ``python -m fastcnn``).

    fastcnn train [CONFIG] [--out DIR] [--epochs N] [--set key=value ...] [--resume | --overwrite]
                  [--distributed [--sync-bn]]     (under mpiexec -n K)
    fastcnn eval CHECKPOINT
    fastcnn predict CHECKPOINT INPUT [--top K]
    fastcnn summary CONFIG
    fastcnn export CHECKPOINT OUT.onnx [--opset N]
    fastcnn bench [--threads N] [--filter TEXT] [--isa avx2|avx512] [--rounds K]
                  [--scaling | --profile [FILTER] | --distributed]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _cmd_train(args):
    from fastcnn.training import RUN_FILES, TrainingDiverged, Trainer

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.threads is not None:
        overrides.append(f"train.num_threads={args.threads}")
    if args.sync_bn:
        if not args.distributed:
            raise ValueError("--sync-bn synchronizes batch norm across the processes of a "
                             "distributed run: pass --distributed too (under mpiexec -n K)")
        overrides.append("train.sync_batch_norm=true")
    if not args.distributed:
        from fastcnn.distributed import launched_ranks
        ranks = launched_ranks()
        if ranks > 1:
            raise ValueError(f"this process is one of {ranks} started by an MPI launcher: pass "
                             f"--distributed to train them as one job (without it each would "
                             f"train a copy of its own)")
    try:
        trainer = Trainer(args.config, args.out, overrides=overrides, resume=args.resume,
                          overwrite=args.overwrite, progress=False if args.quiet else None,
                          log=(lambda *a, **k: None) if args.quiet else print,
                          distributed=args.distributed)
        metrics = trainer.fit()
    except Exception as exc:
        from fastcnn.distributed import DistributedError
        if args.distributed and _mpi_rank() != 0:
            return 2            # raised on every rank alike: rank 0 reports it
        if isinstance(exc, (TrainingDiverged, DistributedError)):
            print(f"fastcnn train: {exc}", file=sys.stderr)
            return 2
        raise
    if not trainer.comm.is_root:
        return 0
    if args.quiet:
        print(json.dumps(metrics))
    elif metrics["epochs_run"]:
        written = [f for f in RUN_FILES if os.path.exists(os.path.join(trainer.out_dir, f))]
        print(f"run folder: {trainer.out_dir}  ({', '.join(written)})")
    return 130 if metrics["interrupted"] else 0     # 128 + SIGINT, as a shell reports Ctrl-C


def _mpi_rank():
    """This process's rank in its MPI job (0 when mpi4py is not loaded)."""
    mpi4py = sys.modules.get("mpi4py.MPI")
    return mpi4py.COMM_WORLD.Get_rank() if mpi4py is not None else 0


def _load_checkpoint(path):
    from fastcnn.checkpoint import Checkpoint, load_checkpoint

    if os.fspath(path).lower().endswith(".onnx"):    # an exported or foreign model: no run
        from fastcnn.onnx import load_model
        model = load_model(path)
        return Checkpoint(model, None, None, {}, model.to_config())
    ck = load_checkpoint(path)
    if ck.model.preprocessing is None and ck.extra.get("normalization"):
        # a run's checkpoint from before models carried their preprocessing
        ck.model.preprocessing = dict(ck.extra["normalization"])
    return ck


def _check_classifier(model, path, command):
    """eval and predict score classes: the model's output must be one vector per sample."""
    shape = model.output_shape
    if isinstance(shape, list) or len(tuple(shape)) != 1:
        raise ValueError(f"{path}: fastcnn {command} scores classifiers (an output of class "
                         f"scores per sample), and this model's output is {shape}: run it from "
                         f"Python (fastcnn.load(path)) instead")


def _data_spec(text):
    """The data ``fastcnn eval --data`` names: an .npz file, a JSON/YAML file holding a data
    section or a training config (its ``data``), a JSON object, or a dataset name."""
    from fastcnn.model import load_config
    from fastcnn.registry import DATASETS

    if text.lower().endswith(".npz"):
        if not os.path.isfile(text):
            raise FileNotFoundError(f"--data: file not found: {text}")
        return {"dataset": "npz", "path": os.path.abspath(text)}
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--data: not valid JSON ({exc}): {text}") from None
    elif text.lower().endswith((".json", ".yaml", ".yml")):
        spec = load_config(text)
        spec = spec.get("data", spec)
    elif text in DATASETS:
        spec = {"dataset": text}
    else:
        raise ValueError(f"--data: {text!r} is not an .npz file, a .json/.yaml file, a JSON "
                         f"object nor a dataset name ({', '.join(DATASETS.names())})")
    if not isinstance(spec, dict) or "dataset" not in spec:
        raise ValueError(f"--data {text}: expected a data section with a 'dataset' key, got "
                         f"{spec!r}")
    return spec


def _run_data(train_config, checkpoint):
    """The run's own data section, with a relative dataset path (a run from before paths were
    stored absolute) looked up from here, then from the run folder and its parents."""
    from fastcnn.training import PATH_OPTIONS

    data = dict(train_config["data"])
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    for key in PATH_OPTIONS:
        value = data.get(key)
        if not isinstance(value, str) or os.path.isabs(value) or os.path.exists(value):
            continue
        for base in (run_dir, os.path.dirname(run_dir), os.path.dirname(os.path.dirname(run_dir))):
            if os.path.exists(os.path.join(base, value)):
                data[key] = os.path.join(base, value)
                break
    return data


def _cmd_eval(args):
    from fastcnn.data import load_dataset
    from fastcnn.losses import build_loss
    from fastcnn.training import data_seed, evaluate

    ck = _load_checkpoint(args.checkpoint)
    _check_classifier(ck.model, args.checkpoint, args.command)
    train_config = ck.extra.get("train_config") or {}
    if args.data is not None:
        # other data: all of it, its test split when it has one
        spec = dict(_data_spec(args.data), validation_split=0)
        splits = load_dataset(spec, seed=spec.get("seed", 0))
        split = "test" if splits.test is not None else "train"
    elif train_config:
        splits = load_dataset(_run_data(train_config, args.checkpoint),
                              seed=data_seed(train_config))
        split = "test"
        if splits.test is None:
            raise ValueError(f"the run's data ({splits.name}) has no test split: pass --data "
                             f"to evaluate on other data")
    else:
        raise ValueError(f"{args.checkpoint} holds no training config (saved by fastcnn.save, "
                         f"not by a training run): pass --data to say what to evaluate it on")
    x, y = getattr(splits, split)
    if tuple(x.shape[1:]) != tuple(ck.model.input_shape):
        raise ValueError(f"the data ({splits.name}) holds images of shape {x.shape[1:]}, the "
                         f"model takes {tuple(ck.model.input_shape)}")
    # the model's forward planned once for the batch size (batch norms folded, algorithms
    # timed), its preprocessing applied to the raw images
    from fastcnn.inference import InferenceSession
    session = InferenceSession(ck.model)
    loss, acc, _ = evaluate(session, build_loss(train_config.get("loss", "cross_entropy")),
                            x, y, args.batch_size)
    result = {"checkpoint": os.fspath(args.checkpoint), "dataset": splits.name, "split": split,
              "samples": int(len(y)), "accuracy": acc, "loss": loss}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{split} accuracy {acc:.4f}  {split} loss {loss:.4f}  ({len(y)} samples, "
              f"{splits.name} {split} split)")
    return 0


def _softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=1, keepdims=True)


def _cmd_predict(args):
    from fastcnn.images import read_inputs

    ck = _load_checkpoint(args.checkpoint)
    _check_classifier(ck.model, args.checkpoint, args.command)
    model = ck.model.eval()
    if args.top < 1:
        raise ValueError(f"--top: expected a number >= 1, got {args.top}")
    mean = (model.preprocessing or {}).get("mean")
    x, records = read_inputs(args.inputs, model.input_shape, invert=args.invert,
                             training_mean=mean)
    from fastcnn.inference import InferenceSession
    # planned once per batch shape, the model's preprocessing applied; a few images do not
    # repay timing each layer's algorithms, so the measured rules choose
    session = InferenceSession(model, autotune=len(x) > 4 * args.batch_size)
    probs = np.concatenate([_softmax(session(x[i:i + args.batch_size]))
                            for i in range(0, len(x), args.batch_size)])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :args.top]
    for record, p, classes in zip(records, probs, top):
        record["prediction"] = int(classes[0])
        record["probability"] = round(float(p[classes[0]]), 6)
        record["top"] = [{"class": int(c), "probability": round(float(p[c]), 6)}
                         for c in classes]
    if args.json:
        print(json.dumps({"checkpoint": os.fspath(args.checkpoint),
                          "input_shape": list(model.input_shape), "predictions": records},
                         indent=1))
        return 0
    names = [r["input"] + (f"[{r['index']}]" if r["input"].lower().endswith((".npy", ".npz"))
                           else "") for r in records]
    width = max(len(n) for n in names)
    for name, r in zip(names, records):
        others = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"][1:])
        notes = []
        if r.get("inverted"):
            notes.append("inverted")
        if "size" in r and r["size"] != [model.input_shape[2], model.input_shape[1]]:
            notes.append(f"resized from {r['size'][0]}x{r['size'][1]}")
        print(f"{name:<{width}}  {r['prediction']}  {r['probability']:.3f}"
              + (f"  (then {others})" if others else "")
              + (f"  [{', '.join(notes)}]" if notes else ""))
    return 0


def _cmd_summary(args):
    from fastcnn.model import build_model
    from fastcnn.training import _load_any

    if os.fspath(args.config).lower().endswith((".fcnn", ".onnx")):
        print(_load_checkpoint(args.config).model.summary(args.batch_size))
        return 0
    config = _load_any(args.config)
    if "model" in config and "layers" not in config:         # a training config
        from fastcnn.training import resolve_config
        config = resolve_config(config)["model"]
        config.setdefault("input_shape", [1, 28, 28])
    print(build_model(config).summary(args.batch_size))
    return 0


def _cmd_export(args):
    from fastcnn.checkpoint import load
    from fastcnn.onnx import export

    model = load(args.checkpoint)
    export(model, args.out, opset=args.opset)
    print(f"wrote {args.out} (opset {args.opset}, {model.num_parameters():,} parameters)")
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser():
    from fastcnn.images import INVERT_CHOICES

    parser = argparse.ArgumentParser(prog="fastcnn", description="CNNs on the CPU.")
    from fastcnn import __version__
    parser.add_argument("--version", action="version", version=f"fastcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a config (default: LeNet-5 on MNIST)")
    p.add_argument("config", nargs="?", default=None,
                   help="training config: .json/.yaml path or bundled name (default mnist_lenet5)")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--epochs", type=_positive_int,
                   help="train for this many epochs (train.epochs; on --resume, may grow)")
    p.add_argument("--threads", type=_positive_int,
                   help="threads of this run (train.num_threads; default: every core; use 1 "
                        "per job when running several at once)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optimizer.lr=0.01 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (refused without this or --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress; print metrics as JSON")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of an MPI job: mpiexec -n K fastcnn "
                        "train CONFIG --distributed (needs fastcnn[mpi]); batch_size is global")
    p.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch norm statistics over every process's batch "
                        "(train.sync_batch_norm)")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="accuracy and loss of a checkpoint on its run's test data "
                                     "or on other data (--data)")
    p.add_argument("checkpoint", help="a .fcnn checkpoint (e.g. runs/mnist_lenet5/best.fcnn) or an "
                        ".onnx model")
    p.add_argument("--data", metavar="DATA",
                   help="evaluate on this instead of the run's test split: an .npz (x, y; "
                        "x_test, y_test when present), a .json/.yaml data section or training "
                        "config, a JSON object such as '{\"dataset\": \"mnist_idx\", "
                        "\"root\": \"mnist\"}', or a dataset name")
    p.add_argument("--batch-size", type=_positive_int, default=500,
                   help="samples per forward pass (default 500)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("predict", help="classify images: image files, folders of them, "
                                       ".npy/.npz arrays")
    p.add_argument("checkpoint", help="a .fcnn checkpoint (e.g. runs/mnist_lenet5/best.fcnn) or an "
                        ".onnx model")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (resized to the model's input), folders (their image and "
                        "array files), .npy/.npz arrays (N, C, H, W) or (N, H, W)")
    p.add_argument("--top", type=_positive_int, default=3,
                   help="how many classes to list per image (default 3)")
    p.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                   help="use 1 - pixel for image files: auto (default) when a grayscale "
                        "image's background is light and the training images' dark (MNIST's "
                        "white on black), or the reverse; yes; no")
    p.add_argument("--batch-size", type=_positive_int, default=256,
                   help="samples per forward pass (default 256)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document: {checkpoint, input_shape, predictions: "
                        "[{input, index, prediction, probability, top: [{class, probability}], "
                        "size, inverted}]}")
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("summary", help="layers, output shapes, parameters and FLOPs of a config")
    p.add_argument("config", help="a model or training config: .json/.yaml path, bundled name "
                                   "(resnet_small), .fcnn checkpoint or .onnx model")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="batch size for the output shapes and FLOPs (default 1)")
    p.set_defaults(func=_cmd_summary)
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX (pip install "
                                      "'fastcnn[onnx]')")
    p.add_argument("checkpoint", help="a .fcnn checkpoint (e.g. runs/mnist_lenet5/best.fcnn)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13 to 21 (default 17)")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("bench", add_help=False,
                       help="time fastcnn against torch (needs torch and a clone of the repository); "
                            "fastcnn bench --help lists its options")
    # main() hands `fastcnn bench ...` to fastcnn.benchmarks.main before this parser runs
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # every option goes to fastcnn.benchmarks' own parser (argparse's REMAINDER would not
        # take a first argument that starts with "-")
        from fastcnn import benchmarks
        return benchmarks.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, KeyError) as exc:
        print(f"fastcnn {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
