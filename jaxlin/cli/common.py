"""Helpers shared by the subcommands: number lists, output paths, JAX set-up."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxlin" / "xla"


def floats(text: str) -> list[float]:
    """``"2,-3.4"`` -> ``[2.0, -3.4]`` for argparse."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_problem_flags(parser: argparse.ArgumentParser) -> None:
    """The lecture's synthetic problem: ``--w``, ``--b``, ``--noise``, ``--num-train``."""
    parser.add_argument(
        "--w", type=floats, default=[2.0, -3.4], help="true weights, comma-separated"
    )
    parser.add_argument("--b", type=float, default=4.2, help="true bias")
    parser.add_argument("--noise", type=float, default=0.01, help="label noise std")
    parser.add_argument("--num-train", type=int, default=1000, help="training examples")


def add_jax_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--cache-dir`` and ``--no-cache``."""
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None, help="JAX platform")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="XLA compile cache")
    parser.add_argument("--no-cache", action="store_true", help="do not use the compile cache")


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
    if flag == "--plot" and path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(
            f"--plot {path}: unknown image format {path.suffix or '(none)'!r}; "
            f"use one of .{', .'.join(sorted(PLOT_FORMATS))}"
        )
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: folder {folder} is not writable")


def configure_jax(args) -> None:
    """Platform and persistent compile cache, set before JAX starts a backend."""
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
    if not args.no_cache:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(args.cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
