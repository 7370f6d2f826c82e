"""The benchmark runner's bookkeeping: byte counts, the thread scaling mode and the step
profiler (fastcnn.benchmarks, in the package), the torch comparison and its table
(bench/compare_torch.py, in the repository), and `fastcnn bench` finding it. Nothing here
asserts on a timing."""
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import benchmarks as B

from compare_torch_loader import COMPARE_TORCH, compare_torch as _compare_torch

MiB = 2**20


def _case(key, label):
    return next(c for c in B.CASES[key]().cases if c.label == label)


@pytest.fixture(scope="module")
def compare_torch():
    """bench/compare_torch.py of this checkout, as a module."""
    return _compare_torch()


def test_nbytes_counts_arrays_tuples_and_scalars_only():
    a, i = np.zeros((4, 8), np.float32), np.zeros(8, np.int64)
    assert B.nbytes(a, (i, None), np.float32(1), 2.0, None) == 128 + 64 + 4


def test_max_pool_bytes_count_input_output_and_indices():
    # 32x64x32x32 float32 in, 16x16 out: x 8 MiB, y 2 MiB, int64 indices 4 MiB
    key = "max pool 2x2 32x64x32x32"
    fwd, bwd = _case(key, "max pool 2x2 fwd"), _case(key, "max pool 2x2 bwd")
    assert fwd.nbytes == (8 + 2 + 4) * MiB and fwd.flops == 0
    assert bwd.nbytes == (2 + 4 + 8) * MiB          # dy and indices read, dx written


def test_norm_and_loss_bytes():
    fwd = _case("norm layer_norm 8192x512", "layer_norm 8192x512 fwd")
    both = _case("norm layer_norm 8192x512", "layer_norm 8192x512 fwd+bwd")
    vec = 512 * 4                                   # weight or bias
    assert fwd.nbytes == 2 * 16 * MiB + 2 * vec     # x and y, weight and bias
    # + backward: dy, x, weight read; dx, grad_weight, grad_bias written
    assert both.nbytes == fwd.nbytes + 3 * 16 * MiB + 3 * vec
    ce = _case("loss cross_entropy 256x1000", "cross_entropy 256x1000 fwd+bwd")
    logits, targets = 256 * 1000 * 4, 256 * 8
    assert ce.nbytes == 3 * logits + 2 * targets + 4


def test_conv_cases_count_flops_not_bytes():
    fwd = _case("conv lenet1 64x1x28x28 ->6 k5 s1 p2", "conv lenet1 fwd")
    assert fwd.flops == 2 * 64 * 6 * 1 * 25 * 28 * 28 and fwd.nbytes == 0


def test_table_shows_a_dash_where_a_rate_does_not_apply(compare_torch):
    C = compare_torch
    rows = [C.Row("conv", 2.0, 1.0, 4_000_000, 0), C.Row("pool", 1.0, 2.0, 0, 3_000_000)]
    lines = C.table(rows, sgemm=4.0, copy=6.0).splitlines()
    assert lines[2] == "| conv | 2.000 | 1.000 | 2.00 | 2.0 | 50 | - | - |"
    assert lines[3] == "| pool | 1.000 | 2.000 | 0.50 | - | - | 3.0 | 50 |"


