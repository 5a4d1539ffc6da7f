"""``jaxlin train``: the lecture's run on synthetic data, every setting a flag."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxlin.cli.common import add_jax_flags, check_output, configure_jax, floats


def add_parser(sub) -> None:
    """Register ``train`` and its flags (defaults: the lecture's run)."""
    t = sub.add_parser(
        "train",
        help="train on the lecture's synthetic problem",
        description="Train on synthetic data (defaults: the lecture's run). "
        "Negative first values need '=': --w=-1,2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--w", type=floats, default=[2.0, -3.4], help="true weights, comma-separated")
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
    t.add_argument("--engine", choices=("scan", "affine", "step", "eager"), default="scan")
    t.add_argument("--plot", type=Path, default=None, help="write the loss curves (PNG)")
    t.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument("--data", type=Path, default=None, help="train from shards on disk (streamed)")
    add_jax_flags(t)


def run(args) -> dict:
    """Data, init, fit, report; returns the JSON record."""
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        check_output(flag, path)
    configure_jax(args)
    if args.data is not None:  # shards on disk: jaxlin/cli/train_data.py
        from jaxlin.cli import train_data

        return train_data.run(args)
    import jax
    import numpy as np

    import jaxlin

    key_data, key_init, key_shuffle = jax.random.split(jax.random.key(args.seed), 3)
    data = jaxlin.synthetic_splits(
        key_data, args.w, args.b, num_train=args.num_train, num_val=args.num_val, noise=args.noise
    )
    params = jaxlin.init_params(key_init, len(args.w), sigma=args.sigma)
    start = time.perf_counter()

    def progress(end: jaxlin.EpochEnd) -> None:
        line = f"epoch {end.epoch + 1}/{args.epochs}  train loss {end.train_loss.mean():.6f}"
        line += f"  val loss {end.val_loss:.6f}" if end.val_loss is not None else ""
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
        "train_loss": history.train_loss.ravel().tolist(),
        "val_loss": history.val_loss.tolist(),
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
