"""The command line under interruption: checkpoints, resume, Ctrl-C, and x64."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlin.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--num-train", "64", "--num-val", "16", "--batch-size", "16", "--no-cache"]
RESULT = ("w", "b", "train_loss", "val_loss", "w_error", "b_error")


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _same_result(a: Path, b: Path) -> None:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for field in RESULT:
        assert ra[field] == rb[field], field  # JSON floats: repr round-trips, so bit for bit


@pytest.mark.parametrize("engine", ["scan", "step"])
def test_resume_after_a_stopped_run_gives_the_same_json(tmp_path, engine, monkeypatch):
    flags = [*SMALL, "--epochs", "4", "--engine", engine, "--quiet"]
    assert main(["train", *flags, "--json", str(tmp_path / "full.json")]) == 0
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    # Stop the checkpointed run after epoch 2 (what Ctrl-C does, without a signal).
    assert main(["train", *flags[:-3], "--epochs", "2", "--engine", engine, *ckpt]) == 0
    assert main(["train", *flags, *ckpt, "--resume", "--json", str(tmp_path / "resumed.json")]) == 0
    _same_result(tmp_path / "full.json", tmp_path / "resumed.json")


def test_resume_with_other_flags_names_the_fields(tmp_path, capsys):
    ckpt = ["--checkpoint-dir", str(tmp_path)]
    assert main(["train", *SMALL, "--epochs", "1", "--quiet", *ckpt]) == 0
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "2", "--seed", "3", "--lr", "0.1", *ckpt, "--resume"])
    err = capsys.readouterr().err
    assert "differing fields: lr: saved 0.03, requested 0.1, seed: saved 0, requested 3" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_ctrl_c_checkpoints_prints_the_resume_command_and_resume_matches(tmp_path):
    """SIGINT mid-run: exit 130, no traceback, and resuming gives the uninterrupted JSON."""
    flags = ["--num-train", "400", "--num-val", "100", "--batch-size", "8", "--epochs", "6"]
    flags += ["--engine", "step", "--no-cache", "--lr", "0.001"]
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "jaxlin", "train", *flags, "--checkpoint-dir", str(ckpt)]
    cmd += ["--json", str(tmp_path / "resumed.json")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path
    )
    first = proc.stdout.readline()
    assert first.startswith("epoch 1/6"), first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"checkpoint written to {ckpt / 'checkpoint.npz'}" in err
    resume = err.split("resume with: ")[1].strip()
    assert resume.endswith("--resume") and "--epochs=6" in resume
    done = int(err.split("interrupted after epoch ")[1].split("/")[0])
    assert 1 <= done < 6 and out.count("epoch ") == done - 1  # the first line was read above

    args = resume.split()[2:]  # the printed command, run as python -m jaxlin train ...
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlin", "train", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"epoch {done + 1}/6")
    full = tmp_path / "full.json"
    assert main(["train", *flags, "--quiet", "--json", str(full)]) == 0
    _same_result(full, tmp_path / "resumed.json")


def test_x64_trains_in_float64_and_matches_least_squares(tmp_path):
    """``--x64`` and the API in x64 mode: float64 end to end, lstsq to 1e-8 (a fresh process)."""
    code = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxlin
from jaxlin.cli import main

kd, ki, ks = jax.random.split(jax.random.key(0), 3)
s = jaxlin.synthetic_splits(kd, [1.5, -0.5, 2.0], 0.3, num_train=200, noise=0.1)
assert s.train[0].dtype == np.float64
params = jaxlin.init_params(ki, 3)
assert params["w"].dtype == np.float64
params, hist = jaxlin.fit(params, s.train, lr=0.1, max_epochs=300, batch_size=200, shuffle=False)
assert params["w"].dtype == np.float64 and hist.train_loss.dtype == np.float64
X, y = (np.asarray(a) for a in s.train)
A = np.hstack([X, np.ones((len(X), 1))])
sol = np.linalg.lstsq(A, y, rcond=None)[0].ravel()
got = np.concatenate([np.asarray(params["w"]).ravel(), np.asarray(params["b"])])
err = np.abs(got - sol).max()
assert err < 1e-8, err
rc = main(["train", "--x64", "--quiet", "--no-cache", "--epochs", "20", "--json", sys.argv[1]])
assert rc == 0
print("ok", err)
"""
    out = tmp_path / "x64.json"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["config"]["x64"] is True
    assert max(abs(e) for e in record["w_error"]) < 1e-3
    losses = np.asarray(record["train_loss"])
    assert (losses != losses.astype(np.float32)).any()  # values a float32 run cannot produce


