"""jaxlin: the lecture's linear regression by minibatch SGD, as pure JAX functions.

The top level holds the lecture's names (data, model, loss, SGD, train step,
``fit``) and the few entry points a user starts from; everything else lives in
the submodule that owns it (``jaxlin.shuffle``, ``jaxlin.optim``,
``jaxlin.sweeps``, ``jaxlin.checkpoint``, ``jaxlin.plot``, ``jaxlin.parallel``,
``jaxlin.stream``...).

Every name is imported on first use, so ``import jaxlin`` itself loads no JAX:
the ``jaxlin`` command installs its Ctrl-C handler before JAX starts, and a
first ``fit`` loads only what it runs.
"""

__version__ = "0.1.0"

# Where each public name is defined: imported from there on first use.
_HOMES = {
    "jaxlin.data": ("TRUE_B", "TRUE_W", "Splits", "minibatches", "synthetic_data",
                    "synthetic_splits"),
    "jaxlin.model": ("estimation_error", "init_params", "linreg", "loss_fn", "squared_loss"),
    "jaxlin.optim": ("sgd",),
    "jaxlin.train": ("train_epoch", "train_step"),
    "jaxlin.config": ("TrainConfig",),
    "jaxlin.trainer": ("EpochEnd", "History", "TrainingDiverged", "fit"),
    "jaxlin.engines": ("make_train",),
    "jaxlin.sweeps": ("SweepResult", "sweep"),
    "jaxlin.checkpoint": ("fit_with_checkpoints", "load_checkpoint"),
    "jaxlin.engines.trajectory": ("trajectory",),
    "jaxlin.plot": ("plot_history",),
    "jaxlin.sklearn": ("SGDLinearRegression",),
}  # fmt: skip
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [name for names in _HOMES.values() for name in names]
if __import__("importlib.util").util.find_spec("sklearn") is None:  # an optional extra:
    __all__.remove("SGDLinearRegression")  # ``from jaxlin import *`` works without it
# The modules reachable as attributes (``jaxlin.shuffle.permutation``), imported on first use.
_SUBMODULES = (
    "checkpoint", "checks", "choices", "cli", "command", "config", "course", "data", "engines",
    "files",
    "model", "optim", "parallel", "plot", "shuffle", "sklearn", "stream", "sweeps", "train",
    "trainer",
)  # fmt: skip


def __getattr__(name: str):
    """A public name, imported from its module on first use (then found directly)."""
    import importlib

    if name in _HOME:
        try:
            module = importlib.import_module(_HOME[name])
        except ModuleNotFoundError as err:  # scikit-learn is optional
            if (err.name or "").partition(".")[0] != "sklearn":
                raise
            raise ImportError(
                'jaxlin.SGDLinearRegression needs scikit-learn: pip install "jaxlin[sklearn]"'
            ) from err
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # a submodule as an attribute path: jaxlin.checkpoint.load_checkpoint
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'jaxlin' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Every public name, the ones not yet imported included (as ``__all__``)."""
    return sorted({*globals(), *__all__})
