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


def plot_curves(history: list[dict], path, title: str = "") -> bool:
    """Loss and accuracy per epoch, train vs validation. False if matplotlib is missing."""
    fig = _figure(10, 4)
    if fig is None or not history:
        return False
    epochs = [h["epoch"] for h in history]
    for index, (metric, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, index + 1)
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                        label="validation" if split == "val" else "train", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
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
