"""A network's forward for one input shape, planned once and run many times.

``Template`` walks the model's graph once per input shape: every layer's step is checked and
prepared (steps.build_step: the convolutions' algorithms chosen and their weights transformed),
and every value's last reader is known. ``Plan`` gives each value a buffer (arena.Arena:
reused once the value is dead; a ReLU or an add writes over its input when nothing reads it
later; a flatten, an identity or a fused ReLU is a view) and binds every step to its buffers.
Running a plan is then a copy of the input into its buffer, one call per run of consecutive
compiled steps (plan_steps.CompiledRun: the kernels called from C, the GIL released) and one
per Python step.

A template is shared by every plan of its shape (its prepared weights are read-only); a plan's
buffers belong to one run at a time, so concurrent callers each take a plan of their own
(session.InferenceSession keeps them).
"""
from __future__ import annotations

import numpy as np

import time

from fastcnn._ops.plan_steps import CompiledRun, CompiledStep
from fastcnn._threads import get_num_threads, one_thread, single_threaded_blas
from fastcnn.inference.arena import Arena
from fastcnn.inference.steps import StepSpec, build_step

__all__ = ["Template", "Plan"]


class Template:
    """The steps of ``model`` (eval mode, built) for inputs of shape ``input_shape`` (batch
    included), and when each value is read for the last time; with ``autotune``, each
    convolution's algorithm is the one that ran fastest here (steps.build_step)."""

    def __init__(self, model, input_shape, dtype, autotune=False):
        self.model = model
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        shapes = {"input": self.input_shape}
        self.steps = []                 # (node, StepSpec)
        for node in model._nodes:
            spec = build_step(node.layer, [shapes[ref] for ref in node.inputs], self.dtype,
                              autotune)
            shapes[node.name] = spec.out_shape
            self.steps.append((node, spec))
        self.autotune = autotune
        # with autotune: which bound steps (in Plan._steps' order) run on one thread, measured
        # by the first plan; the same for every later plan of this template
        self.one_thread_steps = None
        self.outputs = list(model.outputs)
        self.output_shapes = [shapes[name] for name in self.outputs]
        self._fuse_residual_adds()
        self.last_read = {}
        for index, (node, spec) in enumerate(self.steps):
            for ref in list(node.inputs) + list(spec.extra_inputs):
                self.last_read[ref] = index

    def _fuse_residual_adds(self):
        """An add of two values (with or without its ReLU) whose one input is a convolution's
        output that nothing else reads goes into the convolution's store
        (StepSpec.fuse_residual: y = relu?(conv + bias + other), the operations of the conv and
        then the add: the same bits); the add becomes a view of it. Views in between (a batch
        norm folded into the convolution leaves an identity), each read once, stay views of
        the same buffer. The other input must exist when the convolution runs: a chain of
        one-input steps making it later (a ResNet block's 1x1 downsampling and its folded batch
        norm) moves to right before the convolution. Saves a pass over the block's output."""
        while self._fuse_one_residual_add():
            pass

    def _fuse_one_residual_add(self):
        made = {"input": -1}
        readers = {}
        for index, (node, _) in enumerate(self.steps):
            made[node.name] = index
            for ref in node.inputs:
                readers[ref] = readers.get(ref, 0) + 1
        for index, (node, spec) in enumerate(self.steps):
            if spec.kind not in ("add", "add + relu") or len(node.inputs) != 2:
                continue
            for side in (0, 1):
                ref, other = node.inputs[side], node.inputs[1 - side]
                producer = made.get(ref, -1)
                while (producer >= 0 and ref != other and ref not in self.outputs
                       and readers[ref] == 1 and self.steps[producer][1].view
                       and len(self.steps[producer][0].inputs) == 1):
                    ref = self.steps[producer][0].inputs[0]     # a batch norm folded away:
                    producer = made.get(ref, -1)                # the value it views
                if producer < 0 or ref == other or ref in self.outputs or readers[ref] != 1:
                    continue
                conv_node, conv_spec = self.steps[producer]
                if conv_spec.fuse_residual is None:
                    continue
                chain, source = [], other           # the steps making `other` after the conv
                while made[source] > producer:
                    step_node = self.steps[made[source]][0]
                    if len(step_node.inputs) != 1:
                        break
                    chain.append(made[source])
                    source = step_node.inputs[0]
                if made[source] > producer:
                    continue
                self.steps[producer] = (conv_node, conv_spec.fuse_residual(
                    other, spec.kind == "add + relu"))
                self.steps[index] = (node, StepSpec(f"{spec.kind} (fused)", spec.out_shape,
                                                    view=True, view_input=side))
                moved = [self.steps[i] for i in sorted(chain)]
                rest = [step for i, step in enumerate(self.steps) if i not in set(chain)]
                self.steps = rest[:producer] + moved + rest[producer:]
                return True
        return False

    def describe(self) -> str:
        """One line per step: the layer, how it runs, its output shape."""
        width = max(len(node.name) for node, _ in self.steps)
        return "\n".join(f"{node.name:<{width}}  {spec.kind:<28} {spec.out_shape}"
                         for node, spec in self.steps)


