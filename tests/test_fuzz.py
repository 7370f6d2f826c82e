"""Robustness fuzzing: random valid and invalid arguments thrown at every public functional op.

The contract (README.md, "Functional ops"): whatever is passed, an op returns a right answer (float
arrays of the expected dtype, finite where every input is finite, with torch's shape and values
when torch computes the same call) or raises ValueError/TypeError whose message starts with the
op's name. Anything else (another exception, a crash, non-finite garbage) fails.

Each example builds a valid call from random small geometry (which is itself often invalid:
zero/negative sizes, channels that do not match, groups that do not divide, kernels larger than
the input), gives each array a random memory layout / dtype, then replaces up to two arguments
with a value from a pool of bad ones.

The default run is small (the whole file takes a few seconds); FASTCNN_FUZZ_EXAMPLES=<n>
multiplies max_examples by n for a long session, e.g.
    FASTCNN_FUZZ_EXAMPLES=20 python -m pytest tests/test_fuzz.py -q
"""
import os
import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn.functional as F

# NaN/inf inputs make numpy warn (inf * 0 and the like); the results themselves are checked.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning",
                                        "ignore::numpy.exceptions.ComplexWarning")

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # torch is a test reference only
    torch = None

SCALE = max(1, int(os.environ.get("FASTCNN_FUZZ_EXAMPLES", "1")))
FUZZ = settings(max_examples=12 * SCALE, deadline=None, derandomize=SCALE == 1,
                suppress_health_check=list(HealthCheck))

# Huge sizes are 2**40 or more: anything that tried to allocate them would fail at once (never
# ~a few GB, which a shared machine could actually give and then be killed for).
HUGE = 2 ** 40


@pytest.fixture(scope="module", autouse=True)
def _address_space_limit():
    """Cap the address space while fuzzing: an accidental huge allocation becomes a
    MemoryError (a test failure) instead of swapping or OOM-killing the machine."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):   # ASan reserves terabytes of shadow
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    cap = vm + 6 * 2 ** 30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class A:
    """An array argument to materialize: shape, kind ("float", "index", "target")."""

    def __init__(self, shape, kind="float", high=None):
        self.shape, self.kind, self.high = tuple(shape), kind, high


LAYOUTS = ["c", "c", "c", "fortran", "negstride", "strided", "readonly", "float64", "int",
           "bool", "float16", "list", "nan", "inf", "zerostride"]


def materialize(data, a: A):
    """A random array for ``a`` in a random (valid) layout; returns (value, finite?)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    if a.kind in ("index", "target"):
        high = max(1, a.high or 1)
        return rng.integers(0, high, size=a.shape).astype(np.int64), True
    x = rng.standard_normal(a.shape).astype(np.float32)
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    finite = True
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "negstride" and x.ndim:
        x = np.flip(x.copy(), axis=-1)
    elif layout == "strided" and x.ndim:
        big = np.repeat(x, 2, axis=-1)
        x = big[..., ::2]
    elif layout == "readonly":
        x.setflags(write=False)
    elif layout == "float64":
        x = x.astype(np.float64)
    elif layout == "int":
        x = np.rint(x * 3).astype(np.int32)
    elif layout == "bool":
        x = x > 0
    elif layout == "float16":
        x = x.astype(np.float16)
    elif layout == "list":
        x = x.tolist()
    elif layout in ("nan", "inf") and x.size:
        x.flat[rng.integers(0, x.size)] = np.nan if layout == "nan" else -np.inf
        finite = False
    elif layout == "zerostride" and x.ndim:
        x = np.broadcast_to(x[..., :1], x.shape)
    return x, finite


def bad_array(data, value):
    """A bad replacement for an array argument: wrong type, dtype, ndim or size."""
    arr = np.asarray(value)
    choice = data.draw(st.sampled_from(
        ["none", "string", "ragged", "complex", "object", "extra_dim", "less_dim", "zero_dim",
         "scalar", "str_array", "datetime", "wrong_size"]), label="bad_array")
    if choice == "none":
        return None
    if choice == "string":
        return "abc"
    if choice == "ragged":
        return [[1.0, 2.0], [3.0]]
    if choice == "complex":
        return arr.astype(np.complex64)
    if choice == "object":
        return arr.astype(object)
    if choice == "extra_dim":
        return arr[None]
    if choice == "less_dim":
        return arr[0] if arr.ndim and arr.shape[0] else arr.reshape(-1)
    if choice == "zero_dim":
        return np.zeros(arr.shape[:-1] + (0,), arr.dtype) if arr.ndim else np.zeros(0)
    if choice == "scalar":
        return 3.0
    if choice == "str_array":
        return np.array(["a", "b"])
    if choice == "datetime":
        return np.zeros(arr.shape, dtype="datetime64[s]")
    return np.zeros(tuple(s + 1 for s in arr.shape), np.float32)


