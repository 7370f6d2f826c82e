"""fastcnn and torch side by side on the same shapes, in one process.

    python bench/compare_torch.py                 # all cases, all cores, markdown table
    python bench/compare_torch.py --threads 1 --filter conv

Each case is timed as the median of ``--repeat`` calls after warm-up, alternating fastcnn and torch
in rounds so that both see the same machine state. ratio = fastcnn ms / torch ms (below 1: fastcnn
is faster). GFLOP/s is fastcnn's, counting a multiply-add as 2 FLOPs (nan for the memory-bound
norms and losses, which have no meaningful FLOP count). Both libraries use the same
number of threads. numpy's sgemm rate on this machine is printed for scale.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np

import fastcnn
import fastcnn.functional as F


def _conv_case(name, n, c_in, h, w, c_out, k, s, p):
    """Forward and backward (input, weight and bias gradients) of a 2-D convolution."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv2d(x, wt, b, s, p)
        dy = np.ones_like(y)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
        tdy = torch.tensor(dy)
        ty = torch.nn.functional.conv2d(tx, tw, tb, s, p).detach().requires_grad_()

        def torch_backward():
            # torch's backward alone: re-run the graph node's backward only.
            return torch.ops.aten.convolution_backward(
                tdy, tx, tw, [c_out], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                [True, True, True])

        flops = 2 * n * c_out * c_in * k * k * y.shape[2] * y.shape[3]
        return [
            (f"{name} fwd", lambda: F.conv2d(x, wt, b, s, p),
             lambda: torch.nn.functional.conv2d(tx, tw, tb, s, p), flops),
            (f"{name} bwd", lambda: F.conv2d_backward(dy, x, wt, s, p),
             torch_backward, 2 * flops),
        ]
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
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        trm, trv, tdy = torch.tensor(rm), torch.tensor(rv), torch.tensor(dy)
        tf = torch.nn.functional
        if kind == "batch":
            def ours_fwd():
                return F.batch_norm(x, rm, rv, w, b, training=True)

            def ours_both():
                y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True,
                                               return_stats=True)
                return F.batch_norm_backward(dy, x, w, training=True, save_mean=mean,
                                             save_invstd=invstd)

            def theirs(*args):
                return tf.batch_norm(*args, running_mean=trm, running_var=trv, weight=tw,
                                     bias=tb, training=True)
        elif kind == "group":
            def ours_fwd():
                return F.group_norm(x, groups, w, b)

            def ours_both():
                F.group_norm(x, groups, w, b)
                return F.group_norm_backward(dy, x, groups, w, b)

            def theirs(t):
                return tf.group_norm(t, groups, tw, tb)
        else:
            def ours_fwd():
                return F.layer_norm(x, c, w, b)

            def ours_both():
                F.layer_norm(x, c, w, b)
                return F.layer_norm_backward(dy, x, c, w, b)

            def theirs(t):
                return tf.layer_norm(t, (c,), tw, tb)

        def torch_fwd():
            with torch.no_grad():
                return theirs(tx)

        def torch_both():
            tx.grad = tw.grad = tb.grad = None
            theirs(tx).backward(tdy)

        return [(f"{name} fwd", ours_fwd, torch_fwd, 0),
                (f"{name} fwd+bwd", ours_both, torch_both, 0)]
    return setup


def _cross_entropy_case(name, n, c):
    """Mean cross-entropy loss and its gradient (fused log-softmax)."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=np.float32)
        t = rng.integers(0, c, n)
        tx, tt = torch.tensor(x, requires_grad=True), torch.tensor(t)

        def ours():
            F.cross_entropy(x, t)
            return F.cross_entropy_backward(1.0, x, t)

        def theirs():
            tx.grad = None
            torch.nn.functional.cross_entropy(tx, tt).backward()
        return [(f"{name} fwd+bwd", ours, theirs, 0)]
    return setup


CASES = {
    "conv lenet1 64x1x28x28 ->6 k5 s1 p2": _conv_case("conv lenet1", 64, 1, 28, 28, 6, 5, 1, 2),
    "conv lenet2 64x6x14x14 ->16 k5 s1 p0": _conv_case("conv lenet2", 64, 6, 14, 14, 16, 5, 1, 0),
    "conv vgg 32x64x32x32 ->64 k3 s1 p1": _conv_case("conv vgg3x3", 32, 64, 32, 32, 64, 3, 1, 1),
    "conv resnet 16x128x28x28 ->128 k3 s1 p1": _conv_case("conv resnet3x3", 16, 128, 28, 28, 128, 3, 1, 1),
    "conv strided 16x64x56x56 ->128 k3 s2 p1": _conv_case("conv strided", 16, 64, 56, 56, 128, 3, 2, 1),
    "conv pointwise 16x256x14x14 ->64 k1": _conv_case("conv pointwise", 16, 256, 14, 14, 64, 1, 1, 0),
    "norm batch_norm train 32x64x32x32": _norm_case("batch_norm 32x64x32x32", (32, 64, 32, 32),
                                                    "batch"),
    "norm group_norm 32 groups 16x64x28x28": _norm_case("group_norm G32 16x64x28x28",
                                                        (16, 64, 28, 28), "group", groups=32),
    "norm layer_norm 8192x512": _norm_case("layer_norm 8192x512", (8192, 512), "layer"),
    "loss cross_entropy 256x1000": _cross_entropy_case("cross_entropy 256x1000", 256, 1000),
}


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


def run(threads, repeat, rounds, pattern):
    import torch
    torch.set_num_threads(threads)
    fastcnn.set_num_threads(threads)
    rows = []
    for key, setup in CASES.items():
        if pattern and pattern not in key:
            continue
        for label, ours, theirs, flops in setup(torch):
            for fn in (ours, theirs):      # warm-up: workspaces, caches, thread pools
                fn(), fn()
            mine, ref = [], []
            for _ in range(rounds):
                mine.append(_median_ms(ours, repeat))
                ref.append(_median_ms(theirs, repeat))
            a, b = min(mine), min(ref)
            rows.append((label, a, b, a / b, flops / a / 1e6 if flops else float("nan")))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=7, help="calls per timing (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best kept)")
    parser.add_argument("--filter", default="", help="only cases whose key contains this")
    args = parser.parse_args(argv)
    import torch
    rows = run(args.threads, args.repeat, args.rounds, args.filter)
    print(f"fastcnn {fastcnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.threads} thread(s); numpy sgemm 1024^3: "
          f"{sgemm_gflops(args.threads):.0f} GFLOP/s\n")
    print("| case | fastcnn ms | torch ms | ratio | fastcnn GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for label, a, b, r, gf in rows:
        print(f"| {label} | {a:.3f} | {b:.3f} | {r:.2f} | {gf:.1f} |")
    geo = math.exp(sum(math.log(r[3]) for r in rows) / len(rows))
    print(f"\ngeometric mean ratio: {geo:.2f} over {len(rows)} cases")


if __name__ == "__main__":
    main()
