"""The XLA compiler options of jaxlin's own top-level programs: quicker compiles, same code.

Where XLA:CPU has it, ``xla_cpu_use_fusion_emitters=False`` (the older fusion
code generator) compiles the training program faster at the same run time,
with the same results to float rounding (``benchmarks/bench.py`` times the
compiles). Newer XLA versions have no such option. Whether the installed one
knows it is probed once, the first time a jaxlin program is compiled; never
at import.

Only top-level programs use ``jit`` (``fit``'s epochs, the stream's blocks,
the sweep's grid, data parallelism): JAX refuses compiler options on a jit
nested in another, so public functions a user may call under ``jax.jit``
(``train_step``, ``synthetic_splits``) keep plain ``jax.jit``.

``store_programs(folder)`` (the command line's compile cache) keeps the
programs given a ``store_as`` name compiled on disk: a later process loads
the executable instead of tracing, lowering and compiling it again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import platform
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


def options() -> dict:
    """``FAST_COMPILE`` when this XLA accepts it, else ``{}`` (probed once per process,
    even when two threads compile at once)."""
    with _PROBING:
        return dict(_probe())


_PROBING = threading.Lock()


@functools.cache
def _probe() -> dict:
    """Compile a tiny program with ``FAST_COMPILE``: the options if XLA accepts them."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=FAST_COMPILE)
        probe.lower(np.zeros((), np.float32)).compile()
    except Exception:  # JaxRuntimeError "No such compile option" on newer jaxlibs
        return {}
    return dict(FAST_COMPILE)


