"""Run by tests/test_distributed.py under ``mpiexec -n K python tests/mpi_worker.py MODE OUT``:
one rank of a distributed training job on the tests' tiny configs.

Modes:
- ``train``: trains each config of CONFIGS (distributed) into OUT/<name>; every rank writes
  OUT/<name>/digests-<rank>.json (its parameter digest after each epoch);
- ``raise``: rank 1 raises in its third training step (the job must end, not hang);
- ``nan``: rank 1's loss is NaN in its third step (every rank must stop with TrainingDiverged);
- ``disagree``: rank 1 trains with another seed (every rank must refuse to start).
"""
import json
import os
import sys
import time

import numpy as np

import fastcnn
from fastcnn.training import Trainer, TrainingDiverged

DATA = {"dataset": "synthetic", "n": 69, "num_classes": 3, "shape": [1, 8, 8], "test_size": 13,
        "validation_split": 0.2}      # 55 training samples: batches of 9 end with a single one


def _config(name, layers, sync=False, epochs=3):
    return {"name": name, "model": {"seed": 1, "layers": layers}, "data": dict(DATA),
            "loss": "cross_entropy", "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": epochs, "batch_size": 9, "seed": 5, "sync_batch_norm": sync}}


HEAD = [{"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2}, {"type": "flatten"},
        {"type": "linear", "out_features": 3}]
PLAIN = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}] + HEAD
# no conv bias before batch norm: its gradient is zero (the mean removes it), so its value
# would be rounding noise
# the first batch norm has the ReLU after it fused into its pass, the second has not
WITH_BN = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
           {"type": "batch_norm2d"}, {"type": "relu"},
           {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
           {"type": "batch_norm2d"}] + HEAD[1:]

CONFIGS = {
    "plain": _config("plain", PLAIN),
    "sync_bn": _config("sync_bn", WITH_BN, sync=True),
    "local_bn": _config("local_bn", WITH_BN),
}


def _quiet(*args, **kwargs):
    pass


def _train(name, out, **kwargs):
    trainer = Trainer(CONFIGS[name], os.path.join(out, name), log=_quiet, progress=False,
                      distributed=True, **kwargs)
    trainer.fit()
    return trainer


def _fail_on_rank_1(trainer, how):
    """Make rank 1's third forward raise (``raise``) or its third loss NaN (``nan``)."""
    build = trainer._build

    def patched():
        build()
        if trainer.comm.rank != 1:
            return
        layer = trainer.model.layers["0"]
        forward, calls = layer.forward, [0]

        def failing(x):
            calls[0] += 1
            out = forward(x)
            if calls[0] == 3:
                if how == "raise":
                    with open(os.path.join(trainer.out_dir, "..", "failed-at"), "w") as fh:
                        fh.write(repr(time.time()))
                    raise RuntimeError("injected failure on rank 1")
                out = np.full_like(out, np.nan)
            return out
        layer.forward = failing
    trainer._build = patched


def main(mode, out):
    if mode == "train":
        for name in CONFIGS:
            trainer = _train(name, out)
            with open(os.path.join(out, name, f"digests-{trainer.comm.rank}.json"), "w") as fh:
                json.dump(trainer.dp.digests, fh)
        return 0
    if mode in ("raise", "nan"):
        config = _config("fail", PLAIN, epochs=2)
        trainer = Trainer(config, os.path.join(out, "fail"), log=_quiet, progress=False,
                          distributed=True)
        _fail_on_rank_1(trainer, mode)
        if mode == "raise":
            trainer.fit()
            return 0
        try:
            trainer.fit()
        except TrainingDiverged as exc:
            # every rank raises it; each prints before any exits, since mpiexec ends the job
            # at the first exit and could drop a slower rank's message (seen once on a loaded
            # machine)
            print(f"TrainingDiverged: {exc}", file=sys.stderr, flush=True)
            trainer.comm.barrier()
            return 1
        return 0
    if mode == "disagree":
        from fastcnn.distributed import communicator
        seed = 5 + communicator(True).rank
        config = _config("disagree", PLAIN)
        config["train"]["seed"] = seed
        Trainer(config, os.path.join(out, "disagree"), log=_quiet, progress=False,
                distributed=True).fit()
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
