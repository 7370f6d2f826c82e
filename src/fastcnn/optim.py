"""Optimizers over ``model.parameters()``, with torch's update rules, and gradient clipping.

Every update is computed in place with numpy ``out=`` arguments into per-parameter buffers
allocated on the first step: no temporary arrays per step.

Config: ``{"type": "adam", "lr": 1e-3, "weight_decay": 1e-4,
"groups": [{"params": ["*.bias", "*bn*"], "weight_decay": 0.0}], "clip_grad_norm": 5.0}``.
``groups`` lists per-parameter-group options; a parameter takes the first group one of whose
fnmatch patterns matches its name (``"no_decay"`` is a shorthand pattern group for every
parameter declared without weight decay: biases and normalization parameters).
"""
from __future__ import annotations

import fnmatch
import inspect
import math

import numpy as np

from fastcnn._ops import update as _updates
from fastcnn._threads import get_num_threads
from fastcnn.layers.base import Parameter
from fastcnn.registry import OPTIMIZERS, register_optimizer

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "build_optimizer",
           "clip_grad_norm", "clip_grad_value"]


def clip_grad_norm(params, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``
    (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping."""
    params = [p for p in params]
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    if norm_type == math.inf:
        total = max((float(np.max(np.abs(p.grad))) for p in params if p.grad.size), default=0.0)
    else:
        total = sum(float(np.sum(np.abs(p.grad, dtype=np.float64) ** norm_type))
                    for p in params) ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            p.grad *= coef
    return total


def clip_grad_value(params, clip_value: float) -> None:
    """Clamp every gradient entry to [-clip_value, clip_value], in place."""
    if clip_value <= 0:
        raise ValueError(f"clip_grad_value: clip_value must be > 0, got {clip_value}")
    for p in params:
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)


class Optimizer:
    """Base: parameter groups with options, per-parameter state, step counting, state_dict."""

    #: option -> default; subclasses extend it.
    defaults_spec: dict = {"lr": 1e-3, "weight_decay": 0.0, "decoupled_weight_decay": False}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # __init__ takes **options (defaults_spec says which): this signature spells them out,
        # for help() and for Registry.build, which checks a config's keys against it.
        keyword = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=value)
                   for key, value in cls.defaults_spec.items()]
        keyword += [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None)
                    for key in ("groups", "clip_grad_norm", "clip_grad_value")]
        cls.__signature__ = inspect.Signature(
            [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + keyword)

    def __init__(self, params, **options):
        name = getattr(type(self), "registered_name", type(self).__name__)
        self.clip_norm = options.pop("clip_grad_norm", None)
        self.clip_value = options.pop("clip_grad_value", None)
        groups_spec = options.pop("groups", None) or []
        unknown = [k for k in options if k not in self.defaults_spec]
        if unknown:
            raise ValueError(f"optimizer {name}: unknown option(s) {', '.join(map(repr, unknown))} "
                             f"(options: {', '.join(self.defaults_spec)}, groups, "
                             f"clip_grad_norm, clip_grad_value)")
        self.defaults = {**self.defaults_spec, **options}
        self._check(name, self.defaults)
        params = list(params)
        if not params:
            raise ValueError(f"optimizer {name}: got an empty parameter list")
        if isinstance(params[0], dict):            # torch style: [{"params": [...], ...}, ...]
            self.param_groups = []
            for g in params:
                group = {**self.defaults, **{k: v for k, v in g.items() if k != "params"}}
                self._check(name, group)
                group["params"] = list(g["params"])
                self.param_groups.append(group)
        else:
            self.param_groups = self._group_by_pattern(name, params, groups_spec)
        for group in self.param_groups:
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"optimizer {name}: expected fastcnn Parameters "
                                    f"(model.parameters()), got {type(p).__name__}")
        self.state: dict[int, dict] = {}
        self.step_count = 0

    def _group_by_pattern(self, name, params, groups_spec):
        if not isinstance(groups_spec, list):
            raise ValueError(f"optimizer {name}: groups must be a list of dicts, got {groups_spec!r}")
        groups = []
        for i, spec in enumerate(groups_spec):
            if not isinstance(spec, dict) or "params" not in spec:
                raise ValueError(f"optimizer {name}: groups[{i}] must be a dict with 'params' "
                                 f"(name patterns, or 'no_decay'), got {spec!r}")
            patterns = spec["params"]
            patterns = [patterns] if isinstance(patterns, str) else list(patterns)
            group = {**self.defaults, **{k: v for k, v in spec.items() if k != "params"}}
            self._check(f"{name} groups[{i}]", group)
            groups.append((patterns, group))
        out = [dict(g, params=[]) for _, g in groups] + [dict(self.defaults, params=[])]
        for p in params:
            for index, (patterns, _) in enumerate(groups):
                if any((pat == "no_decay" and not p.weight_decay) or
                       fnmatch.fnmatchcase(p.name, pat) for pat in patterns):
                    out[index]["params"].append(p)
                    break
            else:
                out[-1]["params"].append(p)
        return [g for g in out if g["params"]]

    def _check(self, name, options):
        lr = options.get("lr")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < 0:
            raise ValueError(f"optimizer {name}: lr must be a number >= 0, got {lr!r}")
        if options.get("weight_decay", 0) < 0:
            raise ValueError(f"optimizer {name}: weight_decay must be >= 0, got "
                             f"{options['weight_decay']!r}")

    # -- stepping ---------------------------------------------------------------------------
    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad()

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def step(self):
        """Apply one update from the parameters' current gradients."""
        if self.clip_value is not None:
            clip_grad_value(self._params(), self.clip_value)
        if self.clip_norm is not None:
            clip_grad_norm(self._params(), self.clip_norm)
        self.step_count += 1
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = {"step": 0, "g": np.empty_like(p.data),
                                                 "tmp": np.empty_like(p.data)}
                    self._init_state(p, state, group)
                state["step"] += 1
                grad = p.grad
                wd = group["weight_decay"]
                if wd:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1.0 - group["lr"] * wd
                    else:                               # L2: grad + wd * p, into a buffer
                        np.multiply(p.data, wd, out=state["g"])
                        state["g"] += grad
                        grad = state["g"]
                self._update(p, grad, state, group)

    def _init_state(self, p, state, group):
        pass

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # -- resuming ---------------------------------------------------------------------------
    _SCRATCH = ("g", "tmp")

    def state_dict(self) -> dict:
        """Options per group and per-parameter state keyed by parameter name (arrays copied)."""
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [p.name for p in g["params"]]}
                  for g in self.param_groups]
        state = {}
        for p in self._params():
            s = self.state.get(id(p))
            if s is not None:
                state[p.name] = {k: (np.array(v) if isinstance(v, np.ndarray) else v)
                                 for k, v in s.items() if k not in self._SCRATCH}
        return {"type": getattr(type(self), "registered_name", type(self).__name__),
                "step_count": self.step_count, "groups": groups, "state": state}

    def load_state_dict(self, sd: dict):
        by_name = {p.name: p for p in self._params()}
        if len(sd.get("groups", [])) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(sd.get('groups', []))} groups, this "
                             f"optimizer {len(self.param_groups)}")
        for group, saved in zip(self.param_groups, sd["groups"]):
            for k, v in saved.items():
                if k != "params":
                    group[k] = v
        self.step_count = int(sd.get("step_count", 0))
        self.state = {}
        for name, saved in sd.get("state", {}).items():
            if name not in by_name:
                raise ValueError(f"optimizer state names parameter {name!r}, which this model "
                                 f"does not have")
            p = by_name[name]
            s = {"g": np.empty_like(p.data), "tmp": np.empty_like(p.data)}
            for k, v in saved.items():
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(f"optimizer state {name}.{k} has shape {v.shape}, the "
                                         f"parameter {p.data.shape}")
                    v = v.astype(p.data.dtype, copy=True)
                s[k] = v
            self.state[id(p)] = s


