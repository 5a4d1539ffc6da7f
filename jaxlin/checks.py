"""Input checks shared by the public API: fail early, name the argument.

Every public function calls these before any device work, so a bad argument
gives one clear ``ValueError``/``TypeError`` instead of a trace from inside
XLA or a silent NaN.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import weakref

import jax
import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))


def positive_int(name: str, value) -> int:
    """``value`` as an int ``>= 1``; bools and floats are refused."""
    return int_at_least(name, value, 1)


def nonnegative_int(name: str, value) -> int:
    """``value`` as an int ``>= 0``; bools and floats are refused."""
    return int_at_least(name, value, 0)


def int_at_least(name: str, value, low: int) -> int:
    """``value`` as an int ``>= low``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def boolean(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False``; anything else (``1``, ``"yes"``) is refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def finite_float(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``value`` as a finite Python float, optionally ``> 0`` or ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def representable(name: str, value: float, dtype) -> None:
    """Refuse a positive ``value`` that ``dtype`` would turn into 0 or Inf (a step that
    silently does nothing, or diverges at once), naming it."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", under="ignore"):
        cast = dtype.type(value)
    if cast == 0 and value != 0:
        raise ValueError(
            f"{name} rounds to 0 in {dtype.name}, the data's dtype: got {value!r}; "
            f"the smallest is {float(np.finfo(dtype).smallest_subnormal):.3g} (use float64 data)"
        )
    if not np.isfinite(cast):
        raise ValueError(
            f"{name} overflows {dtype.name}, the data's dtype: got {value!r}; "
            f"the largest is {float(np.finfo(dtype).max):.3g}"
        )


def key(name: str, value) -> jax.Array:
    """A typed ``jax.random.key`` (legacy uint32 keys are wrapped)."""
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        if value.shape != ():
            raise ValueError(f"{name} must be a single key, got a key array of shape {value.shape}")
        return value
    if isinstance(value, jax.Array) and value.dtype == jnp.uint32 and value.shape == (2,):
        return jax.random.wrap_key_data(value)
    raise TypeError(f"{name} must be a jax.random.key(seed), got {type(value).__name__}")


def float_array(
    name: str, value, *, ndim: tuple[int, ...], finite: bool = True, device: bool = True
) -> jax.Array:
    """``value`` as a float32/float64 jax array of one of the ranks ``ndim``.

    Integer, boolean, float16 and complex inputs are refused rather than cast:
    a silent cast hides a data bug. With ``finite``, NaN or Inf is an error
    that names the first bad row. ``device=False`` returns a host array as it
    is (checked, not copied to the device).
    """
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        raise TypeError(f"{name} must be an array, got {type(value).__name__}")
    if np.dtype(value.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    if value.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name} must be {want}, got shape {tuple(value.shape)}")
    if 0 in value.shape:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if isinstance(value, jax.ShapeDtypeStruct):  # data not in memory (on disk): shape only
        return value
    array = value if isinstance(value, jax.Array) or not device else jnp.asarray(value)
    if finite:
        _check_finite_rows(name, value, array)
    return array


# jax arrays already found finite, by id: they are immutable, so once is enough.
_FINITE: dict[int, weakref.ref] = {}


def _check_finite_rows(name: str, value, array: jax.Array) -> None:
    """Refuse NaN or Inf in ``value``, naming the first bad row; each jax array is read once."""
    known = _FINITE.get(id(array))
    if known is not None and known() is array:
        return
    on_host = not isinstance(value, jax.Array) or all(d.platform == "cpu" for d in value.devices())
    ok = np.isfinite(np.asarray(value)) if on_host else np.asarray(jnp.isfinite(value))
    if not ok.all():
        row = int(np.argwhere(~ok)[0][0])
        raise ValueError(f"{name} contains NaN or Inf values (first at row {row})")
    if isinstance(array, jax.Array) and array is value:
        key = id(array)
        _FINITE[key] = weakref.ref(array, lambda _, key=key: _FINITE.pop(key, None))


def dataset(
    name: str, pair, num_inputs: int | None = None, *, finite: bool = True
) -> tuple[jax.Array, jax.Array]:
    """An ``(X, y)`` pair as ``X: (n, d)`` and ``y: (n, 1)``, shapes checked."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be an (X, y) pair, got {type(pair).__name__}")
    X = float_array(f"{name} X", pair[0], ndim=(2,), finite=finite)
    y = float_array(f"{name} y", pair[1], ndim=(1, 2), finite=finite)
    if y.dtype != X.dtype:
        raise TypeError(f"{name} y has dtype {y.dtype} but {name} X has {X.dtype}; they must match")
    if y.ndim == 2 and y.shape[1] != 1:
        raise ValueError(f"{name} y must have shape (n,) or (n, 1), got {tuple(y.shape)}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{name} y has {y.shape[0]} examples but {name} X has {X.shape[0]}; they must match"
        )
    if num_inputs is not None and X.shape[1] != num_inputs:
        raise ValueError(f"{name} X has {X.shape[1]} features but params['w'] expects {num_inputs}")
    return X, (y if y.ndim == 2 else y.reshape(-1, 1))  # no op (no dispatch) when (n, 1)


def same_dtype(*named) -> None:
    """Refuse arrays of different float dtypes, e.g. float32 params with float64 data.

    ``named`` are ``(name, array or None)`` pairs; ``None`` is skipped.

    Mixed precision would promote inside the step (and a ``lax.scan`` carry
    cannot change dtype), so it is an error up front, with both names.
    """
    (first, a), *rest = named
    for name, b in rest:
        if b is not None and b.dtype != a.dtype:
            raise TypeError(
                f"{name} has dtype {b.dtype} but {first} has {a.dtype}; use one float dtype "
                "(float64 needs jax.config.update('jax_enable_x64', True))"
            )


def params(value) -> int:
    """Checks a ``{"w": (d, 1), "b": (1,)}`` pytree; returns ``d``."""
    if not isinstance(value, dict) or set(value) != {"w", "b"}:
        raise TypeError(f"params must be a dict with keys 'w' and 'b', got {value!r:.80}")
    w, b = value["w"], value["b"]
    for k, v in (("w", w), ("b", b)):
        if not hasattr(v, "dtype") or np.dtype(v.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"params[{k!r}] must be a float32/float64 array")
    if w.ndim != 2 or w.shape[1] != 1 or w.shape[0] < 1:
        raise ValueError(f"params['w'] must have shape (d, 1), got {tuple(w.shape)}")
    if tuple(b.shape) != (1,):
        raise ValueError(f"params['b'] must have shape (1,), got {tuple(b.shape)}")
    return int(w.shape[0])


def true_params(w, b) -> tuple[np.ndarray, np.ndarray]:
    """The true ``w`` (1-D, ``d >= 1``) and scalar ``b`` of a synthetic problem, checked.

    Host arrays of JAX's default float (float32, or float64 when the user
    enabled x64 mode): the draw that uses them takes them as arguments.
    """
    dtype = np.dtype(jnp.result_type(float))
    try:
        wide = np.asarray(w, dtype=np.float64)  # the values as given, before the cast
    except (TypeError, ValueError):
        raise TypeError(f"w must be a 1-D sequence of numbers, got {w!r:.60}") from None
    wide = float_array("w", wide, ndim=(1,), device=False)
    if np.ndim(b) != 0:
        raise ValueError(f"b must be a scalar, got shape {np.shape(b)}")
    b = finite_float("b", b.item() if hasattr(b, "item") else b)
    labels_fit(wide, b, 0.0, dtype)
    return wide.astype(dtype), np.asarray(b, dtype)


LABEL_SIGMAS = 8  # |N(0, 1)| exceeds 8 with probability ~1e-15: the bound on |x| and the noise


def labels_fit(w: np.ndarray, b: float, noise: float, dtype) -> None:
    """Refuse a synthetic problem whose labels would overflow ``dtype`` (silent Inf).

    ``|y| <= |b| + 8 (sum |w| + noise)`` for every row drawn in practice; the
    message names the term that dominates.
    """
    dtype = np.dtype(dtype)
    terms = {
        "b": abs(b),
        "w": LABEL_SIGMAS * float(np.abs(np.asarray(w, np.float64)).sum()),
        "noise": LABEL_SIGMAS * noise,
    }
    largest = float(np.finfo(dtype).max)
    if sum(terms.values()) > largest / 2:  # a margin for the sums inside X @ w
        name = max(terms, key=terms.get)
        value = np.asarray(w).tolist() if name == "w" else {"b": b, "noise": noise}[name]
        raise ValueError(
            f"{name} makes labels overflow {dtype.name} (its largest value is {largest:.3g}): "
            f"got {value!r:.60}; use smaller values"
            + (" or float64 data" if dtype == np.float32 else "")
        )


def loader_data(X, y) -> tuple[jax.Array, jax.Array]:
    """``X: (n, d)`` and ``y: (n,)`` or ``(n, 1)`` for the minibatch iterator (NaN allowed)."""
    if not hasattr(X, "shape") or len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n, d), got {getattr(X, 'shape', type(X).__name__)}")
    X = float_array("X", X, ndim=(2,), finite=False)
    if hasattr(y, "shape"):
        y = float_array("y", y, ndim=(1, 2), finite=False)
    if not hasattr(y, "shape") or len(y.shape) not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must have shape (n,) or (n, 1) with n = {X.shape[0]} (X's rows), "
            f"got {getattr(y, 'shape', type(y).__name__)}"
        )
    return X, y


