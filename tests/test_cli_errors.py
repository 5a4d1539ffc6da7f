"""Every mistake is one clear line: a table of bad inputs to the API and the command line.

Each row must be refused before any work, with a message that names the
argument (API) or the flag (CLI). The sizes too large for memory are checked
against a fixed memory size (``checks.memory_bytes`` patched to 16 GiB), so
they are refused on any machine and nothing is ever allocated. The last tests
send Ctrl-C: at any moment, exit 130 with one line and no traceback.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlin
from jaxlin import checks
from jaxlin.cli import main
from jaxlin.parallel import fit_data_parallel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KEY = jax.random.key(0)
P2 = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
X8, Y8 = jnp.ones((8, 2)), jnp.ones(8)
TINY = ["--num-train", "32", "--num-val", "8", "--no-cache", "--quiet"]


@pytest.fixture(autouse=True)
def sixteen_gib(monkeypatch):
    """Every size check sees a 16 GiB machine: the same refusals here and in CI."""
    monkeypatch.setattr(checks, "memory_bytes", lambda: 16 * 2**30)


def _sk(**kwargs):
    return pytest.importorskip("jaxlin.sklearn").SGDLinearRegression(**kwargs)


def _sweep(**overrides):
    kwargs = dict(lrs=[0.1], seeds=2, key=KEY, batch_size=4)
    return jaxlin.sweep((X8, Y8), (X8, Y8), **{**kwargs, **overrides})


def _fit(**overrides):
    return jaxlin.fit(P2, (X8, Y8), **{"key": KEY, "batch_size": 4, **overrides})


def _fit_dp(**overrides):
    return fit_data_parallel(P2, (X8, Y8), **{"key": KEY, "batch_size": 4, **overrides})


def _fit_in_jit():
    return jax.jit(lambda lr: _fit(lr=lr)[0]["w"])(0.1)


RNG = np.random.default_rng(0)
HUGE_X = RNG.normal(size=(20, 2)) * 1e200

# (id, call, exception type, regex the message must match: it names the argument)
API = [
    # sizes: refused before anything is allocated
    ("data 2**40 rows", lambda: jaxlin.synthetic_data(KEY, [2.0, -3.4], 4.2, 2**40), ValueError,
     r"^num_examples=1099511627776 needs .* of memory .* this machine has 16 GiB"),
    ("init 1e10 inputs", lambda: jaxlin.init_params(KEY, 10**10), ValueError,
     r"^num_inputs=10000000000 needs 37.3 GiB"),
    ("splits num_train 3e9", lambda: jaxlin.synthetic_splits(KEY, num_train=3_000_000_000),
     ValueError, r"^num_train=3000000000 needs"),
    ("splits num_val 2**31", lambda: jaxlin.synthetic_splits(KEY, num_val=2**31), ValueError,
     r"^num_val=2147483648 needs"),
    ("splits num_test 1e12", lambda: jaxlin.synthetic_splits(KEY, num_test=10**12), ValueError,
     r"^num_test=1000000000000 needs"),
    ("sweep 1e9 seeds", lambda: _sweep(seeds=10**9), ValueError, r"^seeds=1000000000 needs"),
    ("sweep 1e9 epochs", lambda: _sweep(max_epochs=10**9), ValueError,
     r"^max_epochs=1000000000 needs"),
    ("sweep 1e5 lrs x 1e4 seeds", lambda: _sweep(lrs=np.geomspace(1e-3, 1, 10**5), seeds=10**4),
     ValueError, r"^len\(lrs\)=100000 needs"),
    # sweep's arguments
    ("sweep nested lrs", lambda: _sweep(lrs=[[0.1, 0.2]]), ValueError,
     r"lrs must be a 1-D sequence of learning rates, got \[\[0.1, 0.2\]\]"),
    ("sweep ragged lrs", lambda: _sweep(lrs=[0.1, [0.2, 0.3]]), ValueError,
     r"lrs must be a 1-D sequence"),
    ("sweep lrs string", lambda: _sweep(lrs="0.1"), ValueError,
     r"lrs must be a non-empty sequence of learning rates"),
    ("sweep seeds float", lambda: _sweep(seeds=2.5), TypeError, r"seeds must be an int"),
    ("sweep val missing", lambda: jaxlin.sweep((X8, Y8), None, lrs=[0.1], seeds=1, key=KEY,
                                               batch_size=4), ValueError, r"val is required"),
    # fit
    ("fit lr 0", lambda: _fit(lr=0.0), ValueError, r"^lr must be > 0, got 0.0"),
    ("fit engine Scan", lambda: _fit(engine="Scan"), ValueError,
     r"^engine must be one of .*, got 'Scan'"),
    ("fit affine clip", lambda: _fit(engine="affine", gradient_clip_val=1.0), ValueError,
     r"engine='affine' cannot clip gradients"),
    ("fit no key", lambda: jaxlin.fit(P2, (X8, Y8), batch_size=4), ValueError,
     r"^key is required when shuffle=True"),
    ("fit batch > n", lambda: _fit(batch_size=9), ValueError,
     r"^batch_size must be <= the number of training examples \(8\), got 9"),
    ("fit val features", lambda: _fit(val=(jnp.ones((3, 3)), jnp.ones(3))), ValueError,
     r"^val X has 3 features but params\['w'\] expects 2"),
    ("fit in jit", _fit_in_jit, TypeError, r"jaxlin.fit is a checked host driver"),
    # fit_data_parallel
    ("dp lr < 0", lambda: _fit_dp(lr=-1.0), ValueError, r"^lr must be > 0, got -1.0"),
    ("dp max_epochs 0", lambda: _fit_dp(max_epochs=0), ValueError,
     r"^max_epochs must be an int >= 1, got 0"),
    ("dp mesh axis", lambda: _fit_dp(mesh=jax.make_mesh((1,), ("x",))), ValueError,
     r"^mesh must have one axis named 'data'"),
    ("dp no key", lambda: fit_data_parallel(P2, (X8, Y8), batch_size=4), ValueError,
     r"^key is required"),
    # the estimator
    ("sk X 1e200", lambda: _sk().fit(HUGE_X, np.ones(20)), ValueError,
     r"^X has features too large to standardize in float64 \(feature 0"),
    ("sk X 1e200 raw", lambda: _sk(standardize=False).fit(HUGE_X, np.ones(20)), ValueError,
     r"^X has values up to .*e\+200, beyond the range of float32"),
    ("sk y 1e100", lambda: _sk().fit(HUGE_X / 1e200, np.full(20, 1e100)), ValueError,
     r"^y has values up to 1e\+100, beyond the range of float32"),
    ("sk sigma < 0", lambda: _sk(sigma=-1.0).fit(HUGE_X / 1e200, np.ones(20)), ValueError,
     r"^sigma must be >= 0"),
    ("sk standardize str", lambda: _sk(standardize="yes").fit(HUGE_X / 1e200, np.ones(20)),
     TypeError, r"^standardize must be True or False"),
]  # fmt: skip


@pytest.mark.parametrize("call, exc, match", [r[1:] for r in API], ids=[r[0] for r in API])
def test_api_refuses_with_the_argument_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def run_cli(argv, capsys) -> tuple[int, str]:
    """``jaxlin ARGV`` in-process: exit status (usage errors exit as argparse does), stderr."""
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def _data(t):
    return ["--data", str(t)]


# (id, argv given tmp_path, what stderr must contain). Every one exits 2 with one line.
CLI = [
    # sizes: the CLI refuses first, naming the flag
    ("num-train 1e12", lambda t: ["train", "--num-train", "1000000000000"],
     "--num-train=1000000000000 needs"),
    ("epochs 1e9 quiet", lambda t: ["train", "--epochs", "1000000000", "--quiet"],
     "--epochs=1000000000 needs"),
    ("num-val 2**31", lambda t: ["train", "--num-val", "2147483648"], "--num-val=2147483648 needs"),
    ("num-train 3e9", lambda t: ["train", "--num-train", "3000000000"],
     "--num-train=3000000000 needs"),
    ("sweep seeds 1e9", lambda t: ["sweep", "--seeds", "1000000000"], "--seeds=1000000000 needs"),
    ("sweep lr-range 1e9", lambda t: ["sweep", "--lr-range", "1e-4:1:1000000000"],
     "--lr-range COUNT=1000000000 needs"),
    ("sweep num-test 1e12", lambda t: ["sweep", "--num-test", "1000000000000"],
     "--num-test=1000000000000 needs"),
    # values silently reinterpreted before
    ("w empty value", lambda t: ["train", "--w", "1,,2"], "argument --w: expected comma-separated"),
    ("w trailing comma", lambda t: ["train", "--w=1,2,"], "argument --w: expected comma-separated"),
    ("seed 2**64", lambda t: ["train", "--seed", str(2**64)],
     "argument --seed: expected an int in [0, 2**32)"),
    ("seed -1", lambda t: ["train", "--seed", "-1"], "argument --seed: expected an int in"),
    ("sweep seed 2**32", lambda t: ["sweep", "--seed", str(2**32)], "argument --seed: expected"),
    ("data num-train", lambda t: ["train", *_data(t), "--num-train", "5"],
     "cannot be combined with --num-train 5"),
    ("data num-val", lambda t: ["train", *_data(t), "--num-val", "5"],
     "cannot be combined with --num-val 5"),
    ("data w", lambda t: ["train", *_data(t), "--w=1,2"], "cannot be combined with --w 1.0,2.0"),
    ("data b", lambda t: ["train", *_data(t), "--b", "1"], "cannot be combined with --b 1.0"),
    ("data noise", lambda t: ["train", *_data(t), "--noise", "0.5"],
     "cannot be combined with --noise 0.5"),
    ("data engine", lambda t: ["train", *_data(t), "--engine", "step"],
     "cannot be combined with --engine step"),
    ("data engine affine", lambda t: ["train", *_data(t), "--engine", "affine"],
     "cannot be combined with --engine affine"),
    ("data checkpoint", lambda t: ["train", *_data(t), "--checkpoint-dir", str(t / "c")],
     "cannot be combined with --checkpoint-dir"),
    ("sweep lr empty", lambda t: ["sweep", "--lr", "0.1,,0.2"], "argument --lr: expected comma"),
    # the command line's own mistakes
    ("lr abc", lambda t: ["train", "--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    ("engine Scan", lambda t: ["train", "--engine", "Scan"], "did you mean 'scan'?"),
    ("learning-rate", lambda t: ["train", "--learning-rate", "0.1"],
     "unrecognized argument --learning-rate; did you mean --lr?"),
    ("learning-rate=", lambda t: ["train", "--learning-rate=0.1"], "did you mean --lr?"),
    ("max-epochs", lambda t: ["train", "--max-epochs", "3"], "did you mean --epochs?"),
    ("near miss", lambda t: ["train", "--batch-sise", "3"], "did you mean --batch-size?"),
    ("sweep num-seeds", lambda t: ["sweep", "--num-seeds", "3"], "did you mean --seeds?"),
    ("stray word", lambda t: ["train", "fast"], "unrecognized argument fast; see 'jaxlin train"),
    ("w negative", lambda t: ["train", "--w", "-1,2"],
     "argument --w: expected one argument; a value that starts with '-' needs '=': --w=-1,2"),
    ("affine clip", lambda t: ["train", *TINY, "--engine", "affine", "--clip", "1"],
     "--engine affine cannot clip gradients"),
    ("no command", lambda t: [], "expected a command: train, sweep, generate"),
    ("command typo", lambda t: ["trian"], "did you mean 'train'?"),
    ("num-train 1.5", lambda t: ["train", "--num-train", "1.5"], "argument --num-train: invalid"),
    ("b abc", lambda t: ["train", "--b", "abc"], "argument --b: invalid float value"),
    ("devices 0", lambda t: ["train", "--devices", "0"], "argument --devices: expected a positive"),
    ("lr-range malformed", lambda t: ["sweep", "--lr-range", "1e-3:1"], "argument --lr-range:"),
    ("lr and lr-range", lambda t: ["sweep", "--lr", "0.1", "--lr-range", "1e-3:1:4"],
     "argument --lr-range: not allowed with argument --lr"),
    # values the library refuses, in the flags' names
    ("lr 0", lambda t: ["train", *TINY, "--lr", "0"], "--lr must be > 0, got 0.0"),
    ("lr inf", lambda t: ["train", *TINY, "--lr", "inf"], "--lr must be finite"),
    ("epochs 0", lambda t: ["train", *TINY, "--epochs", "0"], "--epochs must be an int >= 1"),
    ("order runs without data", lambda t: ["train", *TINY, "--order", "runs"],
     "--order runs reads shards from disk: it needs --data DIR"),
    ("sweep seeds 0", lambda t: ["sweep", *TINY[:-1], "--seeds", "0"], "--seeds must be an int"),
    ("sweep lr < 0", lambda t: ["sweep", *TINY[:-1], "--lr=-0.1,0.2"], "--lr must be > 0"),
    ("sweep num-test 0", lambda t: ["sweep", *TINY[:-1], "--num-test", "0"],
     "--num-test must be an int >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", [r[1:] for r in CLI], ids=[r[0] for r in CLI])
def test_cli_refuses_in_one_line_naming_the_flag(argv, message, tmp_path, capsys):
    status, err = run_cli(argv(tmp_path), capsys)
    assert status == 2, err
    assert err.startswith("jaxlin: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err


def test_data_manifest_with_the_wrong_w_names_the_dataset_not_a_flag(tmp_path, capsys):
    """A manifest whose w does not fit its data is the dataset's fault, not a --w the user gave."""
    import json

    from jaxlin.stream import generate_shards

    generate_shards(KEY, tmp_path, 64, d=2, shards=1)
    manifest = tmp_path / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["w"] = [1.0, 2.0, 3.0]
    manifest.write_text(json.dumps(meta))
    status, err = run_cli(["train", "--data", str(tmp_path), "--no-cache", "--quiet"], capsys)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(tmp_path) in err and "--w" not in err


