"""Data-parallel training on MPI: K ranks give what one process gives, every rank holds the same
parameters, failures end the job, resume is exact. The MPI tests run ``mpiexec -n K`` (the
``mpi`` extra's) in a subprocess with a timeout, on tests/mpi_worker.py's tiny configs."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastcnn
from fastcnn.cli import main
from fastcnn.distributed import DataParallel, SingleProcessCommunicator, comm, shard
from fastcnn.training import Trainer

import mpi_worker

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 120          # seconds for one mpiexec job; a hang fails the test instead of CI


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else on PATH; None without mpi4py."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
if MPIEXEC is None and os.environ.get("FASTCNN_REQUIRE_MPI") == "1":
    raise RuntimeError('FASTCNN_REQUIRE_MPI=1 but mpi4py or mpiexec is missing: '
                       'pip install "fastcnn[mpi]"')
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason='the mpi extra is not installed '
                               '(pip install "fastcnn[mpi]": mpi4py and mpich)')


def _launch(k, *args):
    """``mpiexec -n k python ARGS``; returns (CompletedProcess, seconds)."""
    flags = []
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        flags = ["--oversubscribe", "--allow-run-as-root"]
    start = time.perf_counter()
    done = subprocess.run([MPIEXEC, "-n", str(k), *flags, sys.executable, *args],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=HERE)
    return done, time.perf_counter() - start


def _worker(k, mode, out):
    return _launch(k, os.path.join(HERE, "mpi_worker.py"), mode, str(out))


# -- no MPI needed --------------------------------------------------------------------------------

class _Rank(SingleProcessCommunicator):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("total,size", [(9, 2), (9, 4), (1, 3), (12, 4), (0, 2)])
def test_shares_cover_a_batch_once_in_order(total, size):
    shares = [shard(total, r, size) for r in range(size)]
    assert sum(count for _, count in shares) == total
    assert [offset for offset, _ in shares] == list(np.cumsum([0] + [c for _, c in shares])[:-1])
    assert max(c for _, c in shares) - min(c for _, c in shares) <= 1


def test_every_rank_takes_its_share_of_the_same_global_batches():
    x = np.arange(55, dtype=np.float32)[:, None]
    y = np.arange(55)
    single = [(yb, total) for _, yb, total in DataParallel(_Rank(0, 1)).batches(x, y, 9, 5, 2)]
    per_rank = [list(DataParallel(_Rank(r, 3)).batches(x, y, 9, 5, 2)) for r in range(3)]
    assert len(single) == 7 and all(len(p) == 7 for p in per_rank)
    for step, (yb, total) in enumerate(single):
        joined = np.concatenate([per_rank[r][step][1] for r in range(3)])
        np.testing.assert_array_equal(joined, yb)
        assert {per_rank[r][step][2] for r in range(3)} == {total}
    assert [len(per_rank[r][-1][1]) for r in range(3)] == [1, 0, 0]    # 55 = 6 * 9 + 1
    # another epoch, another order; the same epoch, the same order
    other = next(DataParallel(_Rank(0, 1)).batches(x, y, 9, 5, 3))[1]
    assert not np.array_equal(other, single[0][0])


@pytest.mark.parametrize("local_sets,expected", [
    ([[0, 1, 2, 3]] * 4, 1),                      # 4 unbound ranks on 4 cores: one each
    ([[0, 1, 2, 3]] * 2, 2),                      # 2 unbound ranks: two each
    ([[0, 1], [2, 3]], 2),                        # bound to their own pairs: keep them
    ([[0, 1, 2, 3]] * 8, 1),                      # more ranks than cores: still one
])
def test_threads_per_rank_share_the_machine(monkeypatch, local_sets, expected):
    from fastcnn.distributed import default_num_threads

    class Node(_Rank):
        def local_allgather(self, obj):
            return local_sets
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(local_sets[0]), raising=False)
    assert default_num_threads(Node(0, len(local_sets))) == expected


def test_each_rank_draws_its_own_augmentation_stream():
    """Streams from (seed, epoch, rank): another rank or epoch draws other numbers, the same
    triple (a resumed run) the same ones; the permutation's stream is none of them."""
    def draw(rank, epoch, seed=5):
        return DataParallel(_Rank(rank, 4)).epoch_rng(seed, epoch).random(4)
    np.testing.assert_array_equal(draw(1, 2), draw(1, 2))
    others = [draw(0, 2), draw(2, 2), draw(1, 3), draw(1, 2, seed=6)]
    assert not any(np.array_equal(draw(1, 2), other) for other in others)
    shuffle = np.random.default_rng([5, 2, 0]).random(4)
    assert not any(np.array_equal(shuffle, draw(r, 2)) for r in range(4))


def test_distributed_without_mpi4py_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(comm, "_world", None)
    with pytest.raises(ImportError, match=r'pip install "fastcnn\[mpi\]"'):
        Trainer(mpi_worker.CONFIGS["plain"], tmp_path / "run", distributed=True)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(mpi_worker.CONFIGS["plain"]))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--distributed"]) == 2
    assert 'pip install "fastcnn[mpi]"' in capsys.readouterr().err
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--sync-bn"]) == 2
    assert "--distributed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ranks_of_a_launcher_without_distributed_are_told_to_pass_it(tmp_path, monkeypatch,
                                                                     capsys):
    """``mpiexec -n 3 fastcnn train`` without --distributed would train three copies into
    one folder: refused, before anything is written."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps(mpi_worker.CONFIGS["plain"]))
    for variable in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.setenv(variable, "3")
        assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
        assert "one of 3 started by an MPI launcher: pass --distributed" in \
            capsys.readouterr().err
        monkeypatch.delenv(variable)
    assert not (tmp_path / "run").exists()


# -- under mpiexec --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, not distributed: the global batch on one rank (sync_bn is batch norm)."""
    out = tmp_path_factory.mktemp("k1")
    for name, config in mpi_worker.CONFIGS.items():
        Trainer(config, out / name, log=mpi_worker._quiet, progress=False).fit()
    return out


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """K -> the folder of the worker's ``train`` run on K ranks (each run once)."""
    runs = {}

    def get(k):
        if k not in runs:
            out = tmp_path_factory.mktemp(f"k{k}")
            done, _ = _worker(k, "train", out)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[k] = out
        return runs[k]
    return get


