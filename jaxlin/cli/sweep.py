"""``jaxlin sweep``: many learning rates x seeds in one compiled call; pick by val, report test."""

from __future__ import annotations

import argparse
import math
import time
from typing import NamedTuple

from jaxlin.cli.common import (
    add_jax_flags,
    add_problem_flags,
    check_paths,
    config_record,
    configure_jax,
    floats,
    interrupt_of,
    path_flag,
    plots_to_files,
    seed,
    write_outputs,
)

DEFAULT_LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]


class LogRange(NamedTuple):
    """``--lr-range LOW:HIGH:COUNT``, kept as three numbers until the sweep's size is checked."""

    low: float
    high: float
    count: int

    def values(self) -> list[float]:
        """``count`` log-spaced learning rates from ``low`` to ``high``, both ends included."""
        step = (math.log(self.high) - math.log(self.low)) / (self.count - 1)
        return [math.exp(math.log(self.low) + i * step) for i in range(self.count - 1)] + [
            self.high
        ]


def lr_range(text: str) -> LogRange:
    """``"1e-4:1:64"`` -> 64 log-spaced learning rates from 1e-4 to 1 (made once checked)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW:HIGH:COUNT (e.g. 1e-4:1:64), got {text!r}"
        ) from None
    if not (0 < lo < hi and math.isfinite(hi)) or num < 2:
        raise argparse.ArgumentTypeError(
            f"expected 0 < LOW < HIGH and COUNT >= 2 (finite), got {text!r}"
        )
    return LogRange(lo, hi, num)


def add_parser(sub) -> None:
    """Register ``sweep`` and its flags (data: the lecture's, with a test split added)."""
    s = sub.add_parser(
        "sweep",
        help="train a grid of learning rates x seeds at once; choose lr by validation loss",
        description="Train one model per (lr, seed) in one compiled call (jaxlin.sweep), choose "
        "the lr with the least mean validation loss over seeds, and report its test loss. "
        "Values that start with '-' need '=': --w=-1,2.",
    )
    lrs = s.add_mutually_exclusive_group()
    lrs.add_argument(
        "--lr", type=floats, default=None,
        help=f"learning rates, comma-separated (default: {','.join(map(str, DEFAULT_LRS))})",
    )  # fmt: skip
    lrs.add_argument(
        "--lr-range", type=lr_range, default=None,
        help="COUNT log-spaced learning rates from LOW to HIGH, as LOW:HIGH:COUNT",
    )  # fmt: skip
    s.add_argument(
        "--seeds", type=int, default=8,
        help="seeds (inits and shuffles) per lr (default: %(default)s)",
    )  # fmt: skip
    add_problem_flags(s)
    s.add_argument(
        "--num-val", type=int, default=1000,
        help="validation examples, to choose the lr (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--num-test", type=int, default=1000,
        help="test examples, to report once (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--batch-size", type=int, default=32, help="minibatch size (default: %(default)s)"
    )
    s.add_argument(
        "--epochs", type=int, default=3,
        help="passes over the training data (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--seed", type=seed, default=0,
        help="seed of the root key (data and runs), 0 .. 2**32-1 (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--clip", type=float, default=0.0,
        help="gradient clip norm; 0 turns clipping off (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--sigma", type=float, default=0.01,
        help="std of the initial weights (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--plot", type=path_flag, default=None, help="write the sweep figure (PNG)")
    s.add_argument("--json", type=path_flag, default=None, help="write the results as JSON")
    add_jax_flags(s)


def check_sizes(args) -> None:
    """Refuse a grid or data too large for this machine, before anything is made."""
    from jaxlin.checks import positive_int
    from jaxlin.cli.common import memory
    from jaxlin.sweeps import check_grid_memory

    positive_int("num_test", args.num_test)  # a sweep's choice is reported on its test loss

    num_lrs = args.lr_range.count if args.lr_range else len(args.lr or DEFAULT_LRS)
    sizes = {"--num-train": args.num_train, "--num-val": args.num_val, "--num-test": args.num_test}
    big = max(sizes, key=sizes.get)
    memory(args, big, sizes[big], 2 * sum(max(v, 1) for v in sizes.values()) * (len(args.w) + 1))
    check_grid_memory(
        num_lrs, max(args.seeds, 1), max(args.num_train, 1), len(args.w),
        max_epochs=max(args.epochs, 1), batch_size=max(args.batch_size, 1), dtype="float32",
    )  # fmt: skip


def _finite_or_none(values):
    """Nested lists with NaN/Inf as ``None``: strict JSON."""
    if isinstance(values, list):
        return [_finite_or_none(v) for v in values]
    return values if math.isfinite(values) else None


def run(args) -> dict:
    """Data (three-way split), sweep, table, choice, test loss; returns the JSON record."""
    plots_to_files()
    check_paths([("--json", args.json), ("--plot", args.plot)])
    check_sizes(args)
    interrupt = interrupt_of(args)
    configure_jax(args)
    import jax

    import jaxlin

    lrs = args.lr or (args.lr_range.values() if args.lr_range else DEFAULT_LRS)
    interrupt.check("interrupted before the sweep started; nothing saved")
    key_data, key_runs = jax.random.split(jax.random.key(args.seed))
    data = jaxlin.synthetic_splits(
        key_data, args.w, args.b, num_train=args.num_train, num_val=args.num_val,
        num_test=args.num_test, noise=args.noise,
    )  # fmt: skip
    start = time.perf_counter()
    result = jaxlin.sweep(
        data.train, data.val, data.test, lrs=lrs, seeds=args.seeds, key=key_runs,
        max_epochs=args.epochs, batch_size=args.batch_size, sigma=args.sigma,
        gradient_clip_val=args.clip, per_step=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    interrupt.check("interrupted after the sweep's training, before its report; nothing saved")
    num = result.diverged.size
    print(f"{num} configurations ({len(result.lrs)} lr x {args.seeds} seeds) in {seconds:.2f} s")
    summary = jaxlin.sweeps.summarize(result)
    print(f"{'lr':>10}  {'val loss mean':>13}  {'std':>9}  {'min':>9}  {'max':>9}")
    for i, lr in enumerate(result.lrs):
        if summary.num_diverged[i]:
            print(f"{lr:>10.4g}  diverged ({summary.num_diverged[i]}/{args.seeds} seeds)")
        else:
            stats = (
                summary.val_mean[i],
                summary.val_std[i],
                summary.val_min[i],
                summary.val_max[i],
            )
            print(f"{lr:>10.4g}  {stats[0]:>13.4g}  " + "  ".join(f"{v:>9.3g}" for v in stats[1:]))
    record = {
        "config": {**config_record(args), "lr_range": args.lr_range and list(args.lr_range)},
        "lrs": result.lrs.tolist(),
        "seeds": result.seeds.tolist(),
        "val_loss": _finite_or_none(result.val_loss.astype(float).tolist()),  # [lr][seed][epoch]
        "train_loss": _finite_or_none(result.train_loss.mean(-1).astype(float).tolist()),
        "diverged": result.diverged.tolist(),
        "val_mean": _finite_or_none(summary.val_mean.tolist()),
        "val_std": _finite_or_none(summary.val_std.tolist()),
        "num_diverged": summary.num_diverged.tolist(),
        "seconds": seconds,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }
    try:
        chosen = jaxlin.sweeps.select(result)
    except jaxlin.TrainingDiverged as err:  # write what was measured, then report
        chosen, failure = None, err
    if chosen is not None:
        print(
            f"chosen lr: {chosen.lr:.4g} (mean val loss {chosen.val_loss:.4g}, {args.seeds} seeds)"
        )
        print(f"test loss of the chosen lr: {chosen.test_loss:.4g} (std {chosen.test_std:.2g})")
    record["chosen"] = None if chosen is None else chosen._asdict()
    write_outputs(args, record, lambda path: jaxlin.plot.save_sweep_plot(result, path))
    if chosen is None:
        raise failure
    return record
