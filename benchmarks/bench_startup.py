"""Start-up and driver cost: the first result of a fresh process, and `fit` against its program.

    python benchmarks/bench_startup.py              # 7 rounds of processes, 201 of calls
    python benchmarks/bench_startup.py --rounds 3   # quicker

Three measurements, each alternated in one run so that the machine's state
is shared by everything compared:

1. Whole processes, taking turns: `jaxlin train` on a machine that never ran
   it (`--no-cache`), `jaxlin train` with its compile cache warm, and the
   lecture's PyTorch script (`seed_torch.py`, needs the `bench` extra).
   The number of programs `jaxlin train` compiles is counted from JAX's own
   log (`JAX_LOG_COMPILES`).
2. A fresh Python process: `import jaxlin` apart, then the lecture's data,
   initial parameters and first `fit`: compiling every program, and, taking
   turns with it, with JAX's persistent compilation cache filled (the
   programs loaded from disk, as in every later process of a user who turns
   that cache on).
3. In warm processes: `jaxlin.fit` as a user calls it, against
   `jax.jit(jaxlin.make_train(config))` on the same data and key, alternated
   call by call; the ratio is the median over several processes, since it
   moves more from one process to the next than within one.

Writes `benchmarks/results/startup_<backend>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from machine import cpu_name  # noqa: E402 (benchmarks/machine.py, beside this script)

FIRST_FIT = """
import time
start = time.perf_counter()
import jax
import jaxlin
imported = time.perf_counter()
key_data, key_init, key_shuffle = jax.random.split(jax.random.key(0), 3)
data = jaxlin.synthetic_splits(key_data)
params = jaxlin.init_params(key_init, num_inputs=2)
params, history = jaxlin.fit(params, data.train, data.val, key=key_shuffle)
params["w"].block_until_ready()
done = time.perf_counter()
print(imported - start, done - imported)
"""

DRIVER = """
import json, statistics, sys, time
import jax
import jaxlin
rounds = int(sys.argv[1])
key_data, key_init, key_shuffle = jax.random.split(jax.random.key(0), 3)
data = jaxlin.synthetic_splits(key_data)
params = jaxlin.init_params(key_init, num_inputs=2)
program = jax.jit(jaxlin.make_train(jaxlin.TrainConfig()))


def compiled():
    return jax.block_until_ready(program(params, data.train, data.val, key_shuffle))


def fit():
    return jaxlin.fit(params, data.train, data.val, key=key_shuffle)


for f in (compiled, fit):  # compile, and check that both end at the same parameters
    f()
gap = abs(float(compiled()[0]["w"][0, 0]) - float(fit()[0]["w"][0, 0]))
times = {"fit": [], "program": []}
for _ in range(rounds):
    for name, f in (("program", compiled), ("fit", fit)):
        start = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - start)
print(json.dumps({"times": times, "gap": gap}))
"""


def _run(cmd: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``cmd`` run to the end; by default in this environment without JAX's persistent
    compilation cache (its variables, if set here, would make cold runs warm)."""
    env = COLD_ENV if env is None else env
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, **kwargs)


COLD_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAX_ENABLE_COMPILATION"))
}


