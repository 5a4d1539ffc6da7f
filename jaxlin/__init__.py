"""jaxlin: the lecture's linear regression by minibatch SGD, as pure JAX functions."""

import os as _os
import sys as _sys
import types as _types


def _started_as_command() -> bool:
    """Whether this process is the ``jaxlin`` command: its script, or ``python -m jaxlin``."""
    script = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    argv = getattr(_sys, "orig_argv", [])
    by_module = "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "jaxlin"
    return script in ("jaxlin", "jaxlin.exe") or by_module


try:  # the lecture's path: what a first fit uses
    from jaxlin.config import ENGINES, TrainConfig
    from jaxlin.data import (
        TRUE_B,
        TRUE_W,
        Splits,
        minibatches,
        split_batches,
        synthetic_data,
        synthetic_splits,
    )
    from jaxlin.engines import make_train, run_epochs
    from jaxlin.model import estimation_error, init_params, linreg, loss_fn, squared_loss
    from jaxlin.optim import clip_by_global_norm, global_norm, sgd
    from jaxlin.shuffle import epoch_key, permutation, permute_indices
    from jaxlin.train import train_epoch, train_step
    from jaxlin.trainer import EpochEnd, History, TrainingDiverged, fit
except KeyboardInterrupt:  # Ctrl-C while the command starts (JAX loading): one line, no trace
    if not _started_as_command():
        raise
    _sys.stderr.write("jaxlin: interrupted while starting; nothing saved\n")
    raise SystemExit(130) from None

__version__ = "0.1.0"

# The rest of the API, imported on first use: a first fit needs none of it, and
# plotting, checkpoints and sweeps add to every start-up that imports jaxlin.
_LAZY = {
    "jaxlin.checkpoint": ("Checkpoint", "fit_with_checkpoints", "load_checkpoint",
                          "save_checkpoint"),
    "jaxlin.engines.trajectory": ("trajectory",),
    "jaxlin.plot": ("plot_history", "plot_sweep", "plot_trajectory", "save_history_plot",
                    "save_sweep_plot", "save_trajectory_plot"),
    "jaxlin.sweep": ("Selection", "Summary", "SweepResult", "config_keys", "select",
                     "summarize", "sweep"),
}  # fmt: skip
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    """The names of ``_LAZY`` and ``SGDLinearRegression``, imported on first use."""
    if name == "SGDLinearRegression":  # scikit-learn is optional
        try:
            from jaxlin.sklearn import SGDLinearRegression
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] != "sklearn":
                raise
            raise ImportError(
                'jaxlin.SGDLinearRegression needs scikit-learn: pip install "jaxlin[sklearn]"'
            ) from err
        return SGDLinearRegression
    if name in _HOME:
        import importlib

        module = importlib.import_module(_HOME[name])
        for public in _LAZY[_HOME[name]]:  # all of them: found here from now on
            globals()[public] = getattr(module, public)
        return globals()[name]
    if name in _SUBMODULES:  # jaxlin.checkpoint.load_checkpoint, as an attribute path
        import importlib

        return importlib.import_module(f"jaxlin.{name}")
    raise AttributeError(f"module 'jaxlin' has no attribute {name!r}")


_SUBMODULES = ("checkpoint", "plot")  # imported on first use, like the names they define


class _Package(_types.ModuleType):
    """``jaxlin`` itself: ``import jaxlin.sweep`` binds the module, but ``jaxlin.sweep``
    stays the function of that name (the module is ``sys.modules["jaxlin.sweep"]``)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, _types.ModuleType) and _HOME.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    """Every public name, the lazy ones included (as ``__all__``)."""
    return sorted({*globals(), *__all__})


__all__ = [  # noqa: RUF022 (grouped: SGDLinearRegression, then the rest)
    "SGDLinearRegression",
    "Checkpoint",
    "fit_with_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "ENGINES",
    "TRUE_B",
    "TRUE_W",
    "TrainConfig",
    "EpochEnd",
    "History",
    "Selection",
    "Splits",
    "Summary",
    "SweepResult",
    "TrainingDiverged",
    "clip_by_global_norm",
    "config_keys",
    "epoch_key",
    "estimation_error",
    "fit",
    "global_norm",
    "init_params",
    "linreg",
    "loss_fn",
    "make_train",
    "minibatches",
    "permutation",
    "permute_indices",
    "plot_history",
    "plot_sweep",
    "plot_trajectory",
    "run_epochs",
    "save_history_plot",
    "save_sweep_plot",
    "save_trajectory_plot",
    "select",
    "split_batches",
    "sgd",
    "squared_loss",
    "summarize",
    "sweep",
    "synthetic_data",
    "synthetic_splits",
    "train_epoch",
    "train_step",
    "trajectory",
]
