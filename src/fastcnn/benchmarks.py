"""fastcnn and torch side by side on the same shapes, in one process.

    fastcnn bench                                 # all cases, all cores, markdown table
    python bench/compare_torch.py --threads 1 --filter conv     # the same, from a clone
    fastcnn bench --scaling                       # fastcnn alone: 1 thread against all cores
    fastcnn bench --profile resnet                # where a train step's time goes, per layer

The comparison needs torch (``pip install torch==2.13.0``): it is the reference, never a
dependency. ``--scaling`` (:func:`scaling`) and ``--profile`` (:func:`profile_step`) do not.

Each case is timed as the median of ``--repeat`` calls after warm-up, alternating fastcnn and torch
in rounds so that both see the same machine state. ratio = fastcnn ms / torch ms (below 1: fastcnn
is faster). Both libraries use the same number of threads.

The header prints two references measured in the same run: numpy's sgemm rate and numpy's copy
bandwidth (:func:`copy_gbs`). Compute-bound cases (convolutions, train steps) report fastcnn's
GFLOP/s, counting a multiply-add as 2 FLOPs, and its share of the sgemm rate. Memory-bound cases
(pooling, resampling, norms, the loss) report fastcnn's GB/s: the bytes the call must move at
minimum (:func:`nbytes` gives the counting rule) over its time, and its share of the copy
bandwidth -- above 100% when the working set stays in the caches.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import fastcnn
import fastcnn.functional as F


class Case(NamedTuple):
    """One timed call: fastcnn's and torch's callables (``theirs`` is None when the case was
    set up without torch) and the work it does: ``flops`` for compute-bound ops, ``nbytes``
    (see :func:`nbytes`) for memory-bound ones; 0 means not counted."""
    label: str
    ours: Callable
    theirs: Callable | None
    flops: int = 0
    nbytes: int = 0


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


def _cases(torch, ours, reference):
    """Cases from fastcnn's side, ``[(label, callable, flops, nbytes), ...]`` (the counts
    optional), and ``reference``, which makes torch's callables in the same order (not called
    without torch)."""
    theirs = reference(torch) if torch is not None else [None] * len(ours)
    return [Case(label, fn, ref, *work) for (label, fn, *work), ref in zip(ours, theirs)]


def _conv_case(name, n, c_in, h, w, c_out, k, s, p, groups=1):
    """Forward and backward (input, weight and bias gradients) of a 2-D convolution."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_out, c_in // groups, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv2d(x, wt, b, s, p, groups=groups)
        dy = np.ones_like(y)

        def reference(torch):
            tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
            tdy = torch.tensor(dy)

            def torch_backward():
                # torch's backward alone: re-run the graph node's backward only.
                return torch.ops.aten.convolution_backward(
                    tdy, tx, tw, [c_out], [s, s], [p, p], [1, 1], False, [0, 0], groups,
                    [True, True, True])
            return [lambda: torch.nn.functional.conv2d(tx, tw, tb, s, p, groups=groups),
                    torch_backward]

        flops = 2 * n * c_out * (c_in // groups) * k * k * y.shape[2] * y.shape[3]
        return _cases(torch, [
            (f"{name} fwd", lambda: F.conv2d(x, wt, b, s, p, groups=groups), flops),
            (f"{name} bwd", lambda: F.conv2d_backward(dy, x, wt, s, p, groups=groups), 2 * flops),
        ], reference)
    return setup


def _conv_transpose_case(name, n, c_in, h, w, c_out, k, s, p):
    """Forward and backward of a 2-D transposed convolution (the decoder's upsampling)."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_in, c_out, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv_transpose2d(x, wt, b, s, p)
        dy = np.ones_like(y)

        def reference(torch):
            tx, tw, tb = (torch.tensor(a) for a in (x, wt, b))
            tdy = torch.tensor(dy)

            def torch_backward():
                return torch.ops.aten.convolution_backward(
                    tdy, tx, tw, [c_out], [s, s], [p, p], [1, 1], True, [0, 0], 1,
                    [True, True, True])
            return [lambda: torch.nn.functional.conv_transpose2d(tx, tw, tb, s, p),
                    torch_backward]

        flops = 2 * n * c_in * c_out * k * k * h * w
        return _cases(torch, [
            (f"{name} fwd", lambda: F.conv_transpose2d(x, wt, b, s, p), flops),
            (f"{name} bwd", lambda: F.conv_transpose2d_backward(dy, x, wt, s, p), 2 * flops),
        ], reference)
    return setup


def _max_pool_case(name, shape, k, s, p):
    """max_pool2d with indices (what training keeps for the backward), and its backward."""
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
        dy = np.ones_like(y)

        def reference(torch):
            tx, tdy = torch.tensor(x), torch.tensor(dy)
            _, tind = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
            return [lambda: torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True),
                    lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                        tdy, tx, [k, k], [s, s], [p, p], [1, 1], False, tind)]

        dx = F.max_pool2d_backward(dy, x, ind, k, s, p)
        return _cases(torch, [
            (f"{name} fwd", lambda: F.max_pool2d(x, k, s, p, return_indices=True),
             0, nbytes(x, y, ind)),
            (f"{name} bwd", lambda: F.max_pool2d_backward(dy, x, ind, k, s, p),
             0, nbytes(dy, ind, dx)),
        ], reference)
    return setup


def _avg_pool_case(name, shape, k, s, p):
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y = F.avg_pool2d(x, k, s, p)
        dy = np.ones_like(y)

        def reference(torch):
            tx, tdy = torch.tensor(x), torch.tensor(dy)
            return [lambda: torch.nn.functional.avg_pool2d(tx, k, s, p),
                    lambda: torch.ops.aten.avg_pool2d_backward(
                        tdy, tx, [k, k], [s, s], [p, p], False, True, None)]

        dx = F.avg_pool2d_backward(dy, x, k, s, p)
        return _cases(torch, [
            (f"{name} fwd", lambda: F.avg_pool2d(x, k, s, p), 0, nbytes(x, y)),
            (f"{name} bwd", lambda: F.avg_pool2d_backward(dy, x, k, s, p), 0, nbytes(dy, dx)),
        ], reference)
    return setup


def _upsample_case(name, shape, factor, mode):
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y = F.interpolate(x, scale_factor=factor, mode=mode)
        dy = np.ones_like(y)

        def reference(torch):
            tx, tdy = torch.tensor(x), torch.tensor(dy)
            out, size = list(y.shape[2:]), list(x.shape)
            if mode == "bilinear":
                def torch_backward():
                    return torch.ops.aten.upsample_bilinear2d_backward(
                        tdy, out, size, False, float(factor), float(factor))
            else:
                def torch_backward():
                    return torch.ops.aten.upsample_nearest2d_backward(
                        tdy, out, size, float(factor), float(factor))
            return [lambda: torch.nn.functional.interpolate(tx, scale_factor=factor, mode=mode),
                    torch_backward]

        dx = F.interpolate_backward(dy, x.shape, scale_factor=factor, mode=mode)
        return _cases(torch, [
            (f"{name} fwd", lambda: F.interpolate(x, scale_factor=factor, mode=mode),
             0, nbytes(x, y)),
            (f"{name} bwd",
             lambda: F.interpolate_backward(dy, x.shape, scale_factor=factor, mode=mode),
             0, nbytes(dy, dx)),
        ], reference)
    return setup


def _norm_case(name, shape, kind, groups=None):
    """Training forward, and forward + backward (input, weight and bias gradients), of a norm."""
    def setup(torch):
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

        def reference(torch):
            tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
            trm, trv, tdy = torch.tensor(rm), torch.tensor(rv), torch.tensor(dy)
            tf = torch.nn.functional
            if kind == "batch":
                def theirs(t):
                    return tf.batch_norm(t, running_mean=trm, running_var=trv, weight=tw,
                                         bias=tb, training=True)
            elif kind == "group":
                def theirs(t):
                    return tf.group_norm(t, groups, tw, tb)
            else:
                def theirs(t):
                    return tf.layer_norm(t, (c,), tw, tb)

            def torch_fwd():
                with torch.no_grad():
                    return theirs(tx)

            def torch_both():
                tx.grad = tw.grad = tb.grad = None
                theirs(tx).backward(tdy)
            return [torch_fwd, torch_both]

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
        return _cases(torch, [(f"{name} fwd", ours_fwd, 0, fwd_bytes),
                              (f"{name} fwd+bwd", ours_both, 0, fwd_both + bwd_bytes)],
                      reference)
    return setup


def _cross_entropy_case(name, n, c):
    """Mean cross-entropy loss and its gradient (fused log-softmax)."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=np.float32)
        t = rng.integers(0, c, n)

        def ours():
            F.cross_entropy(x, t)
            return F.cross_entropy_backward(1.0, x, t)

        def reference(torch):
            tx, tt = torch.tensor(x, requires_grad=True), torch.tensor(t)

            def theirs():
                tx.grad = None
                torch.nn.functional.cross_entropy(tx, tt).backward()
            return [theirs]

        # the loss reads x and the int64 targets and writes a scalar; its gradient reads them
        # again and writes dx
        moved = nbytes(x, t, F.cross_entropy(x, t)) + nbytes(x, t, ours())
        return _cases(torch, [(f"{name} fwd+bwd", ours, 0, moved)], reference)
    return setup


def to_torch(model, torch):
    """The torch.nn equivalent of a built fastcnn model (same graph, same state_dict), made
    from each layer's attributes: for timing training steps side by side."""
    nn = torch.nn
    makers = {
        "conv2d": lambda l: nn.Conv2d(l.in_channels, l.out_channels, l.kernel_size, l.stride,
                                      l.padding, l.dilation, l.groups, bias=l.use_bias),
        "conv_transpose2d": lambda l: nn.ConvTranspose2d(
            l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding, l.output_padding,
            l.groups, bias=l.use_bias, dilation=l.dilation),
        "batch_norm2d": lambda l: nn.BatchNorm2d(l.num_features, l.eps, l.momentum),
        "batch_norm1d": lambda l: nn.BatchNorm1d(l.num_features, l.eps, l.momentum),
        "relu": lambda l: nn.ReLU(),
        "max_pool2d": lambda l: nn.MaxPool2d(l.kernel_size, l.stride, l.padding, l.dilation,
                                             ceil_mode=l.ceil_mode),
        "avg_pool2d": lambda l: nn.AvgPool2d(l.kernel_size, l.stride, l.padding, l.ceil_mode,
                                             l.count_include_pad),
        "global_avg_pool2d": lambda l: nn.AdaptiveAvgPool2d(1),
        "flatten": lambda l: nn.Flatten(l.start_dim, l.end_dim),
        "linear": lambda l: nn.Linear(l.in_features, l.out_features, bias=l.use_bias),
        "dropout": lambda l: nn.Dropout(l.p),
        "identity": lambda l: nn.Identity(),
    }

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.nodes = []
            for node in model._nodes:
                kind = node.layer.type_name
                if kind not in ("add", "concat"):
                    self.add_module(node.name, makers[kind](node.layer))
                self.nodes.append((node.name, kind, node.inputs))

        def forward(self, x):
            values = {"input": x}
            for name, kind, inputs in self.nodes:
                args = [values[i] for i in inputs]
                if kind == "add":
                    values[name] = sum(args[1:], args[0])
                elif kind == "concat":
                    values[name] = torch.cat(args, 1)
                else:
                    values[name] = getattr(self, name)(args[0])
            return values[model.outputs[0]]

    graph = Graph().to(torch.float64 if model.dtype == np.float64 else torch.float32)
    graph.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return graph


_SGD = {"type": "sgd", "lr": 0.01, "momentum": 0.9}    # the train steps; torch gets the same SGD


def train_setup(config, batch):
    """What a train-step case runs: the model built from ``config`` (a bundled name or a dict),
    a random batch ``x`` and labels ``y``, cross-entropy, and SGD (lr 0.01, momentum 0.9)."""
    from fastcnn.training import bundled_config
    model = fastcnn.build_model(bundled_config(config) if isinstance(config, str) else config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + model.input_shape, dtype=np.float32)
    y = rng.integers(0, model.output_shape[-1], batch)
    loss = fastcnn.build_loss("cross_entropy")
    return model, x, y, loss, fastcnn.build_optimizer(_SGD, model.parameters())


def _train_step_case(name, config, batch):
    """One SGD training step (forward, cross-entropy, backward, update) of a whole model."""
    def setup(torch):
        model, x, y, loss, opt = train_setup(config, batch)

        def ours():
            loss(model(x), y)
            model.zero_grad()
            model.backward(loss.backward(), input_grad=False)
            opt.step()

        def reference(torch):
            ref = to_torch(model, torch)
            tx, ty = torch.tensor(x), torch.tensor(y)
            topt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)

            def theirs():
                topt.zero_grad()
                torch.nn.functional.cross_entropy(ref(tx), ty).backward()
                topt.step()
            return [theirs]

        flops = 3 * model_flops(model) * batch        # forward + two backward products
        return _cases(torch, [(f"{name} train step", ours, flops)], reference)
    return setup


