"""Registries: named layers, initializers, optimizers, schedulers, losses and datasets.

A config names what it wants (``{"type": "conv2d", ...}``); a registry turns the name into the
class or function. Users add their own with the ``register_*`` decorators, and installed packages
through the ``fastcnn.layers`` entry-point group (and ``fastcnn.<kind>s`` for the others), loaded
the first time a name is not found.
"""
from __future__ import annotations

import difflib
from importlib import metadata

__all__ = ["Registry", "LAYERS", "INITIALIZERS", "OPTIMIZERS", "SCHEDULERS", "LOSSES",
           "DATASETS", "register_layer", "register_initializer", "register_optimizer",
           "register_scheduler", "register_loss", "register_dataset"]


def suggest(word, choices, n=1) -> str:
    """``"; did you mean 'kernel_size'?"`` for the closest of ``choices`` to a misspelt
    ``word`` (up to ``n`` of them), or ``""``: the one hint every config error uses."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Registry:
    """Names -> objects, with aliases, close-match suggestions and lazy plugin loading."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, object] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = False

    def register(self, name: str, obj=None, *, aliases=(), override: bool = False):
        """Register ``obj`` under ``name`` (usable as a decorator when ``obj`` is omitted)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(target):
            for key in (name, *aliases):
                taken = key in self._entries or key in self._aliases
                if taken and not override and self._lookup(key) is not target:
                    raise ValueError(f"{self.kind} {key!r} is already registered "
                                     f"(to {self._lookup(key)!r}); pass override=True to replace it")
            self._entries[name] = target
            for alias in aliases:
                self._aliases[alias] = name
            # The first name a class is registered under is its type name in configs (checked in
            # its own __dict__, so a registered subclass of a built-in layer gets its own name).
            if hasattr(target, "__dict__") and "registered_name" not in vars(target):
                try:
                    target.registered_name = name
                except (AttributeError, TypeError):
                    pass
            return target

        return add if obj is None else add(obj)

    def _lookup(self, name):
        return self._entries.get(self._aliases.get(name, name))

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def __contains__(self, name) -> bool:
        if self._lookup(name) is not None:
            return True
        self._load_plugins()
        return self._lookup(name) is not None

    def get(self, name: str):
        """The object registered under ``name`` (or an alias); KeyError with suggestions."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} type must be a string, got {name!r}")
        obj = self._lookup(name)
        if obj is None:
            self._load_plugins()
            obj = self._lookup(name)
        if obj is None:
            raise KeyError(self.unknown_message(name))
        return obj

    def unknown_message(self, name: str) -> str:
        hint = suggest(name, self.names(include_aliases=True), n=3)
        return (f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(self.names())})")

    def names(self, include_aliases: bool = False) -> list[str]:
        names = sorted(self._entries)
        return names + sorted(self._aliases) if include_aliases else names

    def _load_plugins(self):
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            obj = ep.load()
            if ep.name not in self._entries and self._lookup(ep.name) is None:
                self.register(ep.name, obj)


LAYERS = Registry("layer", "fastcnn.layers")
INITIALIZERS = Registry("initializer", "fastcnn.initializers")
OPTIMIZERS = Registry("optimizer", "fastcnn.optimizers")
SCHEDULERS = Registry("scheduler", "fastcnn.schedulers")
LOSSES = Registry("loss", "fastcnn.losses")
DATASETS = Registry("dataset", "fastcnn.datasets")


def register_layer(name: str, *, aliases=(), override: bool = False):
    """Class decorator: make a :class:`fastcnn.Layer` subclass usable as ``{"type": name}``."""
    return LAYERS.register(name, aliases=aliases, override=override)


def register_initializer(name: str, *, aliases=(), override: bool = False):
    return INITIALIZERS.register(name, aliases=aliases, override=override)


def register_optimizer(name: str, *, aliases=(), override: bool = False):
    return OPTIMIZERS.register(name, aliases=aliases, override=override)


def register_scheduler(name: str, *, aliases=(), override: bool = False):
    return SCHEDULERS.register(name, aliases=aliases, override=override)


def register_loss(name: str, *, aliases=(), override: bool = False):
    return LOSSES.register(name, aliases=aliases, override=override)


def register_dataset(name: str, *, aliases=(), override: bool = False):
    return DATASETS.register(name, aliases=aliases, override=override)
