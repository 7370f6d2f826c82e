"""Normalization layers: batch / layer / group / instance norm (torch.nn's parameters, buffers
and state_dict keys: weight, bias, running_mean, running_var, num_batches_tracked)."""
from __future__ import annotations

import math

import numpy as np

from fastcnn import functional as F
from fastcnn.functional import _norm as _norm_ops
from fastcnn._checks import as_int
from fastcnn.layers.base import Layer
from fastcnn.registry import register_layer

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


def _check_eps_momentum(name, eps, momentum):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
    is_number = isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
    if momentum is not None and (not is_number or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")


class _Affine(Layer):
    """Normalization layers' optional learned scale (ones) and shift (zeros): never decayed,
    never initialized from the model-wide ``init``."""
    output_is_private = True      # a new array, not kept, no view of the input

    def _add_affine(self, shape):
        self.weight = self.add_parameter("weight", shape, "ones", use_model_default=False,
                                         weight_decay=False)
        self.bias = self.add_parameter("bias", shape, "zeros", use_model_default=False,
                                       weight_decay=False)

    def _affine(self):
        return (None if self.weight is None else self.weight.data,
                None if self.bias is None else self.bias.data)

    def _accumulate(self, grad_weight, grad_bias):
        if self.weight is not None:
            self.weight.grad += grad_weight
            self.bias.grad += grad_bias


class _RunningStats(_Affine):
    """Batch and instance norm: per-channel affine parameters and, when tracked, the running
    mean and variance with torch's buffer names."""
    kind = "batch_norm"
    ranks = (3,)              # accepted numbers of per-sample axes, channels first

    def _init_stats(self, num_features, eps, momentum, affine, track_running_stats):
        name = f"{self.kind}{self.nd}d"
        self.num_features = (None if num_features is None else
                             as_int(name, "num_features", num_features, minimum=1))
        _check_eps_momentum(name, eps, momentum)
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)

    def build(self, input_shape):
        c = self.num_features = self.input_channels(input_shape, self.ranks, self.num_features,
                                                    "num_features")
        dtype = self._init_context.dtype
        self.weight = self.bias = None
        if self.affine:
            self._add_affine((c,))
        self.running_mean = self.running_var = self.num_batches_tracked = None
        if self.track_running_stats:
            self.running_mean = self.add_buffer("running_mean", np.zeros(c, dtype))
            self.running_var = self.add_buffer("running_var", np.ones(c, dtype))
            # optional, as in torch (_NormBase._load_from_state_dict): a state_dict without it
            # (converted keeping floats only, or older than the buffer) keeps the count, 0 on a
            # new layer
            self.num_batches_tracked = self.add_buffer("num_batches_tracked",
                                                       np.zeros((), np.int64), optional=True)
        return tuple(input_shape)


class _BatchNorm(_RunningStats):
    nd = 2
    fusable_activations = ("relu",)
    #: None, or the cross-process pass that takes over training forward and backward
    #: (fastcnn.distributed.convert_sync_batch_norm: statistics over every rank's batch)
    sync = None

    def __init__(self, num_features=None, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        self._init_stats(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x):
        if self.sync is not None and self.training:
            return self.sync.forward(self, x)
        w, b = self._affine()
        act = self.fused_activation
        batch_stats = self.training or not self.track_running_stats
        if not batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, w, b, training=False,
                                eps=self.eps, activation=act)
        if self._fast(x):
            # the layer's own operands, checked when it was built: batch_norm's checks skipped
            if self.num_batches_tracked is not None:
                self.num_batches_tracked += 1
            y, mean, invstd = _norm_ops._batch_norm_train(
                x, self.running_mean, self.running_var, w, b, self.momentum, self.eps,
                act == "relu")
        else:
            y, mean, invstd = F.batch_norm(
                x, self.running_mean, self.running_var, w, b, training=True,
                momentum=self.momentum, eps=self.eps,
                num_batches_tracked=self.num_batches_tracked if self.training else None,
                return_stats=True, activation=act)
        self.save_for_backward(x, mean, invstd, act)
        return y

    def _fast(self, x):
        """Whether this training forward takes the fast path (_norm._batch_norm_train): a
        float momentum (not the cumulative average), the weight, bias and running statistics
        of the input's dtype, and an input _layer_ready for them."""
        dtype = x.dtype if type(x) is np.ndarray else None
        return (self.momentum is not None and isinstance(self.momentum, float)
                and (self.weight is None or self.weight.data.dtype == dtype)
                and (self.running_mean is None or (self.running_mean.dtype == dtype
                                                   and self.running_var.dtype == dtype))
                and _norm_ops._layer_ready(x, self.num_features, dtype))

    def backward(self, grad):
        if self.sync is not None:
            return self.sync.backward(self, grad)
        x, mean, invstd, act = self.saved()
        w, b = self._affine()
        if (self._fast(x) and type(grad) is np.ndarray and grad.shape == x.shape
                and _norm_ops._layer_ready(grad, self.num_features, x.dtype)):
            gx, gw, gb = _norm_ops._batch_norm_train_backward(grad, x, w, b, mean, invstd,
                                                              act == "relu")
        else:
            gx, gw, gb = F.batch_norm_backward(grad, x, w, training=True, eps=self.eps,
                                               save_mean=mean, save_invstd=invstd, bias=b,
                                               activation=act)
        self._accumulate(gw, gb)
        return gx

    def flops(self):
        return 2 * math.prod(self.output_shape)


