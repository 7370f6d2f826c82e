"""Loss objects for training: ``value = loss(output, target)``, then ``loss.backward()``.

Each wraps a function of :mod:`fastcnn.functional` and its backward; the object keeps what the
backward needs from the last call, so a training loop reads like the math::

    loss = fastcnn.build_loss("cross_entropy")
    value = loss(model(x), y)
    model.backward(loss.backward())
"""
from __future__ import annotations


import numpy as np

from fastcnn import functional as F
from fastcnn.registry import LOSSES, register_loss

__all__ = ["Loss", "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss",
           "build_loss"]


class Loss:
    """Base: subclasses set ``fn`` / ``backward_fn`` (functional names) and their options."""

    fn = None
    backward_fn = None

    def __init__(self, **options):
        self.options = options
        self._saved = None

    def __call__(self, output, target):
        """The loss, keeping (output, target) for :meth:`backward`."""
        value = self.value(output, target)
        self._saved = (output, target)
        return value

    def value(self, output, target):
        """The loss alone (evaluation): nothing is kept for a backward."""
        return getattr(F, self.fn)(output, target, **self.options)

    def backward(self, grad=1.0):
        """dL/d(output) of the last call (``grad`` = dL/d(value), 1 for a scalar loss)."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a call first")
        output, target = self._saved
        self._saved = None
        return getattr(F, self.backward_fn)(grad, output, target, **self.options)

    def to_config(self):
        return {"type": getattr(type(self), "registered_name", type(self).__name__),
                **{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                   for k, v in self.options.items()}}


@register_loss("cross_entropy", aliases=("CrossEntropyLoss",))
class CrossEntropyLoss(Loss):
    """Softmax cross-entropy from logits (N, C, ...) and integer targets (N, ...)."""
    fn, backward_fn = "cross_entropy", "cross_entropy_backward"

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight=None if weight is None else np.asarray(weight),
                         ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing)


@register_loss("nll", aliases=("nll_loss", "NLLLoss"))
class NLLLoss(Loss):
    """Negative log-likelihood from log-probabilities (N, C, ...) and integer targets."""
    fn, backward_fn = "nll_loss", "nll_loss_backward"

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(weight=None if weight is None else np.asarray(weight),
                         ignore_index=ignore_index, reduction=reduction)


@register_loss("mse", aliases=("mse_loss", "MSELoss"))
class MSELoss(Loss):
    """Mean squared error."""
    fn, backward_fn = "mse_loss", "mse_loss_backward"

    def __init__(self, reduction="mean"):
        super().__init__(reduction=reduction)


@register_loss("l1", aliases=("l1_loss", "L1Loss"))
class L1Loss(Loss):
    """Mean absolute error."""
    fn, backward_fn = "l1_loss", "l1_loss_backward"

    def __init__(self, reduction="mean"):
        super().__init__(reduction=reduction)


@register_loss("bce_with_logits", aliases=("binary_cross_entropy_with_logits", "BCEWithLogitsLoss"))
class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits (numerically stable form)."""
    fn, backward_fn = "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward"

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(weight=None if weight is None else np.asarray(weight), reduction=reduction,
                         pos_weight=None if pos_weight is None else np.asarray(pos_weight))


def build_loss(config, *, where: str = "loss") -> Loss:
    """``build_loss("cross_entropy")`` or ``build_loss({"type": "cross_entropy",
    "label_smoothing": 0.1})``; errors start with ``where``, the config path (see
    :meth:`fastcnn.registry.Registry.build`)."""
    return LOSSES.build(config, where=where)
