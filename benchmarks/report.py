"""Write the documentation's benchmarks page from the benchmark scripts' JSON.

    python benchmarks/report.py            # writes docs/benchmarks.md
    python benchmarks/report.py --check    # exit 1 if docs/benchmarks.md is not up to date
    python benchmarks/report.py --figure   # also redraws the scaling figure from its JSON

Every figure on the page is read from ``benchmarks/results/*.json``: the
tables, the machine, the versions and the date. A JSON that records no date
is dated by its last commit (``git log -1 --format=%cs -- FILE``), and the
page's footer says which dates came from where. ``tests/test_docs.py``
regenerates the page and compares it with the committed one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
FIGURE = "benchmarks/results/scaling_cpu.png"  # as the site serves it (docs/hooks.py)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def commit_date(path: Path) -> str | None:
    """The date of the last commit that touched ``path``, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", rel(path)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


class Dates:
    """Each file's date: the JSON's own ``timestamp``, else its last commit's."""

    def __init__(self):
        self.recorded: list[str] = []
        self.from_git: list[str] = []

    def __call__(self, path: Path, data: dict) -> str:
        if isinstance(data.get("timestamp"), str):
            self.recorded.append(rel(path))
            return data["timestamp"].split(" ")[0]
        runs = list(data.values())  # a file of runs, each with its own timestamp
        if runs and all(isinstance(r, dict) and isinstance(r.get("timestamp"), str) for r in runs):
            self.recorded.append(rel(path))
            return ", ".join(sorted({r["timestamp"].split(" ")[0] for r in runs}))
        self.from_git.append(rel(path))
        return commit_date(path) or "unknown (not committed)"


def ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def rate(x: float) -> str:
    return f"{x / 1e6:.3g} M" if x >= 1e5 else f"{x / 1e3:.3g} k"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def made_by(script: str, path: Path, data: dict, dates: Dates) -> str:
    """Which script made ``path``, when, and on what machine and versions."""
    env = data["env"]
    return (
        f"Made by `python benchmarks/{script}` on {dates(path, data)}: "
        f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores, backend {env['backend']}; "
        f"Python {env.get('python', '?')}, jax {env['jax']}, jaxlib {env['jaxlib']}"
        + (f", ml_dtypes {env['ml_dtypes']}" if env.get("ml_dtypes") else "")
    )


