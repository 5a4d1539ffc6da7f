"""Figures drawn from a ``History``: the loss curves of the seed's ``ProgressBoard``."""

from __future__ import annotations

import numpy as np

from jaxlin.train import History


def plot_history(history: History, ax=None, *, title: str | None = None):
    """Train loss per step over fractional epochs, validation loss per epoch; returns the Axes.

    Drawn from the returned arrays after training: nothing is read per step.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    train = np.asarray(history.train_loss)  # (epochs, steps)
    epochs, steps = train.shape
    x = np.arange(1, epochs * steps + 1) / steps
    ax.plot(x, train.ravel(), lw=1, label="train loss (per step)")
    if history.val_loss is not None:
        ax.plot(np.arange(1, epochs + 1), np.asarray(history.val_loss), "o--", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("squared loss")
    ax.set_yscale("log")
    ax.set_xlim(0, epochs)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def save_history_plot(history: History, path, *, title: str | None = None) -> None:
    """Write ``plot_history`` to ``path`` (PNG, PDF, SVG...) without a display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ax = plot_history(history, title=title)
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
