"""Optimizers and schedulers against torch.optim over 20 steps; clipping; resuming."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers.base import Parameter
from fastcnn.optim import clip_grad_norm, clip_grad_value

CASES = [
    ("sgd", dict(lr=0.1), "SGD", {}),
    ("sgd", dict(lr=0.1, momentum=0.9), "SGD", {}),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01), "SGD", {}),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001), "SGD", {}),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1), "Adagrad", {}),
    ("rmsprop", dict(lr=0.01), "RMSprop", {}),
    ("rmsprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01), "RMSprop", {}),
    ("adam", dict(lr=0.01), "Adam", {}),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True), "Adam", {}),
    ("adam", dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True), "Adam", {}),
    ("adamw", dict(lr=0.01, weight_decay=0.1), "AdamW", {}),
]


def _run_fastcnn(kind, options, grads, init):
    params = [Parameter(a.copy(), name=f"p{i}") for i, a in enumerate(init)]
    opt = fastcnn.build_optimizer({"type": kind, **options}, params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()
    return [p.data for p in params], opt


def _run_torch(th, cls, options, grads, init):
    params = [th.tensor(a.copy(), requires_grad=True) for a in init]
    opt = getattr(th.optim, cls)(params, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = th.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def _problem(seed=0, steps=20):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(steps)]
    return init, grads


@pytest.mark.parametrize("kind,options,cls,_", CASES)
def test_matches_torch_over_20_steps(th, kind, options, cls, _):
    init, grads = _problem()
    ours, _opt = _run_fastcnn(kind, options, grads, init)
    theirs = _run_torch(th, cls, options, grads, init)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _sgd_numpy_steps(p, grads, lr, momentum, dampening, nesterov):
    """SGD with momentum by numpy's in-place steps, as fastcnn.optim did before its fused
    kernel: the reference for the kernel's bits."""
    buf = None
    for g in grads:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            buf += g * (1.0 - dampening)
        step = buf * momentum + g if nesterov else buf
        p += step * -lr
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(momentum=0.8, dampening=0.25),
                                     dict(momentum=0.9, nesterov=True)])
def test_sgd_fused_update_same_bits_as_numpy_steps_for_any_thread_count(threads, dtype, options):
    """The fused momentum update (_ops/update.pyx): the bits of numpy's separate steps, on a
    parameter updated by the team (>= 2**15 elements) and a small one (one thread)."""
    rng = np.random.default_rng(3)
    shapes = [(70, 33, 17), (5, 3)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    lr = 0.05
    full = dict(dampening=0.0, nesterov=False) | options
    want = [_sgd_numpy_steps(a.copy(), [g[i] for g in grads], lr, full["momentum"],
                             full["dampening"], full["nesterov"]) for i, a in enumerate(init)]
    for t in (1, 2, 3):
        threads(t)
        ours, _ = _run_fastcnn("sgd", dict(lr=lr, **options), grads, init)
        for a, b in zip(ours, want):
            assert a.dtype == dtype
            np.testing.assert_array_equal(a, b)


def test_float32_updates_are_in_place_and_keep_dtype():
    p = Parameter(np.ones(3, np.float32), "w")
    data = p.data
    opt = fastcnn.build_optimizer({"type": "adam", "lr": 0.1, "weight_decay": 0.1}, [p])
    p.grad[...] = 1.0
    opt.step()
    assert p.data is data and p.data.dtype == np.float32


def test_resume_gives_identical_trajectory(tmp_path):
    init, grads = _problem(1)
    full, _ = _run_fastcnn("adam", dict(lr=0.01, amsgrad=True), grads, init)
    first, opt = _run_fastcnn("adam", dict(lr=0.01, amsgrad=True), grads[:10], init)
    params = [Parameter(a.copy(), name=f"p{i}") for i, a in enumerate(first)]
    resumed = fastcnn.build_optimizer({"type": "adam", "lr": 0.01, "amsgrad": True}, params)
    resumed.load_state_dict(opt.state_dict())
    for step_grads in grads[10:]:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        resumed.step()
    for a, b in zip(full, [p.data for p in params]):
        np.testing.assert_array_equal(a, b)


def test_groups_by_pattern_and_no_decay():
    w = Parameter(np.ones(3), "0.weight")
    b = Parameter(np.ones(3), "0.bias", weight_decay=False)
    bn = Parameter(np.ones(3), "bn.weight", weight_decay=False)
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 1.0, "weight_decay": 0.5,
                                   "groups": [{"params": "no_decay", "weight_decay": 0.0}]},
                                  [w, b, bn])
    opt.step()                                       # zero gradients: only decay moves weights
    np.testing.assert_allclose(w.data, 0.5)
    np.testing.assert_allclose(b.data, 1.0)
    np.testing.assert_allclose(bn.data, 1.0)
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.1, "groups": [{"params": ["*.bias"],
                                                                          "lr": 0.0}]}, [w, b])
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.1]


