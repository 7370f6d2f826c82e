"""Data-parallel training over a :class:`~fastcnn.distributed.comm.Communicator`: what the
Trainer does differently when several processes train one model (PyTorch DDP's, Horovod's and
ChainerMN's semantics), and nothing when there is one.

Per step, with a global batch of B samples (the config's ``batch_size``) split over K ranks:

- every rank draws the same permutation of the training set from (seed, epoch) and takes its
  share of each global batch: B // K samples, one more on the first B % K ranks (the last,
  smaller batch likewise: no padding, no sample twice; a rank may get none);
- rank r's loss is the mean over its n_r samples, so dL/dlogits is scaled by n_r / B before
  the backward: each rank's gradients are then its share of the gradient of the global batch's
  mean loss, and their SUM over the ranks is that gradient, whatever K and the split;
- the gradients and [loss sum, correct, count] are summed in ONE allreduce of one flat buffer;
  a rank without samples contributes zeros (and joins the synchronized batch norms' collectives).

A failure that every rank sees (a NaN loss, disagreeing ranks) is raised on every rank alike;
any other exception on one rank ends the whole job (MPI_Abort) rather than leaving the others
waiting in a collective forever (:meth:`DataParallel.guard`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import traceback

import numpy as np

from fastcnn.distributed.comm import DistributedError
from fastcnn.distributed.sync_batch_norm import convert_sync_batch_norm, sync_batch_norm_layers

__all__ = ["DataParallel", "shard", "default_num_threads"]

ABORT_GRACE_SECONDS = 0.5      # between a failing rank's message and MPI_Abort


def shard(total: int, rank: int, size: int) -> tuple[int, int]:
    """(offset, count) of rank's share of ``total`` consecutive items split over ``size``
    ranks: ``total // size`` each, one more for the first ``total % size`` ranks."""
    base, extra = divmod(int(total), int(size))
    return rank * base + min(rank, extra), base + (rank < extra)


