"""Registries: named layers, initializers, optimizers, schedulers, losses and datasets.

A config names what it wants (``{"type": "conv2d", ...}``); a registry turns the name into the
class or function. Users add their own with the ``register_*`` decorators, and installed packages
through the ``fastcnn.layers`` entry-point group (and ``fastcnn.<kind>s`` for the others), loaded
the first time a name is not found.
"""
from __future__ import annotations

import difflib
import inspect
from importlib import metadata

__all__ = ["Registry", "ConfigError", "LAYERS", "INITIALIZERS", "OPTIMIZERS", "SCHEDULERS", "LOSSES",
           "DATASETS", "register_layer", "register_initializer", "register_optimizer",
           "register_scheduler", "register_loss", "register_dataset"]


def suggest(word, choices, n=1) -> str:
    """``"; did you mean 'kernel_size'?"`` for the closest of ``choices`` to a misspelt
    ``word`` (up to ``n`` of them), or ``""``: the one hint every config error uses."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class ConfigError(ValueError):
    """A config that cannot be built; the message starts with the config path of the problem."""


def _parameters(target, positional: int) -> list:
    """The parameters of ``target`` (a class: its constructor, or its ``__signature__`` when it
    sets one; a function: itself) that a config may give, after the first ``positional``
    (supplied by the caller), as ``inspect.Parameter`` objects; None when ``target`` also takes
    ``**kwargs`` (every key is then the target's own to check)."""
    if isinstance(target, type):
        signature = vars(target).get("__signature__")
        if signature is None:
            # Not inspect.signature(cls): a class defining __new__(cls, *args, **kwargs), as
            # Layer does, would show that instead of its constructor.
            params = list(inspect.signature(target.__init__).parameters.values())[1:]
        else:
            params = list(signature.parameters.values())
    else:
        params = list(inspect.signature(target).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                              inspect.Parameter.KEYWORD_ONLY)]
    # The caller's positional arguments fill the first positional parameters.
    taken = [p.name for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                           inspect.Parameter.POSITIONAL_OR_KEYWORD)][:positional]
    return [p for p in named if p.name not in taken]


def strip_prefix(message: str, prefixes) -> str:
    """``message`` without a leading ``"<prefix>: "`` (an object's own error names itself; the
    config path that replaces it says more)."""
    for prefix in prefixes:
        if prefix and message.startswith(prefix + ": "):
            return message[len(prefix) + 2:]
    return message


class Registry:
    """Names -> objects, with aliases, close-match suggestions, lazy plugin loading, and
    :meth:`build`: a config dict to a built object, its errors prefixed by the config path.

    ``option`` is what the kind's config keys are called in messages ("argument" for layers,
    "option" for the others). ``key_paths``: whether an error about one key names it as
    ``<where>.<key>`` (a run's config sections: ``data.nn: unknown option ...``,
    ``optimizer.type: unknown optimizer ...``) or after the object's path (entries of a list,
    annotated with their type: ``layers[3] (conv2d): unknown argument 'x' ...``).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *,
                 option: str = "option", key_paths: bool = True):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.option = option
        self.key_paths = key_paths
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

    def build(self, config, *args, where: str | None = None, type_key: str = "type",
              reserved=(), defaults: dict | None = None):
        """The object ``config`` names, built: ``self.get(name)(*args, **options)``.

        ``config`` is a registered name, or a dict holding the name under ``type_key`` and the
        options. ``args`` are what the caller supplies positionally (an optimizer's
        parameters, a scheduler's optimizer). ``where`` is the config path of ``config`` that
        every error starts with (default: the kind, e.g. ``optimizer``). ``reserved`` keys of
        the dict are the caller's own: not passed on, but accepted and offered as
        suggestions. ``defaults`` are keyword arguments passed when the config does not give
        them and the signature takes them (the data section's ``seed`` reaches the datasets
        that take one).

        Checked before anything is built, against the signature (its constructor's, for a
        class): every key is one of its parameters (else ``unknown option 'x'; did you mean
        'y'? (options: ...)``) and every parameter without a default is given. A ValueError or
        TypeError that building raises is re-raised with the path (and the object's own name
        at its start removed). Raises :class:`ConfigError` (a ValueError) for config errors,
        TypeError for a ``type`` that is not a string.
        """
        where = self.kind if where is None else where
        if isinstance(config, str):
            config = {type_key: config}
        if not isinstance(config, dict) or type_key not in config:
            raise ConfigError(f"{where}: missing {type_key!r}: the config must be a dict with "
                              f"{type_key!r} naming the {self.kind} (one of: "
                              f"{', '.join(self.names())})"
                              + ("" if isinstance(config, dict) else f", got {config!r}"))
        name = config[type_key]
        type_path = f"{where}.{type_key}" if self.key_paths else where
        try:
            target = self.get(name)
        except KeyError as exc:
            raise ConfigError(f"{type_path}: {exc.args[0]}") from None
        except TypeError as exc:
            raise TypeError(f"{type_path}: {exc.args[0]}") from None
        options = {k: v for k, v in config.items() if k != type_key and k not in reserved}
        typed = f"{where} ({name})"
        params = _parameters(target, len(args))
        if params is not None:
            names = [p.name for p in params]
            for key in options:
                if key not in names:
                    others = [k for k in reserved if k != type_key and k not in names]
                    hint = suggest(key, names + others)
                    accepted = ", ".join(others + names) or "none"
                    if self.key_paths:
                        raise ConfigError(f"{where}.{key}: unknown {self.option} for "
                                          f"{self.kind} {name!r}{hint} "
                                          f"({self.option}s: {accepted})")
                    raise ConfigError(f"{typed}: unknown {self.option} {key!r}{hint} "
                                      f"({self.option}s: {accepted})")
            missing = [p.name for p in params
                       if p.default is inspect.Parameter.empty and p.name not in options]
            if missing:
                raise ConfigError(f"{typed}: missing required {self.option}"
                                  f"{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(repr(m) for m in missing)}")
        for key, value in (defaults or {}).items():
            if params is None or key in {p.name for p in params}:
                options.setdefault(key, value)
        own_names = (self.canonical(name), getattr(target, "registered_name", ""), name)
        try:
            return target(*args, **options)
        except (ValueError, TypeError) as exc:
            message = strip_prefix(str(exc), own_names + tuple(f"{self.kind} {n}"
                                                                 for n in own_names if n))
            try:
                error = type(exc)(f"{typed}: {message}")
            except Exception:   # an exception class whose constructor takes other arguments
                error = (ValueError if isinstance(exc, ValueError) else TypeError)(
                    f"{typed}: {message}")
            raise error from None

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


LAYERS = Registry("layer", "fastcnn.layers", option="argument", key_paths=False)
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
