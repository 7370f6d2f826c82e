"""Batch norm whose training statistics span every process's share of the global batch
(torch's ``SyncBatchNorm``): the forward and the backward are those of one batch norm over the
concatenation of all ranks' batches.

Forward, per channel c, with rank r holding m_r values of mean_r and biased variance v_r
(computed by the same kernel as :func:`fastcnn.functional.batch_norm`):

    M = sum_r m_r,   mean = sum_r m_r mean_r / M,
    var = (sum_r m_r v_r + sum_r m_r (mean_r - mean)^2) / M        (Chan et al.: no cancellation)

gathered in one collective of (1 + 2C) doubles per rank; the running statistics are updated
with torch's convention and the unbiased ``var * M / (M - 1)``, identically on every rank.

Backward: with S1 = sum dy and S2 = sum dy (x - mean) over ALL ranks (one allreduce of 2C
doubles),

    dx = dy w invstd - (x - mean) w invstd^3 S2 / M - w invstd S1 / M,

and each rank adds its OWN sums to grad_weight (sum dy (x - mean) invstd) and grad_bias
(sum dy): the data-parallel gradient allreduce then sums them over the ranks. This is exact when
each rank's dy is its share of the gradient of the global batch's loss (the trainer scales
dL/dlogits by local / global sample counts for that).

A rank with no sample in a step still joins both collectives (:meth:`SyncBatchNorm.idle_forward`
and :meth:`~SyncBatchNorm.idle_backward`, contributing nothing), so that no rank waits forever.
"""
from __future__ import annotations

import math

import numpy as np

from fastcnn._ops import norm as _norm
from fastcnn._threads import get_num_threads
from fastcnn.functional._norm import _momentum_factor, _update_running

__all__ = ["SyncBatchNorm", "convert_sync_batch_norm", "sync_batch_norm_layers"]


def _affine64(layer):
    """(w, b) as float64 (C,) arrays, empty without affine parameters (the kernels' convention)."""
    if layer.weight is None:
        return np.empty(0), np.empty(0)
    return layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)