def bench_section(path: Path, dates: Dates) -> list[str]:
    data = json.loads(path.read_text())
    env = data["env"]
    out = [f"## Engines (`{rel(path)}`)", ""]
    out += [
        made_by("bench.py", path, data, dates)
        + (f", torch {env['torch']}" if env.get("torch") else "")
        + ". Memory read bandwidth measured in the same run: "
        f"{data['bandwidth_gbps']:.3g} GB/s with every core (a jitted sum), "
        f"{data['one_core_bandwidth_gbps']:.3g} GB/s on one core (numpy's sum).",
        "",
        "Before it times anything, the script checks that every implementation ends "
        "within 1e-5 of the same parameters, on the same data, initial parameters and "
        "batch order. Times are the median and range of the steady-state repeats, "
        "with the first call (compilation included) apart.",
        "",
        "### The lecture's problem",
        "",
        "1000 training and 1000 validation examples, d = 2, batch 32, lr 0.03, "
        "3 epochs. The reference is the lecture's PyTorch code "
        "(`benchmarks/torch_reference.py`). Each row times a whole training call as a "
        "user makes it: for jaxlin's engines, `jaxlin.fit` with its checks and host "
        "reads (the scaling table below times the compiled programs alone).",
        "",
    ]
    rows = data["default_problem"]
    ref = rows[0]["median_s"]
    body = []
    for r in rows:
        name = r["name"] + (f" (`XLA_FLAGS={r['xla_flags']}`)" if r.get("xla_flags") else "")
        body.append([
            name, ms(r["median_s"]), f"{ms(r['min_s'])} - {ms(r['max_s'])}",
            ms(r["first_s"]), rate(r["samples_per_s"]), f"{ref / r['median_s']:.3g}",
        ])  # fmt: skip
    out += table(
        ["implementation", "median", "min - max", "first call", "samples/s",
         f"x {rows[0]['name']}"],
        body,
    )  # fmt: skip

    driver = data.get("driver")
    if driver:
        out += [
            f"`fit` as a user calls it (the `jaxlin scan` row) against its compiled program "
            f"alone, `jax.jit(make_train(config))`, alternated call by call ({driver['rounds']} "
            f"rounds, medians): {ms(driver['fit_s'])} against {ms(driver['program_s'])}, "
            f"so the driver (its checks, the host reads) costs {driver['ratio']:.2f}x the "
            "program it runs.",
            "",
        ]
    out += ["### Scaling", "", f"![Samples per second against n, d and batch size]({FIGURE})", ""]
    out += [
        "Samples per second of each engine's steady state, timing the compiled "
        "programs alone (`run_epochs` jitted, not `fit`; `step`: the jitted step in a "
        "Python loop; `torch`: the reference). The bandwidth bound is the most samples "
        "per second that reading X and y once at the measured bandwidth allows; the "
        "last columns give the fastest compiled engine's fraction of that bound, with "
        "every core and with one. A problem on more than one axis is shown once, with "
        "the first of its measurements.",
        "",
    ]
    engines = ["scan", "affine", "step", "torch"]
    rows_by_problem: dict[str, list] = {}
    for r in data["scaling"]:
        epochs = f"{r['epochs']} epoch" + "s" * (r["epochs"] != 1)
        problem = f"n = {r['n']:,}, d = {r['d']}, batch {r['batch_size']}, {epochs}"
        if problem in rows_by_problem:
            rows_by_problem[problem][0] += f", {r['axis']}"
            continue
        cells = [rate(r[e]["samples_per_s"]) if e in r else "-" for e in engines]
        rows_by_problem[problem] = [
            r["axis"], problem, *cells, f"{r['best_compiled_vs_floor']:.1%}",
            f"{r['best_compiled_vs_one_core_floor']:.1%}",
        ]  # fmt: skip
    out += table(
        ["varies", "problem", *engines, "of the bound", "of the one-core bound"],
        list(rows_by_problem.values()),
    )

    out += ["### Compile time", "", "3 epochs, without the persistent compilation cache.", ""]
    body = [
        [f"{r['n']:,}", r["engine"], f"{r['trace_s']:.3g} s", f"{r['compile_s']:.3g} s"]
        for r in data["compile"]
    ]
    out += table(["n", "engine", "trace", "compile"], body)

    out += [
        "### Whole process",
        "",
        "The lecture's run as a process, from start to exit (medians).",
        "",
    ]
    out += table(["command", "time"], [[k, f"{v:.3g} s"] for k, v in data["processes"].items()])
    return out


def startup_section(path: Path, dates: Dates) -> list[str]:
    data = json.loads(path.read_text())
    out = [f"## Start-up (`{rel(path)}`)", ""]
    out += [
        made_by("bench_startup.py", path, data, dates) + ".",
        "",
        "The lecture's run as whole processes, taking turns in one run (medians): "
        "`jaxlin train --quiet` on a machine that never ran it (`--no-cache`), the same "
        "with its cache folder filled by an earlier run (the programs are loaded, not "
        "compiled), and the lecture's PyTorch script (`benchmarks/seed_torch.py`). "
        f"A first `jaxlin train` compiles {data['programs_compiled']} XLA programs.",
        "",
    ]
    names = {
        "no_cache": "`jaxlin train` (`--no-cache`)",
        "warm_cache": "`jaxlin train` (cache filled)",
        "torch": "the PyTorch script",
    }
    body = [
        [names[k], f"{v['median_s']:.3g} s", f"{v['x_torch']:.2f}" if "x_torch" in v else "1"]
        for k, v in data["processes"].items()
    ]
    out += table(["process", "time", "x the PyTorch script"], body)
    first, driver = data["first_fit"], data["driver"]
    out += [
        "In a fresh Python process, `import jax` and `import jaxlin` took "
        f"{first['import_s']:.3g} s, then the "
        f"lecture's data, initial parameters and first `fit` {first['data_params_first_fit_s']:.3g}"
        " s (compiling included)"
        + (
            f"; {first['jax_cache_s']:.3g} s with JAX's persistent compilation cache filled "
            "([Compilation](engines.md#compilation) says how to turn it on)"
            if "jax_cache_s" in first
            else ""
        )
        + ". In a warm process, `fit` took "
        f"{ms(driver['fit_s'])} against {ms(driver['program_s'])} for its compiled program "
        f"alone, `jax.jit(make_train(config))` ({driver['ratio']:.2f}x, alternated, "
        f"{driver['rounds']} rounds{_across(driver)}).",
        "",
    ]
    return out


