"""Checkpoint files on disk: corrupt ones refused in one line, constant bytes per epoch, kill -9."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlin
from jaxlin.checkpoint import (
    FILENAME,
    HISTORY_MAGIC,
    HISTORY_PATTERN,
    Checkpoint,
    fit_with_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from jaxlin.cli import main
from jaxlin.files import TEMPORARY_SUFFIX

pytestmark = pytest.mark.slow  # files on disk and subprocesses

ROOT = Path(__file__).resolve().parents[1]
MARKER = "MARKER-7f3a"  # written into corrupt files; no error message may quote it
EPOCHS, STEPS = 3, 4


@pytest.fixture
def folder(tmp_path):
    """A folder holding a valid checkpoint: 3 epochs of 4 steps, with val losses and a key."""
    params = {"w": np.full((2, 1), 1.5, np.float32), "b": np.full((1,), -0.5, np.float32)}
    losses = np.arange(EPOCHS * STEPS, dtype=np.float32).reshape(EPOCHS, STEPS) / 7
    history = jaxlin.History(losses, np.arange(EPOCHS, dtype=np.float32) / 3)
    state = Checkpoint(params, jax.random.key(3), EPOCHS, history, {"lr": 0.1, "seed": 0})
    save_checkpoint(tmp_path, state)
    return tmp_path


def _history_file(folder: Path) -> Path:
    (path,) = [p for p in folder.iterdir() if HISTORY_PATTERN.fullmatch(p.name)]
    return path


def _arrays(folder: Path) -> dict:
    with np.load(folder / FILENAME, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite(folder: Path, **changes) -> None:
    """Write checkpoint.npz again with some arrays replaced (or removed, given None)."""
    arrays = {**_arrays(folder), **changes}
    with open(folder / FILENAME, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


def _edit_meta(folder: Path, edit) -> None:
    """Apply ``edit(meta)`` (returns the new meta dict) to the checkpoint's JSON entry."""
    meta = json.loads(str(_arrays(folder)["meta"][()]))
    _rewrite(folder, meta=np.array(json.dumps(edit(meta))))


def _truncate(folder: Path, keep) -> None:
    path = folder / FILENAME
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


