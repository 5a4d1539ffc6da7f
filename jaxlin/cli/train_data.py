"""``jaxlin train --data DIR``: train from a folder of shards, streamed from disk."""

from __future__ import annotations

import json
import time
from pathlib import Path


def run(args) -> dict:
    """Check the folder, stream-train, report; returns the JSON record."""
    import jax
    import numpy as np

    import jaxlin
    from jaxlin.stream import fit_stream, open_dataset

    data = open_dataset(args.data)  # every shard checked before any training
    _, key_init, key_shuffle = jax.random.split(jax.random.key(args.seed), 3)
    params = jaxlin.init_params(key_init, data.num_features, sigma=args.sigma)
    start = time.perf_counter()

    def progress(end: jaxlin.EpochEnd) -> None:
        print(
            f"epoch {end.epoch + 1}/{args.epochs}  train loss {end.train_loss.mean():.6f}"
            f"  ({time.perf_counter() - start:.2f} s)",
            flush=True,
        )

    params, history = fit_stream(
        params, data, lr=args.lr, max_epochs=args.epochs, batch_size=args.batch_size,
        key=key_shuffle, gradient_clip_val=args.clip, callback=None if args.quiet else progress,
        order=args.order,
    )  # fmt: skip
    w, b = np.asarray(params["w"]).ravel(), float(params["b"][0])
    print(f"learned w: {np.array2string(w, precision=4)}  b: {b:.4f}")
    record = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "w": w.tolist(),
        "b": b,
        "train_loss": history.train_loss.ravel().tolist(),
        "steps_per_epoch": int(history.train_loss.shape[1]),
        "num_examples": data.num_examples,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }
    if data.w is not None and data.b is not None:
        w_err, b_err = jaxlin.estimation_error(params, data.w.astype(w.dtype), data.b)
        print(f"error in estimating w: {np.array2string(np.asarray(w_err), precision=4)}")
        print(f"error in estimating b: {float(b_err):.4f}")
        record.update(w_error=np.asarray(w_err).tolist(), b_error=float(b_err))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    if args.plot is not None:
        from jaxlin.plot import save_history_plot

        title = f"{args.data}: lr={args.lr}, batch={args.batch_size}, order {args.order}"
        save_history_plot(history, args.plot, title=title)
    return record
