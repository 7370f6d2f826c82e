"""fastcnn's benchmark cases, timed by ``fastcnn bench``: the shapes, the work each case does,
the thread-scaling mode and the training-step profiler. Nothing here needs torch.

    fastcnn bench --scaling                       # fastcnn alone: 1 thread against all cores
    fastcnn bench --profile resnet                # where a train step's time goes, per layer
    fastcnn bench                                 # fastcnn against torch (from a clone, below)
    python bench/compare_torch.py --threads 1 --filter conv      # the same comparison

The comparison with torch is not library code: it lives beside the repository's other
benchmarks, in ``bench/compare_torch.py``, with the torch side of every case (torch is the
reference, never a dependency; ``pip install torch==2.13.0``). ``fastcnn bench`` without
``--scaling`` or ``--profile`` runs that script when fastcnn is imported from a clone of the
repository (an editable install, say) or is started in one, and otherwise says what to run.
Both take the options of :func:`argument_parser`: one parser, so they cannot disagree.

Each case set (:data:`CASES`) is a function that builds its inputs and returns a
:class:`CaseSet`: fastcnn's timed callables (:class:`Case`) and the inputs they were built
from, which the torch side reads to build its own callables on the same arrays.

Compute-bound cases (convolutions, train steps) count FLOPs, a multiply-add as 2;
memory-bound cases (pooling, resampling, norms, the loss) count the bytes the call must move
at minimum (:func:`nbytes` gives the counting rule), so that a run can report GFLOP/s and GB/s.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import fastcnn
import fastcnn.functional as F


class Case(NamedTuple):
    """One timed call of fastcnn and the work it does: ``flops`` for compute-bound ops,
    ``nbytes`` (see :func:`nbytes`) for memory-bound ones; 0 means not counted."""
    label: str
    ours: Callable
    flops: int = 0
    nbytes: int = 0


class CaseSet(NamedTuple):
    """What a :data:`CASES` entry builds: ``kind`` (``"conv"``, ``"max_pool"``, ...,
    ``"train_step"``: which torch reference ``bench/compare_torch.py`` builds), ``inputs`` (the
    arrays and options the cases run on, by name) and the ``cases``, in the order the torch
    reference returns its callables."""
    kind: str
    inputs: dict
    cases: list

def nbytes(*values):
    """The bytes a call must move at minimum, given the arrays it reads and those it writes.

    Counting rule: every array whose values the op needs is read once, and every array it
    returns or updates in place is written once, at its own itemsize (float32 data, int64
    indices and targets). So max pooling forward reads x and writes y and the int64 indices it
    returns; its backward reads dy and the indices (x only gives the shape) and writes dx; a
    training batch norm also reads and writes its running statistics; a loss writes its scalar.
    A case that calls several ops (forward + backward) adds up their counts, even where they
    read the same array. Not counted: re-reads (a norm's second pass over x), workspaces and
    intermediate arrays, and the read-for-ownership a cache does before writing. The GB/s
    derived from it is therefore a lower bound on the traffic, comparable with the copy
    bandwidth (bytes read + written) printed in the header.
    """
    return sum(nbytes(*v) if isinstance(v, (tuple, list)) else v.nbytes
               for v in values if isinstance(v, (tuple, list, np.ndarray, np.generic)))


def _conv_case(name, n, c_in, h, w, c_out, k, s, p, groups=1):
    """Forward and backward (input, weight and bias gradients) of a 2-D convolution."""
    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_out, c_in // groups, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv2d(x, wt, b, s, p, groups=groups)
        dy = np.ones_like(y)
        flops = 2 * n * c_out * (c_in // groups) * k * k * y.shape[2] * y.shape[3]
        return CaseSet("conv", dict(x=x, weight=wt, bias=b, dy=dy, stride=s, padding=p,
                                    groups=groups), [
            Case(f"{name} fwd", lambda: F.conv2d(x, wt, b, s, p, groups=groups), flops),
            Case(f"{name} bwd", lambda: F.conv2d_backward(dy, x, wt, s, p, groups=groups),
                 2 * flops),
        ])
    return setup


def _conv_transpose_case(name, n, c_in, h, w, c_out, k, s, p):
    """Forward and backward of a 2-D transposed convolution (the decoder's upsampling)."""
    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_in, c_out, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv_transpose2d(x, wt, b, s, p)
        dy = np.ones_like(y)
        flops = 2 * n * c_in * c_out * k * k * h * w
        return CaseSet("conv_transpose", dict(x=x, weight=wt, bias=b, dy=dy, stride=s,
                                              padding=p), [
            Case(f"{name} fwd", lambda: F.conv_transpose2d(x, wt, b, s, p), flops),
            Case(f"{name} bwd", lambda: F.conv_transpose2d_backward(dy, x, wt, s, p),
                 2 * flops),
        ])
    return setup


def _max_pool_case(name, shape, k, s, p):
    """max_pool2d with indices (what training keeps for the backward), and its backward."""
    def setup():
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
        dy = np.ones_like(y)
        dx = F.max_pool2d_backward(dy, x, ind, k, s, p)
        return CaseSet("max_pool", dict(x=x, dy=dy, kernel_size=k, stride=s, padding=p), [
            Case(f"{name} fwd", lambda: F.max_pool2d(x, k, s, p, return_indices=True),
                 0, nbytes(x, y, ind)),
            Case(f"{name} bwd", lambda: F.max_pool2d_backward(dy, x, ind, k, s, p),
                 0, nbytes(dy, ind, dx)),
        ])
    return setup


def _avg_pool_case(name, shape, k, s, p):
    def setup():
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y = F.avg_pool2d(x, k, s, p)
        dy = np.ones_like(y)
        dx = F.avg_pool2d_backward(dy, x, k, s, p)
        return CaseSet("avg_pool", dict(x=x, dy=dy, kernel_size=k, stride=s, padding=p), [
            Case(f"{name} fwd", lambda: F.avg_pool2d(x, k, s, p), 0, nbytes(x, y)),
            Case(f"{name} bwd", lambda: F.avg_pool2d_backward(dy, x, k, s, p), 0,
                 nbytes(dy, dx)),
        ])
    return setup


def _upsample_case(name, shape, factor, mode):
    def setup():
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y = F.interpolate(x, scale_factor=factor, mode=mode)
        dy = np.ones_like(y)
        dx = F.interpolate_backward(dy, x.shape, scale_factor=factor, mode=mode)
        return CaseSet("upsample", dict(x=x, dy=dy, scale_factor=factor, mode=mode), [
            Case(f"{name} fwd", lambda: F.interpolate(x, scale_factor=factor, mode=mode),
                 0, nbytes(x, y)),
            Case(f"{name} bwd",
                 lambda: F.interpolate_backward(dy, x.shape, scale_factor=factor, mode=mode),
                 0, nbytes(dy, dx)),
        ])
    return setup


def _norm_case(name, shape, kind, groups=None):
    """Training forward, and forward + backward (input, weight and bias gradients), of a norm."""
    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        c = shape[1] if kind != "layer" else shape[-1]
        w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        if kind == "batch":
            def ours_fwd():
                return F.batch_norm(x, rm, rv, w, b, training=True)

            def ours_both():
                _, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True,
                                               return_stats=True)
                return F.batch_norm_backward(dy, x, w, training=True, save_mean=mean,
                                             save_invstd=invstd)
        elif kind == "group":
            def ours_fwd():
                return F.group_norm(x, groups, w, b)

            def ours_both():
                F.group_norm(x, groups, w, b)
                return F.group_norm_backward(dy, x, groups, w, b)
        else:
            def ours_fwd():
                return F.layer_norm(x, c, w, b)

            def ours_both():
                F.layer_norm(x, c, w, b)
                return F.layer_norm_backward(dy, x, c, w, b)

        # bytes: forward reads x, weight, bias (and a batch norm's running statistics, which
        # it updates) and writes y (and, with return_stats, the saved mean and invstd); the
        # backward reads dy, x, weight (and the saved statistics) and writes the gradients.
        stats = (rm, rv) if kind == "batch" else ()
        fwd_bytes = nbytes(x, w, b, *stats) + nbytes(ours_fwd(), *stats)
        if kind == "batch":
            _, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, return_stats=True)
            fwd_both = fwd_bytes + nbytes(mean, invstd)
            bwd_bytes = nbytes(dy, x, w, mean, invstd, ours_both())
        else:
            fwd_both = fwd_bytes
            bwd_bytes = nbytes(dy, x, w, ours_both())
        return CaseSet("norm", dict(x=x, dy=dy, weight=w, bias=b, running_mean=rm,
                                    running_var=rv, norm=kind, groups=groups), [
            Case(f"{name} fwd", ours_fwd, 0, fwd_bytes),
            Case(f"{name} fwd+bwd", ours_both, 0, fwd_both + bwd_bytes),
        ])
    return setup