def test_scaling_mode_runs_and_restores_the_thread_count(threads, capsys):
    threads(3)
    B.main(["--scaling", "--threads", "2", "--filter", "cross_entropy", "--repeat", "1",
            "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| case | 1 thread ms | 2 threads ms | speed-up |" in out
    assert "| cross_entropy 256x1000 fwd+bwd |" in out
    assert fastcnn.get_num_threads() == 3


def test_profile_step_gives_one_entry_per_layer_and_restores_the_methods():
    model, x, y, loss, opt = B.train_setup("lenet5", 2)
    first = model._nodes[0].layer
    own = first.forward                      # an instance attribute of the user's: kept as is
    first.forward = own
    prof = B.profile_step(model, x, y, loss, opt, steps=2, warmup=1)
    assert [e["name"] for e in prof["layers"]] == [node.name for node in model._nodes]
    assert prof["layers_ms"] == sum(e["fwd_ms"] + e["bwd_ms"] for e in prof["layers"])
    assert prof["overhead_ms"] == prof["step_ms"] - prof["layers_ms"]
    assert first.__dict__["forward"] is own
    for node in model._nodes[1:]:
        assert "forward" not in node.layer.__dict__ and "backward" not in node.layer.__dict__
    rows = [line for line in B.profile_report("lenet5", prof, top=3).splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    assert len(rows) == 3


def test_profile_step_restores_the_methods_after_an_error():
    model, x, y, _, _ = B.train_setup("lenet5", 2)
    with pytest.raises(ValueError, match="input must have shape"):
        B.profile_step(model, x[:, :, :5], y, steps=1, warmup=0)
    assert all("forward" not in n.layer.__dict__ for n in model._nodes)


def test_profile_mode_prints_the_overhead(capsys):
    B.main(["--profile", "lenet5", "--repeat", "1", "--top", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "lenet5 b64 train step: top 2 of" in out and "overhead" in out


def test_fastcnn_bench_passes_every_option_through(capsys):
    """`fastcnn bench` hands its arguments to fastcnn.benchmarks.main: its own --help, and
    options such as --isa and --rounds, with no list to keep in step in the CLI."""
    from fastcnn import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--isa", "--rounds", "--repeat", "--filter", "--scaling", "--profile"):
        assert option in out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--isa", "sse9"])
    assert "invalid choice: 'sse9'" in capsys.readouterr().err


def test_the_package_benchmarks_need_no_torch():
    """fastcnn.benchmarks ships in the wheel: its cases and --scaling run with torch absent
    (an import of torch fails in the child process)."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from fastcnn import benchmarks as B\n"
            "B.main(['--scaling', '--threads', '1', '--filter', 'cross_entropy', '--repeat', "
            "'1', '--rounds', '1'])\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| cross_entropy 256x1000 fwd+bwd |" in done.stdout


def test_every_case_kind_has_a_torch_reference(compare_torch):
    kinds = {"conv", "conv_transpose", "max_pool", "avg_pool", "upsample", "norm",
             "cross_entropy", "train_step"}
    assert set(compare_torch.REFERENCES) == kinds


def test_the_comparison_pairs_each_case_with_torch_on_the_same_inputs(compare_torch, th):
    case_set = B.CASES["conv lenet2 64x6x14x14 ->16 k5 s1 p0"]()
    pairs = compare_torch.paired(case_set, th)
    assert [case.label for case, _ in pairs] == ["conv lenet2 fwd", "conv lenet2 bwd"]
    (fwd, torch_fwd), (bwd, torch_bwd) = pairs
    np.testing.assert_allclose(fwd.ours(), torch_fwd().detach().numpy(), rtol=1e-4, atol=1e-4)
    dx, dw, db = bwd.ours()
    tdx, tdw, tdb = torch_bwd()
    np.testing.assert_allclose(dx, tdx.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tdw.detach().numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, tdb.detach().numpy(), rtol=1e-4, atol=1e-3)
    rows = compare_torch.run(1, 1, 1, "cross_entropy")
    assert [r.label for r in rows] == ["cross_entropy 256x1000 fwd+bwd"]
    assert rows[0].ms > 0 and rows[0].torch_ms > 0


def test_fastcnn_bench_finds_the_comparison_in_a_clone_or_says_what_to_run(monkeypatch,
                                                                             capsys):
    assert B.find_compare_torch().resolve() == COMPARE_TORCH
    monkeypatch.setattr(B, "find_compare_torch", lambda script=None: None)
    from fastcnn import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--filter", "lenet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "python bench/compare_torch.py [options]" in err and "--scaling" in err


def test_fastcnn_bench_inference_compares_the_three_libraries(th):
    """``fastcnn bench --inference`` (bench/compare_inference.py): every library checked
    against fastcnn's eval forward, then timed; the table has a row per network and batch."""
    pytest.importorskip("onnxruntime")
    assert B.find_compare_torch(B.COMPARE_INFERENCE).name == "compare_inference.py"
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "compare_inference", COMPARE_TORCH.parent / "compare_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.run(threads=1, repeat=1, rounds=1, pattern="lenet5")
    assert [(name, batch) for name, batch, _ in rows] == [("lenet5", 1), ("lenet5", 32)]
    assert all(set(best) == {"fastcnn", "torch", "onnxruntime"} for _, _, best in rows)
    text = module.table(rows)
    assert "| lenet5 | 32 |" in text and "geometric mean" in text
