"""``jaxlin train --data DIR``: train from a folder of shards, streamed from disk."""

from __future__ import annotations

import math
import time

from jaxlin.cli.common import config_record, epoch_line, interrupt_of, memory, write_outputs


def check_truth(args, data) -> None:
    """The manifest's true ``w`` and ``b``, if any, must fit its data (errors name the dataset)."""
    if data.w is not None and tuple(data.w.shape) != (data.num_features,):
        raise ValueError(
            f"--data {args.data}: manifest.json's w has shape {tuple(data.w.shape)} but the "
            f"data have {data.num_features} features; fix or remove w in the manifest"
        )
    if data.b is not None and getattr(data.b, "size", 1) != 1:
        raise ValueError(f"--data {args.data}: manifest.json's b must be one number")


def run(args) -> dict:
    """Check the folder, stream-train, report; returns the JSON record."""
    import jax
    import numpy as np

    import jaxlin
    from jaxlin.stream import fit_stream, open_dataset

    interrupt = interrupt_of(args)
    data = open_dataset(args.data)  # every shard checked before any training
    check_truth(args, data)
    if args.x64 and data.dtype != np.float64:
        raise ValueError(
            f"--x64 trains in float64, but --data {args.data} holds {data.dtype} data "
            "(jaxlin generate writes float32): leave out --x64"
        )
    steps = math.ceil(data.num_examples / max(args.batch_size, 1))
    memory(args, "--epochs", args.epochs, max(args.epochs, 1) * (steps + 1))
    _, key_init, key_shuffle = jax.random.split(jax.random.key(args.seed), 3)
    params = jaxlin.init_params(key_init, data.num_features, sigma=args.sigma)
    interrupt.check("interrupted before training started; nothing saved")
    start = time.perf_counter()

    def progress(end: jaxlin.EpochEnd) -> None:
        if not args.quiet:
            print(epoch_line(args, end, time.perf_counter() - start), flush=True)
        if end.epoch + 1 < args.epochs:
            interrupt.check(f"interrupted after epoch {end.epoch + 1}/{args.epochs}; nothing saved")

    params, history = fit_stream(
        params, data, lr=args.lr, max_epochs=args.epochs, batch_size=args.batch_size,
        key=key_shuffle, gradient_clip_val=args.clip, callback=progress, order=args.order,
    )  # fmt: skip
    interrupt.check(
        f"interrupted after epoch {args.epochs}/{args.epochs} (training done, results not "
        "reported); nothing saved"
    )
    w, b = np.asarray(params["w"]).ravel(), float(params["b"][0])
    print(f"learned w: {np.array2string(w, precision=4)}  b: {b:.4f}")
    record = {
        "config": config_record(args),
        "w": w.tolist(),
        "b": b,
        "train_loss": history.train_loss.ravel().tolist(),
        "steps_per_epoch": int(history.train_loss.shape[1]),
        "num_examples": data.num_examples,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }
    if data.w is not None and data.b is not None:
        w_err = np.asarray(data.w, w.dtype) - w
        b_err = float(np.asarray(data.b).reshape(())) - b
        print(f"error in estimating w: {np.array2string(w_err, precision=4)}")
        print(f"error in estimating b: {b_err:.4f}")
        record.update(w_error=w_err.tolist(), b_error=b_err)
    title = f"{args.data}: lr={args.lr}, batch={args.batch_size}, order {args.order}"
    write_outputs(
        args, record, lambda path: jaxlin.plot.save_history_plot(history, path, title=title)
    )
    return record