# Parameters of at least this many elements are updated by the whole team (smaller ones on one
# thread: waking the team costs more than their sweep).
_FUSED_MIN_TEAM = 1 << 15


def _fused(data, grad, buf):
    """Whether the fused kernels (_ops/update.pyx) apply: C-contiguous arrays of one float
    dtype (a parameter's own arrays always are; anything else keeps the numpy steps)."""
    return (data.dtype == grad.dtype == buf.dtype and data.dtype in (np.float32, np.float64)
            and data.flags.c_contiguous and grad.flags.c_contiguous and buf.flags.c_contiguous
            and data.shape == grad.shape == buf.shape)


@register_optimizer("sgd", aliases=("SGD",))
class SGD(Optimizer):
    """v = momentum*v + (1-dampening)*g (v = g at the first step); p -= lr * (g + momentum*v
    if nesterov else v)."""
    defaults_spec = {**Optimizer.defaults_spec, "lr": 0.01, "momentum": 0.0, "dampening": 0.0,
                     "nesterov": False}

    def _check(self, name, o):
        super()._check(name, o)
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError(f"optimizer {name}: nesterov needs momentum > 0 and dampening 0")

    def _update(self, p, grad, state, group):
        lr, mom = group["lr"], group["momentum"]
        if mom:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            elif _fused(p.data, grad, buf):
                # one pass on the team, the same bits as the numpy steps below
                size = p.data.size
                _updates.sgd_momentum(p.data.reshape(-1), grad.reshape(-1), buf.reshape(-1),
                                     mom, 1.0 - group["dampening"], -lr, group["nesterov"],
                                     get_num_threads() if size >= _FUSED_MIN_TEAM else 1)
                return
            else:
                buf *= mom
                np.multiply(grad, 1.0 - group["dampening"], out=state["tmp"])
                buf += state["tmp"]
            if group["nesterov"]:
                np.multiply(buf, mom, out=state["tmp"])
                state["tmp"] += grad
                grad = state["tmp"]
            else:
                grad = buf
        np.multiply(grad, -lr, out=state["tmp"])
        p.data += state["tmp"]