def is_traced(value) -> bool:
    """Whether ``value`` is a tracer: an argument inside ``jax.jit``, ``vmap`` or ``grad``."""
    return isinstance(value, jax.core.Tracer)


PROC_CGROUP = "/proc/self/cgroup"  # this process's cgroups
CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_limit_files() -> list[str]:
    """Files that may hold this process's memory limit: its cgroup's and every parent's.

    cgroup v2 (``0::/path``): ``memory.max``; v1 (``N:memory:/path``):
    ``memory/.../memory.limit_in_bytes``. A limit set on a parent holds too.
    """
    try:
        with open(PROC_CGROUP) as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[1] == "":
            base, name = CGROUP_ROOT, "memory.max"
        elif "memory" in fields[1].split(","):
            base, name = f"{CGROUP_ROOT}/memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in fields[2].split("/") if p and p != ".."]
        files += ["/".join([base, *parts[:k], name]) for k in range(len(parts), -1, -1)]
    return files


@functools.cache
def memory_bytes() -> int:
    """This machine's memory in bytes, or its container's limit where lower.

    What a request is checked against: in a container, allocating beyond its
    cgroup's limit ends the process (the OOM killer), however much the host
    has. A limit of "max" (v2), or above the machine's memory (v1's way of
    saying none), leaves the machine's memory. Read once per process (a
    handful of files under ``/proc`` and ``/sys``), not once per check;
    ``memory_bytes.cache_clear()`` reads them again.
    """
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf: do not refuse anything
        have = 1 << 62
    for path in _cgroup_limit_files():
        try:
            with open(path) as f:
                text = f.read(64).strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            have = min(have, int(text))
    return have


