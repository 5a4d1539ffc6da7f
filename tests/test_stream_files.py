"""Data on disk is safe: bad arguments and corrupt files are refused by name, nothing is lost."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import run_python

import jaxlin
from jaxlin import stream
from jaxlin.cli import main
from jaxlin.stream import format as fmt

pytestmark = pytest.mark.slow

N, D = 30, 3  # the small dataset every test copies: 2 shards of 15 rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A generated dataset, made once; tests work on copies of it."""
    root = tmp_path_factory.mktemp("pristine") / "ds"
    stream.generate_shards(jax.random.key(0), root, N, d=D, shards=2, chunk=10)
    return root


@pytest.fixture
def ds(pristine, tmp_path):
    """A fresh copy of the pristine dataset, in its own folder."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    return root


def contents(folder):
    """Every file in ``folder`` and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write_dataset(root, parts, dtype=np.float32):
    """A dataset by hand: ``parts`` is a list of ``(X, y)`` arrays, one per shard."""
    root.mkdir()
    entries = []
    for i, (X, y) in enumerate(parts):
        np.save(root / f"X-{i:05d}.npy", np.asarray(X, dtype))
        np.save(root / f"y-{i:05d}.npy", np.asarray(y, dtype))
        entries.append({"X": f"X-{i:05d}.npy", "y": f"y-{i:05d}.npy", "num_examples": len(X)})
    manifest = {"num_examples": sum(len(X) for X, _ in parts), "num_features": parts[0][0].shape[1],
                "dtype": np.dtype(dtype).name, "shards": entries}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# --------------------------------------------------------------------------- generate_shards

GENERATE_REFUSED = [  # (arguments, exception, words the message must hold)
    (dict(num_examples=0), ValueError, "num_examples"),
    (dict(num_examples=2.5), TypeError, "num_examples"),
    (dict(num_examples=2**31), ValueError, "num_examples"),
    (dict(d=0), ValueError, "d must"),
    (dict(shards=0), ValueError, "shards"),
    (dict(shards=N + 1), ValueError, "shards must be <= num_examples"),
    (dict(chunk=0), ValueError, "chunk"),
    (dict(w=[float("nan"), 1.0], d=None), ValueError, "w must be finite"),
    (dict(w=[1.0, 2.0, 3.0], d=5), ValueError, "w has 3 values but d=5"),
    (dict(w="12", d=None), TypeError, "w must"),
    (dict(w=[[1.0, 2.0]], d=None), ValueError, "w must be 1-D"),
    (dict(b=float("inf")), ValueError, "b must be finite"),
    (dict(noise=-1.0), ValueError, "noise must be >= 0"),
    (dict(noise=float("nan")), ValueError, "noise must be finite"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dtype="no such type"), TypeError, "dtype"),
    (dict(overwrite=1), TypeError, "overwrite"),
    (dict(key=0), TypeError, "key"),
    (dict(d=10**12, num_examples=1, shards=1), ValueError, "d=1000000000000 needs"),
    (dict(b=1e39), ValueError, "b makes labels overflow float32"),
    (dict(noise=1e39, d=3), ValueError, "noise makes labels overflow float32"),
    (dict(w=[1e308, 1.0, 1.0], dtype="float64"), ValueError, "w makes labels overflow float64"),
    (dict(num_examples=2**30, d=10**5, chunk=2**30, shards=1), ValueError, "chunk=1073741824"),
    (dict(num_examples=2**31 - 1, d=10**5, chunk=1, shards=1), ValueError, "on disk"),
    (dict(out_dir=None), TypeError, "out_dir"),
    (dict(out_dir="file"), ValueError, "exists and is not a folder"),
    (dict(out_dir="other"), ValueError, "'notes.txt'"),
    (dict(), ValueError, "holds a dataset; pass overwrite=True"),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), GENERATE_REFUSED)
def test_refused_generate_touches_nothing(ds, kwargs, error, words):
    """Every bad argument is refused before the disk is touched: the old dataset, byte for byte."""
    parent = ds.parent
    (parent / "file").write_text("a user's file")
    (parent / "other").mkdir()
    (parent / "other" / "notes.txt").write_text("a user's notes")
    before = {p.name: contents(p) if p.is_dir() else p.read_bytes() for p in parent.iterdir()}
    args = dict(key=jax.random.key(1), out_dir=ds, num_examples=N, d=D, shards=2, chunk=10)
    args.update(kwargs)
    if isinstance(args["out_dir"], str):
        args["out_dir"] = parent / args["out_dir"]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        stream.generate_shards(**args)
    after = {p.name: contents(p) if p.is_dir() else p.read_bytes() for p in parent.iterdir()}
    assert after == before  # nothing written, renamed or left behind
    stream.open_dataset(ds)