class Plan:
    """Buffers for every value of a Template and its steps bound to them."""

    def __init__(self, template):
        self.template = template
        arena = Arena(template.dtype)
        keep = set(template.outputs)
        values = {}                     # value name -> array
        base = {}                       # value name -> the arena buffer it lives in
        live = {}                       # id(buffer) -> names of the live values in it
        flat, values["input"] = arena.take(template.input_shape)
        base["input"], live[id(flat)] = flat, {"input"}
        self.input = values["input"]
        # the compiled steps' workspace: one, as they run one at a time
        self.scratch = np.empty(max([spec.scratch for _, spec in template.steps] + [1]),
                                template.dtype)
        self._steps = []                # one callable per step that has work
        for index, (node, spec) in enumerate(template.steps):
            inputs = [values[ref] for ref in list(node.inputs) + list(spec.extra_inputs)]
            first = node.inputs[0]
            if spec.view:
                source = node.inputs[spec.view_input]
                out, flat = values[source].reshape(spec.out_shape), base[source]
            elif (spec.in_place and template.last_read[first] == index and first not in keep
                  and live[id(base[first])] == {first}
                  and base[first].size >= int(np.prod(spec.out_shape))):
                flat = base[first]
                out = flat[:int(np.prod(spec.out_shape))].reshape(spec.out_shape)
            else:
                flat, out = arena.take(spec.out_shape)
            values[node.name], base[node.name] = out, flat
            live.setdefault(id(flat), set()).add(node.name)
            if spec.bind is not None:               # one callable, or several in turn
                bound = spec.bind(inputs, out, self.scratch)
                self._steps.extend(bound if isinstance(bound, list) else [bound])
            for ref in set(node.inputs) | set(spec.extra_inputs) | {node.name}:
                if template.last_read.get(ref, -1) <= index and ref not in keep:
                    names = live[id(base[ref])]
                    names.discard(ref)
                    if not names:
                        arena.give_back(base[ref])
        self.outputs = [values[name] for name in template.outputs]
        self.nbytes = arena.total_elements * template.dtype.itemsize
        if template.autotune and template.one_thread_steps is None:
            template.one_thread_steps = self._measure_threads()
        self._runs = _sequences(self._steps, set(template.one_thread_steps or ()))

    def _measure_threads(self, repeat=5):
        """The steps to run on one thread rather than the team (small layers at batch 1:
        waking the team costs more than it saves; results are the same bits for any thread
        count, only speed is at stake), measured on zeros. First each step alone, in order:
        the compiled steps from C in one pass (CompiledRun.times), the others one by one right
        after they ran; a step must win by 10% to leave the team. Then the whole plan with
        that choice, with every step on one thread and with every step on the team: the
        fastest of the three is kept (a team woken for one step among single-threaded ones
        costs more than that step's own time shows: LeNet-5 at batch 1 ran in 24.8 us with
        its first convolution on the team, 19.9 us all on one thread)."""
        if get_num_threads() == 1:
            return []
        self.input[...] = 0
        compiled = {i for i, step in enumerate(self._steps) if isinstance(step, CompiledStep)}
        spent = {}                      # (step index, on one thread) -> best seconds
        with single_threaded_blas:
            for run in self._steps:     # every buffer written once (no stale memory timed)
                run()
            for index, run in enumerate(self._steps):
                if index in compiled:
                    continue
                run()
                for one in (False, True):
                    spent[index, one] = min(self._time(run, one) for _ in range(repeat))
            order = sorted(compiled)
            together = CompiledRun([self._steps[i] for i in order], [False] * len(order))
            for _ in range(repeat):
                for one in (False, True):
                    for index, seconds in zip(order, together.times(one)):
                        spent[index, one] = min(spent.get((index, one), seconds), seconds)
            chosen = [index for index in range(len(self._steps))
                      if spent[index, True] < 0.9 * spent[index, False]]
            candidates = [chosen, list(range(len(self._steps))), []]
            whole = [self._time_plan(one, repeat) for one in candidates]
        return candidates[whole.index(min(whole))]

    def _time_plan(self, one, repeat):
        """The best of ``repeat`` runs of every step, those in ``one`` on one thread."""
        runs = _sequences(self._steps, set(one))
        for run in runs:                            # warm up: the team, the caches
            run()
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for run in runs:
                run()
            best = min(best, time.perf_counter() - start)
        return best

    @staticmethod
    def _time(run, one):
        start = time.perf_counter()
        if one:
            with one_thread():
                run()
        else:
            run()
        return time.perf_counter() - start

    def run(self, x):
        """The outputs (copies) for ``x``, an array of the template's input shape (any dtype
        and layout: cast and copied into the plan's input buffer)."""
        np.copyto(self.input, x, casting="unsafe")
        with single_threaded_blas:
            for run in self._runs:
                run()
        return [out.copy() for out in self.outputs]


def _sequences(steps, one):
    """The plan's loop: each run of consecutive compiled steps as one CompiledRun, the other
    steps as they are; step i on one thread if i is in ``one``."""
    runs, compiled, flags = [], [], []
    for index, step in enumerate(steps):
        if isinstance(step, CompiledStep):
            compiled.append(step)
            flags.append(index in one)
            continue
        if compiled:
            runs.append(CompiledRun(compiled, flags))
            compiled, flags = [], []
        runs.append(_on_one_thread(step) if index in one else step)
    if compiled:
        runs.append(CompiledRun(compiled, flags))
    return runs


def _on_one_thread(run):
    def run_alone():
        with one_thread():
            run()
    return run_alone
