"""Shared by the ONNX tests: the references (onnx, onnxruntime) and random model states.

The references follow the torch convention of conftest.py: without them the tests skip, unless
FASTCNN_REQUIRE_TORCH=1 (CI), where a missing reference is an error, never a silent skip.
"""
import importlib
import os

import numpy as np
import pytest


def reference(name):
    """Import a test reference (onnx, onnxruntime, onnxscript) or skip / fail as conftest does
    for torch."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("FASTCNN_REQUIRE_TORCH") == "1":
            raise RuntimeError(f"FASTCNN_REQUIRE_TORCH=1 but {name} is not importable: "
                               f"pip install '.[test]' onnxruntime onnxscript") from None
        pytest.skip(f"{name} not installed")


def ort_session(model_bytes_or_path):
    """An onnxruntime session that does not spin: its idle threads would slow fastcnn's
    OpenMP loops in the same process several times."""
    ort = reference("onnxruntime")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def run_ort(session, x):
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return outputs[0] if len(outputs) == 1 else outputs


def randomize(model, seed=0):
    """Random values for the entries a new model holds as constants (biases, norm scales and
    shifts, running statistics), so that every parameter and buffer shows in the outputs;
    randomly initialized weights keep their (scaled) values, so deep networks stay O(1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.dtype.kind != "f" or (value.size > 1 and np.ptp(value) > 0):
            state[key] = value
        elif key.endswith(("running_var", "weight")):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        else:
            state[key] = rng.standard_normal(value.shape) * 0.2
    model.load_state_dict(state)
    return model
