"""The ``jaxlin`` command line: ``jaxlin train`` reproduces the lecture's run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxlin" / "xla"


def _floats(text: str) -> list[float]:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommand ``train``)."""
    parser = argparse.ArgumentParser(
        prog="jaxlin", description="Linear regression by minibatch SGD in pure JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train on the lecture's synthetic problem",
        description="Train on synthetic data (defaults: the lecture's run). "
        "Negative first values need '=': --w=-1,2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--w", type=_floats, default=[2.0, -3.4], help="true weights, comma-separated")
    t.add_argument("--b", type=float, default=4.2, help="true bias")
    t.add_argument("--noise", type=float, default=0.01, help="label noise std")
    t.add_argument("--num-train", type=int, default=1000, help="training examples")
    t.add_argument("--num-val", type=int, default=1000, help="validation examples")
    t.add_argument("--batch-size", type=int, default=32, help="minibatch size")
    t.add_argument("--lr", type=float, default=0.03, help="learning rate")
    t.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    t.add_argument("--seed", type=int, default=0, help="seed of the root PRNG key")
    t.add_argument("--clip", type=float, default=0.0, help="gradient clip norm (0: off)")
    t.add_argument("--sigma", type=float, default=0.01, help="std of the initial weights")
    t.add_argument("--engine", choices=("scan", "step", "eager"), default="scan")
    t.add_argument("--device", choices=("cpu", "gpu"), default=None, help="JAX platform")
    t.add_argument("--plot", type=Path, default=None, help="write the loss curves (PNG)")
    t.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    t.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="XLA compile cache")
    t.add_argument("--no-cache", action="store_true", help="do not use the compile cache")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    return parser


def _check_output(flag: str, path: Path | None) -> None:
    """Refuse an output path whose folder is missing or unwritable, before training."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, expected a file path")
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: folder {folder} is not writable")


def _configure_jax(args) -> None:
    """Platform and persistent compile cache, set before JAX starts a backend."""
    import jax

    if args.device is not None:
        jax.config.update("jax_platforms", args.device if args.device == "cpu" else "cuda")
    if not args.no_cache:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(args.cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train(args) -> dict:
    """Run ``jaxlin train``: data, init, fit, report; returns the JSON record."""
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        _check_output(flag, path)
    _configure_jax(args)
    import jax
    import numpy as np

    import jaxlin

    key_data, key_init, key_shuffle = jax.random.split(jax.random.key(args.seed), 3)
    data = jaxlin.synthetic_splits(
        key_data, args.w, args.b, num_train=args.num_train, num_val=args.num_val, noise=args.noise
    )
    params = jaxlin.init_params(key_init, len(args.w), sigma=args.sigma)
    start = time.perf_counter()

    def progress(epoch, losses, val_loss):
        line = f"epoch {epoch + 1}/{args.epochs}  train loss {losses.mean():.6f}"
        line += f"  val loss {val_loss:.6f}" if val_loss is not None else ""
        print(f"{line}  ({time.perf_counter() - start:.2f} s)", flush=True)

    params, history = jaxlin.fit(
        params,
        data.train,
        data.val,
        lr=args.lr,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        key=key_shuffle,
        gradient_clip_val=args.clip,
        engine=args.engine,
        callback=None if args.quiet else progress,
    )
    w_err, b_err = jaxlin.estimation_error(params, data.w, data.b)
    w, b = np.asarray(params["w"]).ravel(), float(params["b"][0])
    print(f"learned w: {np.array2string(w, precision=4)}  b: {b:.4f}")
    print(f"error in estimating w: {np.array2string(np.asarray(w_err), precision=4)}")
    print(f"error in estimating b: {float(b_err):.4f}")
    record = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "w": w.tolist(),
        "b": b,
        "w_error": np.asarray(w_err).tolist(),
        "b_error": float(b_err),
        "train_loss": np.asarray(history.train_loss).ravel().tolist(),
        "val_loss": np.asarray(history.val_loss).tolist(),
        "steps_per_epoch": int(history.train_loss.shape[1]),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    if args.plot is not None:
        from jaxlin.plot import save_history_plot

        save_history_plot(history, args.plot, title=f"lr={args.lr}, batch={args.batch_size}")
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxlin`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    from jaxlin.train import TrainingDiverged

    try:
        if args.command == "train":
            train(args)
    except TrainingDiverged as err:
        print(f"jaxlin: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2
    return 0