def test_interrupted_generate_keeps_the_old_dataset(ds, monkeypatch):
    """Stopped while writing the new files (Ctrl-C): the old dataset stays, no temporary folder."""
    before = contents(ds)
    calls = []
    real = fmt.synthetic_data

    def draw_then_stop(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fmt, "synthetic_data", draw_then_stop)
    with pytest.raises(KeyboardInterrupt):
        stream.generate_shards(jax.random.key(1), ds, N, d=D, shards=2, chunk=10, overwrite=True)
    assert len(calls) == 3  # it was writing the new dataset when stopped
    assert contents(ds) == before
    assert sorted(p.name for p in ds.parent.iterdir()) == ["ds"]


def test_overwrite_replaces_the_whole_dataset(ds, key):
    """4 shards, then 1: only the new dataset's files are there, and it reads back."""
    stream.generate_shards(key, ds, 40, d=2, shards=4, chunk=10, overwrite=True)
    assert len(list(ds.glob("X-*.npy"))) == 4
    new = stream.generate_shards(key, ds, 20, d=2, shards=1, chunk=10, overwrite=True)
    assert sorted(p.name for p in ds.iterdir()) == ["X-00000.npy", "manifest.json", "y-00000.npy"]
    assert sorted(p.name for p in ds.parent.iterdir()) == ["ds"]  # no temporary folder left
    assert new.num_examples == 20 and len(new.shards) == 1
    assert np.load(new.shards[0].X).shape == (20, 2)


def test_generate_into_an_empty_folder_and_through_a_link(tmp_path, key):
    """An empty folder is written; a link to a dataset folder replaces the folder, not the link."""
    (tmp_path / "empty").mkdir()
    a = stream.generate_shards(key, tmp_path / "empty", 10, chunk=10)
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    b = stream.generate_shards(jax.random.key(3), tmp_path / "link", 12, chunk=10, overwrite=True)
    assert (tmp_path / "link").is_symlink() and b.num_examples == 12
    assert stream.open_dataset(tmp_path / "empty").num_examples == 12
    assert a.num_features == b.num_features == 2


CLI_REFUSED = [  # (flags, the flag(s) the message must name)
    (["--noise=-1"], ["--noise"]),
    (["--w", "nan,1"], ["--w"]),
    (["--w", "1,2,3", "--d", "5"], ["--w", "--d"]),
    (["--d", "0"], ["--d"]),
    (["--num-examples", "0"], ["--num-examples"]),
    (["--shards", "31"], ["--shards", "--num-examples"]),
    (["--chunk", "0"], ["--chunk"]),
    (["--b", "inf"], ["--b"]),
    (["--seed", "-1"], ["--seed"]),
    (["--d", "1000000000000", "--num-examples", "1", "--shards", "1"], ["--d"]),
    ([], ["--out", "--overwrite"]),
]


