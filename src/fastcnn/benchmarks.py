"""fastcnn and torch side by side on the same shapes, in one process.

    fastcnn bench                                 # all cases, all cores, markdown table
    python bench/compare_torch.py --threads 1 --filter conv     # the same, from a clone

Needs torch (``pip install torch==2.13.0``): it is the reference, never a dependency.

Each case is timed as the median of ``--repeat`` calls after warm-up, alternating fastcnn and torch
in rounds so that both see the same machine state. ratio = fastcnn ms / torch ms (below 1: fastcnn
is faster). GFLOP/s is fastcnn's, counting a multiply-add as 2 FLOPs. Both libraries use the same
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


def _conv_transpose_case(name, n, c_in, h, w, c_out, k, s, p):
    """Forward and backward of a 2-D transposed convolution (the decoder's upsampling)."""
    def setup(torch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c_in, h, w), dtype=np.float32)
        wt = rng.standard_normal((c_in, c_out, k, k), dtype=np.float32) * 0.1
        b = np.zeros(c_out, np.float32)
        y = F.conv_transpose2d(x, wt, b, s, p)
        dy = np.ones_like(y)
        tx, tw, tb = (torch.tensor(a) for a in (x, wt, b))
        tdy = torch.tensor(dy)

        def torch_backward():
            return torch.ops.aten.convolution_backward(
                tdy, tx, tw, [c_out], [s, s], [p, p], [1, 1], True, [0, 0], 1,
                [True, True, True])

        flops = 2 * n * c_in * c_out * k * k * h * w
        return [
            (f"{name} fwd", lambda: F.conv_transpose2d(x, wt, b, s, p),
             lambda: torch.nn.functional.conv_transpose2d(tx, tw, tb, s, p), flops),
            (f"{name} bwd", lambda: F.conv_transpose2d_backward(dy, x, wt, s, p),
             torch_backward, 2 * flops),
        ]
    return setup


def _max_pool_case(name, shape, k, s, p):
    """max_pool2d with indices (what training keeps for the backward), and its backward."""
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
        dy = np.ones_like(y)
        tx, tdy = torch.tensor(x), torch.tensor(dy)
        _, tind = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
        return [
            (f"{name} fwd", lambda: F.max_pool2d(x, k, s, p, return_indices=True),
             lambda: torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True), 0),
            (f"{name} bwd", lambda: F.max_pool2d_backward(dy, x, ind, k, s, p),
             lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                 tdy, tx, [k, k], [s, s], [p, p], [1, 1], False, tind), 0),
        ]
    return setup


def _avg_pool_case(name, shape, k, s, p):
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        dy = np.ones_like(F.avg_pool2d(x, k, s, p))
        tx, tdy = torch.tensor(x), torch.tensor(dy)
        return [
            (f"{name} fwd", lambda: F.avg_pool2d(x, k, s, p),
             lambda: torch.nn.functional.avg_pool2d(tx, k, s, p), 0),
            (f"{name} bwd", lambda: F.avg_pool2d_backward(dy, x, k, s, p),
             lambda: torch.ops.aten.avg_pool2d_backward(tdy, tx, [k, k], [s, s], [p, p], False,
                                                        True, None), 0),
        ]
    return setup


def _upsample_case(name, shape, factor, mode):
    def setup(torch):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        y = F.interpolate(x, scale_factor=factor, mode=mode)
        dy = np.ones_like(y)
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
        return [
            (f"{name} fwd", lambda: F.interpolate(x, scale_factor=factor, mode=mode),
             lambda: torch.nn.functional.interpolate(tx, scale_factor=factor, mode=mode), 0),
            (f"{name} bwd", lambda: F.interpolate_backward(dy, x.shape, scale_factor=factor,
                                                           mode=mode),
             torch_backward, 0),
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


def _train_step_case(name, config, batch):
    """One SGD training step (forward, cross-entropy, backward, update) of a whole model."""
    def setup(torch):
        from fastcnn.train import bundled_config
        cfg = bundled_config(config) if isinstance(config, str) else config
        model = fastcnn.build_model(cfg)
        ref = to_torch(model, torch)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + model.input_shape, dtype=np.float32)
        y = rng.integers(0, model.output_shape[-1], batch)
        loss = fastcnn.build_loss("cross_entropy")
        opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.01, "momentum": 0.9},
                                      model.parameters())
        tx, ty = torch.tensor(x), torch.tensor(y)
        topt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)

        def ours():
            loss(model(x), y)
            model.zero_grad()
            model.backward(loss.backward(), input_grad=False)
            opt.step()

        def theirs():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(ref(tx), ty).backward()
            topt.step()

        flops = 3 * model_flops(model) * batch        # forward + two backward products
        return [(f"{name} train step", ours, theirs, flops)]
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
    "train lenet5 64x1x28x28": _train_step_case("lenet5 b64", "lenet5", 64),
    "train vgg_small (batch norm) 64x3x32x32": _train_step_case("vgg_small+bn b64", "vgg_small", 64),
    "train resnet_small 32x3x32x32": _train_step_case("resnet_small b32", "resnet_small", 32),
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
    parser = argparse.ArgumentParser(prog="fastcnn bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=7, help="calls per timing (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best kept)")
    parser.add_argument("--filter", default="", help="only cases whose key contains this")
    args = parser.parse_args(argv)
    import torch
    rows = run(args.threads, args.repeat, args.rounds, args.filter)
    from fastcnn._ops.parallel import simd_path
    print(f"fastcnn {fastcnn.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.threads} thread(s); vector loops: {simd_path()}; numpy sgemm 1024^3: "
          f"{sgemm_gflops(args.threads):.0f} GFLOP/s\n")
    print("| case | fastcnn ms | torch ms | ratio | fastcnn GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for label, a, b, r, gf in rows:
        gflops = "-" if math.isnan(gf) else f"{gf:.1f}"      # memory-bound ops: no FLOP rate
        print(f"| {label} | {a:.3f} | {b:.3f} | {r:.2f} | {gflops} |")
    geo = math.exp(sum(math.log(r[3]) for r in rows) / len(rows))
    print(f"\ngeometric mean ratio: {geo:.2f} over {len(rows)} cases")


if __name__ == "__main__":
    main()
