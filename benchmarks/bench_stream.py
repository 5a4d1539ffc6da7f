"""Streaming from disk vs the in-memory compiled engine: peak RSS and throughput.

Each measurement runs in a fresh subprocess that reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, from the OS) and its epoch
times. A mode's throughput is over the median of its epochs after the first
(compilation and the cold-cache first epoch excluded) across ``--rounds``
runs, the modes taking turns: on a shared machine one epoch, or one run, is
noisy (the in-memory engine's epoch alone has measured 0.16-0.28 s).
Streaming runs twice: ``order="exact"`` (``fit``'s shuffle) and ``order="runs"``
(``jaxlin.shuffle.permute_runs``). The data is generated once
with ``jaxlin generate`` into ``--dir``.

    python benchmarks/bench_stream.py --num-examples 2000000 --d 100 --memory
    python benchmarks/bench_stream.py --num-examples 20000000 --d 100   # 8 GB, stream only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import jax, numpy as np
import jaxlin
from jaxlin import stream
mode, root, batch, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
order = sys.argv[5] if len(sys.argv) > 5 else "exact"
ds = stream.open_dataset(root)
params = jaxlin.init_params(jax.random.key(1), ds.num_features)
marks = [time.perf_counter()]
def tick(end):
    marks.append(time.perf_counter())
kw = dict(lr=0.01, max_epochs=epochs, batch_size=batch, key=jax.random.key(2), callback=tick)
if mode == "stream":
    params, hist = stream.fit_stream(params, ds, order=order, **kw)
else:
    X = np.concatenate([np.load(s.X) for s in ds.shards])
    y = np.concatenate([np.load(s.y) for s in ds.shards])
    marks[0] = time.perf_counter()
    params, hist = jaxlin.fit(params, (X, y), **kw)
epoch_s = [b - a for a, b in zip(marks, marks[1:])]
name = mode if mode == "memory" else f"stream/{order}"
print(json.dumps(dict(mode=name, epoch_s=epoch_s, last_loss=float(hist.train_loss[-1].mean()),
    examples_per_s=ds.num_examples / float(np.median(epoch_s[1:])),
    peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def child(*argv: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-examples", type=int, default=2_000_000)
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--dir", type=Path, default=Path("/tmp/jaxlin-bench-stream"))
    p.add_argument("--memory", action="store_true", help="also run the in-memory engine")
    p.add_argument("--rounds", type=int, default=3, help="runs of each mode, taking turns")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/stream.json")
    a = p.parse_args()
    if a.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch (compile, cold cache) is not timed")

    start = time.perf_counter()
    gen = child("-c", "import resource, sys; from jaxlin.cli import main; rc = main(sys.argv[1:]);"
                " print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
                "generate", "--out", str(a.dir), "--num-examples", str(a.num_examples),
                "--d", str(a.d), "--shards", str(a.shards), "--overwrite")  # fmt: skip
    gen_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in a.dir.glob("*.npy"))
    print(gen.stdout.strip())
    modes = [("stream", "exact"), ("stream", "runs")] + [("memory", "exact")] * a.memory
    rounds = []  # the modes take turns, round after round: drifts on the machine hit all alike
    for _ in range(a.rounds):
        rounds += [json.loads(child("-c", CHILD, mode, str(a.dir), str(a.batch_size),
                                    str(a.epochs), order).stdout.splitlines()[-1])
                   for mode, order in modes]  # fmt: skip
    runs = []
    for name in dict.fromkeys(r["mode"] for r in rounds):
        mine = [r for r in rounds if r["mode"] == name]
        steady = [t for r in mine for t in r["epoch_s"][1:]]
        runs.append(dict(
            mode=name, epoch_s=[r["epoch_s"] for r in mine],
            last_loss=mine[-1]["last_loss"], steady_epoch_median_s=float(np.median(steady)),
            examples_per_s=a.num_examples / float(np.median(steady)),
            peak_rss_mib=max(r["peak_rss_mib"] for r in mine),
        ))  # fmt: skip
    import jax

    result = dict(
        timestamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        num_examples=a.num_examples, d=a.d, shards=a.shards, batch_size=a.batch_size,
        epochs=a.epochs, rounds=a.rounds, data_bytes=size, generate_s=gen_s,
        generate_peak_rss_mib=float(gen.stdout.strip().splitlines()[-1]), runs=runs,
        jax_version=jax.__version__, backend="cpu", cpus=os.cpu_count(),
    )  # fmt: skip
    if a.memory:
        for r in runs[:2]:
            result[f"{r['mode']}_over_memory_throughput"] = (
                r["examples_per_s"] / runs[-1]["examples_per_s"]
            )
    print(f"data: {a.num_examples} x {a.d} float32 = {size / 2**30:.2f} GiB, generated in "
          f"{gen_s:.0f} s (peak RSS {result['generate_peak_rss_mib']:.0f} MiB)")  # fmt: skip
    for r in runs:
        print(f"{r['mode']:>12}: {r['examples_per_s'] / 1e6:6.2f} M examples/s (median epoch "
              f"{r['steady_epoch_median_s']:.3f} s of "
              f"{'; '.join(', '.join(f'{t:.2f}' for t in e) for e in r['epoch_s'])}), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB")  # fmt: skip
    for r in runs[:2] if a.memory else []:
        ratio = result[f"{r['mode']}_over_memory_throughput"]
        print(f"{r['mode']} / memory throughput: {ratio:.2f}")
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results[f"{a.num_examples}x{a.d}"] = result
    a.out.write_text(json.dumps(results, indent=2))
    if not a.keep:
        shutil.rmtree(a.dir)


if __name__ == "__main__":
    main()