@pytest.mark.parametrize(("flags", "named"), CLI_REFUSED)
def test_cli_refused_generate_keeps_the_old_dataset_byte_for_byte(ds, capsys, flags, named):
    before = contents(ds)
    argv = ["generate", "--out", str(ds), "--num-examples", str(N), "--shards", "2", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxlin: error: ") and "Traceback" not in err
    for flag in named:
        assert flag in err
    assert contents(ds) == before


def test_cli_generate_refuses_a_file_and_overwrites_when_told(ds, capsys):
    (ds.parent / "f").write_text("x")
    assert main(["generate", "--out", str(ds.parent / "f"), "--num-examples", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "not a folder" in err
    assert main(["generate", "--out", str(ds), "--num-examples", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in ds.iterdir()) == ["X-00000.npy", "manifest.json", "y-00000.npy"]


# --------------------------------------------------------------------------- open_dataset


def _manifest(root, **changes):
    m = json.loads((root / "manifest.json").read_text())
    for k, v in changes.items():
        m[k] = v
    return m


def _set_manifest(root, m):
    (root / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def _set_shard0(root, key, value):
    m = _manifest(root)
    m["shards"][0][key] = value
    _set_manifest(root, m)


def _save_raw(path, header, data=b""):
    """A .npy file with a hand-written header (any dtype descr, order or shape)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)


SECRET = b"root:x:0:0:secret-bytes\n" * 4


def _outside(root):
    """A file outside the dataset folder that must never be opened or quoted."""
    path = root.parent / "secret.npy"
    path.write_bytes(SECRET)
    return path


CORRUPT = {  # how -> (break the dataset, the file the message names)
    "manifest not JSON": (lambda r: _set_manifest(r, "{not json"), "manifest.json"),
    "manifest a list": (lambda r: _set_manifest(r, "[1, 2]"), "manifest.json"),
    "manifest not UTF-8": (
        lambda r: (r / "manifest.json").write_bytes(b"\xff\xfe{}"),
        "manifest.json",
    ),
    "manifest a folder": (
        lambda r: ((r / "manifest.json").unlink(), (r / "manifest.json").mkdir()),
        "manifest.json",
    ),
    "manifest NaN": (
        lambda r: _set_manifest(r, json.dumps(_manifest(r, w=[float("nan")] * D))),
        "manifest.json",
    ),
    "missing key": (
        lambda r: _set_manifest(r, _manifest(r, num_features=None) | {"num_features": None}),
        "manifest.json",
    ),
    "count as text": (lambda r: _set_manifest(r, _manifest(r, num_examples="30")), "manifest.json"),
    "count as bool": (lambda r: _set_manifest(r, _manifest(r, num_examples=True)), "manifest.json"),
    "count too large": (
        lambda r: _set_manifest(r, _manifest(r, num_examples=2**31)),
        "manifest.json",
    ),
    "dtype int32": (lambda r: _set_manifest(r, _manifest(r, dtype="int32")), "manifest.json"),
    "no shards": (lambda r: _set_manifest(r, _manifest(r, shards=[])), "manifest.json"),
    "format": (lambda r: _set_manifest(r, _manifest(r, format="other/9")), "manifest.json"),
    "w length": (lambda r: _set_manifest(r, _manifest(r, w=[1.0, 2.0])), "manifest.json"),
    "w text": (lambda r: _set_manifest(r, _manifest(r, w="1,2,3")), "manifest.json"),
    "b text": (lambda r: _set_manifest(r, _manifest(r, b="4.2")), "manifest.json"),
    "name ..": (lambda r: _set_shard0(r, "X", "../../../../etc/passwd"), "manifest.json"),
    "name absolute": (lambda r: _set_shard0(r, "X", "/etc/shadow"), "manifest.json"),
    "absolute npy": (lambda r: _set_shard0(r, "X", str(_outside(r))), "manifest.json"),
    "link outside": (
        lambda r: ((r / "X-00000.npy").unlink(), (r / "X-00000.npy").symlink_to(_outside(r))),
        "manifest.json",
    ),
    "name reused": (lambda r: _set_shard0(r, "y", "X-00001.npy"), "manifest.json"),
    "name not text": (lambda r: _set_shard0(r, "X", 7), "manifest.json"),
    "row count": (lambda r: _set_shard0(r, "num_examples", 14), "X-00000.npy"),
    "total": (lambda r: _set_manifest(r, _manifest(r, num_examples=N + 1)), "manifest.json"),
    "not npy": (lambda r: (r / "X-00001.npy").write_bytes(SECRET), "X-00001.npy"),
    "missing": (lambda r: (r / "y-00001.npy").unlink(), "y-00001.npy"),
    "truncated": (
        lambda r: (r / "X-00001.npy").write_bytes((r / "X-00001.npy").read_bytes()[:-4]),
        "X-00001.npy",
    ),
    "trailing bytes": (
        lambda r: (r / "y-00000.npy").write_bytes((r / "y-00000.npy").read_bytes() + b"\0" * 4),
        "y-00000.npy",
    ),
    "byte-swapped": (
        lambda r: np.save(r / "X-00000.npy", np.load(r / "X-00000.npy").astype(">f4")),
        "X-00000.npy",
    ),
    "fortran": (
        lambda r: np.save(r / "X-00000.npy", np.asfortranarray(np.load(r / "X-00000.npy"))),
        "X-00000.npy",
    ),
    "object dtype": (
        lambda r: _save_raw(
            r / "y-00000.npy", {"descr": "|O", "fortran_order": False, "shape": (15,)}, b"\0" * 120
        ),
        "y-00000.npy",
    ),
    "bad header": (
        lambda r: (r / "X-00000.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': os.sys}\n"),
        "X-00000.npy",
    ),
    "y width 2": (
        lambda r: np.save(r / "y-00000.npy", np.zeros((15, 2), np.float32)),
        "y-00000.npy",
    ),
    "X width": (
        lambda r: np.save(r / "X-00000.npy", np.zeros((15, D + 1), np.float32)),
        "X-00000.npy",
    ),
    "shard a folder": (
        lambda r: ((r / "X-00000.npy").unlink(), (r / "X-00000.npy").mkdir()),
        "X-00000.npy",
    ),
    "shard a FIFO": (
        lambda r: ((r / "X-00000.npy").unlink(), os.mkfifo(r / "X-00000.npy")),
        "X-00000.npy",
    ),
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_corrupt_dataset_is_one_line_naming_the_file(ds, how):
    """open_dataset: one ValueError line naming the file; no file's bytes quoted in it."""
    corrupt, name = CORRUPT[how]
    corrupt(ds)
    with pytest.raises(ValueError) as info:
        stream.open_dataset(ds)
    message = str(info.value)
    assert name in message and "\n" not in message
    assert "root:" not in message and "secret" not in message and "os.sys" not in message


def test_open_dataset_refuses_what_is_not_a_folder(tmp_path):
    with pytest.raises(TypeError, match="path must be"):
        stream.open_dataset(3)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        stream.open_dataset(tmp_path / "f")


def test_a_link_inside_the_folder_is_allowed(ds):
    (ds / "X-00000.npy").rename(ds / "data.npy")
    (ds / "X-00000.npy").symlink_to("data.npy")
    assert stream.open_dataset(ds).num_examples == N


# --------------------------------------------------------------------------- fit_stream


def test_fit_stream_refuses_bad_data_and_buffers_beyond_memory(ds, key):
    p0 = jaxlin.init_params(key, D)
    with pytest.raises(TypeError, match="data must be"):
        stream.fit_stream(p0, 123, key=key)
    with pytest.raises(ValueError, match="prefetch=1000000000000 needs"):
        stream.fit_stream(p0, ds, key=key, batch_size=4, prefetch=10**12)
    CORRUPT["name .."][0](ds)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        stream.fit_stream(p0, ds, key=key)


def _bad_rows(tmp_path, where, value, dtype=np.float32):
    """Two shards (20 + 25 rows, d = 2) with ``value`` at ``where = (file, row)``."""
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(c, 2)), rng.normal(size=c)) for c in (20, 25)]
    name, row = where
    shard = int(name[-1])
    X, y = parts[shard]
    (X if name[0] == "X" else y)[row] = value
    return write_dataset(tmp_path / "bad", parts, dtype)


@pytest.mark.parametrize(
    ("where", "value", "dtype", "what"),
    [
        (("X1", 7), np.nan, np.float32, "NaN or Inf"),
        (("X0", 0), -np.inf, np.float32, "NaN or Inf"),
        (("y1", 24), np.inf, np.float32, "NaN or Inf"),
        (("X1", 3), 1e39, np.float64, "a value beyond float32's range"),
    ],
)
def test_fit_stream_names_the_file_and_row_of_bad_values(tmp_path, key, where, value, dtype, what):
    root = _bad_rows(tmp_path, where, value, dtype)
    if dtype == np.float64 and jax.config.jax_enable_x64:
        pytest.skip("with x64 on, float64 data is trained as float64")
    name = f"{where[0][0]}-0000{where[0][-1]}.npy"
    called = []
    for order in stream.ORDERS:
        with pytest.raises(ValueError, match=rf"{name}: row {where[1]} holds {what}"):
            stream.fit_stream(jaxlin.init_params(key, 2), root, key=key, batch_size=4,
                              block_batches=2, order=order, callback=called.append)  # fmt: skip
    # and the runs reader names it too
    reader = stream.ShardReader(stream.open_dataset(root), threads=1)
    with pytest.raises(ValueError, match=rf"{name}: row {where[1]}"):
        reader.read_runs(np.array([0, 20]), 20 if where[0][-1] == "0" else 25)


def test_shard_truncated_or_replaced_while_training_is_named(ds, key):
    """Changed under a running fit_stream, after its first epoch: a ValueError naming the file."""
    for change in ("truncate", "replace"):
        root = ds.parent / change
        shutil.copytree(ds, root)
        path = root / "y-00001.npy"

        def after_first_epoch(end, path=path, change=change):
            if end.epoch == 0 and change == "truncate":  # a few bytes: the last rows
                os.truncate(path, path.stat().st_size - 8)
            elif end.epoch == 0:
                tmp = path.with_name("new.npy")
                tmp.write_bytes(path.read_bytes())
                tmp.replace(path)

        words = "truncated or extended" if change == "truncate" else "replaced"
        with pytest.raises(ValueError, match=rf"y-00001\.npy: .*{words}"):
            stream.fit_stream(
                jaxlin.init_params(key, D), root, key=key, batch_size=4, block_batches=1,
                max_epochs=50, callback=after_first_epoch,
            )  # fmt: skip


def test_a_shard_truncated_under_an_open_reader_is_named(ds):
    """Truncated to nothing between two reads: the check before the next read names it."""
    lines = run_python(f"""
        import os, numpy as np
        from jaxlin import stream
        for budget in (1 << 30, 0):  # resident, and read from the files
            reader = stream.ShardReader(stream.open_dataset({str(ds)!r}), budget, threads=1)
            reader.read(np.arange({N}))
            data = open({str(ds / "X-00001.npy")!r}, "rb").read()
            os.truncate({str(ds / "X-00001.npy")!r}, 0)
            for read in (lambda: reader.read(np.arange({N})),
                         lambda: reader.read_runs(np.array([0]), {N})):
                try:
                    read()
                except ValueError as err:
                    print(err)
            open({str(ds / "X-00001.npy")!r}, "wb").write(data)
    """)
    assert len(lines) == 4 and all("X-00001.npy: 0 bytes" in line for line in lines), lines


def test_a_shard_truncated_during_a_read_is_named(ds):
    """Cut short after the check before a read and before its rows are copied: the window a
    memory map would answer with SIGBUS. Every kind of read ends in a ValueError naming it."""
    lines = run_python(f"""
        import os, numpy as np
        from jaxlin import stream
        from jaxlin.stream import reader as reader_module
        opened = reader_module.open_unchanged

        def open_then_truncate(file):  # X-00000 passes the check, then loses its rows
            fd = opened(file)
            if file.path.name == "X-00000.npy":
                os.truncate(file.path, file.offset + 2 * file.row_bytes)
            return fd

        reader_module.open_unchanged = open_then_truncate
        path = {str(ds / "X-00000.npy")!r}
        data = open(path, "rb").read()
        for budget in (1 << 30, 0):  # resident (the shard's load), and read from the files
            for read in ("sorted", "runs", "rows"):
                reader = stream.ShardReader(stream.open_dataset({str(ds)!r}), budget, threads=1)
                try:
                    if read == "sorted":
                        reader.read_sorted(np.arange({N}))
                    elif read == "runs":
                        reader.read_runs(np.array([0]), {N})
                    else:
                        reader.read(np.array([1, 9, 14]))
                except ValueError as err:
                    print(err)
                open(path, "wb").write(data)
    """)
    words = "X-00000.npy: ended before the rows being read: truncated while the dataset is being"
    assert len(lines) == 6 and all(words in line for line in lines), lines


@pytest.mark.parametrize("budget", [1 << 30, 0])
def test_truncating_shards_at_random_moments_never_ends_the_reader(tmp_path, budget):
    """Another thread truncates a shard file at a random moment while blocks are read,
    30 times: each time a ValueError naming the file, never a signal."""
    lines = run_python(f"""
        import os, random, shutil, threading, time
        import jax, numpy as np
        from jaxlin import stream
        root = {str(tmp_path)!r}
        stream.generate_shards(jax.random.key(0), root + "/pristine", 60_000, d=16, shards=3)
        rng = random.Random(0)
        for trial in range(30):
            ds = root + f"/ds{{trial}}"
            shutil.copytree(root + "/pristine", ds)
            data = stream.open_dataset(ds)
            reader = stream.ShardReader(data, budget_bytes={budget}, threads=2)
            victim = rng.choice([p for s in data.shards for p in (s.X, s.y)])
            cut = rng.randrange(victim.stat().st_size)
            timer = threading.Timer(rng.uniform(0, 0.05), os.truncate, (victim, cut))
            timer.start()
            try:
                for _ in range(10_000):
                    reader.read_sorted(np.random.default_rng(trial).permutation(60_000)[:20_000])
                print("not seen")
            except ValueError as err:
                print(err)
            timer.join()
            reader.close()
            shutil.rmtree(ds)
    """)
    assert len(lines) == 30, lines
    for line in lines:
        assert "-0000" in line and "while the dataset is being read" in line, line


def test_an_interrupted_generate_leaves_the_old_dataset_and_no_temporary_folder(tmp_path, key):
    """progress(rows, n) is called as rows are written; what it raises (here Ctrl-C)
    ends the generation with the folder as it was, and nothing of the new one left."""
    out = tmp_path / "d"
    stream.generate_shards(key, out, 300, shards=2, chunk=64)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def stop_after_first(rows, total):
        calls.append((rows, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream.generate_shards(
            jax.random.key(7), out, 500, shards=3, chunk=64, overwrite=True,
            progress=stop_after_first,
        )  # fmt: skip
    assert calls == [(64, 500)]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
