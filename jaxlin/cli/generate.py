"""``jaxlin generate``: the synthetic problem written to disk as ``.npy`` shards."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jaxlin.cli.common import floats


def add_parser(sub) -> None:
    """Register ``generate`` and its flags."""
    g = sub.add_parser(
        "generate",
        help="write synthetic data as .npy shards + manifest.json",
        description="Write y = X w + b + noise as X-*.npy / y-*.npy shards and manifest.json, "
        "a chunk at a time (bounded memory). The same seed gives the same files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("--out", type=Path, required=True, help="folder to write")
    g.add_argument("--num-examples", type=int, required=True, help="rows in total")
    g.add_argument("--shards", type=int, default=1, help="files per array")
    g.add_argument("--d", type=int, default=2, help="features (w = [2, -3.4] when d = 2)")
    g.add_argument("--w", type=floats, default=None, help="true weights (default: see --d)")
    g.add_argument("--b", type=float, default=None, help="true bias (default 4.2)")
    g.add_argument("--noise", type=float, default=0.01, help="label noise std")
    g.add_argument("--seed", type=int, default=0, help="seed of the data key")
    g.add_argument("--chunk", type=int, default=1 << 16, help="rows generated at a time")


def run(args) -> None:
    """Generate and report what was written."""
    import jax

    from jaxlin.stream import generate_shards

    d = len(args.w) if args.w is not None else args.d
    start = time.perf_counter()
    ds = generate_shards(
        jax.random.key(args.seed), args.out, args.num_examples, d=d, shards=args.shards,
        w=args.w, b=args.b, noise=args.noise, chunk=args.chunk,
    )  # fmt: skip
    size = sum(s.X.stat().st_size + s.y.stat().st_size for s in ds.shards)
    print(
        f"wrote {ds.num_examples} examples x {ds.num_features} features ({ds.dtype}) in "
        f"{len(ds.shards)} shards, {size / 2**20:.1f} MiB, to {ds.root} "
        f"({time.perf_counter() - start:.1f} s)"
    )