class SyncBatchNorm:
    """The cross-process training pass of a batch norm layer, set as its ``sync`` attribute
    by :func:`convert_sync_batch_norm` (evaluation stays local: it uses the running
    statistics, identical on every rank)."""

    def __init__(self, comm):
        self.comm = comm

    # -- statistics --------------------------------------------------------------------------
    def _global_stats(self, layer, count, mean, var):
        """Combine every rank's (count, mean (C,), biased var (C,)) -> global (M, mean, var)."""
        c = layer.num_features
        mine = np.concatenate(([float(count)], mean, var * count))
        table = self.comm.allgather_array(mine)            # (size, 1 + 2C)
        counts, means, m2 = table[:, :1], table[:, 1:1 + c], table[:, 1 + c:]
        total = float(counts.sum())
        if total <= 1:
            raise ValueError(f"{layer.where()}: sync batch norm needs more than 1 value per "
                             f"channel over all processes when training, got {total:.0f}")
        g_mean = (counts * means).sum(axis=0) / total
        g_var = (m2.sum(axis=0) + (counts * (means - g_mean) ** 2).sum(axis=0)) / total
        return total, g_mean, g_var

    def _update_running(self, layer, total, mean, var):
        if layer.running_mean is None:
            return
        factor = _momentum_factor("sync_batch_norm", layer.momentum, layer.num_batches_tracked,
                                  True)
        _update_running(layer.running_mean, mean, factor)
        _update_running(layer.running_var, var * (total / (total - 1)), factor)

    # -- passes ------------------------------------------------------------------------------
    def forward(self, layer, x):
        """y = (x - mean) invstd w + b (then ReLU if fused), with the global statistics."""
        x = np.asarray(x)
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        n, c = x.shape[0], x.shape[1]
        s = math.prod(x.shape[2:])
        x3 = np.ascontiguousarray(x, dtype=dtype).reshape(n, c, s)
        threads = get_num_threads()
        mean, var = np.zeros(c), np.zeros(c)
        if n * s:
            _norm.channel_stats(x3, mean, var, threads)
        total, mean, var = self._global_stats(layer, n * s, mean, var)
        self._update_running(layer, total, mean, var)
        invstd = 1.0 / np.sqrt(var + layer.eps)
        w, b = _affine64(layer)
        scale = invstd * w if w.size else invstd
        shift = b if b.size else np.zeros(c)
        act = layer.fused_activation
        out = np.empty((n, c, s), dtype)
        if n * s:
            _norm.channel_affine(x3, mean, scale, shift, out, act == "relu", threads)
        layer.save_for_backward(x3, mean, invstd, total, act)
        return out.reshape(x.shape)

    def backward(self, layer, grad):
        x3, mean, invstd, total, act = layer.saved()
        n, c, s = x3.shape
        dy3 = np.ascontiguousarray(grad, dtype=x3.dtype).reshape(n, c, s)
        w, b = _affine64(layer)
        wv = w if w.size else np.ones(c)
        fscale = fshift = np.empty(0)
        if act == "relu":       # the forward's scale and shift, formed as it formed them
            fscale = invstd * w if w.size else invstd
            fshift = b if b.size else np.zeros(c)
        threads = get_num_threads()
        local = np.zeros(2 * c)          # [sum dy, sum dy (x - mean)] on this rank
        if n * s:
            _norm.channel_grad_sums(dy3, x3, mean, fscale, fshift, local[:c], local[c:],
                                    threads)
        sums = self.comm.allreduce_sum(local.copy())
        s1, s2 = sums[:c], sums[c:]
        a = wv * invstd
        slope = -wv * invstd ** 3 * s2 / total
        offset = -wv * invstd * s1 / total
        dx = np.empty_like(x3)
        if n * s:
            _norm.channel_grad_apply(dy3, x3, mean, a, slope, offset, fscale, fshift, dx,
                                     threads)
        if layer.weight is not None:
            layer._accumulate((local[c:] * invstd).astype(x3.dtype),
                              local[:c].astype(x3.dtype))
        return dx.reshape(np.shape(grad))

    def idle_forward(self, layer):
        """This rank has no sample in the step: contribute nothing to the statistics, and
        update the running statistics as every other rank does."""
        c = layer.num_features
        total, mean, var = self._global_stats(layer, 0, np.zeros(c), np.zeros(c))
        self._update_running(layer, total, mean, var)

    def idle_backward(self, layer):
        """This rank has no sample in the step: contribute zero sums."""
        self.comm.allreduce_sum(np.zeros(2 * layer.num_features))


def convert_sync_batch_norm(model, comm):
    """Make every batch norm layer of ``model`` compute its training statistics over all the
    processes of ``comm`` (in place; the model's config, state and saved files are unchanged).
    Returns the converted layers' names."""
    from fastcnn.layers.norm import _BatchNorm

    sync = SyncBatchNorm(comm)
    names = []
    for name, layer in model.layers.items():
        if isinstance(layer, _BatchNorm):
            layer.sync = sync
            names.append(name)
    return names


def sync_batch_norm_layers(model):
    """The synchronized batch norm layers in the order their collectives run: (forward order,
    backward order). The backward skips layers whose output reaches no model output, as
    ``Model.backward`` does."""
    nodes = model._nodes
    reaches = set(model.outputs)
    for node in reversed(nodes):            # consumers come after their inputs
        if node.name in reaches:
            reaches.update(ref for ref in node.inputs if ref != "input")
    forward = [node.layer for node in nodes if getattr(node.layer, "sync", None) is not None]
    backward = [node.layer for node in reversed(nodes)
                if getattr(node.layer, "sync", None) is not None and node.name in reaches]
    return forward, backward