def _flip_member_byte(folder: Path, member: str) -> None:
    """Flip one byte in the middle of an archive member's stored data."""
    path = folder / FILENAME
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    header = data[info.header_offset : info.header_offset + 30]  # a zip local file header
    name_len, extra_len = (int.from_bytes(header[i : i + 2], "little") for i in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _flip_history_byte(folder: Path) -> None:
    path = _history_file(folder)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_compressed(folder: Path, **changes) -> None:
    """``_rewrite``, deflated: a small file whose arrays inflate to much more."""
    arrays = {**_arrays(folder), **changes}
    with open(folder / FILENAME, "wb") as f:
        np.savez_compressed(f, **arrays)


def _plain_entry(folder: Path, name: str, data: bytes) -> None:
    """Replace the archive's ``name.npy`` by a deflated entry called just ``name``."""
    path = folder / FILENAME
    with zipfile.ZipFile(path) as z:
        kept = {i.filename: z.read(i) for i in z.infolist() if i.filename != f"{name}.npy"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for entry, content in kept.items():
            z.writestr(entry, content)
        z.writestr(name, data)


def _set(field, value):
    return lambda meta: {**meta, field: value}


def _set_config(field, value):
    return lambda meta: {**meta, "run": {**meta["run"], field: value}}


def _without(field):
    return lambda meta: {k: v for k, v in meta.items() if k != field}


def _folder_named_checkpoint(folder: Path) -> None:
    (folder / FILENAME).unlink()
    (folder / FILENAME).mkdir()


CORRUPT = [
    # (case, corrupt(folder), what the message must say)
    ("empty", lambda d: (d / FILENAME).write_bytes(b""), r"not an npz archive"),
    ("truncated to 1 byte", lambda d: _truncate(d, lambda n: 1), r"not an npz archive"),
    ("truncated to half", lambda d: _truncate(d, lambda n: n // 2), r"not an npz archive"),
    ("last byte cut", lambda d: _truncate(d, lambda n: n - 1), r"not an npz archive"),
    ("not a zip", lambda d: (d / FILENAME).write_bytes(MARKER.encode() * 9), r"not an npz archive"),
    ("flipped byte in w", lambda d: _flip_member_byte(d, "w.npy"), r"array 'w' is corrupt"),
    ("flipped byte in meta", lambda d: _flip_member_byte(d, "meta.npy"), r"'meta' is corrupt"),
    ("w missing", lambda d: _rewrite(d, w=None), r"array 'w' is missing"),
    ("w pickled", lambda d: _rewrite(d, w=np.array([MARKER, 1], dtype=object)),
     r"array 'w' holds pickled Python objects, which jaxlin never writes \(not loaded\)"),
    ("meta missing", lambda d: _rewrite(d, meta=None), r"array 'meta' is missing"),
    ("extra array", lambda d: _rewrite(d, extra=np.zeros(2)), r"arrays jaxlin does not write"),
    ("w float16", lambda d: _rewrite(d, w=np.ones((2, 1), np.float16)),
     r"array 'w' must be \(d, 1\) float32/float64, got \(2, 1\) float16"),
    ("w int", lambda d: _rewrite(d, w=np.ones((2, 1), np.int32)), r"array 'w' must be"),
    ("w 1-D", lambda d: _rewrite(d, w=np.ones(2, np.float32)), r"got \(2,\) float32"),
    ("b shape", lambda d: _rewrite(d, b=np.ones((2,), np.float32)),
     r"array 'b' must be \(1,\) float32, got \(2,\) float32"),
    ("b float64", lambda d: _rewrite(d, b=np.ones((1,), np.float64)), r"array 'b' must be"),
    ("w NaN", lambda d: _rewrite(d, w=np.full((2, 1), np.nan, np.float32)), r"NaN or Inf"),
    ("key dtype", lambda d: _rewrite(d, key=np.ones(2, np.int64)),
     r"array 'key' must be \(2,\) uint32, got \(2,\) int64"),
    ("key shape", lambda d: _rewrite(d, key=np.ones(3, np.uint32)), r"array 'key' must be"),
    ("key missing", lambda d: _rewrite(d, key=None), r"key array and meta field 'key_impl'"),
    ("key impl", lambda d: _edit_meta(d, _set("key_impl", MARKER)), r"no key implementation"),
    ("meta not JSON", lambda d: _rewrite(d, meta=np.array("{" + MARKER)), r"meta is not JSON"),
    ("meta not a string", lambda d: _rewrite(d, meta=np.zeros(3)), r"meta is not a string"),
    ("meta a list", lambda d: _rewrite(d, meta=np.array("[1]")), r"meta is a list"),
    ("format 1", lambda d: _edit_meta(d, _set("format", 1)), r"format 1, this jaxlin reads"),
    ("format text", lambda d: _edit_meta(d, _set("format", MARKER)), r"format 'unknown'"),
    ("epoch > history", lambda d: _edit_meta(d, _set("epoch", EPOCHS + 2)),
     rf"holds {EPOCHS} epochs, the checkpoint counts {EPOCHS + 2}"),
    ("epoch < history", lambda d: _edit_meta(d, _set("epoch", EPOCHS - 1)),
     r"does not match the checkpoint"),
    ("epoch negative", lambda d: _edit_meta(d, _set("epoch", -1)), r"out of range"),
    ("epoch text", lambda d: _edit_meta(d, _set("epoch", "3")),
     r"meta field 'epoch' is text, expected int"),
    ("epoch bool", lambda d: _edit_meta(d, _set("epoch", True)), r"'epoch' is a boolean"),
    ("steps missing", lambda d: _edit_meta(d, _without("steps")), r"no field 'steps'"),
    ("steps altered", lambda d: _edit_meta(d, _set("steps", STEPS + 1)), r"epochs, the check"),
    ("run a list", lambda d: _edit_meta(d, _set("run", [1])), r"'run' is a list"),
    ("config lr text", lambda d: _edit_meta(d, _set_config("lr", MARKER)),
     r"run field lr is text, expected int or float"),
    ("config lr null", lambda d: _edit_meta(d, _set_config("lr", None)), r"field lr is null"),
    ("config shuffle", lambda d: _edit_meta(d, _set_config("shuffle", 1)), r"field shuffle is a"),
    ("history outside", lambda d: _edit_meta(d, _set("history", "../x.bin")),
     r"not the name of a history file"),
    ("history missing", lambda d: _history_file(d).unlink(), r"history file .* is missing"),
    ("history flipped", _flip_history_byte, r"does not match the checkpoint"),
    ("history short", lambda d: os.truncate(_history_file(d), len(HISTORY_MAGIC) + 10),
     r"holds 0 epochs"),
    ("history not ours", lambda d: _history_file(d).write_bytes(MARKER.encode() * 20),
     r"does not begin as a jaxlin history file does"),
    ("epoch huge", lambda d: _edit_meta(d, _set("epoch", 10**30)),
     rf"holds {EPOCHS} epochs, the checkpoint counts {10**30}"),
    ("steps huge", lambda d: _edit_meta(d, _set("steps", 10**15)), r"holds 0 epochs"),
    ("key inflates, unnamed .npy", lambda d: _plain_entry(d, "key", bytes(4 << 20)),
     r"array 'key' would take 4 MiB, more than a checkpoint's 'key' can"),
    ("meta NaN", lambda d: _edit_meta(d, _set_config("lr", float("nan"))), r"meta is not JSON"),
    ("meta nested deep", lambda d: _rewrite(d, meta=np.array("[" * 200_000)), r"meta is not JSON"),
    ("key inflates", lambda d: _rewrite_compressed(d, key=np.zeros(1 << 20, np.uint32)),
     r"array 'key' would take 4 MiB, more than a checkpoint's 'key' can \(1 KiB\)"),
    ("loss dtype", lambda d: _edit_meta(d, _set("loss_dtype", "int8")), r"'loss_dtype' must be"),
    ("crc range", lambda d: _edit_meta(d, _set("history_crc32", -1)), r"out of range"),
    ("folder named checkpoint.npz", _folder_named_checkpoint, r"is not a file"),
]  # fmt: skip


@pytest.mark.parametrize("corrupt, expected", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_checkpoints_are_refused_in_one_line_naming_the_file(folder, corrupt, expected):
    assert load_checkpoint(folder).epoch == EPOCHS  # valid before the damage
    corrupt(folder)
    with pytest.raises(ValueError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert str(folder / FILENAME) in message
    assert re.search(expected, message), message
    assert "\n" not in message and MARKER not in message


def test_resuming_a_corrupt_checkpoint_from_the_cli_is_one_line(folder, capsys):
    _truncate(folder, lambda n: n // 2)
    flags = ["--num-train", "64", "--num-val", "16", "--quiet", "--no-cache"]
    assert main(["train", *flags, "--checkpoint-dir", str(folder), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{folder / FILENAME} is not a readable jaxlin checkpoint" in err


def test_load_removes_a_killed_writers_leftovers_and_keeps_the_checkpoints_files(folder):
    history = _history_file(folder)
    (folder / f".{FILENAME}.x1x2x3x4{TEMPORARY_SUFFIX}").write_bytes(b"half a zip")
    (folder / "history.dead0001.bin").write_bytes(HISTORY_MAGIC + b"rows")
    (folder / "history.dead0002.bin").write_bytes(HISTORY_MAGIC[:5])  # killed while creating it
    users = {  # files jaxlin did not write, even where the name looks like one of its own
        "notes.txt": b"not ours",
        "history.final.bin": b"results",
        "history.abcd1234.bin": b"results that are not a jaxlin history",
        f".{FILENAME}.x1.tmp": b"a temporary file of some other program",
    }
    for name, data in users.items():
        (folder / name).write_bytes(data)
    assert load_checkpoint(folder).epoch == EPOCHS
    assert sorted(p.name for p in folder.iterdir()) == sorted([FILENAME, history.name, *users])
    assert all((folder / name).read_bytes() == data for name, data in users.items())


class Stop(Exception):
    """Raised by a callback to end a run after an epoch, as a crash would."""


@pytest.fixture
def problem():
    kd, ki = jax.random.split(jax.random.key(11))
    return jaxlin.synthetic_splits(kd, num_train=96, num_val=32), jaxlin.init_params(ki, 2)


def test_rows_a_crash_left_past_the_checkpoint_are_ignored_and_cut_on_resume(
    problem, key, tmp_path
):
    """A crash between the history append and the rename: one whole row and a partial one."""
    s, params = problem
    kwargs = dict(max_epochs=4, batch_size=16, key=key, engine="scan")
    full, hist = jaxlin.fit(params, s.train, s.val, **kwargs)

    def stop_after_1(end):
        if end.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit_with_checkpoints(
            params, s.train, s.val, checkpoint_dir=tmp_path, callback=stop_after_1, **kwargs
        )
    history = _history_file(tmp_path)
    row_floats = (history.stat().st_size - len(HISTORY_MAGIC)) // 2 // 4  # two float32 rows
    with open(history, "ab") as f:
        f.write(np.full(row_floats + 3, 9.0, np.float32).tobytes())  # a row and a partial one
    state = load_checkpoint(tmp_path)
    assert state.epoch == 2
    np.testing.assert_array_equal(state.history.train_loss, hist.train_loss[:2])
    out, ohist = fit_with_checkpoints(params, s.train, s.val, checkpoint_dir=tmp_path, resume=True,
                                      **kwargs)  # fmt: skip
    np.testing.assert_array_equal(out["w"], full["w"])
    np.testing.assert_array_equal(ohist.train_loss, hist.train_loss)
    np.testing.assert_array_equal(load_checkpoint(tmp_path).history.val_loss, hist.val_loss)


def test_a_second_writer_is_refused_and_a_reader_sees_the_live_run(problem, key, tmp_path):
    s, params = problem
    seen = []

    def meanwhile(end):
        seen.append(load_checkpoint(tmp_path).epoch)  # a reader during the run
        with pytest.raises(ValueError, match="another run is writing checkpoints there"):
            save_checkpoint(tmp_path, load_checkpoint(tmp_path))

    fit_with_checkpoints(params, s.train, None, checkpoint_dir=tmp_path, callback=meanwhile,
                         max_epochs=3, batch_size=32, key=key)  # fmt: skip
    assert seen == [1, 2, 3]
    assert load_checkpoint(tmp_path).epoch == 3


def _bytes_written() -> int:
    """Bytes this process has passed to write(2) so far (Linux)."""
    text = Path("/proc/self/io").read_text()
    return int(re.search(r"^wchar: (\d+)$", text, re.M).group(1))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_bytes_written_per_epoch_do_not_grow_with_the_epochs_run(tmp_path, key):
    """Each epoch's save writes the same amount, well under one history row of difference."""
    kd, ki = jax.random.split(jax.random.key(5))
    s = jaxlin.synthetic_splits(kd, num_train=400, num_val=16)
    steps = 400  # batch_size 1: a 1.6 kB history row, which a rewrite of the history would repeat
    written, sizes = [], []

    def measure(end):
        written.append(_bytes_written())
        sizes.append((tmp_path / FILENAME).stat().st_size)

    fit_with_checkpoints(jaxlin.init_params(ki, 2), s.train, s.val, checkpoint_dir=tmp_path,
                         callback=measure, max_epochs=12, batch_size=1, key=key)  # fmt: skip
    per_epoch = np.diff(written)  # epochs 1..11: training and one save each, no compiles
    row_bytes = (steps + 1) * 4
    assert per_epoch.min() > 0
    assert per_epoch.max() - per_epoch.min() < row_bytes, per_epoch
    assert max(sizes) - min(sizes) < row_bytes, sizes  # the checkpoint file does not grow
    assert _history_file(tmp_path).stat().st_size == len(HISTORY_MAGIC) + 12 * row_bytes


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def _result(path: Path) -> dict:
    record = json.loads(path.read_text())
    return {k: record[k] for k in ("w", "b", "train_loss", "val_loss")}


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Two runs in one folder killed at seeded random moments, each resuming the last."""
    flags = ["--num-train", "400", "--num-val", "100", "--batch-size", "8", "--engine", "step"]
    flags += ["--no-cache", "--epochs", "6"]
    assert main(["train", *flags, "--quiet", "--json", str(tmp_path / "full.json")]) == 0
    folder, out = tmp_path / "ckpt", tmp_path / "run.json"
    cmd = [sys.executable, "-m", "jaxlin", "train", *flags, "--checkpoint-dir", str(folder)]
    cmd += ["--json", str(out)]
    rng = random.Random(20240601)
    for run in range(2):
        args = [*cmd, "--resume"] if run else cmd
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=_env(), cwd=tmp_path)  # fmt: skip
        proc.stdout.readline()  # this run saved an epoch (or had none left to run)
        try:  # then, somewhere in a later epoch: training, the append or the rename
            proc.wait(timeout=rng.uniform(0.0, 0.1))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(),
                             cwd=tmp_path, timeout=120, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _result(out) == _result(tmp_path / "full.json")  # JSON floats round-trip: bit for bit
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == FILENAME and HISTORY_PATTERN.fullmatch(names[1])