def test_help_states_each_default_once_and_engine_is_described(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert text.count("(default: 0.03)") == 1 and "(default: 4.2)" in text
    assert "(default: None)" not in text and "pure" not in text
    assert "--engine {scan,affine,step,eager} how jaxlin.fit runs the epochs" in text
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.001,0.003,0.01,0.03,0.1,0.3)" in text and "(default: None)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"jaxlin {jaxlin.__version__} (jax ")


def test_progress_is_short_and_labelled(capsys):
    """A huge loss prints in a few significant digits; the time is labelled as elapsed."""
    argv = ["train", "--num-train", "32", "--num-val", "8", "--no-cache", "--epochs", "1"]
    assert main([*argv, "--w=1e15,1e15"]) == 0  # losses near 1e30
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("epoch 1/1  train loss ") and line.endswith(" s elapsed)")
    loss = line.split("train loss ")[1].split()[0]
    assert "e+" in loss and len(loss) <= 12, line


def test_ctrl_c_inside_a_jax_callback_is_not_lost(capsys):
    """SIGINT delivered while JAX runs a Python callback (a compile event) still stops the run."""
    sent = []

    def on_event(event, duration, **kwargs):
        del duration, kwargs
        if event.endswith("backend_compile_duration") and not sent:
            sent.append(event)
            os.kill(os.getpid(), signal.SIGINT)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        argv = ["--num-train", "37", "--num-val", "5", "--batch-size", "4", "--epochs", "2"]
        status = main(["train", *argv, "--quiet", "--no-cache"])  # shapes no other test compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    err = capsys.readouterr().err
    assert sent and status == 130, err
    assert err.startswith("jaxlin: interrupted") and "nothing saved" in err
    assert err.count("\n") == 1 and "Traceback" not in err and "Exception ignored" not in err


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _interrupt(tmp_path, flags, *, after_line: bool, delay: float = 0.0):
    """``python -m jaxlin train FLAGS``, SIGINT once main runs (its cache folder exists) or
    after the first epoch line; returns (exit status, stdout, stderr)."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "jaxlin", "train", "--cache-dir", str(cache), *flags]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path
    )
    first = ""
    if after_line:
        first = proc.stdout.readline()
        assert first.startswith("epoch 1/"), first
    else:
        deadline = time.monotonic() + 120
        while not cache.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, first + out, err


@pytest.mark.parametrize(
    "flags, after_line, delay",
    [
        ([], False, 0.0),  # start-up: JAX configured, no data yet
        (["--quiet", "--num-train", "20000", "--epochs", "20"], False, 0.3),  # one compiled call
        (["--engine", "step", "--num-train", "4000", "--epochs", "50"], True, 0.0),  # mid-run
    ],
    ids=["start-up", "quiet", "per-epoch"],
)
def test_ctrl_c_exits_130_with_one_line(tmp_path, flags, after_line, delay):
    status, out, err = _interrupt(tmp_path, flags, after_line=after_line, delay=delay)
    assert status == 130, err
    assert err.startswith("jaxlin: interrupted") and "nothing saved" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "Exception ignored" not in err
    if after_line:  # stopped after an epoch, not at the end: the last line printed is that epoch
        done = int(err.split("after epoch ")[1].split("/")[0])
        assert 1 <= done < 50 and out.count("epoch ") == done


# SIGINT at evenly spaced moments of start-up and of the first epochs: from just after
# the interpreter starts (before it, Python itself answers) through JAX's import, the
# data, the compile and training. Each command runs long enough to still be running.
STARTS = {
    "train": (["train", "--epochs", "2000", "--num-train", "64", "--num-val", "16"], 12, 2.4),
    "train --quiet": (["train", "--quiet", "--epochs", "1"], 6, 0.8),
    "generate": (["generate", "--out", "g", "--num-examples", "200000", "--chunk", "1000"], 6,
                 1.6),
    "sweep": (["sweep", "--seeds", "2", "--epochs", "3"], 4, 1.6),
}  # fmt: skip
FIRST_S = 0.15  # the interpreter's own start-up (site, .pth files) is over by then


@pytest.mark.parametrize("command", list(STARTS))
def test_ctrl_c_at_any_moment_of_start_up_exits_130_with_one_line(command, tmp_path):
    args, trials, last_s = STARTS[command]
    for i in range(trials):
        delay = FIRST_S + (last_s - FIRST_S) * i / (trials - 1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxlin", *args, "--no-cache"]
            if args[0] != "generate"
            else [sys.executable, "-m", "jaxlin", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=tmp_path,
        )  # fmt: skip  (exec gives the child the default SIGINT disposition)
        time.sleep(delay)
        assert proc.poll() is None, f"{command} ended before the SIGINT at {delay:.2f} s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        where = f"SIGINT at {delay:.2f} s: exit {proc.returncode}, stderr {err[-400:]!r}"
        assert proc.returncode == 130, where
        assert err.count("\n") == 1 and err.startswith("jaxlin: interrupted"), where


LIBRARY_USER = """
import os, signal, sys

class CtrlCWhenJaxLoads:  # SIGINT to this process as jaxlin starts importing JAX
    def find_spec(self, name, path=None, target=None):
        if name == "jax":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

import jaxlin  # no JAX yet: the names load on first use
sys.meta_path.insert(0, CtrlCWhenJaxLoads())
jaxlin.fit
"""


def test_ctrl_c_while_a_library_user_loads_jaxlin_is_their_keyboardinterrupt():
    """jaxlin installs no handler in another program: Python's KeyboardInterrupt, as for
    any library."""
    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY_USER], capture_output=True, text=True, env=_env(),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
