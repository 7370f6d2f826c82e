"""InferenceSession: a trained model's forward, planned once per input shape.

    session = fastcnn.InferenceSession("runs/mnist_lenet5/best.fcnn")
    probabilities = session(raw_images)          # or session.run(raw_images)

What it does that ``model.eval()(x)`` does not: batch norms folded into the convolutions and
linear layers before them (Model.fuse), ReLUs and residual adds fused into their producers,
and for each input shape a plan (plan.Plan) that checks, chooses algorithms, transforms
weights and lays out every buffer once; a run is then one call per layer with no checks and
no allocation. Plans are kept for the last few input shapes.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from fastcnn.inference.plan import Plan, Template
from fastcnn.model import Model, build_model

__all__ = ["InferenceSession"]


def _load(source):
    """A Model from a Model, a checkpoint (.fcnn) or an ONNX file (.onnx)."""
    if isinstance(source, Model):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"InferenceSession: model must be a fastcnn Model or the path of a "
                        f"checkpoint (.fcnn) or ONNX file (.onnx), got {type(source).__name__}")
    path = os.fspath(source)
    if path.lower().endswith(".onnx"):
        from fastcnn import onnx as fastcnn_onnx
        return fastcnn_onnx.load_model(path)
    from fastcnn.checkpoint import load
    return load(path)


def _inference_copy(model, fuse):
    """An eval-mode copy of ``model`` that shares nothing with it: batch norms folded when
    ``fuse``; no layer overwrites its input (the plan owns every buffer)."""
    if fuse:
        copy = model.fuse()
    else:
        copy = build_model(model.to_config())
        copy.load_state_dict(model.state_dict())
        copy.eval()
    for layer in copy.layers.values():
        layer.may_overwrite_input = False
    return copy


class InferenceSession:
    """Run a trained model's forward many times, fast.

    Parameters
    ----------
    model : Model, or a path to a checkpoint (``fastcnn.save``, ``.fcnn``) or an ONNX file
        (``.onnx``, needs ``fastcnn[onnx]``). The session keeps its own copy: later changes to
        the model do not reach it.
    preprocess : bool
        Apply the preprocessing the model carries (``model.preprocessing``: a training run's
        per-channel mean and std) to every input, so that ``session(raw_images)`` equals
        ``model(model.preprocess(raw_images))`` up to float32 rounding. No effect on a model
        without preprocessing. False: inputs are used as given.
    fuse : bool
        Fold each batch norm into the conv or linear layer before it (``Model.fuse``). Outputs
        then differ from the unfused forward by float32 rounding only.
    autotune : bool
        Time every algorithm that can compute each convolution on its first input shape and
        keep the fastest (about a second for a large network, once per shape); the choice then
        holds for the plan's life. False: the measured rules of fastcnn.functional choose, as
        in training, and outputs are the same bits as the session's folded model
        (``session.model``) run layer by layer; with autotuning they agree to float32 rounding.
    max_shapes : int
        Plans are kept for this many input shapes (least recently used dropped first).

    ``session(x)`` / ``session.run(x)``: x (N, *input_shape) of real numbers (cast to the
    model's dtype) -> the output array (a tuple for several outputs), new arrays owned by the
    caller. Several Python threads may call one session at once: each run takes a plan of
    its own, and the results are those of sequential calls.
    """

    def __init__(self, model, *, preprocess=True, fuse=True, autotune=True, max_shapes=4):
        for name, flag in (("preprocess", preprocess), ("fuse", fuse), ("autotune", autotune)):
            if not isinstance(flag, bool):
                raise TypeError(f"InferenceSession: {name} must be True or False, got {flag!r}")
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"InferenceSession: max_shapes must be a positive int, got "
                             f"{max_shapes!r}")
        source = _load(model)
        self.model = _inference_copy(source, fuse)
        self.name = self.model.name
        self.input_shape = self.model.input_shape
        self.dtype = self.model.dtype
        self.preprocessing = self.model.preprocessing if preprocess else None
        self.max_shapes = max_shapes
        self.autotune = autotune
        self._lock = threading.Lock()
        self._templates = OrderedDict()   # full input shape -> Template (most recent last)
        self._idle = {}                   # full input shape -> [Plan] not running now

    # -- running ----------------------------------------------------------------------------
    def run(self, x):
        """The model's outputs for a batch ``x`` of shape (N, *input_shape)."""
        x = self._check_input(x)
        if x.shape[0] == 0:
            outs = [np.empty((0,) + tuple(shape), self.dtype) for shape in self._output_shapes()]
            return outs[0] if len(outs) == 1 else tuple(outs)
        shape = x.shape
        with self._lock:                     # an idle plan of this shape, if there is one
            idle = self._idle.get(shape)
            plan = idle.pop() if idle else None
        if plan is None:
            plan = Plan(self._template(shape))
        try:
            outs = plan.run(x)
        finally:
            self._return_plan(plan)
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = run

    def plan(self, batch_size=1) -> Template:
        """The plan of inputs (batch_size, *input_shape): ``.describe()`` lists each layer's
        step (its algorithm, or "(python)" for a layer without a fast step)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        return self._template((batch_size,) + self.input_shape)

    def _output_shapes(self):
        by_name = {node.name: node.layer.output_shape for node in self.model._nodes}
        return [by_name[name] for name in self.model.outputs]

    def _check_input(self, x):
        """``x`` checked (real numbers, shape (N, *input_shape)) and preprocessed; it may be of
        any dtype and layout (the plan copies it into its own buffer, casting)."""
        if type(x) is not np.ndarray:
            x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}: input must hold real numbers, got dtype {x.dtype}")
        if x.shape[1:] != self.input_shape or x.ndim != len(self.input_shape) + 1:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.name}: input must have shape (N, {expected}), got "
                             f"{x.shape}")
        if self.preprocessing is not None:
            x = self.model.preprocess(x)
        return x

    # An inference session is always in eval mode: code written for a model (evaluation
    # loops that call model.eval() and restore model.train(mode)) takes a session as well.
    training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        if mode:
            raise TypeError(f"{self.name}: an InferenceSession runs the eval forward only; "
                            f"train the Model it was made from")
        return self

    # -- plans ------------------------------------------------------------------------------
    def _template(self, shape):
        with self._lock:
            template = self._templates.get(shape)
            if template is not None:
                self._templates.move_to_end(shape)
                return template
        # outside the lock: planning takes a while (autotuning most)
        template = Template(self.model, shape, self.dtype, self.autotune)
        with self._lock:
            template = self._templates.setdefault(shape, template)
            self._templates.move_to_end(shape)
            while len(self._templates) > self.max_shapes:
                old, _ = self._templates.popitem(last=False)
                self._idle.pop(old, None)
        return template

    def _return_plan(self, plan):
        shape = plan.template.input_shape
        with self._lock:
            if self._templates.get(shape) is plan.template:       # not evicted meanwhile
                self._templates.move_to_end(shape)                 # the shape used last
                self._idle.setdefault(shape, []).append(plan)

    def __repr__(self):
        return (f"InferenceSession({self.name}, input (N, "
                f"{', '.join(map(str, self.input_shape))}), {self.dtype})")