def _address_space_left() -> int | None:
    """What ``RLIMIT_AS`` (``ulimit -v``) leaves this process to map, or ``None`` if unlimited.

    Read at each check, not once: the process's own mappings (JAX's runtime
    maps over a gigabyte) grow as it runs.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:  # sizes in pages: total mapped first
            mapped = int(f.read(64).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return None
    if not _backend_started():  # what starting it will map (measured: about 0.9 GiB)
        mapped += BACKEND_MAPS_BYTES
    return max(soft - mapped, 0)


BACKEND_MAPS_BYTES = 1 << 30  # the address space JAX's CPU backend maps when it starts


def _backend_started() -> bool:
    """Whether JAX has started a backend (a check made before it starts counts its maps)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):  # another JAX layout: assume started
        return True


def available_bytes() -> tuple[int, str]:
    """The memory a request may use, and what sets it: the smallest of the machine's
    memory, its container's limit (``memory_bytes``) and the address space that
    ``ulimit -v`` leaves."""
    have, what = memory_bytes(), "this machine has"
    left = _address_space_left()
    if left is not None and left < have:
        have, what = left, "ulimit -v (RLIMIT_AS) leaves"
    return have, what


def size_text(num_bytes: float) -> str:
    """``num_bytes`` in the largest binary unit that keeps it >= 1, e.g. ``'7.5 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.3g} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError  # unreachable


def training_memory(name: str, pair, host_devices: int = 1) -> None:
    """Refuse training on an in-memory ``(X, y)`` whose working copies cannot fit, before
    any copy is made (anything but a 2-D float ``X`` is left to ``dataset``).

    A run holds about four copies of ``(X, y)`` besides the caller's: the
    device's, the epoch's shuffled one and the gather's temporaries (peak RSS
    over rows, measured through ``fit`` and the estimator for d from 2 to 50:
    at most ``4 d + 2`` floats per row), and on ``host_devices`` > 1 CPU
    devices 4 floats a row more for each (their orders and batches). Small
    data is not checked (the check reads the process's limits), nor a run on
    an accelerator, whose copies are in its own memory.
    """
    X = pair[0] if isinstance(pair, (tuple, list)) and len(pair) == 2 else None
    if isinstance(X, jax.ShapeDtypeStruct) or len(getattr(X, "shape", ())) != 2:
        return
    dtype = getattr(X, "dtype", None)
    if dtype is None or np.dtype(dtype) not in FLOAT_DTYPES:
        return
    dtype = jax.dtypes.canonicalize_dtype(dtype)  # float32 unless x64 is on
    n, d = X.shape
    num_values = n * (4 * (d + 1) + 2 + host_device_floats(host_devices))
    if num_values * dtype.itemsize > MEMORY_CHECKED_ABOVE and jax.default_backend() == "cpu":
        fits_in_memory(name, f"({n}, {d})", num_values, dtype)


def host_device_floats(host_devices: int) -> int:
    """Floats per example that each of ``host_devices`` > 1 CPU devices adds to a run's
    peak: its copies of the epoch's order and batches (peak RSS over rows, d = 2 and
    10 on 2, 4 and 8 host devices)."""
    return 4 * host_devices if host_devices > 1 else 0


MEMORY_CHECKED_ABOVE = 1 << 26  # bytes: training data whose working copies are checked


def fits_in_memory(name: str, value, num_values: int, dtype="float32") -> None:
    """Refuse, before anything is allocated, a request whose arrays cannot fit in memory.

    ``num_values`` elements of ``dtype`` are what the request ``name=value``
    needs; the error says how much that is and how much the machine has.
    """
    need = int(num_values) * np.dtype(dtype).itemsize
    have, what = available_bytes()
    if need > have:
        raise ValueError(
            f"{name}={value} needs {size_text(need)} of memory for its arrays, "
            f"but {what} {size_text(have)}"
        )
