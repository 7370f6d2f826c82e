"""The ``fastcnn`` command (also ``python -m fastcnn``).

    fastcnn train [CONFIG] [--out DIR] [--epochs N] [--set key=value ...] [--resume | --overwrite]
    fastcnn eval CHECKPOINT
    fastcnn predict CHECKPOINT INPUT [--top K]
    fastcnn summary CONFIG
    fastcnn export CHECKPOINT OUT.onnx [--opset N]
    fastcnn bench [--threads N] [--filter TEXT] [--isa avx2|avx512] [--rounds K]
                  [--scaling | --profile [FILTER]]
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
    trainer = Trainer(args.config, args.out, overrides=overrides, resume=args.resume,
                      overwrite=args.overwrite, progress=False if args.quiet else None,
                      log=(lambda *a, **k: None) if args.quiet else print)
    try:
        metrics = trainer.fit()
    except TrainingDiverged as exc:
        print(f"fastcnn train: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(json.dumps(metrics))
    elif metrics["epochs_run"]:
        written = [f for f in RUN_FILES if os.path.exists(os.path.join(trainer.out_dir, f))]
        print(f"run folder: {trainer.out_dir}  ({', '.join(written)})")
    return 130 if metrics["interrupted"] else 0     # 128 + SIGINT, as a shell reports Ctrl-C


def _checkpoint_and_data(path):
    from fastcnn import data as datamod
    from fastcnn.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if ck.model.preprocessing is None and ck.extra.get("normalization"):
        # a run's checkpoint from before models carried their preprocessing
        ck.model.preprocessing = dict(ck.extra["normalization"])
    return ck, datamod


def _cmd_eval(args):
    from fastcnn.losses import build_loss
    from fastcnn.training import evaluate

    ck, datamod = _checkpoint_and_data(args.checkpoint)
    train_config = ck.extra.get("train_config")
    if not train_config:
        print(f"fastcnn eval: {args.checkpoint} holds no training config (saved by fastcnn.save, "
              f"not by a training run); nothing to evaluate it on", file=sys.stderr)
        return 2
    splits = datamod.load_dataset(train_config["data"], seed=train_config["train"]["seed"])
    if splits.test is None:
        print("fastcnn eval: the dataset has no test split", file=sys.stderr)
        return 2
    x, y = splits.test
    x = ck.model.preprocess(x)
    loss, acc, _ = evaluate(ck.model, build_loss(train_config.get("loss", "cross_entropy")),
                            x, y)
    print(json.dumps({"checkpoint": os.fspath(args.checkpoint), "test_loss": loss,
                      "test_accuracy": acc, "samples": int(len(y))}))
    return 0


def _read_inputs(path, input_shape):
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            key = "x" if "x" in archive.files else archive.files[0]
            x = archive[key]
    elif path.endswith(".npy"):
        x = np.load(path, allow_pickle=False)
    else:
        try:
            from matplotlib.image import imread
        except ImportError:
            raise SystemExit("fastcnn predict: reading images needs matplotlib "
                             "(pip install 'fastcnn[plot]'); or pass a .npy/.npz array")
        x = imread(path)
        if x.ndim == 3:                         # RGB(A) -> gray when the model wants 1 channel
            x = x[..., :3].mean(axis=2) if input_shape[0] == 1 else np.moveaxis(x[..., :3], 2, 0)
        x = x[None]
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    shape = tuple(input_shape)
    if x.shape[1:] != shape and x.shape[1:] == shape[1:] and shape[0] == 1:
        x = x[:, None]                           # (N, H, W) for one-channel models
    if x.shape[1:] != shape:
        raise SystemExit(f"fastcnn predict: {path} holds shape {x.shape}, the model takes "
                         f"(N, {', '.join(map(str, shape))})")
    return x.astype(np.float32)


def _cmd_predict(args):
    ck, _ = _checkpoint_and_data(args.checkpoint)
    model = ck.model.eval()
    x = _read_inputs(args.input, model.input_shape)
    logits = model(model.preprocess(x))
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :args.top]
    for i in range(len(x)):
        print(json.dumps({"index": i, "prediction": int(top[i, 0]),
                          "top": [[int(c), round(float(probs[i, c]), 6)] for c in top[i]]}))
    return 0


def _cmd_summary(args):
    from fastcnn.model import build_model
    from fastcnn.training import _load_any

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


def build_parser():
    parser = argparse.ArgumentParser(prog="fastcnn", description="CNNs on the CPU.")
    from fastcnn import __version__
    parser.add_argument("--version", action="version", version=f"fastcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a config (default: LeNet-5 on MNIST)")
    p.add_argument("config", nargs="?", default=None,
                   help="training config: .json/.yaml path or bundled name (default mnist_lenet5)")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optimizer.lr=0.01 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (refused without this or --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress; print metrics as JSON")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="test accuracy of a checkpoint from a training run")
    p.add_argument("checkpoint")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("predict", help="classify the images in a .npy/.npz array or image file")
    p.add_argument("checkpoint")
    p.add_argument("input")
    p.add_argument("--top", type=int, default=3)
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("summary", help="layers, output shapes, parameters and FLOPs of a config")
    p.add_argument("config")
    p.add_argument("--batch-size", type=int, default=1)
    p.set_defaults(func=_cmd_summary)
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX (pip install "
                                      "'fastcnn[onnx]')")
    p.add_argument("checkpoint")
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