def _cross_entropy_case(name, n, c):
    """Mean cross-entropy loss and its gradient (fused log-softmax)."""
    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=np.float32)
        t = rng.integers(0, c, n)

        def ours():
            F.cross_entropy(x, t)
            return F.cross_entropy_backward(1.0, x, t)

        # the loss reads x and the int64 targets and writes a scalar; its gradient reads them
        # again and writes dx
        moved = nbytes(x, t, F.cross_entropy(x, t)) + nbytes(x, t, ours())
        return CaseSet("cross_entropy", dict(x=x, target=t),
                       [Case(f"{name} fwd+bwd", ours, 0, moved)])
    return setup


# The train steps' optimizer: SGD, lr 0.01, momentum 0.9 (the torch side uses the same).
SGD = {"type": "sgd", "lr": 0.01, "momentum": 0.9}


def train_setup(config, batch):
    """What a train-step case runs: the model built from ``config`` (a bundled name or a dict),
    a random batch ``x`` and labels ``y``, cross-entropy, and :data:`SGD`."""
    from fastcnn.training import bundled_config
    model = fastcnn.build_model(bundled_config(config) if isinstance(config, str) else config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + model.input_shape, dtype=np.float32)
    y = rng.integers(0, model.output_shape[-1], batch)
    loss = fastcnn.build_loss("cross_entropy")
    return model, x, y, loss, fastcnn.build_optimizer(SGD, model.parameters())


