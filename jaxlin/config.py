"""The one training configuration, checked once, and the checks of what it trains on.

Every entry point (``fit``, ``fit_data_parallel``, ``fit_stream``, ``sweep``,
the scikit-learn estimator, checkpoints) builds a ``TrainConfig`` from its
keyword arguments, so all of them accept and refuse exactly the same values,
with the same messages. The config is frozen and hashable: it is the static
part of a compiled run (``jaxlin.engines.make_train``).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax

from jaxlin import checks
from jaxlin.choices import ENGINES


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
            "engine": self.engine,
        }


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
DEFAULT = TrainConfig()  # the lecture's settings


def make_config(config: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``config`` with ``overrides`` replaced (each checked), or a new one from them.

    Keyword arguments given as ``None`` are left at the config's value. A
    setting seen before is not checked again: the checked config is kept by
    its values and their types (``shuffle=1`` is not ``shuffle=True``).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is None and not overrides:
        return DEFAULT
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a jaxlin.TrainConfig, got {type(config).__name__}")
    typed = tuple((k, type(v), v) for k, v in overrides.items())
    try:
        hash(typed)
    except TypeError:  # e.g. a JAX scalar lr: checked each time
        return _new_config(config, overrides)
    return _checked_config(config, typed)


@functools.lru_cache(maxsize=256)
def _checked_config(config: TrainConfig | None, typed: tuple) -> TrainConfig:
    """``_new_config``, kept for the settings seen before (``typed``: name, type, value)."""
    return _new_config(config, {k: v for k, _, v in typed})


def _new_config(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """A new ``TrainConfig``: ``config`` with ``overrides``, every field checked."""
    if config is None:
        return TrainConfig(**overrides)
    return dataclasses.replace(config, **overrides)


def shuffle_key(config: TrainConfig, key) -> jax.Array | None:
    """The checked shuffling key: required when ``config.shuffle``, ``None`` when not."""
    if not config.shuffle:
        return None
    if key is None:
        raise ValueError(KEY_REQUIRED)
    return checks.key("key", key)


PASS_KEY = "pass key=jax.random.key(seed)"
KEY_REQUIRED = "key is required when shuffle=True: " + PASS_KEY


@functools.cache
def placeholder_key() -> jax.Array:
    """The key a compiled run takes when it does not shuffle (made once; never read)."""
    with jax.ensure_compile_time_eval():  # a concrete key even if called inside a trace
        return jax.random.key(0)


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
    if params is not None:  # a sweep (no params) checks its whole grid's memory itself
        checks.training_memory("train", train)
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
    checks.representable("lr", config.lr, X.dtype)
    checks.representable("gradient_clip_val", config.gradient_clip_val, X.dtype)
    return d, (X, y), val, test


def refuse_traced(driver: str, *values) -> None:
    """A one-line error when a host driver is called inside ``jax.jit``, ``vmap`` or ``grad``."""
    if any(checks.is_traced(leaf) for leaf in jax.tree.leaves(values)):
        raise TypeError(
            f"{driver} is a checked host driver and cannot run inside jax.jit, jax.vmap or "
            "jax.grad; use jaxlin.make_train(config), a pure training function that composes "
            "with them"
        )


def checked_run(
    driver: str, params, train, val, config: TrainConfig, key, *, test=None, key_needed=None
) -> tuple:
    """Every driver's preamble: ``((X, y), val, test, key)`` checked, after ``refuse_traced``.

    The data as ``training_data`` gives them. The key: with ``key_needed=None``,
    as ``shuffle_key`` gives it (required to shuffle, else ``None``); ``True``
    (a sweep's key also draws the initial parameters), required; ``False`` (a
    resumed run takes its key from the checkpoint), checked when given.

    JAX arrays cannot change, so for the same arrays (the same objects) and the
    same config the answer is the same: it is remembered while they live, and a
    driver called again on them (a benchmark, a sweep of learning rates) pays
    a lookup, not the checks. Other arguments are checked every time.
    """
    plain = test is None and key_needed is None
    objects = _arrays(params, train, val, key, config) if plain else None
    if objects is not None and tuple(map(id, objects)) in _CHECKED:
        return train, val, None, key if config.shuffle else None
    refuse_traced(driver, params, train, val, test, key)
    _, data, val_checked, test = training_data(params, train, val, config, test)
    if key_needed is None:
        key_checked = shuffle_key(config, key)
    elif key is None:
        if key_needed:
            raise ValueError(KEY_REQUIRED if config.shuffle else "key is required: " + PASS_KEY)
        key_checked = None
    else:
        key_checked = checks.key("key", key)
    for array in (data[0], key_checked):  # JAX's array type, and its type of typed keys
        if isinstance(array, jax.Array) and not checks.is_traced(array):
            _ARRAY_TYPES.add(type(array))
    if objects is not None and _same(data, train) and _same(val_checked, val):
        if key_checked is key or key_checked is None:
            _remember(objects)
    return data, val_checked, test, key_checked


def _arrays(params, train, val, key, config) -> tuple | None:
    """The objects ``checked_run`` reads, or ``None`` unless each is a JAX array in the
    usual containers (a tracer is never remembered: it is refused before anything is)."""
    objects = _objects(params, train, val, key, config)
    if objects is None:
        return None
    types = set(map(type, objects[:-1]))  # numpy arrays can change: never remembered
    types.discard(type(None))  # no key
    return objects if types <= _ARRAY_TYPES else None


def _objects(params, train, val, key, config) -> tuple | None:
    """``(w, b, X, y, [val X, val y,] key, config)``, or ``None`` unless in the usual
    containers (anything else is refused by the checks, or checked every time)."""
    if type(params) is not dict or len(params) != 2 or type(train) is not tuple:
        return None
    if len(train) != 2:
        return None
    if val is None:
        return (params.get("w"), params.get("b"), *train, key, config)
    if type(val) is tuple and len(val) == 2:
        return (params.get("w"), params.get("b"), *train, *val, key, config)
    return None


# The concrete JAX array types met so far (an array's and a typed key's; learned from
# checked arguments, since naming them needs private modules): a type test is cheaper
# than isinstance(o, jax.Array).
_ARRAY_TYPES: set[type] = set()


def _same(checked, given) -> bool:
    """Whether the checks returned the arrays they were given (no reshape, no copy)."""
    if checked is None or given is None:
        return checked is given
    return all(a is b for a, b in zip(checked, given, strict=True))


def prepared(params, train, val, key, config: TrainConfig) -> dict | None:
    """What drivers keep for a run of these exact, already checked arrays, or ``None``.

    A dict that lives as long as ``checked_run`` remembers the arrays (the
    same objects, all alive): a driver stores there what it built from them
    (its program and device arguments), so that a call again on the same
    arrays is the compiled call and little else. ``None`` when the arrays are
    not (or no longer) remembered: the caller runs ``checked_run`` first.
    """
    objects = _objects(params, train, val, key, config)
    if objects is None:
        return None
    # An id in the memo is a live object's (an entry goes when one of its objects dies),
    # so equal ids are the very objects that were checked.
    ids = tuple(map(id, objects))
    entry = _CHECKED.get(ids)
    return None if entry is None else entry[1]


# checked_run's memo: identities -> (weak references, what drivers prepared for them)
_CHECKED: dict[tuple, tuple[tuple, dict]] = {}


def _remember(objects: tuple) -> None:
    """Keep ``objects``' identities as checked, until one of them is freed.

    The entry goes when any of them dies (a weak reference's callback), before
    its id can be given to another object; what drivers prepared goes with it.
    """
    memo_key = tuple(map(id, objects))

    def forget(_, memo_key=memo_key):
        _CHECKED.pop(memo_key, None)

    refs = tuple(weakref.ref(o, forget) for o in objects if o is not None)
    _CHECKED[memo_key] = (refs, {})