BAD_SCALARS = [0, -1, -3, HUGE, 2 ** 63 - 1, 2.5, float("nan"), float("inf"), "3", None, True,
               (), (1, 1, 1, 1, 1), [2, "x"], np.int64(2), object(), 1j]


# --------------------------------------------------------------------------------------------
# Recipes: each draws a (usually valid) call of one op as a dict of keyword arguments.
# --------------------------------------------------------------------------------------------

small = st.integers(1, 4)


def _geom(d, nd, transpose=False):
    g = d.draw(st.sampled_from([1, 1, 2]), label="groups")
    cin, cout = g * d.draw(small), g * d.draw(small)
    k = d.draw(st.integers(1, 3))
    args = dict(stride=d.draw(st.integers(1, 3)), padding=d.draw(st.integers(0, 2)),
                dilation=d.draw(st.integers(1, 2)), groups=g)
    size = d.draw(st.integers(1, 6))
    n = d.draw(st.integers(0, 2))
    batched = d.draw(st.booleans())
    x = ((n,) if batched else ()) + (cin,) + (size,) * nd
    if transpose:
        w = (cin, cout // g) + (k,) * nd
        args["output_padding"] = d.draw(st.integers(0, 1))
    else:
        w = (cout, cin // g) + (k,) * nd
    bias = A((cout,)) if d.draw(st.booleans()) else None
    return dict(input=A(x), weight=A(w), bias=bias, **args)


def conv_recipe(nd, transpose=False):
    return lambda d: _geom(d, nd, transpose)


def pool_input(d, nd, min_size=1):
    n = d.draw(st.integers(0, 2))
    lead = (n, d.draw(small)) if d.draw(st.booleans()) else (d.draw(small),)
    return A(lead + (d.draw(st.integers(min_size, 7)),) * nd)


def max_pool_recipe(nd):
    def r(d):
        k = d.draw(st.integers(1, 3))
        return dict(input=pool_input(d, nd), kernel_size=k,
                    stride=d.draw(st.sampled_from([None, 1, 2, 3])),
                    padding=d.draw(st.integers(0, 1)), dilation=d.draw(st.integers(1, 2)),
                    ceil_mode=d.draw(st.booleans()))
    return r


def avg_pool_recipe(nd):
    def r(d):
        k = d.draw(st.integers(1, 3))
        return dict(input=pool_input(d, nd), kernel_size=k,
                    stride=d.draw(st.sampled_from([None, 1, 2, 3])),
                    padding=d.draw(st.integers(0, 1)), ceil_mode=d.draw(st.booleans()),
                    count_include_pad=d.draw(st.booleans()))
    return r


def adaptive_recipe(nd):
    return lambda d: dict(input=pool_input(d, nd), output_size=d.draw(st.integers(1, 5)))


def unfold_recipe(d):
    x = A((d.draw(st.integers(0, 2)), d.draw(small), d.draw(st.integers(1, 6)),
           d.draw(st.integers(1, 6))))
    return dict(input=x, kernel_size=d.draw(st.integers(1, 3)), dilation=d.draw(st.integers(1, 2)),
                padding=d.draw(st.integers(0, 2)), stride=d.draw(st.integers(1, 3)))


def fold_recipe(d):
    c, k, out = d.draw(small), d.draw(st.integers(1, 3)), d.draw(st.integers(1, 6))
    s, p = d.draw(st.integers(1, 2)), d.draw(st.integers(0, 1))
    blocks = max(0, (out + 2 * p - k) // s + 1)
    return dict(input=A((d.draw(st.integers(0, 2)), c * k * k, blocks ** 2)),
                output_size=out, kernel_size=k, padding=p, stride=s)


def interpolate_recipe(d):
    nd = d.draw(st.integers(1, 3))
    mode = d.draw(st.sampled_from(["nearest", {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]]))
    x = A((d.draw(st.integers(0, 2)), d.draw(small)) + (d.draw(st.integers(1, 5)),) * nd)
    args = dict(input=x, mode=mode)
    if d.draw(st.booleans()):
        args["size"] = d.draw(st.integers(1, 8))
    else:
        args["scale_factor"] = d.draw(st.sampled_from([0.5, 1.0, 1.5, 2, 3]))
    if mode != "nearest":
        args["align_corners"] = d.draw(st.sampled_from([None, True, False]))
    return args


def norm_input(d, min_nd=2, max_nd=5):
    nd = d.draw(st.integers(min_nd, max_nd))
    return (d.draw(st.integers(0, 3)), d.draw(small)) + tuple(
        d.draw(st.integers(1, 4)) for _ in range(nd - 2))


def batch_norm_recipe(d):
    shape = norm_input(d)
    c = shape[1]
    training = d.draw(st.booleans())
    return dict(input=A(shape), running_mean=A((c,)), running_var=A((c,), "var"),
                weight=A((c,)) if d.draw(st.booleans()) else None,
                bias=A((c,)) if d.draw(st.booleans()) else None, training=training,
                momentum=d.draw(st.sampled_from([0.1, 0.0, 1.0])),
                eps=d.draw(st.sampled_from([1e-5, 1e-3])))


def layer_norm_recipe(d):
    shape = norm_input(d)
    k = d.draw(st.integers(1, len(shape) - 1))
    ns = shape[len(shape) - k:]
    affine = d.draw(st.booleans())
    return dict(input=A(shape), normalized_shape=ns, weight=A(ns) if affine else None,
                bias=A(ns) if affine else None)


def group_norm_recipe(d):
    g = d.draw(st.integers(1, 3))
    shape = norm_input(d)
    shape = (shape[0], g * d.draw(small)) + shape[2:]
    affine = d.draw(st.booleans())
    return dict(input=A(shape), num_groups=g, weight=A((shape[1],)) if affine else None,
                bias=A((shape[1],)) if affine else None)


def instance_norm_recipe(d):
    shape = norm_input(d, 3, 5)
    affine = d.draw(st.booleans())
    return dict(input=A(shape), weight=A((shape[1],)) if affine else None,
                bias=A((shape[1],)) if affine else None)


def linear_recipe(d):
    lead = tuple(d.draw(st.integers(0, 3)) for _ in range(d.draw(st.integers(0, 2))))
    i, o = d.draw(small), d.draw(small)
    return dict(input=A(lead + (i,)), weight=A((o, i)),
                bias=A((o,)) if d.draw(st.booleans()) else None)


def elementwise_recipe(**extra):
    def r(d):
        shape = tuple(d.draw(st.integers(0, 4)) for _ in range(d.draw(st.integers(0, 4))))
        return dict(input=A(shape), **{k: d.draw(v) for k, v in extra.items()})
    return r


def softmax_recipe(d):
    shape = tuple(d.draw(st.integers(0, 4)) for _ in range(d.draw(st.integers(1, 4))))
    return dict(input=A(shape), dim=d.draw(st.integers(-len(shape), len(shape) - 1)))


def prelu_recipe(d):
    shape = norm_input(d, 2, 4)
    return dict(input=A(shape), weight=A((d.draw(st.sampled_from([1, shape[1]])),)))


def dropout_recipe(d):
    shape = tuple(d.draw(st.integers(0, 4)) for _ in range(d.draw(st.integers(0, 4))))
    return dict(input=A(shape), p=d.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
                training=d.draw(st.booleans()), rng=np.random.default_rng(0))


def pad_recipe(d):
    nd = d.draw(st.integers(1, 3))
    shape = (d.draw(st.integers(0, 2)), d.draw(small)) + tuple(
        d.draw(st.integers(1, 4)) for _ in range(nd))
    mode = d.draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
    pads = tuple(d.draw(st.integers(0, 3) if mode == "constant" else st.integers(0, 2))
                 for _ in range(2 * nd))
    return dict(input=A(shape), pad=pads, mode=mode)


def cross_entropy_recipe(d):
    n, c = d.draw(st.integers(1, 4)), d.draw(st.integers(1, 5))
    extra = tuple(d.draw(st.integers(1, 3)) for _ in range(d.draw(st.integers(0, 2))))
    return dict(input=A((n, c) + extra), target=A((n,) + extra, "target", c),
                reduction=d.draw(st.sampled_from(["mean", "sum", "none"])),
                label_smoothing=d.draw(st.sampled_from([0.0, 0.1])))


def pair_loss_recipe(d):
    shape = tuple(d.draw(st.integers(1, 4)) for _ in range(d.draw(st.integers(1, 3))))
    return dict(input=A(shape), target=A(shape),
                reduction=d.draw(st.sampled_from(["mean", "sum", "none"])))


def fuse_recipe(d):
    co, ci, k = d.draw(small), d.draw(small), d.draw(st.integers(1, 3))
    return dict(weight=A((co, ci, k, k)), bias=A((co,)) if d.draw(st.booleans()) else None,
                running_mean=A((co,)), running_var=A((co,), "var"),
                bn_weight=A((co,)) if d.draw(st.booleans()) else None,
                bn_bias=A((co,)) if d.draw(st.booleans()) else None)


def max_unpool_recipe(d):
    k = d.draw(st.integers(1, 3))
    s = d.draw(st.sampled_from([None, 1, 2]))
    x = pool_input(d, 2, min_size=k)
    out, ind = F.max_pool2d(np.ones(x.shape, np.float32), k, s, return_indices=True)
    return dict(input=A(out.shape), indices=ind, kernel_size=k, stride=s)


FORWARD = {
    "conv1d": conv_recipe(1), "conv2d": conv_recipe(2), "conv3d": conv_recipe(3),
    "conv_transpose1d": conv_recipe(1, True), "conv_transpose2d": conv_recipe(2, True),
    "conv_transpose3d": conv_recipe(3, True),
    "unfold": unfold_recipe, "fold": fold_recipe,
    "max_pool1d": max_pool_recipe(1), "max_pool2d": max_pool_recipe(2),
    "max_pool3d": max_pool_recipe(3),
    "avg_pool1d": avg_pool_recipe(1), "avg_pool2d": avg_pool_recipe(2),
    "avg_pool3d": avg_pool_recipe(3),
    "adaptive_avg_pool1d": adaptive_recipe(1), "adaptive_avg_pool2d": adaptive_recipe(2),
    "adaptive_avg_pool3d": adaptive_recipe(3),
    "adaptive_max_pool1d": adaptive_recipe(1), "adaptive_max_pool2d": adaptive_recipe(2),
    "adaptive_max_pool3d": adaptive_recipe(3),
    "max_unpool2d": max_unpool_recipe,
    "interpolate": interpolate_recipe,
    "batch_norm": batch_norm_recipe, "layer_norm": layer_norm_recipe,
    "group_norm": group_norm_recipe, "instance_norm": instance_norm_recipe,
    "linear": linear_recipe,
    "relu": elementwise_recipe(), "sigmoid": elementwise_recipe(), "tanh": elementwise_recipe(),
    "selu": elementwise_recipe(),
    "leaky_relu": elementwise_recipe(negative_slope=st.sampled_from([0.01, 0.2, -1.0])),
    "elu": elementwise_recipe(alpha=st.sampled_from([1.0, 0.5])),
    "gelu": elementwise_recipe(approximate=st.sampled_from(["none", "tanh"])),
    "prelu": prelu_recipe,
    "softmax": softmax_recipe, "log_softmax": softmax_recipe,
    "dropout": dropout_recipe,
    "pad": pad_recipe,
    "cross_entropy": cross_entropy_recipe,
    "mse_loss": pair_loss_recipe, "l1_loss": pair_loss_recipe,
    "binary_cross_entropy_with_logits": pair_loss_recipe,
    "fuse_conv_bn": fuse_recipe,
}

# Ops whose torch.nn.functional namesake takes the same arguments: successful calls with
# finite inputs are compared with it (values and shape).
TORCH_SAME = set(FORWARD) - {"dropout", "fuse_conv_bn", "max_unpool2d"}


def materialize_all(data, recipe_args):
    args, finite = {}, True
    for key, value in recipe_args.items():
        if isinstance(value, A):
            if value.kind == "var":     # a variance: positive
                value, ok = np.random.default_rng(0).uniform(0.5, 2, value.shape), True
            else:
                value, ok = materialize(data, value)
            finite &= ok
        args[key] = value
    return args, finite


def all_finite(args):
    """No NaN/inf among the numeric arguments (a NaN alpha or eps rightly gives NaN)."""
    for value in args.values():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(arr).all():
            return False
    return True


def mutate(data, args):
    """Replace up to two arguments with bad values; returns the names replaced."""
    n = data.draw(st.integers(0, 2), label="n_mutations")
    names = sorted(args)
    replaced = []
    for _ in range(n):
        key = data.draw(st.sampled_from(names), label="mutated")
        if key in replaced:
            continue
        value = args[key]
        if isinstance(value, (np.ndarray, list)) and key != "pad":
            args[key] = bad_array(data, value)
        else:
            args[key] = data.draw(st.sampled_from(BAD_SCALARS), label=f"bad_{key}")
        replaced.append(key)
    return replaced


def outputs(result):
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


def check_contract(fname, call, finite):
    """Run ``call``; return its outputs if it succeeded (checked), None if it raised as allowed."""
    try:
        result = call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert msg.startswith(fname), f"{type(exc).__name__} does not name {fname}: {msg!r}"
        return None
    outs = outputs(result)
    for out in outs:
        assert isinstance(out, (np.ndarray, np.floating)), f"{fname} returned {type(out)}"
        if out.dtype.kind == "f":
            assert out.dtype in (np.float32, np.float64), f"{fname} returned {out.dtype}"
            if finite:
                assert np.isfinite(out).all(), f"{fname}: non-finite output from finite input"
    return outs


def torch_call(fname, args):
    targs = {}
    for key, value in args.items():
        if key == "input" or (isinstance(value, (np.ndarray, np.generic, list)) and
                              key not in ("pad", "normalized_shape")):
            arr = np.asarray(value)
            if key == "target" and fname == "cross_entropy":
                targs[key] = torch.from_numpy(arr.astype(np.int64))
            else:
                targs[key] = torch.from_numpy(np.array(arr, dtype=np.float64))
        else:
            targs[key] = value
    x = targs.pop("input")
    return getattr(TF, fname)(x, **targs)


@pytest.mark.parametrize("fname", sorted(FORWARD))
@FUZZ
@given(data=st.data())
def test_forward_op_gives_right_answer_or_named_error(fname, data):
    recipe_args = FORWARD[fname](data)
    args, finite = materialize_all(data, recipe_args)
    replaced = mutate(data, args)
    finite = finite and all_finite(args)
    op = getattr(F, fname)
    # A max-pool window that lies entirely in the padding (possible with dilation) gives -inf,
    # as in torch: such outputs are checked against torch below instead.
    all_padding_window = fname.startswith("max_pool") and args.get("dilation", 1) != 1
    # The mean of nothing is NaN (as torch.nn.functional and numpy): an empty loss input.
    empty_mean = args.get("reduction") == "mean" and any(
        isinstance(v, np.ndarray) and v.size == 0 for v in args.values())
    outs = check_contract(fname, lambda: op(**args),
                          finite and not all_padding_window and not empty_mean)
    if outs is None or torch is None or fname not in TORCH_SAME or not finite or replaced:
        return
    if outs[0].size == 0:
        return        # torch itself fails on some empty batches (e.g. instance_norm)
    try:
        expected = torch_call(fname, args)
    except Exception as exc:  # noqa: BLE001 - fastcnn accepted a call torch refuses
        if "smaller than kernel size" in str(exc):
            return        # torch's avg_pool3d refuses input < kernel even when padding fits
        if "more than 1 value per channel" in str(exc):
            # torch refuses norms over a single value in training; fastcnn normalizes it to 0
            # (variance 0, finite thanks to eps), so the output is the bias (or 0).
            bias = args.get("bias")
            expected = 0.0 if bias is None else np.asarray(bias, np.float64).reshape(
                (1, -1) + (1,) * (outs[0].ndim - 2))
            np.testing.assert_allclose(outs[0], np.broadcast_to(expected, outs[0].shape),
                                       atol=1e-6)
            return
        pytest.fail(f"{fname} accepted {sorted(args)} but torch refuses it: {exc}")
    expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
    assert outs[0].shape == expected[0].shape
    rtol = 1e-3 if outs[0].dtype == np.float32 else 1e-7
    np.testing.assert_allclose(outs[0], expected[0], rtol=rtol, atol=rtol)
    if all_padding_window:
        assert np.isfinite(outs[0]).all() or not np.isfinite(expected[0]).all()


# --------------------------------------------------------------------------------------------
# Backward ops: a valid forward fixes grad_output's shape; then the same mutation game.
# --------------------------------------------------------------------------------------------

BACKWARD = {
    "conv1d_backward": ("conv1d", ("input", "weight"), ("bias",)),
    "conv2d_backward": ("conv2d", ("input", "weight"), ("bias",)),
    "conv3d_backward": ("conv3d", ("input", "weight"), ("bias",)),
    "conv_transpose2d_backward": ("conv_transpose2d", ("input", "weight"), ("bias",)),
    "max_pool2d_backward": ("max_pool2d", ("input",), ()),
    "max_pool1d_backward": ("max_pool1d", ("input",), ()),
    "avg_pool2d_backward": ("avg_pool2d", ("input",), ()),
    "avg_pool3d_backward": ("avg_pool3d", ("input",), ()),
    "adaptive_avg_pool2d_backward": ("adaptive_avg_pool2d", ("input",), ("output_size",)),
    "adaptive_max_pool2d_backward": ("adaptive_max_pool2d", ("input",), ("output_size",)),
    "layer_norm_backward": ("layer_norm", ("input",), ()),
    "group_norm_backward": ("group_norm", ("input",), ()),
    "batch_norm_backward": ("batch_norm", ("input",), ("momentum",)),
    "linear_backward": ("linear", ("input", "weight"), ("bias",)),
    "softmax_backward": ("softmax", (), ()),
    "log_softmax_backward": ("log_softmax", (), ()),
    "relu_backward": ("relu", ("input",), ()),
    "cross_entropy_backward": ("cross_entropy", ("input", "target"), ()),
    "mse_loss_backward": ("mse_loss", ("input", "target"), ()),
    "pad_backward": ("pad", (), ()),
    "unfold_backward": ("unfold", (), ()),
    "interpolate_backward": ("interpolate", (), ()),
    "conv_transpose1d_backward": ("conv_transpose1d", (), ("bias",)),
    "conv_transpose3d_backward": ("conv_transpose3d", (), ("bias",)),
    "max_pool3d_backward": ("max_pool3d", (), ()),
    "avg_pool1d_backward": ("avg_pool1d", (), ()),
    "adaptive_avg_pool1d_backward": ("adaptive_avg_pool1d", (), ("output_size",)),
    "adaptive_max_pool3d_backward": ("adaptive_max_pool3d", (), ("output_size",)),
    "max_unpool2d_backward": ("max_unpool2d", (), ()),
    "instance_norm_backward": ("instance_norm", (), ()),
    "elu_backward": ("elu", (), ()),
    "leaky_relu_backward": ("leaky_relu", (), ()),
    "gelu_backward": ("gelu", (), ()),
    "selu_backward": ("selu", (), ()),
    "sigmoid_backward": ("sigmoid", (), ()),
    "tanh_backward": ("tanh", (), ()),
    "prelu_backward": ("prelu", (), ()),
    "l1_loss_backward": ("l1_loss", (), ()),
    "binary_cross_entropy_with_logits_backward": ("binary_cross_entropy_with_logits", (), ()),
    "fold_backward": ("fold", (), ("output_size",)),
}


@pytest.mark.parametrize("fname", sorted(BACKWARD))
@FUZZ
@given(data=st.data())
def test_backward_op_gives_right_answer_or_named_error(fname, data):
    fwd_name, _, dropped = BACKWARD[fname]
    args, finite = materialize_all(data, FORWARD[fwd_name](data))
    fwd = getattr(F, fwd_name)
    fwd_args = dict(args)
    if fwd_name.startswith(("max_pool", "adaptive_max")):
        fwd_args["return_indices"] = True
    try:
        out = fwd(**fwd_args)
    except (ValueError, TypeError):
        return                                   # the forward's contract is fuzzed above
    if fwd_name.startswith(("max_pool", "adaptive_max")):
        out, args["indices"] = out
    y = np.asarray(out)
    args["grad_output"] = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    for key in dropped:
        args.pop(key, None)
    if fwd_name in ("softmax", "log_softmax", "sigmoid", "tanh"):
        args["output"] = y
        args.pop("input")
    if fwd_name == "pad":
        args["input_shape"] = np.shape(args.pop("input"))
        args.pop("value", None)
    if fwd_name in ("unfold", "interpolate"):
        args["input_size"] = np.shape(args.pop("input"))
    if fwd_name == "fold":
        args.pop("input")
    if fwd_name.endswith(("_loss", "_logits")) or fwd_name == "cross_entropy":
        args["grad_output"] = np.float32(1.0) if args.get("reduction") != "none" else \
            args["grad_output"]
    if fwd_name == "batch_norm":
        for key in ("running_mean", "running_var"):
            args[key] = np.asarray(args[key], dtype=np.float32).copy()
    mutate(data, args)
    finite = finite and all_finite(args)
    op = getattr(F, fname)
    check_contract(fname, lambda: op(**args), finite)


# --------------------------------------------------------------------------------------------
# Huge sizes: products that overflow 32-bit indices (BLAS takes 32-bit ints) are refused before
# anything is allocated. Zero-stride views make the inputs cost nothing.
# --------------------------------------------------------------------------------------------

def _view(shape, dtype=np.float32):
    return np.broadcast_to(np.zeros((), dtype), shape)


@pytest.mark.parametrize("call", [
    # im2col rows C*kH*kW > 2**31: a (1, 2**16, 8, 8) input with an 8x8 kernel needs 2**22 rows
    # of 1 column: fine; with a 2**26-channel input it is 2**32.
    lambda: F.conv2d(_view((1, 2 ** 26, 8, 8)), _view((1, 2 ** 26, 8, 8))),
    lambda: F.conv1d(_view((1, 1, 2 ** 33)), _view((1, 1, 1))),
    lambda: F.conv2d(_view((0, 1, 2 ** 16, 2 ** 16)), _view((1, 1, 1, 1))),
    lambda: F.linear(_view((2, 2 ** 32)), _view((3, 2 ** 32))),
    lambda: F.unfold(_view((1, 2 ** 16, 2 ** 8, 2 ** 8)), kernel_size=3, padding=1),
    lambda: F.max_pool2d(_view((1, 1, 2 ** 17, 2 ** 17)), 1),
    lambda: F.avg_pool1d(_view((1, 1, 2 ** 33)), 1),
    lambda: F.interpolate(_view((1, 1, 4, 4)), scale_factor=2 ** 20),
    lambda: F.interpolate(_view((1, 1, 4)), size=2 ** 40),
    lambda: F.conv_transpose2d(_view((1, 1, 2 ** 16, 2 ** 16)), _view((1, 1, 3, 3))),
    lambda: F.pad(_view((1, 1, 4, 4)), (2 ** 20, 2 ** 20, 2 ** 20, 2 ** 20)),
    lambda: F.adaptive_avg_pool2d(_view((1, 1, 4, 4)), 2 ** 20),
    lambda: F.fold(_view((1, 1, 2 ** 32)), output_size=2 ** 16 + 1, kernel_size=1),
], ids=["conv2d_rows", "conv1d_length", "conv2d_plane", "linear_features", "unfold_rows",
        "max_pool_plane", "avg_pool_length", "interpolate_scale", "interpolate_size",
        "conv_transpose_plane", "pad_huge", "adaptive_huge", "fold_huge"])
def test_huge_sizes_are_refused_before_allocating(call):
    with pytest.raises(ValueError, match=r"2\*\*31|too large|exceeds"):
        call()


# --------------------------------------------------------------------------------------------
# Regressions for what the fuzzing found.
# --------------------------------------------------------------------------------------------

def test_adaptive_pool_huge_output_size_is_a_value_error_not_a_memory_error():
    with pytest.raises(ValueError, match="adaptive_avg_pool1d: output_size"):
        F.adaptive_avg_pool1d(np.ones((1, 1, 4), np.float32), 2 ** 40)


@pytest.mark.parametrize("call, name", [
    (lambda: F.selu("abc"), "selu"),
    (lambda: F.selu_backward(None, np.ones(3)), "selu_backward"),
    (lambda: F.unfold_backward(np.ones((1, 4, 9)), (1, 1, 4, 4), 2, dilation=0),
     "unfold_backward"),
    (lambda: F.fold_backward(np.ones((1, 1, 4, 4)), 2, stride=2.5), "fold_backward"),
])
def test_delegating_ops_name_themselves_in_errors(call, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}: "):
        call()


def test_pad_backward_refuses_unhashable_mode_and_bad_input_shape():
    dy = np.ones((1, 1, 4), np.float32)
    with pytest.raises(ValueError, match="^pad_backward: mode"):
        F.pad_backward(dy, (1, 1, 2), (1, 1), mode=["reflect"])
    with pytest.raises(TypeError, match="^pad_backward: input_shape"):
        F.pad_backward(dy, "abc", (1, 1))


@pytest.mark.parametrize("call, name", [
    (lambda: F.cross_entropy(np.ones((2, 3)), [[1, 2], [3]]), "cross_entropy"),
    (lambda: F.nll_loss(np.ones((2, 3)), [[1, 2], [3]]), "nll_loss"),
    (lambda: F.dropout_backward(np.ones(2), [[1, 2], [3]], 0.5), "dropout_backward"),
])
def test_ragged_targets_and_masks_are_named_type_errors(call, name):
    """Found by the long fuzz session: np.asarray's own ValueError escaped."""
    with pytest.raises(TypeError, match=f"^{name}: .* could not be converted"):
        call()


def test_tanh_backward_of_a_0d_array():
    """Found by fuzzing: np.multiply of 0-d arrays gives a scalar, and out= then failed with
    numpy's 'return arrays must be of ArrayType'."""
    y = F.tanh(np.array(0.5, np.float32))
    dx = F.tanh_backward(np.array(2.0, np.float32), y)
    assert dx.shape == () and dx.dtype == np.float32
    np.testing.assert_allclose(dx, 2 * (1 - np.tanh(0.5) ** 2), rtol=1e-6)


@pytest.mark.parametrize("x_shape, w_shape", [((0,), (1, 0)), ((2, 0), (3, 0)), ((2, 3), (0, 3)),
                                              ((0, 3), (2, 3))])
def test_linear_with_zero_features_or_rows(x_shape, w_shape, th):
    """Found by the long fuzz session: reshape(-1, 0) raised numpy's 'cannot reshape array of
    size 0'; torch gives zeros (an empty sum)."""
    x, w = np.zeros(x_shape, np.float32), np.ones(w_shape, np.float32)
    b = np.arange(w_shape[0], dtype=np.float32)
    y = F.linear(x, w, b)
    expected = th.nn.functional.linear(th.from_numpy(x), th.from_numpy(w), th.from_numpy(b))
    np.testing.assert_array_equal(y, expected.numpy())
    gx, gw, gb = F.linear_backward(np.ones_like(y), x, w)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (w_shape[0],)
    np.testing.assert_array_equal(gw, np.zeros(w_shape))


@pytest.mark.parametrize("op, w_shape", [(F.conv1d, (1, 1, 1)), (F.conv2d, (1, 1, 1, 1)),
                                         (F.conv_transpose1d, (1, 1, 2))])
@pytest.mark.parametrize("x_lead", [(1, 1), (1,)])
def test_conv_of_zero_length_input_is_refused_as_torch(op, w_shape, x_lead):
    """Found with the FASTCNN_BOUNDSCHECK build: conv1d of a (1, 1, 0) input with padding=1
    made the kernel index x[n, 0] of an empty row ('Out of bounds on buffer access')."""
    x = np.zeros(x_lead + (0,) * (len(w_shape) - 2), np.float32)
    with pytest.raises(ValueError, match=r"^conv.*: input must have non-zero spatial sizes"):
        op(x, np.ones(w_shape, np.float32), padding=1)


def test_mean_loss_of_empty_input_is_nan_as_torch(th):
    """The long fuzz session's last report: l1_loss of (0,)-shaped arrays is NaN. That is
    torch's (and numpy's) answer for a mean over nothing, so it is kept and pinned here."""
    empty = np.zeros(0, np.float32)
    for name in ("l1_loss", "mse_loss"):
        ours = getattr(F, name)(empty, empty)
        theirs = getattr(th.nn.functional, name)(th.from_numpy(empty), th.from_numpy(empty))
        assert np.isnan(ours) and th.isnan(theirs)
        assert getattr(F, name)(empty, empty, reduction="sum") == 0


def test_ragged_indices_are_a_named_type_error():
    x = np.ones((1, 1, 4, 4), np.float32)
    y, _ = F.adaptive_max_pool2d(x, 2, return_indices=True)
    with pytest.raises(TypeError, match="^adaptive_max_pool2d_backward: indices"):
        F.adaptive_max_pool2d_backward(y, x, [[1, 2], [3]])


@pytest.mark.parametrize("call", [
    lambda: F.conv_transpose1d(np.ones((1, 1, 2), np.float32), np.ones((1, 1, 1), np.float32),
                               stride=HUGE),
    lambda: F.conv_transpose3d(np.ones((1, 1, 2, 2, 2), np.float32),
                               np.ones((1, 1, 1, 1, 1), np.float32), stride=2 ** 20),
    lambda: F.max_unpool2d(np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.int64),
                           kernel_size=2, stride=2 ** 40),
], ids=["conv_transpose1d", "conv_transpose3d", "max_unpool2d"])
def test_huge_strides_give_named_errors_not_numpy_ones(call):
    """Found by the long fuzz session: numpy's 'Maximum allowed dimension exceeded' /
    'array is too big' / MemoryError escaped from these."""
    with pytest.raises(ValueError, match=r"^(conv_transpose[13]d|max_unpool2d): .*2\*\*31-1"):
        call()


def test_max_pool_window_entirely_in_padding_gives_minus_inf_as_torch():
    # kernel 2, dilation 2, padding 1 on a size-1 input: the taps are -1 and 1, both outside.
    y = F.max_pool2d(np.ones((1, 1, 1), np.float32), 2, 1, 1, 2)
    assert y.shape == (1, 1, 1) and y[0, 0, 0] == -np.inf


def test_huge_stride_and_padding_are_refused_before_the_kernel():
    """Found by fuzzing: conv1d with padding=2**40 and stride=2**63-1 (output size 1) reached
    im2col, whose window arithmetic (-start + stride - 1) overflowed int64 and read far outside
    the input: a segfault. Per-axis arguments are now capped at 2**31-1."""
    x = np.ones((1, 6, 4), np.float32)
    w = np.ones((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^conv1d: stride must be at most 2\*\*31-1"):
        F.conv1d(x, w, stride=2 ** 63 - 1, padding=2 ** 40, groups=2)
    with pytest.raises(ValueError, match=r"^conv1d: padding must be at most 2\*\*31-1"):
        F.conv1d(x, w, stride=3, padding=2 ** 40, groups=2)
    with pytest.raises(ValueError, match=r"^max_pool2d: stride must be at most 2\*\*31-1"):
        F.max_pool2d(np.ones((1, 1, 4, 4)), 2, stride=2 ** 62)
