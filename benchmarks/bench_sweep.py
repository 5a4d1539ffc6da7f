"""How the cost of a sweep grows with the number of configurations.

The seed's problem (1000 train / 1000 val examples, d = 2, batch 32, 3 epochs;
plus 1000 test examples for the sweep). One configuration trained with the
compiled engine is timed two ways: ``fit`` (public: input checks, host copy of
the history, divergence check) and ``jaxlin.engines.compiled.epochs_program``
(the jitted ``run_epochs`` alone). Sweeps are timed through the public ``jaxlin.sweep``
(checks, init, training, val and test losses, host copies), on a grid of
``C / 8`` learning rates x 8 seeds, and, to show the cost of the per-seed
shuffle, on ``C`` distinct seeds x 1 learning rate.

Steady state: every program is compiled (and timed apart) before timing;
each measurement is the median of ``--repeats`` calls, with one-config
baselines measured between the sweep calls of the same size (side by side),
so a busy machine slows both. Run:

    PYTHONPATH=. python benchmarks/bench_sweep.py [--repeats 7] [--max-configs 16384]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from machine import cpu_name  # benchmarks/machine.py, beside this script

import jaxlin
from jaxlin.engines.compiled import epochs_program

RESULTS = Path(__file__).parent / "results"
SIZES = (1, 16, 256, 1024, 4096, 16384)


def timed(f) -> float:
    start = time.perf_counter()
    jax.block_until_ready(f())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-configs", type=int, default=SIZES[-1])
    parser.add_argument("--max-distinct", type=int, default=4096, help="largest C x 1 lr run")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep.json")
    args = parser.parse_args()

    data = jaxlin.synthetic_splits(jax.random.key(0), num_test=1000)
    key = jax.random.key(1)
    init_key, shuffle_key = jaxlin.sweeps.config_keys(key, 0)
    params = jaxlin.init_params(init_key, 2)
    X, y = data.train
    lr, clip = 0.03, None  # as fit passes them: no clipping code in the program

    program = epochs_program(32, True, 3)

    def one_scan():
        return program(params, X, y, data.val, shuffle_key, 0, lr, clip)

    def one_fit():
        return jaxlin.fit(params, data.train, data.val, lr=0.03, key=shuffle_key)

    def make_sweep(num_lrs, num_seeds):
        lrs = np.geomspace(1e-3, 0.3, num_lrs) if num_lrs > 1 else [0.03]
        return lambda: jaxlin.sweep(data.train, data.val, data.test, lrs=lrs, seeds=num_seeds,
                                    key=key, max_epochs=3, batch_size=32)  # fmt: skip

    compile_s = {"fit": timed(one_fit), "scan": timed(one_scan)}
    cases = []
    for c in (s for s in SIZES if s <= args.max_configs):
        seeds = min(8, c)
        cases.append((f"{c // seeds} lr x {seeds} seeds", c, c // seeds, seeds))
    for c in (s for s in SIZES if 1 < s <= min(args.max_distinct, args.max_configs)):
        cases.append((f"1 lr x {c} seeds", c, 1, c))

    rows = []
    header = (f"{'grid':>22} {'configs':>7} {'compile s':>9} {'sweep ms':>9} {'fit ms':>7} "
              f"{'scan ms':>7} {'x fit':>7} {'x scan':>7} {'configs/s':>10}")  # fmt: skip
    print(header)
    for name, c, num_lrs, num_seeds in cases:
        run = make_sweep(num_lrs, num_seeds)
        compile_time = timed(run)  # first call: compile + run
        sweeps, fits, scans = [], [], []
        for _ in range(args.repeats):  # side by side: baselines between sweep calls
            sweeps.append(timed(run))
            fits.append(np.median([timed(one_fit) for _ in range(5)]))
            scans.append(np.median([timed(one_scan) for _ in range(5)]))
        s, f, k = (float(np.median(v)) for v in (sweeps, fits, scans))
        row = dict(grid=name, configs=c, lrs=num_lrs, seeds=num_seeds, compile_s=compile_time,
                   sweep_s=s, fit_s=f, scan_s=k, ratio_vs_fit=s / f, ratio_vs_scan=s / k,
                   configs_per_s=c / s)  # fmt: skip
        rows.append(row)
        line = f"{name:>22} {c:>7} {compile_time:>9.2f} {s * 1e3:>9.2f} {f * 1e3:>7.3f} "
        print(line + f"{k * 1e3:>7.3f} {s / f:>7.1f} {s / k:>7.1f} {c / s:>10.0f}", flush=True)

    record = {
        "problem": "seed: 1000 train / 1000 val (+1000 test), d=2, batch 32, 3 epochs",
        "baseline_fit": "jaxlin.fit, one config (checks + compiled scan + host history)",
        "baseline_scan": "epochs_program, one config (jitted run_epochs alone)",
        "sweep": "jaxlin.sweep (public: checks, one jit of the lane-layout grid, host copies)",
        "repeats": args.repeats,
        "compile_s_one_config": compile_s,
        "rows": rows,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": cpu_name(),
        "cpu_count": __import__("os").cpu_count(),
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, cpu {record['cpu']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
