"""Communicators: what data-parallel training asks of the processes it runs in.

Two implementations of one interface:

- :class:`SingleProcessCommunicator`: one process (rank 0 of 1). Every collective returns its
  input; this is what training uses when it is not distributed, so there is one code path.
- :class:`MPICommunicator`: the processes of an MPI job (``mpiexec -n K ...``), through mpi4py
  (the ``mpi`` extra: ``pip install "fastcnn[mpi]"``), imported only when asked for.

Arrays travel through mpi4py's buffer interface (no pickling); small Python objects (configs,
optimizer state on resume, per-epoch decisions) through its pickle-based lowercase calls.
"""
from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["Communicator", "SingleProcessCommunicator", "MPICommunicator", "communicator",
           "launched_ranks", "DistributedError", "MPI_EXTRA_HINT"]

MPI_EXTRA_HINT = 'pip install "fastcnn[mpi]" (mpi4py and the mpich wheel, whose mpiexec it brings)'


class DistributedError(RuntimeError):
    """The processes of a distributed run disagree (config, data, parameters) or one of them
    failed where all of them could be told; raised on every rank alike."""


class Communicator:
    """The collective operations data-parallel training uses. Every rank must call each of them
    in the same order (they are MPI collectives); arrays are numpy arrays of the same shape and
    dtype on every rank.

    - ``rank`` (0 .. size-1), ``size``: this process and the job's process count;
    - ``local_rank``, ``local_size``: the same among the processes on this machine (MPI's
      ``COMM_TYPE_SHARED``), for sharing its cores;
    - ``is_root``: rank 0, the one process that prints and writes files.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` (a contiguous array) over all ranks, in place; returns it."""
        raise NotImplementedError

    def allgather_array(self, array: np.ndarray) -> np.ndarray:
        """``(size, *array.shape)``: every rank's ``array``, in rank order."""
        raise NotImplementedError

    def broadcast_array(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``buffer`` on every rank with root's, in place; returns it."""
        raise NotImplementedError

    def bcast(self, obj, root: int = 0):
        """root's Python object (pickled), on every rank."""
        raise NotImplementedError

    def allgather(self, obj) -> list:
        """Every rank's Python object, in rank order, on every rank."""
        raise NotImplementedError

    def gather(self, obj, root: int = 0):
        """Every rank's Python object in rank order on root; None elsewhere."""
        raise NotImplementedError

    def local_allgather(self, obj) -> list:
        """:meth:`allgather` among the processes on this machine only."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1):
        """End every process of the job now with exit status ``code`` (MPI_Abort)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessCommunicator(Communicator):
    """One process: every collective is the identity (nothing is copied)."""

    def allreduce_sum(self, buffer):
        return buffer

    def allgather_array(self, array):
        return np.asarray(array)[None]

    def broadcast_array(self, buffer, root=0):
        return buffer

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root=0):
        return [obj]

    def local_allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py, which is not installed "
                          f"({exc}): {MPI_EXTRA_HINT}") from None
    return MPI


class MPICommunicator(Communicator):
    """The processes of an MPI job, through mpi4py (``comm`` defaults to ``COMM_WORLD``)."""

    def __init__(self, comm=None):
        MPI = self._MPI = _import_mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()

    def allreduce_sum(self, buffer):
        if self.size > 1:
            self.comm.Allreduce(self._MPI.IN_PLACE, _contiguous(buffer), op=self._MPI.SUM)
        return buffer

    def allgather_array(self, array):
        array = np.ascontiguousarray(array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        self.comm.Allgather(array, out)
        return out

    def broadcast_array(self, buffer, root=0):
        if self.size > 1:
            self.comm.Bcast(_contiguous(buffer), root=root)
        return buffer

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def gather(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def local_allgather(self, obj):
        return self.local.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def _contiguous(buffer):
    if not (isinstance(buffer, np.ndarray) and buffer.flags.c_contiguous):
        raise TypeError(f"expected a C-contiguous numpy array (updated in place), got "
                        f"{type(buffer).__name__}")
    return buffer


_world = None

# What launchers tell their processes about the job's size, without starting MPI: PMI (MPICH's
# Hydra, Intel MPI, Slurm's srun with PMI-2), Open MPI
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_ranks() -> int:
    """How many processes the MPI launcher that started this one started (1 when none did),
    read from its environment variables, without importing mpi4py."""
    for name in _LAUNCHER_SIZES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def communicator(distributed: bool = False) -> Communicator:
    """The communicator training runs with: the MPI job's (``distributed=True``; needs
    mpi4py; one per process, made on first use), or a single process's."""
    global _world
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False, got {distributed!r}")
    if not distributed:
        return SingleProcessCommunicator()
    if _world is None:
        _world = MPICommunicator()
    return _world
