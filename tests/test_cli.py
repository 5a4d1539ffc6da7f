"""The command line: the lecture's run, its outputs, and one-line errors."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxlin.cli import main

pytestmark = pytest.mark.slow

SMALL = ["--num-train", "200", "--num-val", "50", "--no-cache"]


def test_train_writes_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    assert main(["train", *SMALL, "--json", str(out_json), "--plot", str(out_png)]) == 0
    record = json.loads(out_json.read_text())
    for k in ("config", "w", "b", "w_error", "b_error", "train_loss", "val_loss"):
        assert k in record
    assert len(record["train_loss"]) == 3 * 7  # 200 / 32 -> 7 steps, 3 epochs
    assert len(record["val_loss"]) == 3
    np.testing.assert_allclose(record["w_error"], np.array([2.0, -3.4]) - record["w"], atol=1e-6)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 5000
    text = capsys.readouterr().out
    assert (
        "epoch 3/3" in text and "error in estimating w" in text and "error in estimating b" in text
    )


def test_flags_change_the_problem(tmp_path):
    out = tmp_path / "o.json"
    args = [
        "train",
        *SMALL,
        "--w=1,2,3",
        "--b",
        "-1",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert len(record["w"]) == 3 and len(record["train_loss"]) == 2 * 4
    assert record["config"]["lr"] == 0.03


def test_engines_print_the_same_result(capsys):
    results = []
    for engine in ("scan", "step"):
        assert main(["train", *SMALL, "--quiet", "--engine", engine]) == 0
        results.append(capsys.readouterr().out)
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be an int >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--epochs", "0"], "--epochs must be an int >= 1"),
        (["--num-train", "0"], "--num-train must be an int >= 1"),
        (["--json", "/nonexistent-dir/out.json"], "folder /nonexistent-dir does not exist"),
        (["--plot", "loss.txt"], "--plot loss.txt: unknown image format '.txt'"),
        (["--lr", "50", "--epochs", "5"], "training diverged"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message, capsys):
    assert main(["train", *SMALL, *args]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_non_numeric_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr", "fast"])
    assert exit_info.value.code == 2
    assert "invalid float value: 'fast'" in capsys.readouterr().err


def test_python_dash_m_runs_the_lecture(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlin", "train", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "error in estimating b" in proc.stdout
    assert any((tmp_path / "cache").iterdir())  # the persistent compile cache was written


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_device_gpu_without_a_gpu_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlin", "train", "--device", "gpu", "--no-cache"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "jaxlin: error: --device gpu: no GPU backend here (needs an NVIDIA GPU and "
        "pip install 'jaxlin[cuda]'); use --device cpu"
    )


def test_output_closed_early_is_not_an_error(tmp_path):
    """``jaxlin train | head -1``: the reader goes away; no 'Broken pipe' error."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxlin", "train", "--no-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert b"Broken pipe" not in err and b"Traceback" not in err