def _across(driver: dict) -> str:
    """How the driver's ratio varied over processes, when it was measured in several."""
    if "ratios" not in driver:
        return ""
    low, high = min(driver["ratios"]), max(driver["ratios"])
    return f" in each of {driver['processes']} processes, the median of {low:.2f}-{high:.2f}"


def sweep_section(path: Path, dates: Dates) -> list[str]:
    data = json.loads(path.read_text())
    out = [f"### `{rel(path)}`", ""]
    out += [
        f"{dates(path, data)}: {data.get('cpu', '?')}, {data.get('cpu_count', '?')} cores, "
        f"backend {data['backend']}, jax {data['jax_version']}; medians of "
        f"{data['repeats']} repeats. Problem: {data['problem']}.",
        "",
    ]
    body = [
        [
            r["grid"], f"{r['configs']:,}", ms(r["sweep_s"]), f"{r['ratio_vs_fit']:.3g}",
            f"{r['ratio_vs_scan']:.3g}", f"{r['configs_per_s']:,.0f}", f"{r['compile_s']:.3g} s",
        ]
        for r in data["rows"]
    ]  # fmt: skip
    out += table(
        ["grid", "configs", "sweep", "x one `fit`", "x one compiled run", "configs/s", "compile"],
        body,
    )
    return out


def stream_section(path: Path, dates: Dates) -> list[str]:
    data = json.loads(path.read_text())
    date = dates(path, data)
    out = [f"## Data on disk (`{rel(path)}`)", ""]
    out += [
        f"Made by `python benchmarks/bench_stream.py` on {date}, with the data in the page "
        "cache. Throughput is over the median of every epoch after the first, the modes "
        "taking turns over the rounds; peak RSS is the process's own.",
        "",
    ]
    for run in data.values():
        gib = run["data_bytes"] / 2**30
        out += [
            f"### {run['num_examples']:,} x {run['d']} ({gib:.3g} GiB, {run['shards']} shards)",
            "",
            (f"Measured on {run['timestamp'].split(' ')[0]}. " if "timestamp" in run else "")
            + f"Batch {run['batch_size']}, {run['epochs']} epochs, {run['rounds']} round(s); "
            f"backend {run['backend']}, {run['cpus']} cores, jax {run['jax_version']}. "
            f"Generating the data took {run['generate_s']:.3g} s "
            f"(peak RSS {run['generate_peak_rss_mib']:.0f} MiB).",
            "",
        ]
        memory = next((r for r in run["runs"] if r["mode"] == "memory"), None)
        body = []
        for r in run["runs"]:
            ratio = f"{r['examples_per_s'] / memory['examples_per_s']:.2f}" if memory else "-"
            body.append([
                r["mode"], rate(r["examples_per_s"]), ratio,
                f"{r['steady_epoch_median_s']:.3g} s", f"{r['peak_rss_mib']:.0f} MiB",
            ])  # fmt: skip
        out += table(["mode", "examples/s", "x in memory", "epoch", "peak RSS"], body)
    return out


