"""Training-curve and confusion-matrix pictures (matplotlib, the ``plot`` extra).

Figures are drawn on an Agg canvas directly, so the user's matplotlib backend is never changed,
and written atomically like every other file of a run.
"""
from __future__ import annotations

import io

import numpy as np

from fastcnn.checkpoint import atomic_write


def _figure(width, height):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def best_epoch(history: list[dict]):
    """The epoch with the lowest validation loss (the training loss without validation): the
    one a run keeps as best.fcnn when ``min_delta`` is 0. None for an empty history."""
    key = "val_loss" if any(h.get("val_loss") is not None for h in history) else "train_loss"
    scored = [h for h in history if h.get(key) is not None]
    return min(scored, key=lambda h: h[key])["epoch"] if scored else None


def curves_figure(history: list[dict], best: int | None = None, title: str = ""):
    """The figure of :func:`plot_curves` (None without matplotlib or history): loss, accuracy
    and learning rate per epoch, the best epoch (``best``, default :func:`best_epoch`) marked
    by a dashed line and a star on the validation (or training) curves."""
    fig = _figure(14, 4)
    if fig is None or not history:
        return None
    from matplotlib.ticker import MaxNLocator

    best = best_epoch(history) if best is None else best
    epochs = [h["epoch"] for h in history]
    for index, (metric, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 3, index + 1)
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                        label="validation" if split == "val" else "train", markersize=3)
        if best is not None and best in epochs:
            record = history[epochs.index(best)]
            value = record.get(f"val_{metric}", record.get(f"train_{metric}"))
            ax.axvline(best, color="0.4", linestyle="--", linewidth=1,
                       label=f"best epoch ({best})")
            if value is not None:
                ax.plot([best], [value], "*", color="crimson", markersize=12, zorder=5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax = fig.add_subplot(1, 3, 3)
    rates = [h.get("lr") for h in history]
    if any(r is not None for r in rates):
        ax.plot(epochs, [np.nan if r is None else r for r in rates], "-o", color="tab:green",
                markersize=3)
        positive = [r for r in rates if r]
        if positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
    if best is not None and best in epochs:
        ax.axvline(best, color="0.4", linestyle="--", linewidth=1)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate (during the epoch)")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(wspace=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(history: list[dict], path, title: str = "", best: int | None = None) -> bool:
    """Loss and accuracy per epoch (train vs validation), the learning rate, and the best
    epoch marked (see :func:`curves_figure`), as a PNG. False if matplotlib is missing."""
    fig = curves_figure(history, best, title)
    if fig is None:
        return False
    _save(fig, path)
    return True


def plot_confusion(matrix: np.ndarray, path, title: str = "") -> bool:
    """A (classes x classes) confusion matrix, true labels down, predictions across."""
    fig = _figure(6, 5.4)
    if fig is None:
        return False
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    n = matrix.shape[0]
    if n <= 20:
        limit = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > limit else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (test)")
    _save(fig, path)
    return True
