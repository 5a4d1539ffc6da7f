"""``jaxlin generate``: the synthetic problem written to disk as ``.npy`` shards."""

from __future__ import annotations

import argparse
import re
import time

from jaxlin.cli.common import floats, interrupt_of, path_flag, start_backend

# generate_shards names its arguments; the command line says the flag typed.
FLAGS = {
    "out_dir": "--out", "num_examples": "--num-examples", "d": "--d", "shards": "--shards",
    "w": "--w", "b": "--b", "noise": "--noise", "chunk": "--chunk",
}  # fmt: skip


def add_parser(sub) -> None:
    """Register ``generate`` and its flags."""
    g = sub.add_parser(
        "generate",
        help="write synthetic data as .npy shards + manifest.json",
        description="Write y = X w + b + noise as X-*.npy / y-*.npy shards and manifest.json, "
        "a chunk at a time (bounded memory). The same seed gives the same files. The data is "
        "written beside --out and moved into place once complete; a folder that holds a "
        "dataset is replaced only with --overwrite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("--out", type=path_flag, required=True, help="folder to write")
    g.add_argument("--num-examples", type=int, required=True, help="rows in total")
    g.add_argument("--shards", type=int, default=1, help="files per array")
    g.add_argument(
        "--d", type=int, default=None, help="features (default: len(--w), else 2: w = [2, -3.4])"
    )
    g.add_argument("--w", type=floats, default=None, help="true weights (default: see --d)")
    g.add_argument("--b", type=float, default=None, help="true bias (default 4.2)")
    g.add_argument("--noise", type=float, default=0.01, help="label noise std")
    g.add_argument("--seed", type=int, default=0, help="seed of the data key")
    g.add_argument("--chunk", type=int, default=1 << 16, help="rows generated at a time")
    g.add_argument("--overwrite", action="store_true", help="replace the dataset already in --out")


def as_flags(message: str) -> str:
    """A ``generate_shards`` message with its argument names as this command's flags."""
    head = re.match(r"(\w+)([ =])", message)
    if head and head.group(1) in FLAGS:
        message = f"{FLAGS[head.group(1)]} {message[head.end() :]}"
    message = re.sub(r"\bnum_examples\b", "--num-examples", message)
    return message.replace("pass overwrite=True", "pass --overwrite")


def check_flags(args) -> None:
    """What only the command line can get wrong: ``--w`` and ``--d`` that disagree, the seed."""
    if args.w is not None and args.d is not None and len(args.w) != args.d:
        raise ValueError(
            f"--w has {len(args.w)} values but --d is {args.d}; give --d {len(args.w)} "
            "or leave --d out"
        )
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be an int in [0, 2**63), got {args.seed}")


def run(args) -> None:
    """Check the flags, generate, and report what was written."""
    check_flags(args)
    import jax

    start_backend()
    from jaxlin.stream import generate_shards

    start = time.perf_counter()
    interrupt = interrupt_of(args)
    shown = [start]

    def progress(rows: int, total: int) -> None:
        """Ctrl-C stops between chunks (the folder stays as it was); a line every few seconds."""
        interrupt.check(f"interrupted while generating; {args.out} was left as it was")
        now = time.perf_counter()
        if rows < total and now - shown[0] > 5:
            print(f"{rows}/{total} rows written ({now - start:.0f} s elapsed)", flush=True)
            shown[0] = now

    try:
        ds = generate_shards(
            jax.random.key(args.seed), args.out, args.num_examples, d=args.d,
            shards=args.shards, w=args.w, b=args.b, noise=args.noise, chunk=args.chunk,
            overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    except (ValueError, TypeError) as err:
        raise type(err)(as_flags(str(err))) from None
    size = sum(s.X.stat().st_size + s.y.stat().st_size for s in ds.shards)
    print(
        f"wrote {ds.num_examples} examples x {ds.num_features} features ({ds.dtype}) in "
        f"{len(ds.shards)} shards, {size / 2**20:.1f} MiB, to {ds.root} "
        f"({time.perf_counter() - start:.1f} s)"
    )