def test_messages_name_the_flags_the_user_typed(capsys):
    """Library messages say max_epochs and gradient_clip_val; the command line says the flags."""
    assert main(["train", *SMALL, "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "jaxlin: error: --epochs must be an int >= 1, got 0\n"
    assert main(["train", *SMALL, "--lr", "50", "--epochs", "5"]) == 1
    err = capsys.readouterr().err
    assert "set --clip" in err and "gradient_clip_val" not in err


@pytest.mark.parametrize("argv", [[], ["--w", "1.5,-0.5,2", "--b", "0.3", "--seed", "7"]])
def test_cli_draws_the_libraries_data_bit_for_bit(argv):
    """The CLI's one-program setup (compiled at -O1) draws the Python API's data and initial
    parameters, bit for bit."""
    import jax

    import jaxlin
    from jaxlin.cli import build_parser
    from jaxlin.cli.train import setup

    args = build_parser().parse_args(["train", *argv])
    data, params, key_shuffle = setup(args)
    key_data, key_init, key_ref = jax.random.split(jax.random.key(args.seed), 3)
    ref = jaxlin.synthetic_splits(
        key_data, args.w, args.b, num_train=args.num_train, num_val=args.num_val, noise=args.noise
    )
    for got, want in zip(jax.tree.leaves(data), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(got, want)
    ref_params = jaxlin.init_params(key_init, len(args.w), sigma=args.sigma)
    for k in ref_params:
        np.testing.assert_array_equal(params[k], ref_params[k])
    np.testing.assert_array_equal(jax.random.key_data(key_shuffle), jax.random.key_data(key_ref))


def test_plot_trajectory_writes_the_path_and_needs_two_features(tmp_path, capsys):
    out = tmp_path / "path.png"
    argv = ["train", "--num-train", "64", "--num-val", "16", "--quiet", "--no-cache"]
    assert main([*argv, "--plot-trajectory", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main([*argv, "--w", "1,2,3", "--plot-trajectory", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot-trajectory" in err and "2 features" in err and err.count("\n") == 1


def test_train_compiles_fits_program_while_it_draws_the_data(monkeypatch, capsys):
    """Without a program store (--no-cache), jaxlin train compiles fit's program in a second
    thread while it draws the data: fit itself then compiles nothing, for the whole run
    (--quiet) and for the per-epoch one alike."""
    from conftest import count_compiles

    import jaxlin

    fit, compiles = jaxlin.fit, []

    def counted(*args, **kwargs):
        with count_compiles() as n:
            out = fit(*args, **kwargs)
        compiles.append(n[0])
        return out

    monkeypatch.setattr(jaxlin, "fit", counted)
    for quiet in (["--quiet"], []):  # sizes no other test trains on: nothing compiled before
        assert main(["train", "--num-train", "77", "--num-val", "13", "--no-cache", *quiet]) == 0
    capsys.readouterr()
    assert compiles == [0, 0]


def test_no_cache_writes_no_cache_where_jax_variables_ask_for_one(tmp_path):
    """--no-cache turns JAX's persistent compilation cache off for the run, even where the
    environment turns it on for every JAX process (the docs show how)."""
    folder = tmp_path / "jax"
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    argv = ["train", "--quiet", "--num-train", "64", "--num-val", "16"]
    for flags in (["--no-cache"], ["--no-cache", "--engine", "step"]):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxlin", *argv, *flags],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert not folder.exists() or not any(folder.iterdir())


def test_a_second_run_loads_its_programs_and_gives_the_same_result(tmp_path):
    """jaxlin train compiles at most 4 programs; with its cache, the next run compiles none
    (the stored executables are loaded) and writes the same results, bit for bit, as a run
    without the cache; a damaged stored program is compiled and stored again."""

    def train(*flags):
        out = tmp_path / "out.json"
        env = {**os.environ, "JAX_LOG_COMPILES": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "jaxlin", "train", "--quiet", "--json", str(out), *flags],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads(out.read_text())
        compiles = proc.stderr.count("Finished XLA compilation")
        return {k: record[k] for k in ("w", "b", "train_loss", "val_loss")}, compiles

    reference, compiles = train("--no-cache")
    assert compiles <= 4
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert train(*cache) == (reference, compiles)  # the first run compiles and stores
    assert train(*cache) == (reference, 0)
    stored = sorted((tmp_path / "cache" / "programs").glob("*"))
    assert stored
    for damaged in stored:  # each program in turn: rebuilt, the others loaded
        damaged.write_bytes(b"not a program")
        assert train(*cache)[0] == reference
        assert train(*cache) == (reference, 0)


def test_closed_output_streams_and_a_later_run_without_the_cache(tmp_path):
    """The command exits with its own status when started with stdout or stderr closed, and
    a run with --no-cache after one with a cache (in one process) writes nothing there."""
    for closed in (">&-", "2>&-"):
        proc = subprocess.run(
            f"{shlex.quote(sys.executable)} -m jaxlin train {' '.join(SMALL)} --quiet {closed}",
            shell=True, capture_output=closed == "2>&-", timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0
    cache = tmp_path / "cache"
    assert main(["train", "--num-train", "64", "--num-val", "16", "--quiet", "--cache-dir",
                 str(cache)]) == 0  # fmt: skip
    stored = sorted((cache / "programs").iterdir())
    assert stored
    assert main(["train", "--num-train", "80", "--num-val", "16", "--quiet", "--no-cache"]) == 0
    assert sorted((cache / "programs").iterdir()) == stored
