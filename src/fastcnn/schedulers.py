"""Learning-rate schedules (torch.optim.lr_scheduler's rules), stepped once per epoch.

Each scheduler sets ``group["lr"]`` of its optimizer from the base learning rates it found there
and the epoch count ``last_epoch``; ``step()`` advances one epoch (ReduceLROnPlateau takes the
monitored metric: ``step(val_loss)``). ``state_dict()`` / ``load_state_dict()`` resume exactly.
"""
from __future__ import annotations

import math

from fastcnn.registry import SCHEDULERS, register_scheduler

__all__ = ["Scheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
           "CosineAnnealingWarmRestarts", "LinearWarmup", "ReduceLROnPlateau", "build_scheduler"]


class Scheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0

    def lr_at(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError

    def step(self, metric=None):
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_epoch, base)

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "inner")} | (
            {"inner": self.inner.state_dict()} if getattr(self, "inner", None) else {})

    def load_state_dict(self, state):
        state = dict(state)
        inner = state.pop("inner", None)
        self.__dict__.update(state)
        if inner is not None and getattr(self, "inner", None) is not None:
            self.inner.load_state_dict(inner)


def _positive(name, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"scheduler {name}: {what} must be > 0, got {value!r}")


@register_scheduler("step", aliases=("StepLR",))
class StepLR(Scheduler):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        _positive("step", "step_size", step_size)
        super().__init__(optimizer)
        self.step_size, self.gamma = int(step_size), gamma

    def lr_at(self, epoch, base):
        return base * self.gamma ** (epoch // self.step_size)


@register_scheduler("multistep", aliases=("MultiStepLR",))
class MultiStepLR(Scheduler):
    """lr = base * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"scheduler multistep: milestones must increase, got {milestones!r}")
        super().__init__(optimizer)
        self.milestones, self.gamma = list(milestones), gamma

    def lr_at(self, epoch, base):
        return base * self.gamma ** sum(1 for m in self.milestones if m <= epoch)


@register_scheduler("exponential", aliases=("ExponentialLR",))
class ExponentialLR(Scheduler):
    """lr = base * gamma ** epoch."""

    def __init__(self, optimizer, gamma):
        _positive("exponential", "gamma", gamma)
        super().__init__(optimizer)
        self.gamma = gamma

    def lr_at(self, epoch, base):
        return base * self.gamma ** epoch


@register_scheduler("cosine", aliases=("CosineAnnealingLR",))
class CosineAnnealingLR(Scheduler):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        _positive("cosine", "T_max", T_max)
        super().__init__(optimizer)
        self.T_max, self.eta_min = T_max, eta_min

    def lr_at(self, epoch, base):
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


@register_scheduler("cosine_warm_restarts", aliases=("CosineAnnealingWarmRestarts",))
class CosineAnnealingWarmRestarts(Scheduler):
    """Cosine annealing restarted after T_0, T_0*T_mult, T_0*T_mult^2, ... epochs (SGDR)."""

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0):
        _positive("cosine_warm_restarts", "T_0", T_0)
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"scheduler cosine_warm_restarts: T_mult must be an int >= 1, "
                             f"got {T_mult!r}")
        super().__init__(optimizer)
        self.T_0, self.T_mult, self.eta_min = int(T_0), T_mult, eta_min

    def lr_at(self, epoch, base):
        t, period = epoch, self.T_0
        if self.T_mult == 1:
            t = epoch % self.T_0
        else:
            n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult)) if epoch >= self.T_0 else 0
            t = epoch - self.T_0 * (self.T_mult ** n - 1) // (self.T_mult - 1)
            period = self.T_0 * self.T_mult ** n
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t / period)) / 2


@register_scheduler("warmup", aliases=("linear_warmup", "LinearLR"))
class LinearWarmup(Scheduler):
    """lr = base * (start_factor + (end_factor - start_factor) * min(epoch, warmup_epochs) /
    warmup_epochs) (torch's LinearLR); with ``then`` (a scheduler config), that schedule takes
    over after the warm-up, counting its epochs from the end of the warm-up."""

    def __init__(self, optimizer, warmup_epochs=5, start_factor=1.0 / 3, end_factor=1.0, then=None):
        _positive("warmup", "warmup_epochs", warmup_epochs)
        if not 0 < start_factor <= 1 or not 0 < end_factor <= 1:
            raise ValueError("scheduler warmup: start_factor and end_factor must be in (0, 1], "
                             f"got {start_factor!r}, {end_factor!r}")
        super().__init__(optimizer)
        self.warmup_epochs, self.start_factor, self.end_factor = int(warmup_epochs), start_factor, end_factor
        self.inner = build_scheduler(then, optimizer, where="then") if then is not None else None
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * start_factor

    def lr_at(self, epoch, base):
        if self.inner is not None and epoch > self.warmup_epochs:
            return self.inner.lr_at(epoch - self.warmup_epochs, base)
        frac = min(epoch, self.warmup_epochs) / self.warmup_epochs
        return base * (self.start_factor + (self.end_factor - self.start_factor) * frac)


@register_scheduler("plateau", aliases=("reduce_on_plateau", "ReduceLROnPlateau"))
class ReduceLROnPlateau(Scheduler):
    """Multiply lr by ``factor`` when the metric has not improved (by ``threshold``, relative)
    for more than ``patience`` epochs; then wait ``cooldown`` epochs; never below ``min_lr``."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 cooldown=0, min_lr=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"scheduler plateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"scheduler plateau: factor must be in (0, 1), got {factor!r}")
        super().__init__(optimizer)
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.cooldown, self.min_lr = threshold, cooldown, min_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _better(self, value):
        if self.mode == "min":
            return value < self.best * (1 - self.threshold) if self.best != math.inf else True
        return value > self.best * (1 + self.threshold) if self.best != -math.inf else True

    def step(self, metric=None):
        if metric is None:
            raise ValueError("scheduler plateau: step() needs the monitored metric, e.g. "
                             "step(val_loss)")
        metric = float(metric)
        self.last_epoch += 1
        if self._better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group in self.optimizer.param_groups:
                new = max(group["lr"] * self.factor, self.min_lr)
                if group["lr"] - new > 1e-8:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0


def build_scheduler(config, optimizer, *, where: str = "schedule") -> Scheduler:
    """``build_scheduler({"type": "cosine", "T_max": 30}, optimizer)``; errors start with
    ``where``, the config path (see :meth:`fastcnn.registry.Registry.build`)."""
    return SCHEDULERS.build(config, optimizer, where=where)
