"""The ``data`` config section: :func:`load_dataset` looks the dataset up, checks its options
and carves out the subset and the validation split."""
from __future__ import annotations

import inspect
import numbers

from fastcnn.data.splits import (DataSplits, as_generator, stratified_subset,
                                 train_validation_split)
from fastcnn.registry import DATASETS, suggest


# Keys of the `data` section that load_dataset handles itself; the rest are the dataset's options.
_SPLIT_KEYS = ("dataset", "validation_split", "limit", "seed")
# Keys of the `data` section read by the training job, not by the dataset.
_TRAINER_KEYS = ("augment", "normalize")


def _dataset_options(name: str, function, options: dict) -> dict:
    """Check ``options`` against the dataset function's keyword parameters."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    known = [p for p, spec in parameters.items()
             if spec.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY)]
    for key in options:
        if key not in known:
            accepted = ", ".join(_SPLIT_KEYS + _TRAINER_KEYS + tuple(known))
            raise ValueError(f"data.{key}: unknown option for dataset {name!r}"
                             f"{suggest(key, list(_SPLIT_KEYS) + known)} (accepted: {accepted})")
    return options


def load_dataset(config: dict | None = None, *, seed=None) -> DataSplits:
    """The dataset a ``data`` config section names, with its validation split carved out.

    ``config`` keys:

    - ``dataset``: a name in :data:`fastcnn.registry.DATASETS` (default ``"mnist_sample"``);
    - ``validation_split``: the fraction of the training data held out, stratified and seeded
      (default 0.1; 0 for none);
    - ``limit``: at most this many samples in each of the train and test splits (a stratified,
      seeded subset taken before the validation split; for quick runs), default None (all);
    - ``seed``: an int for the subset and the split, also passed to a dataset function that
      takes a ``seed`` (``synthetic``); default 0, the ``seed`` argument overrides it;
    - ``augment``, ``normalize``: read by the training job, ignored here;
    - anything else is passed to the dataset function (``root``, ``path``, ``n``, ...).

    Returns :class:`DataSplits` with ``train``, ``validation`` (or None) and ``test`` (or None).
    """
    config = dict(config or {})
    name = config.get("dataset", "mnist_sample")
    try:
        function = DATASETS.get(name)
    except (KeyError, TypeError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise ValueError(f"data.dataset: {message}") from None
    # Checked before loading: a typo should not cost a dataset load.
    limit = config.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit < 1):
        raise ValueError(f"data.limit: must be a positive int or null, got {limit!r}")
    fraction = config.get("validation_split", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or \
            not 0 <= fraction < 1:
        raise ValueError(f"data.validation_split: must be a number in [0, 1), got {fraction!r}")
    seed = config.get("seed", 0) if seed is None else seed
    rng = as_generator("load_dataset", seed)
    options = {k: v for k, v in config.items() if k not in _SPLIT_KEYS + _TRAINER_KEYS}
    if "seed" in inspect.signature(function).parameters and isinstance(seed, numbers.Integral):
        options.setdefault("seed", seed)  # generated datasets (synthetic) follow the same seed
    splits = function(**_dataset_options(name, function, options))
    if not isinstance(splits, DataSplits):
        raise TypeError(f"data.dataset: {name!r} returned {type(splits).__name__}, "
                        "expected fastcnn.data.DataSplits")

    if limit is not None:
        splits.train = stratified_subset(*splits.train, limit, rng)
        if splits.test is not None:
            splits.test = stratified_subset(*splits.test, limit, rng)

    if fraction > 0:
        splits.train, splits.validation = train_validation_split(*splits.train, fraction, rng)
    return splits