def _state(path):
    return fastcnn.load(path).state_dict()


@needs_mpi
@pytest.mark.parametrize("k", [2, 3, 4])
def test_k_ranks_train_what_one_process_trains(k, reference, distributed_runs):
    """55 samples in global batches of 9: every K splits them unevenly, and the last batch of
    one sample leaves K - 1 ranks without any (they still join the collectives)."""
    out = distributed_runs(k)
    for name in ("plain", "sync_bn"):
        want, got = _state(reference / name / "last.fcnn"), _state(out / name / "last.fcnn")
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {key} on {k} ranks")
        h_want = json.loads((reference / name / "history.json").read_text())
        h_got = json.loads((out / name / "history.json").read_text())
        for a, b in zip(h_want, h_got):
            assert (a["train_acc"], a["val_acc"]) == (b["train_acc"], b["val_acc"])
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        m_want = json.loads((reference / name / "metrics.json").read_text())
        m_got = json.loads((out / name / "metrics.json").read_text())
        assert m_got["test_accuracy"] == m_want["test_accuracy"]
        assert m_got["processes"] == k
    for name in mpi_worker.CONFIGS:         # local batch norm included
        digests = [json.loads((out / name / f"digests-{r}.json").read_text()) for r in range(k)]
        assert len(digests[0]) == 3 and all(d == digests[0] for d in digests), name
        assert len(set(digests[0])) == 3          # the parameters did change every epoch
        # only rank 0 wrote the run folder
        assert not [f for f in os.listdir(out / name) if f.endswith(".tmp")]


@needs_mpi
def test_a_resumed_distributed_run_continues_exactly(tmp_path, distributed_runs):
    config = tmp_path / "sync_bn.json"
    config.write_text(json.dumps(mpi_worker.CONFIGS["sync_bn"]))
    base = ["-m", "fastcnn", "train", str(config), "--out", str(tmp_path / "run"),
            "--distributed", "--sync-bn", "--quiet"]
    done, _ = _launch(2, *base, "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    done, _ = _launch(2, *base, "--resume", "--epochs", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test_accuracy") == 1          # rank 0 alone prints
    full = _state(distributed_runs(2) / "sync_bn" / "last.fcnn")
    resumed = _state(tmp_path / "run" / "last.fcnn")
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path):
    done, _ = _worker(2, "raise", tmp_path)
    ended = time.time()
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stderr
    assert "rank 1 of 2 failed" in done.stderr
    seconds = ended - float((tmp_path / "failed-at").read_text())
    assert seconds < 10, seconds
    # rank 0 was killed before its first epoch ended: no run is left to refuse the next one
    assert not {"config.json", "last.fcnn"} & set(os.listdir(tmp_path / "fail"))


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    done, _ = _worker(2, "nan", tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("TrainingDiverged: loss became nan in epoch 1") == 2
    assert "MPI_Abort" not in done.stderr          # stopped together, nobody had to be killed


@needs_mpi
def test_ranks_that_disagree_refuse_to_start(tmp_path):
    done, _ = _worker(2, "disagree", tmp_path)
    assert done.returncode != 0
    assert "disagree before the first step" in done.stderr
    assert "config train.seed: rank 0 has 5, rank 1 has 6" in done.stderr
    assert not (tmp_path / "disagree").exists()         # rank 0 cleaned its folder up


# -- the scaling benchmark ------------------------------------------------------------------------

def test_the_ring_allreduce_model():
    from fastcnn.distributed.bench import efficiency, ring_allreduce_seconds
    assert ring_allreduce_seconds(1, 1e6, 1e9, 1e-5) == 0.0
    # p = 8: 14 latencies and 2 * 7/8 of the buffer through the link
    assert ring_allreduce_seconds(8, 1e6, 1e9, 1e-5) == pytest.approx(14e-5 + 1.75e-3)
    assert ring_allreduce_seconds(128, 1e6, 1e9, 0) < 2e-3            # bounded by 2 S / B
    assert efficiency(0.09, 0.01) == pytest.approx(0.9)


@needs_mpi
def test_the_distributed_benchmark_reports_measured_and_modelled_figures():
    from fastcnn.distributed import bench
    measured = {2: bench._run_workers(MPIEXEC, 2, ["lenet5"], 1, ["lenet5"], timeout=TIMEOUT)}
    entry = measured[2]["networks"]["lenet5"]
    assert entry["parameters"] == 61706 and entry["tensors"] == 10
    assert all(entry[k] > 0 for k in ("allreduce_flat_s", "allreduce_per_tensor_s",
                                      "step_flat_s", "step_overlap_s"))
    text = bench.report({"lenet5": 0.05}, measured, ["lenet5"])
    assert "| lenet5 | 61,706 | 0.25 | 50.00 |" in text
    assert "10 Gbit/s p=8" in text and "100 Gbit/s p=128" in text
    from fastcnn.benchmarks import argument_parser
    assert argument_parser().parse_args(["--distributed"]).distributed
