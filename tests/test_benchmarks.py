"""The benchmark runner's bookkeeping (fastcnn.benchmarks): byte counts, the table, the thread
scaling mode and the step profiler. Nothing here asserts on a timing."""
import numpy as np
import pytest

import fastcnn
from fastcnn import benchmarks as B

MiB = 2**20


def _case(key, label):
    return next(c for c in B.CASES[key](None) if c.label == label)


def test_nbytes_counts_arrays_tuples_and_scalars_only():
    a, i = np.zeros((4, 8), np.float32), np.zeros(8, np.int64)
    assert B.nbytes(a, (i, None), np.float32(1), 2.0, None) == 128 + 64 + 4


def test_max_pool_bytes_count_input_output_and_indices():
    # 32x64x32x32 float32 in, 16x16 out: x 8 MiB, y 2 MiB, int64 indices 4 MiB
    key = "max pool 2x2 32x64x32x32"
    fwd, bwd = _case(key, "max pool 2x2 fwd"), _case(key, "max pool 2x2 bwd")
    assert fwd.nbytes == (8 + 2 + 4) * MiB and fwd.flops == 0
    assert bwd.nbytes == (2 + 4 + 8) * MiB          # dy and indices read, dx written
    assert fwd.theirs is None                       # set up without torch


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


def test_table_shows_a_dash_where_a_rate_does_not_apply():
    rows = [B.Row("conv", 2.0, 1.0, 4_000_000, 0), B.Row("pool", 1.0, 2.0, 0, 3_000_000)]
    lines = B.table(rows, sgemm=4.0, copy=6.0).splitlines()
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