def _train_step_case(name, config, batch):
    """One SGD training step (forward, cross-entropy, backward, update) of a whole model."""
    def setup():
        model, x, y, loss, opt = train_setup(config, batch)

        def ours():
            loss(model(x), y)
            model.zero_grad()
            model.backward(loss.backward(), input_grad=False)
            opt.step()

        flops = 3 * model_flops(model) * batch        # forward + two backward products
        return CaseSet("train_step", dict(model=model, x=x, y=y),
                       [Case(f"{name} train step", ours, flops)])
    return setup


def model_flops(model):
    """FLOPs of one sample's forward pass through ``model`` (a multiply-add counts 2)."""
    return sum(layer.flops() for layer in model.layers.values())


# key -> a function building its CaseSet; `--filter TEXT` keeps the keys containing TEXT.
CASES = {
    "conv lenet1 64x1x28x28 ->6 k5 s1 p2": _conv_case("conv lenet1", 64, 1, 28, 28, 6, 5, 1, 2),
    "conv lenet2 64x6x14x14 ->16 k5 s1 p0": _conv_case("conv lenet2", 64, 6, 14, 14, 16, 5, 1, 0),
    "conv vgg 32x64x32x32 ->64 k3 s1 p1": _conv_case("conv vgg3x3", 32, 64, 32, 32, 64, 3, 1, 1),
    "conv resnet 16x128x28x28 ->128 k3 s1 p1": _conv_case("conv resnet3x3", 16, 128, 28, 28, 128, 3, 1, 1),
    "conv strided 16x64x56x56 ->128 k3 s2 p1": _conv_case("conv strided", 16, 64, 56, 56, 128, 3, 2, 1),
    "conv pointwise 16x256x14x14 ->64 k1": _conv_case("conv pointwise", 16, 256, 14, 14, 64, 1, 1, 0),
    "conv depthwise 16x128x56x56 k3 p1": _conv_case("conv depthwise", 16, 128, 56, 56, 128, 3, 1,
                                                    1, groups=128),
    "conv_transpose 16x64x16x16 ->32 k4 s2 p1":
        _conv_transpose_case("conv_transpose k4s2", 16, 64, 16, 16, 32, 4, 2, 1),
    "max pool 2x2 32x64x32x32": _max_pool_case("max pool 2x2", (32, 64, 32, 32), 2, 2, 0),
    "max pool 3x3 s2 p1 16x64x56x56":
        _max_pool_case("max pool 3x3 s2 p1", (16, 64, 56, 56), 3, 2, 1),
    "avg pool 2x2 32x64x32x32": _avg_pool_case("avg pool 2x2", (32, 64, 32, 32), 2, 2, 0),
    "resample bilinear x2 16x64x32x32":
        _upsample_case("bilinear x2", (16, 64, 32, 32), 2, "bilinear"),
    "resample nearest x2 16x64x32x32":
        _upsample_case("nearest x2", (16, 64, 32, 32), 2, "nearest"),
    "norm batch_norm train 32x64x32x32": _norm_case("batch_norm 32x64x32x32", (32, 64, 32, 32),
                                                    "batch"),
    "norm group_norm 32 groups 16x64x28x28": _norm_case("group_norm G32 16x64x28x28",
                                                        (16, 64, 28, 28), "group", groups=32),
    "norm layer_norm 8192x512": _norm_case("layer_norm 8192x512", (8192, 512), "layer"),
    "loss cross_entropy 256x1000": _cross_entropy_case("cross_entropy 256x1000", 256, 1000),
}
TRAIN_STEPS = {  # case key: (label, bundled config, batch)
    "train lenet5 64x1x28x28": ("lenet5 b64", "lenet5", 64),
    "train vgg_small (batch norm) 64x3x32x32": ("vgg_small+bn b64", "vgg_small", 64),
    "train resnet_small 32x3x32x32": ("resnet_small b32", "resnet_small", 32),
}
CASES.update((key, _train_step_case(*spec)) for key, spec in TRAIN_STEPS.items())


