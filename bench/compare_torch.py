"""fastcnn and torch side by side on the same shapes, in one process: prints the ratio table.

    python bench/compare_torch.py [--threads N] [--filter TEXT] [--repeat R] [--rounds K]
                                  [--isa avx2|avx512]
    python bench/compare_torch.py --scaling | --profile [FILTER]      # fastcnn alone
    fastcnn bench [the same options]           # runs this file when started from a clone

The README's table is this script's output: python bench/compare_torch.py --rounds 3

The cases, their work counts, the options and the fastcnn-only modes are library code in
``fastcnn.benchmarks``; this file holds the torch side (torch is the reference, never a
dependency of fastcnn): for each kind of case, torch's callables built on the same inputs
(:data:`REFERENCES`), a fastcnn model as a ``torch.nn`` module (:func:`to_torch`), the timing
loop that alternates the two libraries (:func:`run`) and the table (:func:`table`).

Each case is timed as the median of ``--repeat`` calls after warm-up, alternating fastcnn and torch
in rounds so that both see the same machine state. ratio = fastcnn ms / torch ms (below 1: fastcnn
is faster). Both libraries use the same number of threads.

The header prints two references measured in the same run: numpy's sgemm rate and numpy's copy
bandwidth (:func:`copy_gbs`). Compute-bound cases (convolutions, train steps) report fastcnn's
GFLOP/s, counting a multiply-add as 2 FLOPs, and its share of the sgemm rate. Memory-bound cases
(pooling, resampling, norms, the loss) report fastcnn's GB/s: the bytes the call must move at
minimum (``fastcnn.benchmarks.nbytes`` gives the counting rule) over its time, and its share of
the copy bandwidth -- above 100% when the working set stays in the caches.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import NamedTuple

import numpy as np

import fastcnn
from fastcnn import benchmarks
from fastcnn.benchmarks import median_ms, using_threads


# ---------------------------------------------------------------------------------------------
# torch's callables for each kind of case: (torch, CaseSet.inputs) -> one callable per case,
# in the order of the CaseSet's cases
# ---------------------------------------------------------------------------------------------

def _conv(torch, a, transposed=False):
    tx, tw, tb = (torch.tensor(a[k], requires_grad=not transposed)
                  for k in ("x", "weight", "bias"))
    tdy = torch.tensor(a["dy"])
    s, p, groups = a["stride"], a["padding"], a.get("groups", 1)
    c_out = a["dy"].shape[1]
    forward = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d

    def torch_backward():
        # torch's backward alone: re-run the graph node's backward only.
        return torch.ops.aten.convolution_backward(
            tdy, tx, tw, [c_out], [s, s], [p, p], [1, 1], transposed, [0, 0], groups,
            [True, True, True])
    return [lambda: forward(tx, tw, tb, s, p, groups=groups), torch_backward]


def _conv_transpose(torch, a):
    return _conv(torch, a, transposed=True)


def _max_pool(torch, a):
    tx, tdy = torch.tensor(a["x"]), torch.tensor(a["dy"])
    k, s, p = a["kernel_size"], a["stride"], a["padding"]
    _, tind = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
    return [lambda: torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True),
            lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                tdy, tx, [k, k], [s, s], [p, p], [1, 1], False, tind)]


def _avg_pool(torch, a):
    tx, tdy = torch.tensor(a["x"]), torch.tensor(a["dy"])
    k, s, p = a["kernel_size"], a["stride"], a["padding"]
    return [lambda: torch.nn.functional.avg_pool2d(tx, k, s, p),
            lambda: torch.ops.aten.avg_pool2d_backward(
                tdy, tx, [k, k], [s, s], [p, p], False, True, None)]


def _upsample(torch, a):
    tx, tdy = torch.tensor(a["x"]), torch.tensor(a["dy"])
    factor, mode = a["scale_factor"], a["mode"]
    out, size = list(a["dy"].shape[2:]), list(a["x"].shape)
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


def _norm(torch, a):
    tx, tw, tb = (torch.tensor(a[k], requires_grad=True) for k in ("x", "weight", "bias"))
    trm, trv = torch.tensor(a["running_mean"]), torch.tensor(a["running_var"])
    tdy = torch.tensor(a["dy"])
    tf = torch.nn.functional
    kind, groups, c = a["norm"], a["groups"], a["weight"].shape[0]
    if kind == "batch":
        def theirs(t):
            return tf.batch_norm(t, running_mean=trm, running_var=trv, weight=tw, bias=tb,
                                 training=True)
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


def _cross_entropy(torch, a):
    tx, tt = torch.tensor(a["x"], requires_grad=True), torch.tensor(a["target"])

    def theirs():
        tx.grad = None
        torch.nn.functional.cross_entropy(tx, tt).backward()
    return [theirs]


def _train_step(torch, a):
    ref = to_torch(a["model"], torch)
    tx, ty = torch.tensor(a["x"]), torch.tensor(a["y"])
    sgd = benchmarks.SGD
    topt = torch.optim.SGD(ref.parameters(), lr=sgd["lr"], momentum=sgd["momentum"])

    def theirs():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(ref(tx), ty).backward()
        topt.step()
    return [theirs]


# CaseSet.kind -> torch's callables
REFERENCES = {"conv": _conv, "conv_transpose": _conv_transpose, "max_pool": _max_pool,
              "avg_pool": _avg_pool, "upsample": _upsample, "norm": _norm,
              "cross_entropy": _cross_entropy, "train_step": _train_step}


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


def paired(case_set, torch):
    """``[(Case, torch callable), ...]`` for one :class:`fastcnn.benchmarks.CaseSet`."""
    theirs = REFERENCES[case_set.kind](torch, case_set.inputs)
    if len(theirs) != len(case_set.cases):
        raise RuntimeError(f"{case_set.kind}: {len(case_set.cases)} fastcnn cases but "
                           f"{len(theirs)} torch callables")
    return list(zip(case_set.cases, theirs))


# ---------------------------------------------------------------------------------------------
# Timing and the table
# ---------------------------------------------------------------------------------------------

def sgemm_gflops(threads, size=1024, repeat=10):
    """Reference compute rate: numpy's float32 ``size``-cubed matrix product, GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(threads, user_api="blas")
    except ImportError:
        limit = None
    try:
        a @ a
        ms = median_ms(lambda: a @ a, repeat)
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


