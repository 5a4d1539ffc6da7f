"""Helpers shared by the subcommands: flag types, Ctrl-C, output paths, JAX set-up.

Nothing here imports JAX at module level: the command line parses its flags
and installs its Ctrl-C handler before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jaxlin.command import Interrupt

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


def path_flag(text: str) -> Path:
    """A file or folder path for argparse; an empty one (which would mean ``.``) is refused."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got '' (use '.' for the current folder)")
    return Path(text)


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
        "--cache-dir", type=path_flag, default=DEFAULT_CACHE,
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
    if path.exists() and not path.is_file():
        raise ValueError(
            f"{flag} {path}: is not a regular file (a device or pipe), expected a file path"
        )
    if flag.startswith("--plot") and path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(
            f"{flag} {path}: unknown image format {path.suffix or '(none)'!r}; "
            f"use one of .{', .'.join(sorted(PLOT_FORMATS))}"
        )
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: folder {folder} is not writable")


def epoch_line(args, end, seconds: float) -> str:
    """One epoch's progress: its mean batch loss, the val loss, and the time since the start."""
    line = f"epoch {end.epoch + 1}/{args.epochs}  train loss {end.train_loss.mean():.6g}"
    line += f"  val loss {end.val_loss:.6g}" if end.val_loss is not None else ""
    return f"{line}  ({seconds:.2f} s elapsed)"


def write_outputs(args, record: dict, save_plot) -> list[str]:
    """``--json``, then ``--plot`` (``save_plot(path)``), each noted in what Ctrl-C reports
    as saved; returns their paths."""
    interrupt = interrupt_of(args)
    written = []
    if args.json is not None:
        write_json(args.json, record)
        written.append(str(args.json))
        interrupt.saved = f"{', '.join(written)} written"
    if args.plot is not None:
        save_plot(args.plot)
        written.append(str(args.plot))
        interrupt.saved = f"{', '.join(written)} written"
    return written


def plots_to_files() -> None:
    """The command line only writes figures to files: matplotlib's Agg backend, whatever
    ``MPLBACKEND`` says (a value for a desktop, or a typo, must not fail a finished run)."""
    os.environ["MPLBACKEND"] = "agg"


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` as JSON, all or nothing (an old file is replaced whole)."""
    from jaxlin.files import atomic_write

    text = json.dumps(record, indent=2).encode()
    atomic_write(path, lambda f: f.write(text))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same target through links, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, through links."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def check_paths(outputs: list[tuple[str, Path | None]], inputs=(), folders=()) -> None:
    """Refuse a run whose outputs collide, before any work.

    ``outputs``: ``(flag, file)`` pairs; no two may be one file (compared as
    files, through links). ``inputs``: ``(flag, file)`` pairs the run reads;
    no output may be one of them. ``folders``: ``(flag, folder, owned)``
    where the run reads or keeps its own files; no output may be in ``folder``
    when ``owned(name)`` says the name is one of them (``None``: any name).
    """
    outputs = [(flag, p) for flag, p in outputs if p is not None]
    for i, (flag, p) in enumerate(outputs):
        check_output(flag, p)
        for other, q in outputs[:i]:
            if _same_file(p, q):
                raise ValueError(f"{flag} {p}: is also {other}; give each output its own file")
        for other, q in inputs:
            if q is not None and _same_file(p, q):
                raise ValueError(f"{flag} {p}: is the {other} file this run reads")
        for other, folder, owned in folders:
            if folder is None:
                continue
            if _inside(folder, p):  # the output is the folder, or a folder above it
                raise ValueError(f"{flag} {p}: is where {other} {folder} goes; write it elsewhere")
            if not _inside(p.parent, folder) and not _inside(p, folder):
                continue
            if owned is None or owned(p.name):
                raise ValueError(
                    f"{flag} {p}: would overwrite a file of {other} {folder}; write it elsewhere"
                )


def start_backend(device: str | None = None) -> None:
    """Start JAX's backend now: a platform that cannot start is one line, not a trace."""
    import jax

    try:
        jax.devices()
    except Exception as err:  # JAX raises RuntimeError or AssertionError, by version
        if device == "gpu":
            raise ValueError(
                "--device gpu: no GPU backend here (needs an NVIDIA GPU and "
                "pip install 'jaxlin[cuda]'); use --device cpu"
            ) from err
        platforms = os.environ.get("JAX_PLATFORMS", "")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"JAX could not start its backend (JAX_PLATFORMS={platforms!r}): {first}; "
            "unset JAX_PLATFORMS or set it to cpu"
        ) from err


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
    start_backend(args.device)
    from jaxlin.engines import compiler

    use_store = store and not args.no_cache  # loaded, not traced, next time
    compiler.store_programs(args.cache_dir / PROGRAMS if use_store else None)
    if args.no_cache:  # JAX's own cache too, even if its variables are set around us
        jax.config.update("jax_enable_compilation_cache", False)
        return
    try:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--cache-dir {args.cache_dir}: {err.strerror}; pass another folder or --no-cache"
        ) from None
    if not use_store:  # JAX's own persistent compilation cache
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(args.cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