class jit:  # lower case: used like jax.jit
    """``jax.jit(fun, **kwargs)`` compiled with ``options()`` and ``extra``, made on first use.

    ``extra``: more XLA options for this program alone. ``store_as``: a name
    that says what the program is, beyond ``fun`` (its static settings); with
    ``store_programs`` on, such a program is kept compiled on disk. Supports
    calling and ``.lower``, which is all jaxlin uses.
    """

    def __init__(self, fun, *, extra: dict | None = None, store_as: tuple = (), **kwargs):
        self.fun, self.extra, self.kwargs = fun, extra or {}, kwargs
        self.store_as = (fun.__module__, fun.__qualname__, *store_as) if store_as else ()
        self.loaded: dict = {}  # argument signature -> executable (stored programs)
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        """The ``jax.jit`` of ``fun`` with the options."""
        compiler_options = {**options(), **self.extra} or None
        return jax.jit(self.fun, compiler_options=compiler_options, **self.kwargs)

    def fast(self):
        """What to call: the ``jax.jit`` itself, unless this program is stored on disk."""
        return self if self.store_as and _STORE else self.jitted

    def __call__(self, *args, **kwargs):
        if kwargs or not (self.store_as and _STORE):  # stored programs take positions only
            return self.jitted(*args, **kwargs)
        signature = _signature(args)
        executable = self.loaded.get(signature)
        if executable is not None:
            return _plain(executable(*args))
        self.loaded[signature], out = _STORE[0].run(self, signature, args)
        return _plain(out)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def _plain(out):
    """A stored program's float outputs as arrays made on the host side, like any other.

    An array a deserialized executable returns can differ from a traced one in
    what tracing sees (jax 0.12: a program traced on it gets a gradient whose
    type "float32[1]" does not match "float32[1]"); a copy through the host
    (no compilation) is an ordinary array. Keys are passed as they are.
    """

    def plain(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jax.device_put(np.asarray(leaf), leaf.sharding)
        return leaf

    return jax.tree.map(plain, out)


_STORE: list = []  # the ProgramStore in use, if any (store_programs)
SUFFIX = ".jaxlin-program"  # a stored program's file name ends so, and no other file's


def store_programs(folder: Path | None) -> None:
    """Keep programs that have a ``store_as`` name compiled in ``folder`` (``None``: stop).

    For a process that runs the same few programs every time it starts (the
    command line): a stored program is loaded, not traced, lowered and
    compiled. Each file is named by everything that makes the executable:
    jaxlin's own source, JAX's version, the device, the options, the program
    and its arguments' shapes and dtypes. A stored file that does not load or
    run is compiled and stored again. The folder is the user's own cache: an
    executable file is loaded as it is, so nobody else should write there.

    JAX's own persistent compilation cache is turned off while the store is
    on: an executable it loaded does not serialize whole on every XLA version.
    """
    _STORE.clear()
    if folder is not None:
        jax.config.update("jax_enable_compilation_cache", False)
        _STORE.append(ProgramStore(Path(folder)))


def storing() -> bool:
    """Whether a store is in use (``store_programs``): its programs are loaded or compiled
    by the store, on their first call."""
    return bool(_STORE)


class ProgramStore:
    """Compiled executables on disk, one file per program and argument signature.

    At most ``MAX_PROGRAMS`` files are kept: storing one more removes the
    least recently used of this store's own files (``*.jaxlin-program``).
    """

    MAX_PROGRAMS = 64  # a few hundred KB each

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, program: jit, signature: tuple) -> Path:
        """The file of ``program`` compiled for arguments of ``signature``."""
        name = hashlib.sha256(repr((_context(), program.store_as, signature)).encode()).hexdigest()
        return self.folder / f"{name[:32]}{SUFFIX}"

    def run(self, program: jit, signature: tuple, args: tuple) -> tuple:
        """``(executable, its outputs on args)``: the stored executable, if it loads and
        runs; else one compiled now (and stored for the next process)."""
        from jax.experimental import serialize_executable as serial

        path = self.path(program, signature)
        if path.exists():
            try:
                executable = serial.deserialize_and_load(*pickle.loads(path.read_bytes()))
                out = jax.block_until_ready(executable(*args))
                with contextlib.suppress(OSError):
                    os.utime(path)  # used now: the last to be removed
                return executable, out
            except Exception:  # from another version, damaged: compiled and stored again
                with contextlib.suppress(OSError):
                    path.unlink()
        compiled = program.jitted.lower(*args).compile()
        tmp = None
        try:
            blob = pickle.dumps(serial.serialize(compiled))
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)  # whole or absent: never a torn file
            self.trim()
        except Exception:  # a cache: a program that cannot be stored is compiled next time
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return compiled, compiled(*args)

    def trim(self) -> None:
        """Remove the least recently used programs beyond ``MAX_PROGRAMS``, and this store's
        temporary files that a killed process left (older than an hour)."""
        for path in self.folder.glob(f".*{SUFFIX}.*.tmp"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < time.time() - 3600:
                    path.unlink()
        stored = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                stored.append((path.stat().st_mtime, path))
        for _, path in sorted(stored)[: max(0, len(stored) - self.MAX_PROGRAMS)]:
            with contextlib.suppress(OSError):
                path.unlink()


@functools.cache
def _context() -> tuple:
    """What makes an executable besides the program: jaxlin's source, JAX and its settings
    (x64, the PRNG, precision...), XLA's flags, the device and the processor."""
    import jaxlib

    source = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        source.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    device = jax.devices()[0]
    settings = sorted((k, repr(v)) for k, v in jax.config.values.items() if "cache" not in k)
    return (
        source.hexdigest(), jax.__version__, jaxlib.__version__, settings,
        os.environ.get("XLA_FLAGS", ""), device.platform, device.device_kind,
        jax.device_count(), FAST_COMPILE, platform.machine(), _cpu_flags(),
    )  # fmt: skip


def _cpu_flags() -> str:
    """The processor's features (Linux): an executable may use any of them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _signature(args: tuple) -> tuple:
    """The arguments' tree, shapes, dtypes and weak types: what a compiled program accepts."""
    leaves, tree = jax.tree.flatten(args)
    return str(tree), tuple(_aval(leaf) for leaf in leaves)


def _aval(leaf) -> tuple:
    """What a compiled program accepts of one argument: shape, dtype, weak type, placement."""
    if isinstance(leaf, (bool, int, float, complex)):  # a Python number: weakly typed
        return (type(leaf).__name__,)
    weak = getattr(getattr(leaf, "aval", None), "weak_type", False)
    committed = getattr(leaf, "committed", False)  # placed by the user: on that device
    where = str(leaf.sharding) if committed else None
    return tuple(leaf.shape), str(leaf.dtype), bool(weak), where