@register_layer("batch_norm1d", aliases=("BatchNorm1d",))
class BatchNorm1d(_BatchNorm):
    """Batch norm over (C,) or (C, L) samples."""
    nd = 1
    ranks = (1, 2)


@register_layer("batch_norm2d", aliases=("BatchNorm2d", "batch_norm"))
class BatchNorm2d(_BatchNorm):
    """Batch norm over (C, H, W) samples."""
    nd = 2
    ranks = (3,)


@register_layer("batch_norm3d", aliases=("BatchNorm3d",))
class BatchNorm3d(_BatchNorm):
    """Batch norm over (C, D, H, W) samples."""
    nd = 3
    ranks = (4,)


@register_layer("layer_norm", aliases=("LayerNorm",))
class LayerNorm(_Affine):
    """Normalize over the trailing ``normalized_shape`` axes of each sample (default: all of
    them), with elementwise affine parameters of that shape."""

    def __init__(self, normalized_shape=None, eps=1e-5, elementwise_affine=True):
        if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = None if normalized_shape is None else tuple(normalized_shape)
        _check_eps_momentum("layer_norm", eps, None)
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)

    def build(self, input_shape):
        shape = tuple(input_shape) if self.normalized_shape is None else self.normalized_shape
        trailing = tuple(input_shape[len(input_shape) - len(shape):])
        if len(shape) > len(input_shape) or trailing != shape:
            raise ValueError(f"{self.where()}: normalized_shape {shape} must be the trailing axes "
                             f"of the per-sample input {tuple(input_shape)}")
        self.normalized_shape = shape
        self.weight = self.bias = None
        if self.elementwise_affine:
            self._add_affine(shape)
        return tuple(input_shape)

    def forward(self, x):
        self.save_for_backward(x)
        return F.layer_norm(x, self.normalized_shape, *self._affine(), eps=self.eps)

    def backward(self, grad):
        (x,) = self.saved()
        gx, gw, gb = F.layer_norm_backward(grad, x, self.normalized_shape, *self._affine(),
                                           eps=self.eps)
        self._accumulate(gw, gb)
        return gx


@register_layer("group_norm", aliases=("GroupNorm",))
class GroupNorm(_Affine):
    """Normalize each sample over groups of num_channels/num_groups channels, with per-channel
    affine parameters."""

    def __init__(self, num_groups, num_channels=None, eps=1e-5, affine=True):
        self.num_groups = as_int("group_norm", "num_groups", num_groups, minimum=1)
        self.num_channels = (None if num_channels is None else
                             as_int("group_norm", "num_channels", num_channels, minimum=1))
        _check_eps_momentum("group_norm", eps, None)
        self.eps, self.affine = float(eps), bool(affine)

    def build(self, input_shape):
        c = self.input_channels(input_shape, declared=self.num_channels, name="num_channels")
        if c % self.num_groups:
            raise ValueError(f"{self.where()}: {c} channels are not divisible by "
                             f"num_groups={self.num_groups}")
        self.num_channels = c
        self.weight = self.bias = None
        if self.affine:
            self._add_affine((c,))
        return tuple(input_shape)

    def forward(self, x):
        self.save_for_backward(x)
        return F.group_norm(x, self.num_groups, *self._affine(), eps=self.eps)

    def backward(self, grad):
        (x,) = self.saved()
        gx, gw, gb = F.group_norm_backward(grad, x, self.num_groups, *self._affine(),
                                           eps=self.eps)
        self._accumulate(gw, gb)
        return gx


class _InstanceNorm(_RunningStats):
    kind = "instance_norm"

    @property
    def ranks(self):
        return (self.nd + 1,)

    def __init__(self, num_features=None, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False):
        self._init_stats(num_features, eps, momentum, affine, track_running_stats)

    def _args(self):
        return dict(running_mean=self.running_mean, running_var=self.running_var,
                    weight=None if self.weight is None else self.weight.data,
                    bias=None if self.bias is None else self.bias.data,
                    use_input_stats=self.training or not self.track_running_stats,
                    momentum=self.momentum, eps=self.eps)

    def forward(self, x):
        self.save_for_backward(x)
        return F.instance_norm(x, **self._args())

    def backward(self, grad):
        (x,) = self.saved()
        args = self._args()
        args.pop("momentum")
        gx, gw, gb = F.instance_norm_backward(grad, x, **args)
        self._accumulate(gw, gb)
        return gx


@register_layer("instance_norm1d", aliases=("InstanceNorm1d",))
class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (C, L) samples."""
    nd = 1


@register_layer("instance_norm2d", aliases=("InstanceNorm2d",))
class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (C, H, W) samples."""
    nd = 2


@register_layer("instance_norm3d", aliases=("InstanceNorm3d",))
class InstanceNorm3d(_InstanceNorm):
    """Instance norm over (C, D, H, W) samples."""
    nd = 3
