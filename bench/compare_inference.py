"""Inference side by side, in one process: fastcnn's InferenceSession, torch eager and
onnxruntime on the bundled networks' eval forward, at batch 1 and 32.

    python bench/compare_inference.py [--threads N] [--repeat R] [--rounds K] [--filter TEXT]
    fastcnn bench --inference [...]            # the same, from a clone
    fastcnn bench --inference --isa avx2       # every library's AVX2 code (AVX-512 machines)

Every library gets the same weights (random, with batch-norm statistics far from (0, 1)) and
the same threads. onnxruntime runs the model as fastcnn.onnx.export writes it, with
``session.intra_op.allow_spinning=0`` (its spinning threads would slow the other libraries in
this process; it only slows onnxruntime). Each cell is the median of --repeat calls, the best
of --rounds rounds that alternate the libraries; the ratio column is fastcnn / onnxruntime.
torch and onnxruntime are references here, never dependencies of fastcnn.
"""
from __future__ import annotations

import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

import fastcnn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_torch import to_torch  # noqa: E402  (this folder's torch twin of a model)

NETWORKS = ("lenet5", "resnet_small", "vgg_small", "unet_small")
BATCHES = (1, 32)


def _model(name, seed=0):
    """A bundled network in eval mode with batch-norm statistics that matter."""
    model = fastcnn.build_model(name)
    rng = np.random.default_rng(seed)
    for layer in model.layers.values():
        if getattr(layer, "running_var", None) is not None:
            layer.running_var[:] = rng.uniform(0.5, 2.0, layer.running_var.shape)
            layer.running_mean[:] = rng.normal(0.0, 0.2, layer.running_mean.shape)
    return model.eval()


def _median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _onnxruntime_session(model, threads, folder):
    try:
        import onnxruntime
        from fastcnn import onnx as fastcnn_onnx
        path = fastcnn_onnx.export(model, os.path.join(folder, f"{model.name}.onnx"))
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def run(threads, repeat, rounds, pattern=""):
    """Rows (network, batch, {library: ms}), each library checked against fastcnn's eval
    forward before it is timed."""
    import torch
    torch.set_num_threads(threads)
    fastcnn.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in NETWORKS:
            if pattern not in name:
                continue
            model = _model(name)
            session = fastcnn.InferenceSession(model)
            twin = to_torch(model, torch).eval()
            ort = _onnxruntime_session(model, threads, folder)
            for batch in BATCHES:
                x = np.random.default_rng(batch).standard_normal(
                    (batch,) + model.input_shape, dtype=np.float32)
                xt = torch.from_numpy(x)

                def torch_forward():
                    with torch.inference_mode():
                        return twin(xt)
                libraries = {"fastcnn": lambda: session(x), "torch": torch_forward}
                if ort is not None:
                    libraries["onnxruntime"] = lambda: ort(x)[0]
                want = model(x)
                for lib, fn in libraries.items():      # same answers before any timing
                    got = np.asarray(fn().numpy() if lib == "torch" else fn())
                    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4,
                                               err_msg=f"{lib} on {name}")
                best = {lib: math.inf for lib in libraries}
                reps = repeat * (10 if batch == 1 else 1)
                for _ in range(rounds):
                    for lib, fn in libraries.items():
                        best[lib] = min(best[lib], _median_ms(fn, reps))
                rows.append((name, batch, best))
    return rows


def table(rows):
    libs = ["fastcnn", "torch", "onnxruntime"]
    lines = ["| network | batch | fastcnn ms | torch ms | onnxruntime ms | fastcnn / ort |",
             "|---|---:|---:|---:|---:|---:|"]
    ratios = []
    for name, batch, best in rows:
        cells = [f"{best[lib]:.3f}" if lib in best else "-" for lib in libs]
        ratio = best["fastcnn"] / best["onnxruntime"] if "onnxruntime" in best else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(f"| {name} | {batch} | {' | '.join(cells)} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    if ratios:
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        lines.append(f"\nfastcnn / onnxruntime: geometric mean {geo:.2f}, worst "
                     f"{max(ratios):.2f} over {len(ratios)} cases")
    return "\n".join(lines)


def compare(args):
    """``fastcnn bench --inference``'s body (options from fastcnn.benchmarks.argument_parser)."""
    import torch
    try:
        import onnxruntime
        ort = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = "no onnxruntime (pip install onnxruntime onnx)"
    from fastcnn._ops.parallel import simd_path
    print(f"fastcnn {fastcnn.__version__} (vector loops: {simd_path()}), torch {torch.__version__}"
          f", {ort}; {args.threads} thread(s); eval forward, ms (median of calls, best of "
          f"{args.rounds} rounds)\n")
    print(table(run(args.threads, args.repeat, args.rounds, args.filter)))


if __name__ == "__main__":
    from fastcnn.benchmarks import main
    main(sys.argv[1:] + ["--inference"], compare=compare, prog="compare_inference.py")