def test_clipping_matches_torch(th):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)) * 5, rng.standard_normal(7)]
    params = [Parameter(np.zeros_like(g), f"p{i}") for i, g in enumerate(grads)]
    for p, g in zip(params, grads):
        p.grad[...] = g
    tp = [th.zeros(g.shape, dtype=th.float64, requires_grad=True) for g in grads]
    for p, g in zip(tp, grads):
        p.grad = th.tensor(g)
    norm = clip_grad_norm(params, 1.5)
    tnorm = th.nn.utils.clip_grad_norm_(tp, 1.5)
    assert norm == pytest.approx(float(tnorm))
    for p, t in zip(params, tp):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)
    clip_grad_value(params, 0.1)
    assert max(np.abs(p.grad).max() for p in params) <= 0.1


@pytest.mark.parametrize("config,torch_cls,torch_kw,metric", [
    ({"type": "step", "step_size": 3, "gamma": 0.5}, "StepLR", dict(step_size=3, gamma=0.5), False),
    ({"type": "multistep", "milestones": [2, 5, 9], "gamma": 0.3}, "MultiStepLR",
     dict(milestones=[2, 5, 9], gamma=0.3), False),
    ({"type": "exponential", "gamma": 0.9}, "ExponentialLR", dict(gamma=0.9), False),
    ({"type": "cosine", "T_max": 10, "eta_min": 0.001}, "CosineAnnealingLR",
     dict(T_max=10, eta_min=0.001), False),
    ({"type": "cosine_warm_restarts", "T_0": 4, "T_mult": 2, "eta_min": 0.01},
     "CosineAnnealingWarmRestarts", dict(T_0=4, T_mult=2, eta_min=0.01), False),
    ({"type": "warmup", "warmup_epochs": 4, "start_factor": 0.25}, "LinearLR",
     dict(start_factor=0.25, total_iters=4), False),
    ({"type": "plateau", "factor": 0.5, "patience": 2, "cooldown": 1}, "ReduceLROnPlateau",
     dict(factor=0.5, patience=2, cooldown=1), True),
])
def test_schedulers_match_torch(th, config, torch_cls, torch_kw, metric):
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] * 2
    p = Parameter(np.zeros(1), "p")
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 0.1}, [p])
    sched = fastcnn.build_scheduler(config, opt)
    tp = th.zeros(1, requires_grad=True)
    topt = th.optim.SGD([tp], lr=0.1)
    tsched = getattr(th.optim.lr_scheduler, torch_cls)(topt, **torch_kw)
    for m in metrics[:20]:
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-6, abs=1e-12)
        topt.step()
        if metric:
            sched.step(m)
            tsched.step(m)
        else:
            sched.step()
            tsched.step()


def test_warmup_then_cosine():
    p = Parameter(np.zeros(1), "p")
    opt = fastcnn.build_optimizer({"type": "sgd", "lr": 1.0}, [p])
    sched = fastcnn.build_scheduler({"type": "warmup", "warmup_epochs": 2, "start_factor": 0.5,
                                     "then": {"type": "cosine", "T_max": 4}}, opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, [0.5, 0.75, 1.0, 0.853553, 0.5, 0.146447, 0.0], atol=1e-6)


@pytest.mark.parametrize("config,match", [
    ({"type": "sgdd", "lr": 0.1}, "unknown optimizer 'sgdd'; did you mean 'sgd'"),
    ({"type": "sgd", "lr": -1}, "lr must be a number >= 0"),
    ({"type": "sgd", "lr": 0.1, "momentun": 0.9}, "unknown option"),
    ({"type": "sgd", "lr": 0.1, "nesterov": True}, "nesterov needs momentum"),
    ({"type": "adam", "betas": [0.9, 1.5]}, "betas must be two numbers"),
    ({"lr": 0.1}, "must be a dict with 'type'"),
])
def test_optimizer_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        fastcnn.build_optimizer(config, [Parameter(np.zeros(2), "p")])