def _jaxlin(args, cwd, **kwargs):
    """The ``jaxlin`` command in a subprocess (its exit status and stderr)."""
    return subprocess.run([sys.executable, "-m", "jaxlin", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, **kwargs)  # fmt: skip


def _jaxlin_with_small_files(args, cwd, limit_bytes):
    """The ``jaxlin`` command in a subprocess that may write no file beyond ``limit_bytes``."""
    code = (
        f"import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
        f"sys.argv = ['jaxlin', *{list(args)!r}]; "
        f"runpy.run_module('jaxlin', run_name='__main__', alter_sys=True)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_a_json_that_cannot_be_written_leaves_the_old_file_whole_and_exits_1(tmp_path):
    """A write that fails at run time (here a file-size limit) names the file, exit status 1."""
    old = json.dumps({"an": "earlier result"})
    (tmp_path / "out.json").write_text(old)

    args = ["train", "--num-train", "32", "--num-val", "8", "--quiet", "--no-cache", "--json"]
    done = _jaxlin_with_small_files([*args, "out.json"], tmp_path, 1024)  # < the record
    assert done.returncode == 1, done.stderr
    assert done.stderr == "jaxlin: error: cannot write out.json: File too large\n"
    assert (tmp_path / "out.json").read_text() == old  # replaced whole or not at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "cache").write_text("not a folder")
    args = ["train", "--num-train", "32", "--num-val", "8", "--quiet"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxlin: error: --cache-dir {tmp_path}/cache: File exists; pass another " \
        "folder or --no-cache\n"  # fmt: skip


def test_files_beside_a_checkpoint_that_look_like_its_own_are_kept(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    users = {"history.final.bin": b"results\n", "history.abcd1234.bin": b"more results\n",
             ".checkpoint.npz.x.tmp": b"another program's"}  # fmt: skip
    for name, data in users.items():
        (folder / name).write_bytes(data)
    args = ["train", "--num-train", "32", "--num-val", "8", "--quiet", "--no-cache"]
    for extra in ([], ["--resume", "--epochs", "4"]):
        assert main([*args, "--checkpoint-dir", str(folder), *extra]) == 0
        assert all((folder / name).read_bytes() == data for name, data in users.items())


def test_generate_removes_what_a_killed_generate_left_and_only_that(tmp_path):
    import fcntl

    dead = tmp_path / ".ds.jaxlin-new-0123abcd"  # a killed run's half-written dataset
    live = tmp_path / ".ds.jaxlin-new-89abcdef"  # a run still writing (it holds the lock)
    other = tmp_path / ".ds.jaxlin-new-mine"  # not a name jaxlin gives
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "X-00000.npy").write_bytes(b"rows")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        args = ["generate", "--out", "ds", "--num-examples", "64"]
        done = _jaxlin(args, tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        os.close(fd)
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "ds" / "manifest.json").is_file()


def test_generate_finishes_a_killed_swap_and_loses_nothing(tmp_path, capsys):
    """A run killed between setting the old dataset aside and moving the new one in: the
    next run puts the old one back (and, without --overwrite, refuses to replace it). A run
    killed while deleting the old dataset: the next run deletes the rest of its files (and
    never puts it back), keeping a file of the user's that is in that folder."""
    import fcntl

    ds = tmp_path / "ds"
    args = ["generate", "--out", str(ds), "--num-examples", "64"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in ds.iterdir()}
    aside = tmp_path / ".ds.jaxlin-old-0123abcd"
    ds.rename(aside)  # killed between the two renames
    capsys.readouterr()
    assert main(args) == 2
    assert "holds a dataset; pass --overwrite to replace it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ds.iterdir()} == before and not aside.exists()

    deleting = tmp_path / ".ds.jaxlin-del-0123abcd"  # killed while deleting the old dataset
    deleting.mkdir()
    (deleting / "X-00000.npy").write_bytes(b"rows")
    (deleting / "notes.txt").write_text("mine")
    shutil.rmtree(ds)  # and the new one deleted since: a half-deleted one is never put back
    capsys.readouterr()
    assert main(args) == 0
    assert sorted(p.name for p in deleting.iterdir()) == ["notes.txt"]
    assert {p.name: p.read_bytes() for p in ds.iterdir()} == before  # the same seed's data
    ds.rename(aside)  # killed after the new one was in, before the old one was renamed
    shutil.copytree(aside, ds)
    live = tmp_path / ".ds.jaxlin-old-89abcdef"  # a swap still running holds its lock
    live.mkdir()
    (live / "X-00000.npy").write_bytes(b"rows")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert main([*args, "--overwrite", "--seed", "3"]) == 0
    finally:
        os.close(fd)
    assert not aside.exists()  # a whole old dataset beside the new one: removed
    assert (live / "X-00000.npy").exists()
    assert {p.name: p.read_bytes() for p in ds.iterdir()} != before  # the new dataset


def test_a_name_read_from_a_manifest_is_printed_escaped(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "ds"), "--num-examples", "64"]) == 0
    manifest = tmp_path / "ds" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["shards"][0]["X"] = "X-\x1b[2J\nrm -rf.npy"  # an escape sequence and a newline
    manifest.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "ds"), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert "X-\\x1b[2J\\nrm -rf.npy" in err


def test_a_desktop_mplbackend_does_not_fail_a_finished_run(tmp_path):
    env = dict(os.environ, MPLBACKEND="nonsense")
    args = ["train", "--num-train", "32", "--num-val", "8", "--quiet", "--no-cache", "--plot"]
    done = _jaxlin([*args, "p.png"], tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_a_checkpoint_that_cannot_be_written_names_its_file_and_exits_1(tmp_path):
    """A file-size limit hit while appending the history: one line naming the file, exit 1."""
    args = ["train", "--num-train", "4096", "--num-val", "8", "--batch-size", "1", "--epochs",
            "3", "--quiet", "--no-cache", "--checkpoint-dir", "ck"]  # fmt: skip
    done = _jaxlin_with_small_files(args, tmp_path, 8192)  # < an epoch's row of 4,096 losses
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"jaxlin: error: cannot write {tmp_path}/ck/history.")
    assert done.stderr.endswith(": File too large\n")


def test_outputs_keep_the_permissions_of_the_file_they_replace(tmp_path):
    args = ["train", "--num-train", "32", "--num-val", "8", "--quiet", "--no-cache", "--json"]
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("{}")
    old.chmod(0o640)
    for path in (new, old):
        assert main([*args, str(path)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file: not owner-only
    assert old.stat().st_mode & 0o777 == 0o640