def median_ms(fn, repeat):
    """The median time of ``repeat`` calls of ``fn()``, in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@contextlib.contextmanager
def using_threads(n, torch=None):
    """fastcnn (and torch, if given) on ``n`` threads inside the block; restored after."""
    before = fastcnn.get_num_threads(), torch.get_num_threads() if torch else None
    fastcnn.set_num_threads(n)
    if torch:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        fastcnn.set_num_threads(before[0])
        if torch:
            torch.set_num_threads(before[1])


def selected(pattern):
    """The case sets whose :data:`CASES` key contains ``pattern``, each built when the one
    before has been timed (a generator of :class:`CaseSet`: their arrays are not all held at
    once)."""
    for key, setup in CASES.items():
        if not pattern or pattern in key:
            yield setup()


def scaling(threads, repeat, rounds, pattern):
    """fastcnn alone, at 1 thread and at ``threads``, on the cases whose key contains
    ``pattern`` (torch is not needed): ``(label, ms at 1 thread, ms at threads)`` each, timed in
    alternating rounds like :func:`run`. fastcnn's thread count is restored afterwards."""
    counts = (1, threads)
    rows = []
    with using_threads(threads):
        for case in (c for s in selected(pattern) for c in s.cases):
            for n in counts:                # warm-up at both counts
                fastcnn.set_num_threads(n)
                case.ours(), case.ours()
            best = [math.inf, math.inf]
            for _ in range(rounds):
                for i, n in enumerate(counts):
                    fastcnn.set_num_threads(n)
                    best[i] = min(best[i], median_ms(case.ours, repeat))
            rows.append((case.label, *best))
    return rows


def scaling_table(rows, threads):
    """The markdown table of :func:`scaling`'s rows, speed-up = t(1 thread) / t(threads)."""
    lines = [f"| case | 1 thread ms | {threads} threads ms | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {t1:.3f} | {tn:.3f} | {t1 / tn:.2f} |" for label, t1, tn in rows]
    return "\n".join(lines)


