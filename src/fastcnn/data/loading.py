"""The ``data`` config section: :func:`load_dataset` looks the dataset up, checks its options
and carves out the subset and the validation split."""
from __future__ import annotations

import numbers

from fastcnn.data.splits import (DataSplits, as_generator, stratified_subset,
                                 train_validation_split)
from fastcnn.registry import DATASETS


# Keys of the `data` section that load_dataset handles itself; the rest are the dataset's options.
_SPLIT_KEYS = ("dataset", "validation_split", "limit", "seed")
# Keys of the `data` section read by the training job, not by the dataset.
_TRAINER_KEYS = ("augment", "normalize")


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
    name = config.setdefault("dataset", "mnist_sample")
    # Registry.build checks the dataset's options against its signature before it loads
    # anything; generated datasets (synthetic) that take a seed follow the section's.
    splits = DATASETS.build(config, where="data", type_key="dataset",
                            reserved=_SPLIT_KEYS + _TRAINER_KEYS,
                            defaults={"seed": seed} if isinstance(seed, numbers.Integral) else {})
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