def model_flops(model):
    return sum(layer.flops() for layer in model.layers.values())


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


def _median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def sgemm_gflops(threads, size=1024, repeat=10):
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(threads, user_api="blas")
    except ImportError:
        limit = None
    try:
        a @ a
        ms = _median_ms(lambda: a @ a, repeat)
    finally:
        if limit is not None:
            limit.restore_original_limits()
    return 2 * size**3 / ms / 1e6


def _timed_s(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def copy_gbs(threads, mib=256, repeat=5):
    """Reference memory bandwidth: ``np.copyto`` of a ``mib`` MiB float32 array, in ``threads``
    contiguous chunks copied by as many Python threads (numpy releases the GIL while it
    copies); bytes read + bytes written (2 x the size) over the best of ``repeat`` copies."""
    from concurrent.futures import ThreadPoolExecutor
    n = mib * 2**20 // 4
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)   # pages touched before timing
    bounds = [n * i // threads for i in range(threads + 1)]
    parts = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            for _ in pool.map(lambda part: np.copyto(*part), parts):
                pass
        copy()
        best = min(_timed_s(copy) for _ in range(repeat))
    return 2 * src.nbytes / best / 1e9


class Row(NamedTuple):
    """A case's result: fastcnn's and torch's times (ms) and the case's counts."""
    label: str
    ms: float
    torch_ms: float
    flops: int
    nbytes: int


@contextlib.contextmanager
def _threads(n, torch=None):
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


def _selected(pattern, torch):
    for key, setup in CASES.items():
        if not pattern or pattern in key:
            yield from setup(torch)


def run(threads, repeat, rounds, pattern):
    """Time fastcnn against torch on the cases whose key contains ``pattern``: a Row each."""
    import torch
    rows = []
    with _threads(threads, torch):
        for label, ours, theirs, flops, moved in _selected(pattern, torch):
            for fn in (ours, theirs):      # warm-up: workspaces, caches, thread pools
                fn(), fn()
            mine, ref = [], []
            for _ in range(rounds):
                mine.append(_median_ms(ours, repeat))
                ref.append(_median_ms(theirs, repeat))
            rows.append(Row(label, min(mine), min(ref), flops, moved))
    return rows


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def table(rows, sgemm=None, copy=None):
    """The markdown table of ``rows``. fastcnn GFLOP/s for the cases that count FLOPs, with
    its share of the ``sgemm`` rate; GB/s for those that count bytes, with its share of the
    ``copy`` bandwidth; "-" where a column does not apply."""
    lines = [("| case | fastcnn ms | torch ms | ratio | fastcnn GFLOP/s | % sgemm "
              "| fastcnn GB/s | % copy |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gflops = r.flops / r.ms / 1e6 if r.flops else None
        gbs = r.nbytes / r.ms / 1e6 if r.nbytes else None
        share = [None if v is None or not ref else 100 * v / ref
                 for v, ref in ((gflops, sgemm), (gbs, copy))]
        lines.append(f"| {r.label} | {r.ms:.3f} | {r.torch_ms:.3f} | {r.ms / r.torch_ms:.2f} | "
                     f"{_cell(gflops, '.1f')} | {_cell(share[0], '.0f')} | "
                     f"{_cell(gbs, '.1f')} | {_cell(share[1], '.0f')} |")
    return "\n".join(lines)


def scaling(threads, repeat, rounds, pattern):
    """fastcnn alone, at 1 thread and at ``threads``, on the cases whose key contains
    ``pattern`` (torch is not needed): ``(label, ms at 1 thread, ms at threads)`` each, timed in
    alternating rounds like :func:`run`. fastcnn's thread count is restored afterwards."""
    counts = (1, threads)
    rows = []
    with _threads(threads):
        for case in _selected(pattern, None):
            for n in counts:                # warm-up at both counts
                fastcnn.set_num_threads(n)
                case.ours(), case.ours()
            best = [math.inf, math.inf]
            for _ in range(rounds):
                for i, n in enumerate(counts):
                    fastcnn.set_num_threads(n)
                    best[i] = min(best[i], _median_ms(case.ours, repeat))
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
        optimizer = fastcnn.build_optimizer(_SGD, model.parameters())
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
    import sys
    from fastcnn._ops.parallel import simd_cpu_path
    levels = ["baseline", "x86-64-v3", "x86-64-v4"]
    cpu = simd_cpu_path()
    if cpu not in levels or levels.index(cpu) < levels.index(wanted["FASTCNN_SIMD"]):
        raise SystemExit(f"fastcnn bench: --isa {isa} needs a CPU with {wanted['FASTCNN_SIMD']}; "
                         f"this one runs {cpu}")
    env = dict(os.environ, **wanted)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastcnn bench", description=__doc__.splitlines()[0])
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
    parser.add_argument("--top", type=int, default=10, help="layers listed by --profile")
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
        with _threads(args.threads):
            for key in keys:
                label, config, batch = TRAIN_STEPS[key]
                model, x, y, loss, opt = train_setup(config, batch)
                prof = profile_step(model, x, y, loss, opt, steps=args.repeat)
                print("\n" + profile_report(f"{label} train step", prof, args.top))
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
    import torch
    rows = run(args.threads, args.repeat, args.rounds, args.filter)
    from fastcnn._ops.parallel import simd_path
    sgemm, copy = sgemm_gflops(args.threads), copy_gbs(args.threads)
    print(f"fastcnn {fastcnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.threads} thread(s); vector loops: {simd_path()}, torch "
          f"{torch.backends.cpu.get_cpu_capability()}; numpy sgemm 1024^3: "
          f"{sgemm:.0f} GFLOP/s; numpy copy 256 MiB: {copy:.1f} GB/s\n")
    print(table(rows, sgemm, copy))
    geo = math.exp(sum(math.log(r.ms / r.torch_ms) for r in rows) / len(rows))
    print(f"\ngeometric mean ratio: {geo:.2f} over {len(rows)} cases")


if __name__ == "__main__":
    main()