def default_num_threads(comm) -> int:
    """Threads per rank that share this machine's cores without oversubscribing them: the
    cores this process may run on, divided by the number of ranks on the machine whose cores
    overlap with them (ranks bound to disjoint cores by the launcher keep all of theirs)."""
    try:
        mine = set(os.sched_getaffinity(0))
    except AttributeError:               # not Linux
        mine = set(range(os.cpu_count() or 1))
    sets = comm.local_allgather(sorted(mine))
    sharing = sum(1 for cores in sets if mine.intersection(cores))
    return max(1, len(mine) // max(sharing, 1))


def _state_digest(model) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


class DataParallel:
    """The distributed side of one training run (see the module docstring).

    ``agreed_failure`` is set when an exception is being raised on every rank alike;
    ``digests`` holds, per epoch, the parameter-and-buffer digest every rank had (identical)."""

    def __init__(self, comm):
        self.comm = comm
        self.agreed_failure = False
        self.digests: list[str] = []
        self._flat = None
        self._idle_forward = self._idle_backward = ()
        self._synced = set()

    @property
    def size(self):
        return self.comm.size

    # -- failures ----------------------------------------------------------------------------
    def agreed(self, exc: BaseException) -> BaseException:
        """Mark ``exc``, raised on every rank alike, as needing no abort."""
        self.agreed_failure = True
        return exc

    def collective(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on every rank; if it raised on any rank, raise on every rank
        (the failing rank its own exception, the others a DistributedError naming it)."""
        failure = None
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:            # noqa: BLE001 (reported to every rank, re-raised)
            value, failure = None, exc
        if self.size == 1:
            if failure is not None:
                raise failure
            return value
        mine = None if failure is None else f"{type(failure).__name__}: {failure}"
        reports = [(rank, text) for rank, text in enumerate(self.comm.allgather(mine))
                   if text is not None]
        if reports:
            self.agreed_failure = True
            if failure is not None:
                raise failure
            rank, text = reports[0]
            raise DistributedError(f"rank {rank} of {self.size} failed: {text}")
        return value

    def on_root(self, fn, *args, **kwargs):
        """``fn(...)`` on rank 0 only (files, the run folder); its result on every rank, its
        exception raised on every rank."""
        value = self.collective(fn if self.comm.is_root else (lambda *a, **k: None),
                                *args, **kwargs)
        return self.comm.bcast(value)

    @contextlib.contextmanager
    def guard(self):
        """Around a whole run: an exception that not every rank raised (an error on one rank,
        Ctrl-C) prints this rank's traceback and ends every rank of the job (MPI_Abort, exit
        status 1, or 130 for Ctrl-C), instead of leaving the others blocked in a collective."""
        try:
            yield
        except BaseException as exc:
            if self.size > 1 and not self.agreed_failure:
                code = 130 if isinstance(exc, KeyboardInterrupt) else 1
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                print(f"fastcnn: rank {self.comm.rank} of {self.size} failed: {reason}; "
                      f"ending every rank (MPI_Abort, status {code})", file=sys.stderr,
                      flush=True)
                traceback.print_exc()
                sys.stderr.flush()
                # the launcher forwards our stderr through a pipe; aborting at once can tear
                # the job down before it has (seen: the message lost in 1 of 15 runs)
                time.sleep(ABORT_GRACE_SECONDS)
                self.comm.abort(code)
            raise

    # -- before the first step ---------------------------------------------------------------
    def setup(self, model, sync_batch_norm: bool):
        """Synchronize batch norm when asked (more than one rank), copy rank 0's parameters
        and buffers to every rank."""
        if sync_batch_norm and self.size > 1:
            names = convert_sync_batch_norm(model, self.comm)
            self._synced = {model[name] for name in names}
            self._idle_forward, self._idle_backward = sync_batch_norm_layers(model)
        self.broadcast_state(model)

    def broadcast_state(self, model):
        """Rank 0's parameters and buffers, on every rank."""
        if self.size > 1:
            state = self.comm.bcast(model.state_dict() if self.comm.is_root else None)
            model.load_state_dict(state)

    def check_agreement(self, facts):
        """Stop on every rank with a DistributedError naming what differs when the ranks'
        ``facts()`` (name -> JSON-able value: config entries, shapes, sizes; called only when
        there are several ranks) are not all equal."""
        if self.size == 1:
            return
        table = self.comm.allgather(facts())
        problems = []
        for key in sorted(set().union(*table), key=str):
            values = [t.get(key, "<missing>") for t in table]
            differ = [r for r, v in enumerate(values) if v != values[0]]
            if differ:
                shown = ", ".join(f"rank {r} has {values[r]!r}" for r in differ[:3])
                problems.append(f"{key}: rank 0 has {values[0]!r}, {shown}")
        if problems:
            raise self.agreed(DistributedError(
                f"the {self.size} ranks disagree before the first step (every rank must run "
                f"the same config on the same data): " + "; ".join(problems[:8])
                + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")))

    # -- the data ----------------------------------------------------------------------------
    def epoch_rng(self, seed, epoch) -> np.random.Generator:
        """This rank's generator for the epoch (augmentation, dropout): its own stream, from
        (seed, epoch, rank), so a resumed run draws what the uninterrupted one drew."""
        return np.random.default_rng([int(seed), int(epoch), 1, self.comm.rank])

    def batches(self, x, y, batch_size: int, seed, epoch):
        """Yield ``(xb, yb, total)``: this rank's share (possibly empty) of each global batch
        of ``total`` samples, the batches covering a permutation of (x, y) drawn from
        (seed, epoch), the same on every rank."""
        n = len(x)
        order = np.random.default_rng([int(seed), int(epoch), 0]).permutation(n)
        for start in range(0, n, batch_size):
            total = min(batch_size, n - start)
            offset, count = shard(total, self.comm.rank, self.size)
            picked = order[start + offset:start + offset + count]
            yield x[picked], y[picked], total

    # -- a step ------------------------------------------------------------------------------
    def idle_forward(self):
        """A rank without samples in this step joins the synchronized batch norms' forward."""
        for layer in self._idle_forward:
            layer.sync.idle_forward(layer)

    def idle_backward(self):
        """A rank whose backward does not run in this step joins their backward."""
        for layer in self._idle_backward:
            layer.sync.idle_backward(layer)

    def reduce_step(self, params, loss_sum: float, correct: int, count: int):
        """Sum every rank's gradients (in place) and (loss_sum, correct, count) in one
        allreduce; returns the global (loss_sum, correct, count)."""
        if self.size == 1:
            return loss_sum, correct, count
        if self._flat is None:
            dtype = np.result_type(*[p.grad.dtype for p in params])
            sizes = [p.grad.size for p in params]
            self._flat = np.empty(sum(sizes) + 3, dtype)
            offsets = np.cumsum([0] + sizes)
            self._views = [self._flat[a:b].reshape(p.grad.shape)
                           for a, b, p in zip(offsets[:-1], offsets[1:], params)]
        flat = self._flat
        for view, p in zip(self._views, params):
            np.copyto(view, p.grad)
        flat[-3:] = (loss_sum, correct, count)
        self.comm.allreduce_sum(flat)
        for view, p in zip(self._views, params):
            np.copyto(p.grad, view)
        return float(flat[-3]), int(round(float(flat[-2]))), int(round(float(flat[-1])))

    # -- between epochs ----------------------------------------------------------------------
    def sync_buffers(self, model):
        """Average the ranks' running statistics (their own batches' since the last call) and
        take rank 0's integer counters, before evaluating and saving; synchronized batch norms
        already agree and are left alone."""
        if self.size == 1:
            return
        floats, ints = [], []
        for layer in model.layers.values():
            if layer in self._synced:
                continue
            for buf in layer.buffers().values():
                (floats if buf.dtype.kind == "f" else ints).append(buf)
        if floats:
            flat = np.concatenate([b.ravel().astype(np.float64) for b in floats])
            self.comm.allreduce_sum(flat)
            flat /= self.size
            self._scatter(flat, floats)
        if ints:
            flat = np.concatenate([b.ravel().astype(np.int64) for b in ints])
            self.comm.broadcast_array(flat)
            self._scatter(flat, ints)

    @staticmethod
    def _scatter(flat, buffers):
        offset = 0
        for buf in buffers:
            buf[...] = flat[offset:offset + buf.size].reshape(buf.shape)
            offset += buf.size

    def check_identical(self, model):
        """Every rank must hold the same parameters and buffers (they start equal and apply
        the same reduced update): compared by digest, recorded in ``digests``; a difference is
        a DistributedError on every rank."""
        digest = _state_digest(model)
        if self.size > 1:
            everyone = self.comm.allgather(digest)
            differ = [r for r, d in enumerate(everyone) if d != everyone[0]]
            if differ:
                raise self.agreed(DistributedError(
                    f"ranks {differ} hold parameters that differ from rank 0's after "
                    f"{len(self.digests) + 1} epochs (a layer drawing random numbers in its "
                    f"update, or a non-deterministic reduction)"))
        self.digests.append(digest)

    def decide(self, value):
        """Rank 0's decision (early stopping), on every rank."""
        return self.comm.bcast(value)

    def evaluate(self, evaluate, model, loss, x, y, batch_size):
        """``evaluate(model, loss, x, y, batch_size)`` -> (mean loss, accuracy, predictions)
        with each rank evaluating a contiguous share of (x, y), the sums reduced; the
        predictions are gathered on rank 0 (None elsewhere)."""
        if self.size == 1:
            return evaluate(model, loss, x, y, batch_size)
        offset, count = shard(len(x), self.comm.rank, self.size)
        part = slice(offset, offset + count)
        mean_loss, accuracy, preds = evaluate(model, loss, x[part], y[part], batch_size)
        sums = self.comm.allreduce_sum(np.array([mean_loss * count, accuracy * count]))
        n = max(len(x), 1)
        gathered = self.comm.gather(preds)
        preds = np.concatenate(gathered) if gathered is not None else None
        return float(sums[0]) / n, float(sums[1]) / n, preds