@register_optimizer("adagrad", aliases=("Adagrad",))
class Adagrad(Optimizer):
    """sum += g^2; p -= lr / (1 + (t-1) * lr_decay) * g / (sqrt(sum) + eps)."""
    defaults_spec = {**Optimizer.defaults_spec, "lr": 0.01, "lr_decay": 0.0, "eps": 1e-10,
                     "initial_accumulator_value": 0.0}

    def _init_state(self, p, state, group):
        state["sum"] = np.full_like(p.data, group["initial_accumulator_value"])

    def _update(self, p, grad, state, group):
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        tmp = state["tmp"]
        np.multiply(grad, grad, out=tmp)
        state["sum"] += tmp
        np.sqrt(state["sum"], out=tmp)
        tmp += group["eps"]
        np.divide(grad, tmp, out=tmp)
        tmp *= -clr
        p.data += tmp


@register_optimizer("rmsprop", aliases=("RMSprop",))
class RMSprop(Optimizer):
    """sq = alpha*sq + (1-alpha)*g^2; avg = sqrt(sq - mean_g^2 if centered else sq) + eps;
    p -= lr * g/avg (or through a momentum buffer)."""
    defaults_spec = {**Optimizer.defaults_spec, "lr": 0.01, "alpha": 0.99, "eps": 1e-8,
                     "momentum": 0.0, "centered": False}

    def _init_state(self, p, state, group):
        state["square_avg"] = np.zeros_like(p.data)
        if group["momentum"] > 0:
            state["momentum_buffer"] = np.zeros_like(p.data)
        if group["centered"]:
            state["grad_avg"] = np.zeros_like(p.data)

    def _update(self, p, grad, state, group):
        alpha, tmp = group["alpha"], state["tmp"]
        sq = state["square_avg"]
        sq *= alpha
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - alpha
        sq += tmp
        if group["centered"]:
            ga = state["grad_avg"]
            ga *= alpha
            np.multiply(grad, 1 - alpha, out=tmp)
            ga += tmp
            np.multiply(ga, ga, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += group["eps"]
        np.divide(grad, tmp, out=tmp)              # g / avg
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += tmp
            np.multiply(buf, -group["lr"], out=tmp)
        else:
            tmp *= -group["lr"]
        p.data += tmp


@register_optimizer("adam", aliases=("Adam",))
class Adam(Optimizer):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2 (amsgrad: v_max = max(v_max, v));
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""
    defaults_spec = {**Optimizer.defaults_spec, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                     "amsgrad": False}

    def _check(self, name, o):
        super()._check(name, o)
        b = o["betas"]
        if len(b) != 2 or not all(0.0 <= x < 1.0 for x in b):
            raise ValueError(f"optimizer {name}: betas must be two numbers in [0, 1), got {b!r}")

    def _init_state(self, p, state, group):
        state["exp_avg"] = np.zeros_like(p.data)
        state["exp_avg_sq"] = np.zeros_like(p.data)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros_like(p.data)

    def _update(self, p, grad, state, group):
        b1, b2 = group["betas"]
        t, tmp = state["step"], state["tmp"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        np.multiply(grad, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - b2
        v += tmp
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = group["lr"] / (1 - b1 ** t)
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(1 - b2 ** t)
        tmp += group["eps"]
        np.divide(m, tmp, out=tmp)
        tmp *= -step_size
        p.data += tmp


@register_optimizer("adamw", aliases=("AdamW",))
class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay before the Adam step."""
    defaults_spec = {**Adam.defaults_spec, "weight_decay": 1e-2, "decoupled_weight_decay": True}


def build_optimizer(config, params, *, where: str = "optimizer") -> Optimizer:
    """``build_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9}, model.parameters())``;
    errors start with ``where``, the config path (see :meth:`fastcnn.registry.Registry.build`)."""
    if isinstance(config, dict) and "betas" in config:
        config = {**config, "betas": tuple(config["betas"])}
    return OPTIMIZERS.build(config, params, where=where)
