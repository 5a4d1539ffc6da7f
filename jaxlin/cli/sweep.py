"""``jaxlin sweep``: many learning rates x seeds in one compiled call; pick by val, report test."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from jaxlin.cli.common import add_jax_flags, add_problem_flags, check_output, configure_jax, floats

DEFAULT_LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]


def lr_range(text: str) -> list[float]:
    """``"1e-4:1:64"`` -> 64 log-spaced learning rates from 1e-4 to 1, both ends included."""
    parts = text.split(":")
    try:
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected LOW:HIGH:COUNT (e.g. 1e-4:1:64), got {text!r}"
        ) from None
    if not (0 < lo < hi and math.isfinite(hi)) or num < 2:
        raise argparse.ArgumentTypeError(
            f"expected 0 < LOW < HIGH and COUNT >= 2 (finite), got {text!r}"
        )
    step = (math.log(hi) - math.log(lo)) / (num - 1)
    return [math.exp(math.log(lo) + i * step) for i in range(num - 1)] + [hi]


def add_parser(sub) -> None:
    """Register ``sweep`` and its flags (data: the lecture's, with a test split added)."""
    s = sub.add_parser(
        "sweep",
        help="train a grid of learning rates x seeds at once; choose lr by validation loss",
        description="Train one model per (lr, seed) in one compiled call, choose "
        "the lr with the least mean validation loss over seeds, and report its test loss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lrs = s.add_mutually_exclusive_group()
    lrs.add_argument(
        "--lr", type=floats, default=None, help=f"learning rates (default {DEFAULT_LRS})"
    )
    lrs.add_argument("--lr-range", type=lr_range, default=None, help="log-spaced LOW:HIGH:COUNT")
    s.add_argument("--seeds", type=int, default=8, help="seeds (inits and shuffles) per lr")
    add_problem_flags(s)
    s.add_argument("--num-val", type=int, default=1000, help="validation examples (choose lr)")
    s.add_argument("--num-test", type=int, default=1000, help="test examples (report once)")
    s.add_argument("--batch-size", type=int, default=32, help="minibatch size")
    s.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    s.add_argument("--seed", type=int, default=0, help="seed of the root key (data and runs)")
    s.add_argument("--clip", type=float, default=0.0, help="gradient clip norm (0: off)")
    s.add_argument("--sigma", type=float, default=0.01, help="std of the initial weights")
    s.add_argument("--plot", type=Path, default=None, help="write the sweep figure (PNG)")
    s.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    add_jax_flags(s)


def _finite_or_none(values):
    """Nested lists with NaN/Inf as ``None``: strict JSON."""
    if isinstance(values, list):
        return [_finite_or_none(v) for v in values]
    return values if math.isfinite(values) else None


def run(args) -> dict:
    """Data (three-way split), sweep, table, choice, test loss; returns the JSON record."""
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        check_output(flag, path)
    if args.num_test < 1:
        raise ValueError(f"num_test must be an int >= 1, got {args.num_test}")
    configure_jax(args)
    import jax

    import jaxlin

    lrs = args.lr or args.lr_range or DEFAULT_LRS
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
    num = result.diverged.size
    print(f"{num} configurations ({len(result.lrs)} lr x {args.seeds} seeds) in {seconds:.2f} s")
    summary = jaxlin.summarize(result)
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
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
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
        chosen = jaxlin.select(result)
    except jaxlin.TrainingDiverged as err:  # write what was measured, then report
        chosen, failure = None, err
    if chosen is not None:
        print(
            f"chosen lr: {chosen.lr:.4g} (mean val loss {chosen.val_loss:.4g}, {args.seeds} seeds)"
        )
        print(f"test loss of the chosen lr: {chosen.test_loss:.4g} (std {chosen.test_std:.2g})")
    record["chosen"] = None if chosen is None else chosen._asdict()
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    if args.plot is not None:
        from jaxlin.plot import save_sweep_plot

        save_sweep_plot(result, args.plot)
    if chosen is None:
        raise failure
    return record
