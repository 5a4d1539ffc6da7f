"""Figures from a ``History``, a sweep or a trajectory: the lecture's ``ProgressBoard`` and more.

``plot_*`` draw on the Axes they are given (or on a new pyplot figure, for a
notebook); ``save_*`` draw on a ``matplotlib.figure.Figure`` of their own and
write it, touching no global pyplot state (no backend switch, no open figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlin.files import atomic_write
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
    ax.set_xlim(0, epochs + _pad(epochs))  # room for the last validation marker
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def _pad(epochs: int) -> float:
    """Space right of the last epoch so that a marker drawn on it is not cut in half."""
    return max(0.04 * epochs, 0.08)


def _figure(figsize: tuple[float, float]):
    """A figure outside pyplot: drawn and saved without a display or a backend switch."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(figure, path) -> None:
    """Write ``figure`` to ``path`` all or nothing, in the format its suffix names (PNG if none)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: figure.savefig(f, format=fmt, dpi=120))


def save_history_plot(history: History, path, *, title: str | None = None) -> None:
    """Write ``plot_history`` to ``path`` (PNG, PDF, SVG...) without a display."""
    figure = _figure((6, 3.6))
    plot_history(history, figure.subplots(), title=title)
    _save(figure, path)


def plot_sweep(result, *, axes=None):
    """Validation loss against lr (log x, spread over seeds shaded) and the chosen lr's curves.

    Left: mean final validation loss over seeds per learning rate, the band
    from the best to the worst seed; learning rates where a seed diverged are
    marked "diverged" on the top edge. Right: the chosen configuration's loss
    curves, every seed (training loss per step, or per epoch when the sweep
    kept only epoch means; validation loss per epoch). Returns the two Axes.
    """
    import matplotlib.pyplot as plt

    from jaxlin.sweeps import select, summarize
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
        curves.set_xlim(0, epochs + _pad(epochs))
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
    _save(figure, path)


def _profile_loss(X: np.ndarray, y: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``min over b`` of the mean squared loss at each ``w = (w1, w2)``, in closed form.

    For a fixed ``w`` the best bias is ``mean(y - X w)``, and what remains is
    ``(var(y) - 2 w . cov(X, y) + w^T cov(X) w) / 2``: a quadratic in ``w``
    from the data's first and second moments, evaluated on the whole grid.
    """
    Xc, yc = X - X.mean(0), y - y.mean()
    C, c, v = Xc.T @ Xc / len(X), Xc.T @ yc / len(X), yc @ yc / len(X)
    W = np.stack([w1, w2], axis=-1)  # (..., 2)
    return (v - 2 * W @ c + np.einsum("...i,ij,...j->...", W, C, W)) / 2


def plot_trajectory(paths, train, ax=None, *, title: str | None = None, lims=None):
    """SGD's path through ``(w1, w2)`` on the contours of the loss; returns the Axes.

    ``paths``: one ``(steps + 1, 3)`` array of ``[w1, w2, b]`` rows (what
    ``jaxlin.trajectory`` returns for ``d = 2``), or a dict of them by label.
    ``train``: the ``(X, y)`` they were trained on. The contours are the
    squared loss with ``b`` at its best value for each ``w`` (computed from
    the data in closed form), so their centre, marked, is the least-squares
    solution. ``lims``: ``((w1_min, w1_max), (w2_min, w2_max))``; by default
    a box around every path's start and the solution, so a path that
    diverges leaves the picture.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2), layout="constrained")
    paths = paths if isinstance(paths, dict) else {None: paths}
    paths = {label: np.asarray(path, np.float64) for label, path in paths.items()}
    if any(path.ndim != 2 or path.shape[1] != 3 for path in paths.values()):
        raise ValueError("each path must have shape (steps + 1, 3): rows [w1, w2, b], d = 2")
    X = np.asarray(train[0], np.float64)
    y = np.asarray(train[1], np.float64).reshape(-1)
    A = np.hstack([X, np.ones((len(X), 1))])
    best = np.linalg.lstsq(A, y, rcond=None)[0]
    if lims is None:
        corners = np.vstack([best[:2], *(path[0, :2] for path in paths.values())])
        lo, hi = corners.min(0), corners.max(0)
        span = max(float((hi - lo).max()), 1e-3)
        lims = tuple((lo[i] - 0.35 * span, hi[i] + 0.35 * span) for i in range(2))
    w1, w2 = np.meshgrid(np.linspace(*lims[0], 200), np.linspace(*lims[1], 200))
    loss = _profile_loss(X, y, w1, w2)
    floor = max(float(loss.min()), 1e-12)
    levels = np.geomspace(floor * 1.5, float(loss.max()), 12)
    contours = ax.contour(w1, w2, loss, levels=levels, colors="0.6", linewidths=0.7)
    ax.clabel(contours, contours.levels[::3], fontsize="x-small", fmt="%.2g")  # the loss
    for i, (label, path) in enumerate(paths.items()):
        color = f"C{i}"
        marker = "." if len(path) <= 200 else None  # few steps: show each one
        ax.plot(path[:, 0], path[:, 1], "-", marker=marker, ms=4, color=color, lw=0.9, label=label)
        ax.plot(*path[0, :2], "o", color=color, ms=5, label="start" if i == 0 else None)
    ax.plot(*best[:2], "k*", ms=11, label="least squares")
    ax.plot([], [], color="0.6", lw=0.7, label="loss, b at its best")  # what the contours are
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    ax.set_aspect("equal")  # a round contour looks round
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return ax


def save_trajectory_plot(paths, train, path, *, title: str | None = None) -> None:
    """Write ``plot_trajectory`` to ``path`` (PNG, PDF, SVG...) without a display."""
    figure = _figure((5, 4.2))
    plot_trajectory(paths, train, figure.subplots(), title=title)
    _save(figure, path)