def render() -> str:
    """The page, from the JSON files as they are now."""
    dates = Dates()
    lines = [
        "<!-- Generated by `python benchmarks/report.py` from benchmarks/results/*.json;"
        " do not edit. -->",
        "",
        "# Benchmarks",
        "",
        "Every figure on this page is read from the JSON that the benchmark scripts "
        "write, with the machine and versions they record. To measure your own machine:",
        "",
        '<!-- skip: next "installs torch, then benchmarks for minutes" -->',
        "```bash",
        'pip install -e ".[bench]"',
        "python benchmarks/bench.py && python benchmarks/report.py",
        "```",
        "",
    ]
    for path in sorted(RESULTS.glob("bench_*.json")):
        lines += bench_section(path, dates)
    for path in sorted(RESULTS.glob("startup_*.json")):
        lines += startup_section(path, dates)
    sweeps = [RESULTS / "sweep.json"] if (RESULTS / "sweep.json").exists() else []
    if sweeps:
        lines += [
            "## Sweeps",
            "",
            "`python benchmarks/bench_sweep.py`: grids of learning rates x seeds through "
            "`jaxlin.sweep` (its checks, one compiled call, the host copies), against one "
            "configuration trained with `fit` and with its compiled program alone.",
            "",
        ]
        for path in sweeps:
            lines += sweep_section(path, dates)
    stream = RESULTS / "stream.json"
    if stream.exists():
        lines += stream_section(stream, dates)
    if dates.from_git:
        lines += [
            "---",
            "",
            "A date above comes from the JSON itself where it records one, otherwise from "
            "the file's last commit (`git log -1 --format=%cs -- FILE`).",
            "",
        ]
    return "\n".join(lines)


# Each line of the scaling figure: what it times, in the legend's words.
SCALING_LINES = {
    "scan": "jaxlin scan: all epochs in one compiled program (lax.scan over the steps)",
    "affine": "jaxlin affine: one compiled program (each epoch's steps as affine maps)",
    "step": "jaxlin step: a jitted SGD step, called from a Python loop",
    "torch": "PyTorch: the lecture's loop (the reference)",
}
BOUND_LINE = "bandwidth bound: X and y read once per epoch at the measured bandwidth"


def scaling_figure(data: dict, path: Path) -> None:
    """The scaling figure of a ``bench_*.json``: samples per second against n, d and the batch
    size, one panel each, every line named in one legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("n", "n, training examples (d = 2, batch 32)"),
        ("d", "d, features (n = 100,000, batch 32)"),
        ("batch", "batch size (n = 100,000, d = 2)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), layout="constrained")
    handles = {}
    for ax, (axis, label) in zip(axes, panels, strict=True):
        sel = [r for r in data["scaling"] if r["axis"] == axis]
        xs = [r["batch_size" if axis == "batch" else axis] for r in sel]
        for engine, name in SCALING_LINES.items():
            pts = [(x, r[engine]["samples_per_s"]) for x, r in zip(xs, sel, strict=True)
                   if engine in r]  # fmt: skip
            if pts:
                (handles[name],) = ax.plot(*zip(*pts, strict=True), "o-", label=name)
        bound = [r["n"] / r["floor_s_per_epoch"] for r in sel]
        (handles[BOUND_LINE],) = ax.plot(xs, bound, "k--", label=BOUND_LINE)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("training samples / s (higher is faster)")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=2)
    env = data["env"]
    fig.suptitle(
        f"Steady-state training throughput of jaxlin's engines and the lecture's PyTorch "
        f"loop ({env['backend']}, {env['cpu']}, {env['cores']} cores)"
    )
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--figure", action="store_true", help=f"also redraw {FIGURE} from its JSON")
    args = parser.parse_args(argv)
    if args.figure:
        source = RESULTS / Path(FIGURE).name.replace("scaling_", "bench_").replace(".png", ".json")
        scaling_figure(json.loads(source.read_text()), ROOT / FIGURE)
        print(f"wrote {FIGURE} from {rel(source)}")
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{rel(PAGE)} is out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {rel(PAGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