def run(threads, repeat, rounds, pattern):
    """Time fastcnn against torch on the cases whose key contains ``pattern``: a Row each."""
    import torch
    rows = []
    with using_threads(threads, torch):
        for case_set in benchmarks.selected(pattern):
            for case, theirs in paired(case_set, torch):
                for fn in (case.ours, theirs):      # warm-up: workspaces, caches, thread pools
                    fn(), fn()
                mine, ref = [], []
                for _ in range(rounds):
                    mine.append(median_ms(case.ours, repeat))
                    ref.append(median_ms(theirs, repeat))
                rows.append(Row(case.label, min(mine), min(ref), case.flops, case.nbytes))
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


def compare(args):
    """The comparison run of ``fastcnn bench`` / this script, for parsed ``args``."""
    try:
        import torch
    except ImportError:
        raise SystemExit("the comparison needs torch, the reference (never a fastcnn "
                         "dependency): pip install torch==2.13.0") from None
    rows = run(args.threads, args.repeat, args.rounds, args.filter)
    from fastcnn._ops.parallel import simd_path
    sgemm, copy = sgemm_gflops(args.threads), copy_gbs(args.threads)
    print(f"fastcnn {fastcnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.threads} thread(s); vector loops: {simd_path()}, torch "
          f"{torch.backends.cpu.get_cpu_capability()}; numpy sgemm 1024^3: "
          f"{sgemm:.0f} GFLOP/s; numpy copy 256 MiB: {copy:.1f} GB/s\n")
    print(table(rows, sgemm, copy))
    if rows:
        geo = math.exp(sum(math.log(r.ms / r.torch_ms) for r in rows) / len(rows))
        print(f"\ngeometric mean ratio: {geo:.2f} over {len(rows)} cases")


def main(argv=None):
    benchmarks.main(argv, compare=compare, prog="compare_torch.py")


if __name__ == "__main__":
    main()
