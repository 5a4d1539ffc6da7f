"""The jit benchmark: the lecture's PyTorch pipeline against every jaxlin engine.

    python benchmarks/bench.py            # full run, about 5 minutes on 2 cores
    python benchmarks/bench.py --quick    # small sizes: a smoke test

In one run, on the same data, initial parameters and batch order, it times the
seed's PyTorch code (reference, `torch_reference.py`; needs the `bench` extra),
jaxlin eager, the jitted step in a Python loop, the same loop with optax.sgd,
and the compiled engines (`scan`, `affine`). It checks that all of them end at
the same parameters (to 1e-5) before it reports any time, then measures scaling
in n, d and batch size beside the memory-bandwidth floor it measures itself,
and the whole `jaxlin train` process against the seed's script as a process.
Writes `benchmarks/results/bench_<backend>.json` and `scaling_<backend>.png`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxlin

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from machine import cpu_name  # noqa: E402 (benchmarks/machine.py, beside this script)
from report import scaling_figure  # noqa: E402 (the figure, from the JSON this script writes)

try:
    import torch
    import torch_reference
except ImportError:  # the bench extra is not installed: skip the reference rows
    torch = None

compiled = jax.jit(
    jaxlin.engines.run_epochs, static_argnames=("batch_size", "shuffle", "num_epochs", "affine")
)


def timeit(fn, repeats: int) -> dict:
    """First call apart (compile), then ``repeats`` steady-state calls: median, min, max (s)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "first_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def bandwidth_gbps(repeats: int = 5) -> float:
    """Read bandwidth of this device: a jitted sum over 512 MiB, best of ``repeats``."""
    x = jnp.ones((128 * 1024 * 1024,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(_time(lambda: total(x).block_until_ready()) for _ in range(repeats))
    return 512 * 2**20 / best / 1e9


def one_core_gbps(repeats: int = 5) -> float:
    """Read bandwidth of one core: numpy's single-threaded sum over 512 MiB, best of ``repeats``."""
    x = np.ones((128 * 1024 * 1024,), np.float32)
    x.sum()
    best = min(_time(x.sum) for _ in range(repeats))
    return 512 * 2**20 / best / 1e9


SMALL_LOOP_FLAG = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1048576"
TUNED_FIT = """
import json, sys
sys.path.insert(0, {here!r})
from functools import partial
import jaxlin
from bench import problem, timeit
data, params, key = problem(1000, 2)
kwargs = dict(lr=0.03, max_epochs=3, batch_size=32, key=key)
fit = partial(jaxlin.fit, params, data.train, data.val, **kwargs)
t = timeit(fit, {repeats})
params = fit()[0]
w, b = params["w"].ravel().tolist(), float(params["b"][0])
print(json.dumps({{"timing": t, "w": w, "b": b}}))
"""


def tuned_fit(repeats: int) -> dict:
    """``fit`` on the lecture's problem in a process where XLA:CPU compiles small loops whole.

    ``SMALL_LOOP_FLAG`` (set before JAX starts, so in a subprocess) lets XLA emit
    each while loop of under 1 MiB as one kernel instead of a thunk per op.
    """
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {SMALL_LOOP_FLAG}"}
    code = TUNED_FIT.format(here=str(HERE), repeats=repeats)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def problem(n: int, d: int, num_val: int = 1000, seed: int = 0):
    """Data, initial params and shuffling key for an ``n x d`` problem (the seed's for 1000 x 2)."""
    k_data, k_init, k_shuffle = jax.random.split(jax.random.key(seed), 3)
    w = [2.0, -3.4] if d == 2 else list(np.linspace(-2, 2, d))
    data = jaxlin.synthetic_splits(k_data, w, 4.2, num_train=n, num_val=num_val)
    return data, jaxlin.init_params(k_init, d), k_shuffle


def orders_of(key, n: int, epochs: int) -> list[np.ndarray]:
    """The batch order of each epoch, exactly as every jaxlin engine reads it."""
    return [
        np.asarray(jaxlin.shuffle.permutation(jaxlin.shuffle.epoch_key(key, e), n))
        for e in range(epochs)
    ]


@functools.cache
def optax_step(lr: float):
    """A jitted step with optax.sgd in place of jaxlin.sgd, built once per lr."""
    import optax

    opt = optax.sgd(lr)

    @jax.jit
    def step(p, state, X, y):
        loss, grads = jax.value_and_grad(jaxlin.loss_fn)(p, X, y)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    return opt, step


def optax_loop(params, data, key, *, lr, batch_size, epochs):
    """The jitted step loop of the ``step`` engine, with optax.sgd (a cross-check)."""
    opt, step = optax_step(lr)
    state = opt.init(params)
    for e in range(epochs):
        for X, y in jaxlin.minibatches(
            *data.train, batch_size, key=jaxlin.shuffle.epoch_key(key, e)
        ):
            params, state, _ = step(params, state, X, y)
        jaxlin.loss_fn(params, *data.val).block_until_ready()
    return params


def implementations(data, params, key, *, lr, batch_size, epochs):
    """name -> zero-argument callable returning final (w, b) as numpy."""
    n = data.train[0].shape[0]
    fit = partial(
        jaxlin.fit,
        params,
        data.train,
        data.val,
        lr=lr,
        max_epochs=epochs,
        batch_size=batch_size,
        key=key,
    )

    def jaxlin_engine(engine):
        def run():
            out, _ = fit(engine=engine)
            return np.asarray(out["w"]).ravel(), np.asarray(out["b"])

        return run

    impls = {}
    if torch is not None:
        X = np.concatenate([np.asarray(data.train[0]), np.asarray(data.val[0])])
        y = np.concatenate([np.asarray(data.train[1]), np.asarray(data.val[1])])
        orders = orders_of(key, n, epochs)
        w0, b0 = np.array(params["w"]), np.array(params["b"])
        for loader in ("scratch", "dataloader"):
            impls[f"torch {loader} (seed, reference)"] = partial(
                torch_reference.train,
                X,
                y,
                w0,
                b0,
                orders,
                num_train=n,
                num_val=len(X) - n,
                lr=lr,
                batch_size=batch_size,
                max_epochs=epochs,
                loader=loader,
            )
    impls["jaxlin eager"] = jaxlin_engine("eager")
    impls["jaxlin step (jit, Python loop)"] = jaxlin_engine("step")

    def optax_run():
        out = optax_loop(params, data, key, lr=lr, batch_size=batch_size, epochs=epochs)
        return np.asarray(out["w"]).ravel(), np.asarray(out["b"])

    impls["optax.sgd step (jit, Python loop)"] = optax_run
    impls["jaxlin scan (compiled)"] = jaxlin_engine("scan")
    impls["jaxlin affine (compiled)"] = jaxlin_engine("affine")
    return impls


def default_problem(repeats: int) -> list[dict]:
    """The seed's run, every implementation, same batches; parameters checked equal first."""
    data, params, key = problem(1000, 2)
    kwargs = dict(lr=0.03, batch_size=32, epochs=3)
    impls = implementations(data, params, key, **kwargs)
    finals, firsts = {}, {}  # the first call of each: its compile (nothing ran before it)
    for name, fn in impls.items():
        start = time.perf_counter()
        finals[name] = fn()
        firsts[name] = time.perf_counter() - start
    ref_w, ref_b = finals["jaxlin step (jit, Python loop)"]
    for name, (w, b) in finals.items():
        gap = max(np.abs(w - ref_w).max(), np.abs(b - ref_b).max())
        if gap > 1e-5:
            raise SystemExit(f"{name} ended {gap:.2e} away from the step engine: not comparable")
    rows = []
    tuned = tuned_fit(repeats)
    gap = max(np.abs(np.asarray(tuned["w"]) - ref_w).max(), abs(tuned["b"] - ref_b[0]))
    if gap > 1e-5:
        raise SystemExit(f"the small-loop run ended {gap:.2e} away from the step engine")
    for name, fn in impls.items():
        slow = name.startswith(("torch", "jaxlin eager", "jaxlin step", "optax"))
        t = timeit(fn, max(3, repeats // 4) if slow else repeats)
        t["first_s"] = firsts[name]
        w, b = finals[name]
        rows.append(
            {
                "name": name,
                **t,
                "samples_per_s": 3000 / t["median_s"],
                "w_error": (np.array(jaxlin.TRUE_W) - w).tolist(),
                "b_error": float(jaxlin.TRUE_B - b[0]),
            }
        )
    rows.append(
        {
            "name": "jaxlin scan, XLA small-loop flag",
            **tuned["timing"],
            "samples_per_s": 3000 / tuned["timing"]["median_s"],
            "w_error": (np.array(jaxlin.TRUE_W) - np.asarray(tuned["w"])).tolist(),
            "b_error": jaxlin.TRUE_B - tuned["b"],
            "xla_flags": SMALL_LOOP_FLAG,
        }
    )
    return rows


def driver_overhead(repeats: int) -> dict:
    """`fit` as a user calls it against `jax.jit(make_train(config))`, alternated call by call.

    Same data, initial parameters and key; medians of ``repeats`` rounds.
    """
    data, params, key = problem(1000, 2)
    program = jax.jit(jaxlin.make_train(jaxlin.TrainConfig()))

    def compiled():
        return jax.block_until_ready(program(params, data.train, data.val, key))

    def fit():
        return jaxlin.fit(params, data.train, data.val, key=key)

    gap = np.abs(np.asarray(compiled()[0]["w"]) - np.asarray(fit()[0]["w"])).max()
    if gap > 1e-6:
        raise SystemExit(f"fit and make_train ended {gap:.2e} apart: not comparable")
    times = {"fit": [], "program": []}
    for _ in range(repeats):
        for name, f in (("program", compiled), ("fit", fit)):
            times[name].append(_time(f))
    fit_s, program_s = (statistics.median(times[k]) for k in ("fit", "program"))
    return {"fit_s": fit_s, "program_s": program_s, "ratio": fit_s / program_s, "rounds": repeats}


def engine_time(n: int, d: int, batch_size: int, epochs: int, affine: bool, repeats: int) -> dict:
    """Steady-state time of the compiled program alone (no input checks, no host reads)."""
    data, params, key = problem(n, d, num_val=min(n, 1000))
    args = (params, *data.train, data.val, key, 0, 0.01, None)  # as fit passes them
    static = dict(batch_size=batch_size, shuffle=True, num_epochs=epochs, affine=affine)
    t = timeit(lambda: jax.block_until_ready(compiled(*args, **static)), repeats)
    t["samples_per_s"] = n * epochs / t["median_s"]
    return t


def loop_time(n, d, batch_size, epochs, engine, repeats) -> dict:
    """Time of fit with a Python-loop engine (or the torch reference) on the same problem."""
    data, params, key = problem(n, d, num_val=min(n, 1000))
    if engine == "torch":
        X = np.concatenate([np.asarray(data.train[0]), np.asarray(data.val[0])])
        y = np.concatenate([np.asarray(data.train[1]), np.asarray(data.val[1])])
        orders = orders_of(key, n, epochs)
        fn = partial(
            torch_reference.train,
            X,
            y,
            np.asarray(params["w"]),
            np.asarray(params["b"]),
            orders,
            num_train=n,
            num_val=len(X) - n,
            lr=0.01,
            batch_size=batch_size,
            max_epochs=epochs,
        )
    else:
        fn = partial(
            jaxlin.fit,
            params,
            data.train,
            data.val,
            lr=0.01,
            max_epochs=epochs,
            batch_size=batch_size,
            key=key,
            engine=engine,
        )
    t = timeit(fn, repeats)
    t["samples_per_s"] = n * epochs / t["median_s"]
    return t


def compile_times(quick: bool) -> list[dict]:
    """Compile time of each compiled engine (lower + compile, no cache), growing n at d = 2."""
    rows = []
    for n in (1000, 100_000) if quick else (1000, 100_000, 1_000_000, 10_000_000):
        data, params, key = problem(n, 2)
        args = (params, *data.train, data.val, key, 0, 0.03, None)  # as fit passes them
        for affine in (False, True):
            static = dict(batch_size=32, shuffle=True, num_epochs=3, affine=affine)
            jax.clear_caches()
            start = time.perf_counter()
            lowered = compiled.lower(*args, **static)
            traced = time.perf_counter() - start
            lowered.compile()
            rows.append(
                {
                    "n": n,
                    "engine": "affine" if affine else "scan",
                    "trace_s": traced,
                    "compile_s": time.perf_counter() - start - traced,
                }
            )
            r = rows[-1]
            print(
                f"  n={n:>10,} {r['engine']:6}: trace {r['trace_s']:.3f} s,"
                f" compile {r['compile_s']:.3f} s"
            )
    return rows


def scaling(quick: bool, repeats: int, gbps: float, one_core: float) -> list[dict]:
    """Scaling in n (d = 2, B = 32), in d (n = 1e5, B = 32) and in batch size (n = 1e5, d = 2)."""
    if quick:
        plan = [
            ("n", 1000, 2, 32),
            ("n", 10_000, 2, 32),
            ("d", 10_000, 10, 32),
            ("batch", 10_000, 2, 256),
        ]
    else:
        plan = [("n", n, 2, 32) for n in (1000, 10_000, 100_000, 1_000_000, 10_000_000)]
        plan += [("d", 100_000, d, 32) for d in (2, 10, 100, 1000)]
        plan += [("batch", 100_000, 2, b) for b in (1, 8, 32, 256, 1024, 4096)]
        plan += [("target", 1_000_000, 100, 1024)]
    rows = []
    for axis, n, d, batch in plan:
        epochs = 3 if n <= 100_000 else 1
        floor = n * (d + 1) * 4 / (gbps * 1e9)  # X and y read once per epoch
        row = {
            "axis": axis,
            "n": n,
            "d": d,
            "batch_size": batch,
            "epochs": epochs,
            "floor_s_per_epoch": floor,
        }
        reps = repeats if n * d <= 2e6 else max(3, repeats // 3)
        row["scan"] = engine_time(n, d, batch, epochs, False, reps)
        if d <= 32:
            row["affine"] = engine_time(n, d, batch, epochs, True, reps)
        if n * epochs // batch <= 20_000:
            row["step"] = loop_time(n, d, batch, epochs, "step", 3)
        if torch is not None and n * epochs // batch <= 10_000:
            row["torch"] = loop_time(n, d, batch, epochs, "torch", 3)
        best = min(row[k]["median_s"] for k in ("scan", "affine") if k in row) / epochs
        row["best_compiled_vs_floor"] = floor / best
        row["best_compiled_vs_one_core_floor"] = floor * gbps / one_core / best
        rows.append(row)
        print(
            f"  {axis:6} n={n:>9,} d={d:>5} B={batch:>5}: "
            + "  ".join(
                f"{k} {row[k]['samples_per_s'] / 1e6:8.2f} M/s"
                for k in ("scan", "affine", "step", "torch")
                if k in row
            )
            + f"  | floor {floor * 1e3:8.2f} ms/epoch,"
            + f" best compiled at {row['best_compiled_vs_floor']:.0%} of it"
            + f" ({row['best_compiled_vs_one_core_floor']:.0%} of one core's)",
            flush=True,
        )
    return rows


def processes(repeats: int) -> dict:
    """``jaxlin train`` as a whole process (cold and warm compile cache) vs the seed's script."""
    out = {}
    cold = []
    for _ in range(max(3, repeats // 4)):  # each cold run in a new, empty cache folder
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, "-m", "jaxlin", "train", "--quiet", "--cache-dir", cache]
            cold.append(_time(lambda c=cmd: subprocess.run(c, check=True, capture_output=True)))
    out["jaxlin train (cold cache)"] = statistics.median(cold)
    with tempfile.TemporaryDirectory() as cache:
        jaxlin_cmd = [sys.executable, "-m", "jaxlin", "train", "--quiet", "--cache-dir", cache]
        subprocess.run(jaxlin_cmd, check=True, capture_output=True)  # fills the cache
        warm = [
            _time(lambda: subprocess.run(jaxlin_cmd, check=True, capture_output=True))
            for _ in range(repeats)
        ]
        out["jaxlin train (warm cache)"] = statistics.median(warm)
    nocache = [sys.executable, "-m", "jaxlin", "train", "--quiet", "--no-cache"]
    out["jaxlin train (--no-cache)"] = statistics.median(
        _time(lambda: subprocess.run(nocache, check=True, capture_output=True))
        for _ in range(repeats)
    )
    if torch is not None:
        seed = [sys.executable, str(HERE / "seed_torch.py")]
        out["seed PyTorch script"] = statistics.median(
            _time(lambda: subprocess.run(seed, check=True, capture_output=True, cwd=HERE))
            for _ in range(repeats)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--repeats", type=int, default=20, help="steady-state repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for JSON and PNG")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backend = jax.default_backend()
    env = {
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "torch": torch.__version__ if torch is not None else None,
        "backend": backend,
        "device": str(jax.devices()[0].device_kind),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    import jaxlib
    import ml_dtypes

    env["jaxlib"] = jaxlib.__version__
    env["ml_dtypes"] = ml_dtypes.__version__  # its import is part of JAX's (pyproject.toml)
    print("environment:", json.dumps(env))
    gbps = bandwidth_gbps()
    one_core = one_core_gbps()
    print(f"measured read bandwidth: {gbps:.1f} GB/s (all cores), {one_core:.1f} GB/s (one core)")

    print(
        "\nthe lecture's problem (1000 train / 1000 val, d = 2, batch 32, lr 0.03, 3 epochs),"
        " same batches:"
    )
    rows = default_problem(args.repeats)
    ref = next((r for r in rows if r["name"].startswith("torch scratch")), None)
    print(
        f"  {'implementation':38} {'median':>10} {'min-max':>19} {'first call':>11}"
        f" {'samples/s':>11} {'x torch':>8}"
    )
    for r in rows:
        speedup = f"{ref['median_s'] / r['median_s']:8.1f}" if ref else "       -"
        print(
            f"  {r['name']:38} {r['median_s'] * 1e3:8.3f}ms"
            f" {r['min_s'] * 1e3:8.3f}-{r['max_s'] * 1e3:8.3f}ms"
            f" {r['first_s']:10.3f}s {r['samples_per_s'] / 1e6:9.2f} M {speedup}"
        )
    print("  every implementation ended within 1e-5 of the step engine's parameters")
    driver = driver_overhead(max(41, args.repeats))
    print(
        f"  fit {driver['fit_s'] * 1e3:.3f} ms against its program alone, "
        f"jax.jit(make_train(config)), {driver['program_s'] * 1e3:.3f} ms (alternated, "
        f"{driver['rounds']} rounds): the driver costs {driver['ratio']:.2f}x the program"
    )

    print("\ncompile time of the compiled engines (3 epochs, batch 32; no persistent cache):")
    compiles = compile_times(args.quick)

    print("\nscaling (compiled engines: the jitted program alone; step and torch: the whole loop):")
    scale = scaling(args.quick, max(3, args.repeats // 4), gbps, one_core)

    procs = {} if args.quick else processes(3)
    for name, t in procs.items():
        print(f"  process: {name:32} {t:6.2f} s")

    result = {
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
        "env": env,
        "bandwidth_gbps": gbps,
        "one_core_bandwidth_gbps": one_core,
        "default_problem": rows,
        "driver": driver,
        "compile": compiles,
        "scaling": scale,
        "processes": procs,
    }
    suffix = f"{backend}{'_quick' if args.quick else ''}"
    (args.out / f"bench_{suffix}.json").write_text(json.dumps(result, indent=1))
    scaling_figure(result, args.out / f"scaling_{suffix}.png")
    print(f"\nwrote {args.out / f'bench_{suffix}.json'} and {args.out / f'scaling_{suffix}.png'}")


if __name__ == "__main__":
    main()
