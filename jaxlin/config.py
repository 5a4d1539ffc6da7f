"""The one training configuration, checked once, and the checks of what it trains on.

Every entry point (``fit``, ``fit_data_parallel``, ``fit_stream``, ``sweep``,
the scikit-learn estimator, checkpoints) builds a ``TrainConfig`` from its
keyword arguments, so all of them accept and refuse exactly the same values,
with the same messages. The config is frozen and hashable: it is the static
part of a compiled run (``jaxlin.engines.make_train``).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxlin import checks

ENGINES = ("scan", "affine", "step", "eager")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: the lecture's hyperparameters and the engine that runs them.

    Attributes:
      lr: learning rate, finite and > 0 (a default: compiled runs take it traced).
      max_epochs: passes over the training data, >= 1.
      batch_size: examples per step, >= 1; the last batch of an epoch is
        smaller when it does not divide the data (a real step, not dropped).
      shuffle: read each epoch in a keyed random order (needs a key) or in order.
      gradient_clip_val: clip gradients to this global norm when > 0.
      engine: ``"scan"`` (compiled epochs), ``"affine"`` (compiled, steps
        composed as affine maps; no clipping), ``"step"`` (jitted step in a
        Python loop) or ``"eager"`` (no jit). All give the same batches and result.
    """

    lr: float = 0.03
    max_epochs: int = 3
    batch_size: int = 32
    shuffle: bool = True
    gradient_clip_val: float = 0.0
    engine: str = "scan"

    def __post_init__(self):
        """Checks every field (named in the error) and stores it in its canonical type."""
        lr = self.lr
        if isinstance(lr, jax.Array) and not checks.is_traced(lr) and lr.ndim == 0:
            lr = lr.item()  # a concrete JAX scalar: its value
        fields = {
            "lr": checks.finite_float("lr", lr, positive=True),
            "max_epochs": checks.positive_int("max_epochs", self.max_epochs),
            "batch_size": checks.positive_int("batch_size", self.batch_size),
            "shuffle": checks.boolean("shuffle", self.shuffle),
            "gradient_clip_val": checks.finite_float(
                "gradient_clip_val", self.gradient_clip_val, nonnegative=True
            ),
            "engine": self.engine,
        }
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "affine" and fields["gradient_clip_val"] > 0:
            raise ValueError(
                "engine='affine' cannot clip gradients (clipping is not an affine map): "
                "use engine='scan' with gradient_clip_val > 0"
            )
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def clip(self) -> float | None:
        """``gradient_clip_val``, or ``None`` when clipping is off (no clipping code is built)."""
        return self.gradient_clip_val if self.gradient_clip_val > 0 else None

    def settings(self) -> dict:
        """What makes one run's updates what they are (for checkpoints): JSON-able fields."""
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "gradient_clip_val": self.gradient_clip_val,
        }


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def make_config(config: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``config`` with ``overrides`` replaced (each checked), or a new one from them.

    Keyword arguments given as ``None`` are left at the config's value.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is None:
        return TrainConfig(**overrides)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a jaxlin.TrainConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides)


def shuffle_key(config: TrainConfig, key) -> jax.Array | None:
    """The checked shuffling key: required when ``config.shuffle``, ``None`` when not."""
    if not config.shuffle:
        return None
    if key is None:
        raise ValueError("key is required when shuffle=True: pass key=jax.random.key(seed)")
    return checks.key("key", key)


def check_batch_size(config: TrainConfig, num_examples: int) -> None:
    """A batch cannot exceed the data it is drawn from, nor the run's history the memory.

    The history holds one loss per step of every epoch: ``max_epochs * ceil(n / B)``.
    """
    if config.batch_size > num_examples:
        raise ValueError(
            f"batch_size must be <= the number of training examples ({num_examples}), "
            f"got {config.batch_size}"
        )
    steps = -(-num_examples // config.batch_size)
    checks.fits_in_memory("max_epochs", config.max_epochs, config.max_epochs * steps)


def training_data(params, train, val, config: TrainConfig, test=None) -> tuple:
    """Checked ``params``, ``(X, y)``, ``val`` and ``test``: shapes agree, one dtype, finite.

    Returns ``(d, (X, y), val, test)`` with every ``y`` as ``(n, 1)``; ``params``,
    ``val`` and ``test`` may be ``None``.
    """
    d = None if params is None else checks.params(params)
    X, y = checks.dataset("train", train, d)
    d = X.shape[1]
    val = None if val is None else checks.dataset("val", val, d)
    test = None if test is None else checks.dataset("test", test, d)
    checks.same_dtype(
        ("train X", X),
        ("params['w']", None if params is None else params["w"]),
        ("params['b']", None if params is None else params["b"]),
        ("val X", None if val is None else val[0]),
        ("test X", None if test is None else test[0]),
    )
    check_batch_size(config, X.shape[0])
    return d, (X, y), val, test