def _timed(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    _run(cmd, **kwargs)
    return time.perf_counter() - start


def processes(rounds: int) -> dict:
    """The lecture's run as whole processes, taking turns: median seconds of each."""
    jaxlin_cmd = [sys.executable, "-m", "jaxlin", "train", "--quiet"]
    seed = [sys.executable, str(HERE / "seed_torch.py")]
    try:
        _run(seed, cwd=HERE)
        has_torch = True
    except subprocess.CalledProcessError:  # no torch (the bench extra): no reference
        has_torch = False
    times: dict[str, list[float]] = {"no_cache": [], "warm_cache": [], "torch": []}
    with tempfile.TemporaryDirectory() as cache:
        warm = [*jaxlin_cmd, "--cache-dir", cache]
        _run(warm)  # fills the cache
        for _ in range(rounds):
            times["no_cache"].append(_timed([*jaxlin_cmd, "--no-cache"]))
            times["warm_cache"].append(_timed(warm))
            if has_torch:
                times["torch"].append(_timed(seed, cwd=HERE))
    out = {k: {"median_s": statistics.median(v), "all_s": v} for k, v in times.items() if v}
    if has_torch:
        ref = out["torch"]["median_s"]
        for k in ("no_cache", "warm_cache"):
            out[k]["x_torch"] = out[k]["median_s"] / ref
    return out


def programs_compiled() -> int:
    """How many XLA programs a first `jaxlin train` compiles (JAX's compile log)."""
    env = {**COLD_ENV, "JAX_LOG_COMPILES": "1"}
    proc = _run([sys.executable, "-m", "jaxlin", "train", "--quiet", "--no-cache"], env=env)
    return sum("Finished XLA compilation" in line for line in proc.stderr.splitlines())


def first_fit(rounds: int) -> dict:
    """Fresh processes: `import jaxlin`, then data, params and the first fit (medians);
    compiling everything, and with JAX's persistent compilation cache filled, taking turns."""
    times: dict[str, list[float]] = {"imports": [], "firsts": [], "cached": []}
    with tempfile.TemporaryDirectory() as cache:
        cached_env = {
            **COLD_ENV,
            "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        _run([sys.executable, "-c", FIRST_FIT], env=cached_env)  # fills the cache
        for _ in range(rounds):
            out = _run([sys.executable, "-c", FIRST_FIT]).stdout.split()
            times["imports"].append(float(out[0]))
            times["firsts"].append(float(out[1]))
            out = _run([sys.executable, "-c", FIRST_FIT], env=cached_env).stdout.split()
            times["cached"].append(float(out[1]))
    return {
        "import_s": statistics.median(times["imports"]),
        "data_params_first_fit_s": statistics.median(times["firsts"]),
        "all_s": times["firsts"],
        "jax_cache_s": statistics.median(times["cached"]),
        "jax_cache_all_s": times["cached"],
    }


def driver(rounds: int, processes: int) -> dict:
    """`fit` against `jax.jit(make_train(config))`, alternated in each of `processes` warm
    processes: the median over processes of each one's medians.

    One process's ratio moves by several percent from one process to the next
    (where its code and arrays land in memory), more than within a process.
    """
    fits, programs, ratios = [], [], []
    for _ in range(processes):
        out = json.loads(_run([sys.executable, "-c", DRIVER, str(rounds)]).stdout)
        if out["gap"] > 1e-6:
            raise SystemExit(f"fit and make_train ended {out['gap']:.2e} apart: not comparable")
        fit, program = (statistics.median(out["times"][k]) for k in ("fit", "program"))
        fits.append(fit)
        programs.append(program)
        ratios.append(fit / program)
    return {
        "fit_s": statistics.median(fits),
        "program_s": statistics.median(programs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "rounds": rounds,
        "processes": processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of whole processes")
    parser.add_argument("--calls", type=int, default=201, help="alternated warm calls")
    parser.add_argument(
        "--driver-processes", type=int, default=7, help="warm processes that time fit"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    args = parser.parse_args()
    import jax
    import jaxlib
    import ml_dtypes

    env = {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "ml_dtypes": ml_dtypes.__version__,  # its import is part of JAX's (pyproject.toml)
        "backend": jax.default_backend(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    print("environment:", json.dumps(env))
    count = programs_compiled()
    print(f"programs compiled by a first `jaxlin train`: {count}")
    procs = processes(args.rounds)
    for name, r in procs.items():
        ratio = f"  ({r['x_torch']:.2f}x the PyTorch script)" if "x_torch" in r else ""
        print(f"  process {name:11} {r['median_s']:6.2f} s{ratio}")
    first = first_fit(args.rounds)
    print(
        f"fresh process: import jaxlin {first['import_s']:.2f} s, then data, params and "
        f"first fit {first['data_params_first_fit_s']:.2f} s "
        f"({first['jax_cache_s']:.2f} s with JAX's compilation cache filled)"
    )
    drv = driver(args.calls, args.driver_processes)
    print(
        f"warm: fit {drv['fit_s'] * 1e3:.3f} ms, jax.jit(make_train(config)) "
        f"{drv['program_s'] * 1e3:.3f} ms: fit costs {drv['ratio']:.2f}x its program "
        f"(median of {drv['processes']} processes: "
        f"{min(drv['ratios']):.2f}-{max(drv['ratios']):.2f})"
    )
    result = {
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
        "env": env,
        "programs_compiled": count,
        "processes": procs,
        "first_fit": first,
        "driver": drv,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"startup_{env['backend']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
