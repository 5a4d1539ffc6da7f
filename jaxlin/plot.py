"""Figures drawn from a ``History`` or a sweep: the loss curves of the lecture's ``ProgressBoard``.

``plot_*`` draw on the Axes they are given (or on a new pyplot figure, for a
notebook); ``save_*`` draw on a ``matplotlib.figure.Figure`` of their own and
write it, touching no global pyplot state (no backend switch, no open figure).
"""

from __future__ import annotations

import numpy as np

from jaxlin.trainer import History


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


def _figure(figsize: tuple[float, float]):
    """A figure outside pyplot: drawn and saved without a display or a backend switch."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save_history_plot(history: History, path, *, title: str | None = None) -> None:
    """Write ``plot_history`` to ``path`` (PNG, PDF, SVG...) without a display."""
    figure = _figure((6, 3.6))
    plot_history(history, figure.subplots(), title=title)
    figure.savefig(path, dpi=120)


def plot_sweep(result, *, axes=None):
    """Validation loss against lr (log x, spread over seeds shaded) and the chosen lr's curves.

    Left: mean final validation loss over seeds per learning rate, the band
    from the best to the worst seed; learning rates where a seed diverged are
    marked "diverged" on the top edge. Right: the chosen configuration's loss
    curves, every seed (training loss per step, or per epoch when the sweep
    kept only epoch means; validation loss per epoch). Returns the two Axes.
    """
    import matplotlib.pyplot as plt

    from jaxlin.sweep import select, summarize
    from jaxlin.trainer import TrainingDiverged

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    ax, curves = axes
    s = summarize(result)
    ok = s.num_diverged == 0
    ax.plot(s.lrs[ok], s.val_mean[ok], "o-", ms=3, label="mean final val loss over seeds")
    ax.fill_between(s.lrs, s.val_min, s.val_max, alpha=0.25, label="min-max over seeds")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss")
    ax.grid(True, which="both", alpha=0.3)
    if (~ok).any():
        top = ax.get_xaxis_transform()  # x in data, y in axes fraction
        ax.plot(s.lrs[~ok], np.full((~ok).sum(), 0.97), "rx", transform=top, label="diverged")
        ax.text(s.lrs[~ok].min(), 0.9, "diverged", color="r", transform=top, ha="center")
    try:
        chosen = select(result)
    except TrainingDiverged:
        chosen = None
    if chosen is not None:
        ax.axvline(chosen.lr, color="k", ls=":", label=f"chosen lr {chosen.lr:.3g}")
        train = np.asarray(result.train_loss[chosen.index])  # (S, epochs[, steps])
        val = np.asarray(result.val_loss[chosen.index])  # (S, epochs)
        epochs = val.shape[1]
        flat = train.reshape(train.shape[0], -1)
        x = np.arange(1, flat.shape[1] + 1) * epochs / flat.shape[1]
        unit = "step" if train.ndim == 3 else "epoch"
        for j in range(flat.shape[0]):
            first = j == 0
            train_label = f"train loss (per {unit}), each seed" if first else None
            curves.plot(x, flat[j], lw=0.8, color="C0", alpha=0.5, label=train_label)
            val_label = "val loss, each seed" if first else None
            curves.plot(np.arange(1, epochs + 1), val[j], "o--", color="C1", ms=3, label=val_label)
        title = f"chosen lr {chosen.lr:.3g}"
        if chosen.test_loss is not None:
            title += f": test loss {chosen.test_loss:.3g}"
        curves.set_title(title)
        curves.set_yscale("log")
        curves.set_xlim(0, epochs)
        curves.legend()
    else:
        curves.set_title("every learning rate diverged")
    curves.set_xlabel("epoch")
    curves.set_ylabel("squared loss")
    curves.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{len(s.lrs)} lr x {len(result.seeds)} seeds")
    return axes


def save_sweep_plot(result, path) -> None:
    """Write ``plot_sweep`` to ``path`` (PNG, PDF, SVG...) without a display."""
    figure = _figure((11, 3.8))
    plot_sweep(result, axes=figure.subplots(1, 2))
    figure.savefig(path, dpi=120)