def _timer(fn, spent, slot):
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[slot] += time.perf_counter() - t0
    return timed


@contextlib.contextmanager
def _timed_layers(model):
    """Each node's layer.forward/backward timed into ``spent[name] = [fwd s, bwd s]`` (yielded)
    while the block runs, by instance attributes that are removed (or put back) afterwards."""
    spent, saved = {}, []
    try:
        for node in model._nodes:
            layer, times = node.layer, spent.setdefault(node.name, [0.0, 0.0])
            saved.append((layer, {k: layer.__dict__[k] for k in ("forward", "backward")
                                  if k in layer.__dict__}))
            layer.forward = _timer(layer.forward, times, 0)
            layer.backward = _timer(layer.backward, times, 1)
        yield spent
    finally:
        for layer, own in saved:
            for key in ("forward", "backward"):
                if key in own:
                    setattr(layer, key, own[key])
                else:
                    layer.__dict__.pop(key, None)


def profile_step(model, x, y, loss=None, optimizer=None, steps=7, warmup=2):
    """Where a training step's time goes: each layer's forward and backward against the step.

    Runs ``warmup`` + ``steps`` SGD steps as the train-step cases do (``loss`` defaults to
    cross-entropy, ``optimizer`` to SGD with lr 0.01 and momentum 0.9; the model's parameters
    change), with every layer's ``forward``/``backward`` wrapped in a timer for the measured
    steps only; the layers' methods are restored afterwards, also on error. Returns means, in
    ms, over the fastest half of the measured steps (so that the parts add up)::

        {"step_ms", "forward_ms", "backward_ms",   # model(x) and model.backward(...)
         "loss_ms",                                # loss and its gradient
         "update_ms",                              # zero_grad and optimizer.step()
         "layers": [{"name", "type", "fwd_ms", "bwd_ms"}, ...],   # one per layer, model order
         "layers_ms",                              # the sum over the layers
         "overhead_ms"}                            # step_ms - layers_ms

    The overhead holds the loss, the update and the model's own Python around the layers
    (graph bookkeeping, gradient sums at branches) -- and the timers' own small cost.
    """
    if loss is None:
        loss = fastcnn.build_loss("cross_entropy")
    if optimizer is None:
        optimizer = fastcnn.build_optimizer(SGD, model.parameters())
    clock = time.perf_counter

    def step():                 # the train-step case's step, with the time after each part (s)
        t0 = clock()
        out = model(x)
        t1 = clock()
        loss(out, y)
        t2 = clock()
        model.zero_grad()
        t3 = clock()
        grad = loss.backward()
        t4 = clock()
        model.backward(grad, input_grad=False)
        t5 = clock()
        optimizer.step()
        t6 = clock()
        return {"step_ms": t6 - t0, "forward_ms": t1 - t0, "backward_ms": t5 - t4,
                "loss_ms": (t2 - t1) + (t4 - t3), "update_ms": (t3 - t2) + (t6 - t5)}

    for _ in range(warmup):
        step()
    phases, per_layer = [], []
    with _timed_layers(model) as spent:
        for _ in range(steps):
            for times in spent.values():
                times[:] = [0.0, 0.0]
            phases.append(step())
            per_layer.append({name: tuple(times) for name, times in spent.items()})
    # Means over the fastest half of the steps: the parts then add up to the step (medians
    # taken part by part would not), and steps slowed down by another process are left out.
    kept = sorted(range(steps), key=lambda i: phases[i]["step_ms"])[:(steps + 1) // 2]

    def ms(seconds):
        return 1e3 * statistics.fmean(seconds[i] for i in kept)

    result = {key: ms([p[key] for p in phases]) for key in phases[0]}
    result["layers"] = [
        {"name": node.name, "type": node.layer.type_name,
         "fwd_ms": ms([s[node.name][0] for s in per_layer]),
         "bwd_ms": ms([s[node.name][1] for s in per_layer])} for node in model._nodes]
    result["layers_ms"] = sum(e["fwd_ms"] + e["bwd_ms"] for e in result["layers"])
    result["overhead_ms"] = result["step_ms"] - result["layers_ms"]
    return result


def profile_report(label, prof, top=10):
    """A profile from :func:`profile_step` as text: the ``top`` layers by forward + backward
    time, then the step against the sum of the layers."""
    step = prof["step_ms"]
    fwd = sum(e["fwd_ms"] for e in prof["layers"])
    bwd = sum(e["bwd_ms"] for e in prof["layers"])
    glue_fwd, glue_bwd = prof["forward_ms"] - fwd, prof["backward_ms"] - bwd
    ranked = sorted(prof["layers"], key=lambda e: -(e["fwd_ms"] + e["bwd_ms"]))[:top]
    lines = [f"{label}: top {len(ranked)} of {len(prof['layers'])} layers", "",
             "| layer | type | fwd ms | bwd ms | % of step |", "|---|---|---:|---:|---:|"]
    lines += [f"| {e['name']} | {e['type']} | {e['fwd_ms']:.3f} | {e['bwd_ms']:.3f} | "
              f"{100 * (e['fwd_ms'] + e['bwd_ms']) / step:.1f} |" for e in ranked]
    rows = [("step", step, ""),
            ("sum of layers", prof["layers_ms"], f"forward {fwd:.2f}, backward {bwd:.2f}"),
            ("overhead", prof["overhead_ms"],
             f"= step - sum of layers, {100 * prof['overhead_ms'] / step:.0f}% of the step"),
            ("  loss", prof["loss_ms"], "forward and gradient"),
            ("  zero_grad + update", prof["update_ms"], ""),
            ("  model code", glue_fwd + glue_bwd,
             f"around the layers: forward {glue_fwd:.2f}, backward {glue_bwd:.2f}")]
    lines.append("")
    lines += [f"{name:<21}{value:8.2f} ms   {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


# --isa: the environment that makes fastcnn, torch (ATen and oneDNN) and OpenBLAS all run the
# code of one x86-64 level, read by each library when it loads (so set before the process
# starts: main() re-executes itself with it).
ISA_ENVIRONMENTS = {
    "avx512": {"FASTCNN_SIMD": "x86-64-v4", "ATEN_CPU_CAPABILITY": "avx512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OPENBLAS_CORETYPE": "SkylakeX"},
    "avx2": {"FASTCNN_SIMD": "x86-64-v3", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
}


def _reexec_for_isa(isa):
    """Re-execute this command with ISA_ENVIRONMENTS[isa] unless it is already in effect."""
    wanted = ISA_ENVIRONMENTS[isa]
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    from fastcnn._ops.parallel import simd_cpu_path
    levels = ["baseline", "x86-64-v3", "x86-64-v4"]
    cpu = simd_cpu_path()
    if cpu not in levels or levels.index(cpu) < levels.index(wanted["FASTCNN_SIMD"]):
        raise SystemExit(f"fastcnn bench: --isa {isa} needs a CPU with {wanted['FASTCNN_SIMD']}; "
                         f"this one runs {cpu}")
    env = dict(os.environ, **wanted)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def argument_parser(prog="fastcnn bench"):
    """The options of ``fastcnn bench`` and ``bench/compare_torch.py`` (the same parser)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="fastcnn against torch on the same shapes, in one process "
        "(from a clone of the repository: bench/compare_torch.py); with --scaling or "
        "--profile, fastcnn alone")
    parser.add_argument("--isa", choices=sorted(ISA_ENVIRONMENTS),
                        help="run fastcnn, torch and OpenBLAS all at this x86-64 level (AVX2 on "
                             "an AVX-512 machine, say); the default: each library's best")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=7, help="calls per timing (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best kept)")
    parser.add_argument("--filter", default="", help="only cases whose key contains this")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true",
                      help="fastcnn alone at 1 thread and at --threads: speed-up per case")
    mode.add_argument("--profile", nargs="?", const="train", metavar="FILTER",
                      help="per-layer times and overhead of the train-step cases whose key "
                           "contains FILTER (all three without it), over --repeat steps")
    mode.add_argument("--inference", action="store_true",
                      help="fastcnn's InferenceSession, torch and onnxruntime on the bundled "
                           "networks' eval forward at batch 1 and 32 (from a clone: "
                           "bench/compare_inference.py; needs torch, onnx and onnxruntime)")
    mode.add_argument("--distributed", action="store_true",
                      help="data-parallel training's costs: allreduce of each bundled network's "
                           "gradients on 2-4 MPI ranks, a step's compute, the scaling model "
                           "(needs fastcnn[mpi]; see fastcnn.distributed.bench)")
    parser.add_argument("--top", type=int, default=10, help="layers listed by --profile")
    return parser


# Where the comparisons with other libraries live in a clone of the repository.
COMPARE_TORCH = pathlib.Path("bench", "compare_torch.py")
COMPARE_INFERENCE = pathlib.Path("bench", "compare_inference.py")


def find_compare_torch(script=COMPARE_TORCH):
    """``bench/compare_torch.py`` (or ``script``) of the clone fastcnn is imported from (an editable install
    or ``PYTHONPATH=src``), else of the current directory when it is a clone of fastcnn (it
    holds ``src/fastcnn``); None when neither has it (fastcnn installed from a wheel)."""
    package = pathlib.Path(fastcnn.__file__).resolve().parent
    candidates = [package.parent.parent]
    if pathlib.Path("src", "fastcnn").is_dir():
        candidates.append(pathlib.Path.cwd())
    for root in candidates:
        if (root / script).is_file():
            return root / script
    return None


def _load_compare_torch(parser, script=COMPARE_TORCH):
    """The ``compare(args)`` function of ``bench/compare_torch.py`` (or of ``script``), or exit
    saying what to run."""
    path = find_compare_torch(script)
    if path is None:
        parser.exit(2, f"{parser.prog}: the comparison with torch is not part of the installed "
                       "package; it runs from a clone of the fastcnn repository: "
                       f"python {script} [options] (needs torch: pip install "
                       "torch==2.13.0), or fastcnn bench from inside the clone. Here, "
                       "fastcnn bench --scaling and fastcnn bench --profile time fastcnn "
                       "alone.\n")
    spec = importlib.util.spec_from_file_location(f"fastcnn_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def main(argv=None, compare=None, prog="fastcnn bench"):
    """``fastcnn bench``: ``--profile`` and ``--scaling`` here; otherwise ``compare(args)``, the
    torch comparison (``bench/compare_torch.py`` passes its own; found from a clone when None)."""
    parser = argument_parser(prog)
    args = parser.parse_args(argv)
    if args.isa:
        _reexec_for_isa(args.isa)
    if args.profile is not None:
        keys = [key for key in TRAIN_STEPS if args.profile in key]
        if not keys:
            parser.error(f"--profile {args.profile!r} matches no train-step case "
                         f"({'; '.join(TRAIN_STEPS)})")
        print(f"fastcnn {fastcnn.__version__}, numpy {np.__version__}; {args.threads} "
              f"thread(s); means over the fastest half of {args.repeat} steps")
        with using_threads(args.threads):
            for key in keys:
                label, config, batch = TRAIN_STEPS[key]
                model, x, y, loss, opt = train_setup(config, batch)
                prof = profile_step(model, x, y, loss, opt, steps=args.repeat)
                print("\n" + profile_report(f"{label} train step", prof, args.top))
        return
    if args.distributed:
        from fastcnn.distributed import bench
        print(bench.run(args.threads))
        return
    if args.scaling:
        rows = scaling(args.threads, args.repeat, args.rounds, args.filter)
        print(f"fastcnn {fastcnn.__version__}, numpy {np.__version__}; fastcnn alone, 1 thread "
              f"against {args.threads} ({os.cpu_count()} cores)\n")
        print(scaling_table(rows, args.threads))
        if rows:
            geo = math.exp(sum(math.log(t1 / tn) for _, t1, tn in rows) / len(rows))
            print(f"\ngeometric mean speed-up: {geo:.2f} over {len(rows)} cases")
        return
    if args.inference:
        (compare or _load_compare_torch(parser, COMPARE_INFERENCE))(args)
        return
    (compare or _load_compare_torch(parser))(args)


if __name__ == "__main__":
    main()
