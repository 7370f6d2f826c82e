"""Data-parallel training on MPI (``mpiexec -n K fastcnn train CONFIG --distributed``).

- :mod:`~fastcnn.distributed.comm`: the communicator interface, a single-process one (the
  default: one code path) and the MPI one through mpi4py (``pip install "fastcnn[mpi]"``);
- :mod:`~fastcnn.distributed.data_parallel`: sharding, the one-allreduce step, agreement
  checks, failure handling, the per-rank thread count;
- :mod:`~fastcnn.distributed.sync_batch_norm`: batch norm with statistics over every rank;
- :mod:`~fastcnn.distributed.bench`: ``fastcnn bench --distributed``, allreduce and step times
  and the scaling model.

mpi4py is imported only when a distributed run (or the benchmark) starts.
"""
from fastcnn.distributed.comm import (MPI_EXTRA_HINT, Communicator, DistributedError,
                                      MPICommunicator, SingleProcessCommunicator, communicator,
                                      launched_ranks)
from fastcnn.distributed.data_parallel import DataParallel, default_num_threads, shard
from fastcnn.distributed.sync_batch_norm import SyncBatchNorm, convert_sync_batch_norm

__all__ = ["Communicator", "SingleProcessCommunicator", "MPICommunicator", "communicator",
           "launched_ranks", "DistributedError", "MPI_EXTRA_HINT", "DataParallel", "shard",
           "default_num_threads", "SyncBatchNorm", "convert_sync_batch_norm"]
