"""Helpers shared by the subcommands: flag types, Ctrl-C, output paths, JAX set-up.

Nothing here imports JAX at module level: the command line parses its flags
and installs its Ctrl-C handler before JAX starts.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxlin" / "xla"

PROGRAMS = "programs"  # the folder of --cache-dir that holds jaxlin's stored programs

SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1: what jax.random.key accepts on every JAX version


def floats(text: str) -> list[float]:
    """``"2,-3.4"`` -> ``[2.0, -3.4]`` for argparse; an empty value (``"1,,2"``) is refused."""
    parts = [v.strip() for v in text.split(",")]
    if "" in parts:
        where = "empty" if len(parts) == 1 else f"value {parts.index('') + 1} is empty"
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r} ({where})"
        )
    try:
        return [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def seed(text: str) -> int:
    """A seed for ``jax.random.key``: an int in ``[0, 2**32)``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**32), got {text!r}")
    return value


def add_problem_flags(parser: argparse.ArgumentParser) -> None:
    """The lecture's synthetic problem: ``--w``, ``--b``, ``--noise``, ``--num-train``."""
    parser.add_argument(
        "--w", type=floats, default=[2.0, -3.4],
        help="true weights, comma-separated; a negative first value needs '=': --w=-1,2 "
        "(default: 2,-3.4)",
    )  # fmt: skip
    parser.add_argument("--b", type=float, default=4.2, help="true bias (default: %(default)s)")
    parser.add_argument(
        "--noise", type=float, default=0.01, help="label noise std (default: %(default)s)"
    )
    parser.add_argument(
        "--num-train", type=int, default=1000, help="training examples (default: %(default)s)"
    )


def add_jax_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--cache-dir`` and ``--no-cache``."""
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default=None,
        help="JAX platform (default: JAX's choice)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE,
        help="XLA compile cache (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="do not use the compile cache")


def memory(args, flag: str, value, num_values: int) -> None:
    """Refuse a run whose arrays (``num_values`` floats) cannot fit, before anything is made.

    The message names ``flag=value``, the flag that made the request that large.
    """
    from jaxlin.checks import fits_in_memory

    fits_in_memory(flag, value, num_values, "float64" if getattr(args, "x64", False) else "float32")


def config_record(args) -> dict:
    """The flags of a run as JSON values (paths as strings), for the ``--json`` record."""
    skip = ("interrupt", "given")  # how the run is driven, not what it is
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip
    }


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, honoured at a safe point; the message says what was saved."""


class Interrupt:
    """Ctrl-C as a flag: the handler only records it and the run stops at its next check.

    Raising from the handler could land inside a JAX callback or a compiled
    call's Python glue, where the exception is printed and dropped; a flag
    checked after each step of the run cannot be lost. A second Ctrl-C ends
    the process at once (``saved`` says what is on disk by then).
    """

    def __init__(self) -> None:
        self.count = 0
        self.saved = "nothing saved"

    def handle(self, signum, frame) -> None:
        """The SIGINT handler: count; the second one exits now, with one line."""
        del signum, frame
        self.count += 1
        if self.count > 1:
            os.write(2, f"jaxlin: interrupted twice: stopped at once; {self.saved}\n".encode())
            os._exit(130)

    def check(self, message: str) -> None:
        """Raise ``Interrupted(message)`` if Ctrl-C was pressed."""
        if self.count:
            raise Interrupted(message)


def interrupt_of(args) -> Interrupt:
    """The run's Ctrl-C flag (a fresh, never-set one when ``run`` is called without ``main``)."""
    return getattr(args, "interrupt", None) or Interrupt()


def given(args, dest: str) -> bool:
    """Whether the user typed the flag of ``dest`` (not just left its default)."""
    return dest in getattr(args, "given", ())


# What matplotlib's savefig writes (checked before any work, without importing it).
PLOT_FORMATS = frozenset({"png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff",
                          "webp"})  # fmt: skip


def check_output(flag: str, path: Path | None) -> None:
    """Refuse an output path whose folder is missing or unwritable, before any work."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, expected a file path")
    if flag.startswith("--plot") and path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(
            f"{flag} {path}: unknown image format {path.suffix or '(none)'!r}; "
            f"use one of .{', .'.join(sorted(PLOT_FORMATS))}"
        )
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: folder {folder} is not writable")


def configure_jax(args, *, store: bool = False) -> None:
    """Platform and persistent compile cache, set before JAX starts a backend.

    ``store``: every program the run compiles is one of jaxlin's stored
    programs (``jaxlin.engines.compiler.store_programs``): they are kept in
    the cache folder, loaded whole by the next run, and JAX's own cache is
    not used. Otherwise JAX's persistent compilation cache is.
    """
    import jax

    if args.device is not None:
        jax.config.update("jax_platforms", args.device if args.device == "cpu" else "cuda")
    if args.device == "gpu":  # start the backend now: no GPU is a one-line error, not a trace
        try:
            jax.devices()
        except Exception as err:  # JAX raises RuntimeError or AssertionError, by version
            raise ValueError(
                "--device gpu: no GPU backend here (needs an NVIDIA GPU and "
                "pip install 'jaxlin[cuda]'); use --device cpu"
            ) from err
    from jaxlin.engines import compiler

    use_store = store and not args.no_cache  # loaded, not traced, next time
    compiler.store_programs(args.cache_dir / PROGRAMS if use_store else None)
    if args.no_cache:
        return
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if not use_store:  # JAX's own persistent compilation cache
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(args.cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
