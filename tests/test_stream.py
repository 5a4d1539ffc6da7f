"""Shards on disk: deterministic files, checks that name the file, streaming equals fit."""

import errno
import json
import os
import threading
import time

import jax
import numpy as np
import pytest
from conftest import run_python
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlin
from jaxlin import shuffle, stream
from jaxlin.stream import format as fmt
from jaxlin.stream import reader as reader_module

pytestmark = pytest.mark.slow


def load_all(ds):
    X = np.concatenate([np.load(s.X) for s in ds.shards])
    y = np.concatenate([np.load(s.y) for s in ds.shards])
    return X, y


@pytest.fixture
def shards(tmp_path, key):
    """1003 rows, d = 3, in 3 shards (334 + 334 + 335), generated 100 rows at a time."""
    return stream.generate_shards(key, tmp_path / "ds", 1003, d=3, shards=3, chunk=100)


def test_generate_is_deterministic_and_independent_of_shard_count(tmp_path, key, shards):
    again = stream.generate_shards(key, tmp_path / "again", 1003, d=3, shards=3, chunk=100)
    one = stream.generate_shards(key, tmp_path / "one", 1003, d=3, shards=1, chunk=100)
    for a, b in zip(shards.shards, again.shards, strict=True):
        assert a.X.read_bytes() == b.X.read_bytes() and a.y.read_bytes() == b.y.read_bytes()
    X, y = load_all(shards)
    np.testing.assert_array_equal(X, np.load(one.shards[0].X))
    assert [s.num_examples for s in shards.shards] == [335, 334, 334]
    # the labels follow the manifest's truth: least squares recovers it
    m = json.loads((shards.root / "manifest.json").read_text())
    coef = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]
    np.testing.assert_allclose(coef, [*m["w"], m["b"]], atol=5e-3)
    assert m["dtype"] == "float32" and m["num_examples"] == 1003 and m["num_features"] == 3
    other = stream.generate_shards(jax.random.key(1), tmp_path / "other", 1003, d=3, chunk=100)
    assert not np.array_equal(np.load(other.shards[0].X), X)


@pytest.mark.parametrize(
    ("batch_size", "block_batches", "shuffle"),
    [(32, 5, True), (32, 1000, True), (50, 3, True), (64, 2, False)],
)
def test_fit_stream_equals_fit_on_the_same_data(shards, key, batch_size, block_batches, shuffle):
    """Blocks, sorted reads and prefetch keep fit's batch order: the same result, bit for bit."""
    X, y = load_all(shards)
    p0 = jaxlin.init_params(key, 3)
    kw = dict(lr=0.05, max_epochs=3, batch_size=batch_size, key=key, shuffle=shuffle)
    val = (X[:100], y[:100])
    ref, h_ref = jaxlin.fit(p0, (X, y), val, **kw)
    got, h = stream.fit_stream(p0, shards.root, val, block_batches=block_batches, **kw)
    np.testing.assert_array_equal(h.train_loss, h_ref.train_loss)
    # the val loss is a float32 mean taken by two different programs: rounding only
    np.testing.assert_allclose(h.val_loss, h_ref.val_loss, rtol=1e-5)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    error = lambda p: np.abs(np.asarray(p["w"]).ravel() - shards.w).max()  # noqa: E731
    assert error(got) < 0.2 * error(p0)  # and it learned


@pytest.mark.parametrize("order", stream.ORDERS)
def test_every_example_read_exactly_once_per_epoch(tmp_path, key, order):
    """Rows whose first feature is their own index: count what the reader returns."""
    n, d = 1001, 2
    root = tmp_path / "ids"
    root.mkdir()
    rows = np.arange(n, dtype=np.float32)
    entries, start = [], 0
    for i, c in enumerate([400, 1, 600]):
        X = np.stack([rows[start : start + c], -rows[start : start + c]], axis=1)
        np.save(root / f"X{i}.npy", X)
        np.save(root / f"y{i}.npy", rows[start : start + c, None])  # (rows, 1) is accepted
        entries.append({"X": f"X{i}.npy", "y": f"y{i}.npy", "num_examples": c})
        start += c
    manifest = {"num_examples": n, "num_features": d, "dtype": "float32", "shards": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    ds = stream.open_dataset(root)
    orders = []
    for epoch in range(2):
        seen = []
        for idx in stream.epoch_blocks(ds, key, epoch, 32, 7, order):
            X, y = stream.read_rows(ds, idx.reshape(-1))
            np.testing.assert_array_equal(X[:, 0], idx.reshape(-1))  # rows come back in order
            np.testing.assert_array_equal(X[:, 1], -X[:, 0])
            np.testing.assert_array_equal(y[:, 0], X[:, 0])
            seen.append(X[:, 0].astype(np.int64))
        seen = np.concatenate(seen)
        np.testing.assert_array_equal(np.bincount(seen, minlength=n), np.ones(n))
        ekey = jax.random.fold_in(key, epoch)
        expected = (
            jaxlin.shuffle.permutation(ekey, n)
            if order == "exact"
            else shuffle.permute_runs(
                ekey, np.arange(n), n, stream.RUN_LENGTH, stream.RUNS_PER_BLOCK
            )
        )
        np.testing.assert_array_equal(seen, np.asarray(expected))
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a new shuffle each epoch


def _corrupt(ds, how):
    """Break the dataset one way; returns the file name the error must name."""
    root = ds.root
    manifest = json.loads((root / "manifest.json").read_text())
    x1, y1 = ds.shards[1].X, ds.shards[1].y
    if how == "truncated":
        x1.write_bytes(x1.read_bytes()[:-7])
        return x1.name
    if how == "garbage":
        x1.write_bytes(b"not a numpy file at all" * 10)
        return x1.name
    if how == "dtype":
        np.save(y1, np.load(y1).astype(np.float64))
        return y1.name
    if how == "width":
        np.save(x1, np.load(x1)[:, :2])
        return x1.name
    if how == "lengths":
        np.save(y1, np.load(y1)[:-1])
        return y1.name
    if how == "missing":
        y1.unlink()
        return y1.name
    if how == "count":
        manifest["shards"][1]["num_examples"] += 1
    elif how == "total":
        manifest["num_examples"] += 5
    elif how == "malformed":
        del manifest["shards"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return x1.name if how == "count" else "manifest.json"


@pytest.mark.parametrize(
    "how", ["truncated", "garbage", "dtype", "width", "lengths", "missing", "count", "total",
            "malformed"],
)  # fmt: skip
def test_bad_shards_are_named_before_training(shards, key, how):
    name = _corrupt(shards, how)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        stream.open_dataset(shards.root)
    called = []
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        stream.fit_stream(jaxlin.init_params(key, 3), shards.root, key=key, callback=called.append)
    assert not called


def test_no_manifest_and_wrong_width(tmp_path, key, shards):
    with pytest.raises(ValueError, match="no manifest"):
        stream.open_dataset(tmp_path)
    with pytest.raises(ValueError, match="3 features but params"):
        stream.fit_stream(jaxlin.init_params(key, 2), shards.root, key=key)


def test_reader_error_in_the_background_reaches_the_caller(shards, key):
    """A shard removed after the first epoch: the reader thread's error, raised by fit_stream."""
    ds = stream.open_dataset(shards.root)
    ends = []

    def remove(end):
        ends.append(end.epoch)
        if end.epoch == 0:
            ds.shards[2].X.unlink()  # checked, then gone mid-run

    with pytest.raises(ValueError, match=r"X-00002\.npy: removed while"):
        stream.fit_stream(jaxlin.init_params(key, 3), ds, key=key, block_batches=2,
                          max_epochs=5, callback=remove)  # fmt: skip
    assert ends[0] == 0 and len(ends) < 5


def test_stopping_mid_run_leaves_no_reader_behind(shards, key):
    """A callback that raises ends the run at once, and the reader thread and its
    copying threads are gone (however far ahead it was)."""

    class Stop(Exception):
        pass

    def stop(end):
        raise Stop

    for prefetch in (1, 3):
        with pytest.raises(Stop):
            stream.fit_stream(jaxlin.init_params(key, 3), shards, key=key, block_batches=2,
                              prefetch=prefetch, max_epochs=5, callback=stop)  # fmt: skip
        alive = [t.name for t in threading.enumerate() if t.name.startswith("jaxlin-")]
        assert alive == []


def test_same_key_same_result_and_keys_matter(shards, key):
    p0 = jaxlin.init_params(key, 3)
    a, _ = stream.fit_stream(p0, shards.root, key=key, max_epochs=1, block_batches=4)
    b, _ = stream.fit_stream(p0, shards.root, key=key, max_epochs=1, block_batches=9)
    c, _ = stream.fit_stream(p0, shards.root, key=jax.random.key(5), max_epochs=1)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])


def test_cli_generate_then_train_from_disk(tmp_path, capsys):
    from jaxlin.cli import main

    out, js, png = tmp_path / "d", tmp_path / "r.json", tmp_path / "r.png"
    assert main(["generate", "--out", str(out), "--num-examples", "600", "--shards", "2"]) == 0
    args = ["--json", str(js), "--plot", str(png), "--quiet", "--lr", "0.2"]
    assert main(["train", "--data", str(out), "--no-cache", *args]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(js.read_text())
    assert len(record["train_loss"]) == 3 * 19 and record["num_examples"] == 600  # 600/32 -> 19
    np.testing.assert_allclose(record["w"], [2.0, -3.4], atol=0.02)
    np.testing.assert_allclose(record["w_error"], np.array([2.0, -3.4]) - record["w"], atol=1e-5)
    capsys.readouterr()
    for flags in (["--engine", "eager"], ["--checkpoint-dir", str(tmp_path / "ck")]):
        assert main(["train", "--data", str(out), "--no-cache", *flags]) == 2  # not ignored
        assert f"cannot be combined with {flags[0]}" in capsys.readouterr().err
    (out / "X-00001.npy").write_bytes(b"\x93NUMPY")
    assert main(["train", "--data", str(out), "--no-cache"]) == 2
    assert "X-00001.npy" in capsys.readouterr().err


@pytest.mark.parametrize(
    "threads, piece_rows, piece_bytes, gap_bytes",
    [(1, 4096, 1 << 20, 8192), (3, 7, 1 << 20, 0), (2, 64, 100, 24), (2, 4096, 1 << 20, 1 << 30)],
)
def test_reader_from_files_reads_the_rows_of_the_resident_one(
    shards, key, threads, piece_rows, piece_bytes, gap_bytes
):
    """Pieces read from the files by several threads, spans of every size: the same rows.

    (gap_bytes 0: a read per run of consecutive rows; 24: rows up to two
    apart share a read (12 bytes each); 2**30: one read per piece. 100
    bytes: a piece ends at every 8 rows of the file.)
    """
    idx = np.asarray(jaxlin.shuffle.permutation(key, shards.num_examples))[:500]
    idx = np.concatenate([idx, idx[:20], np.arange(40, 90)])  # rows twice, and consecutive rows
    resident = stream.ShardReader(shards, threads=1)
    files = stream.ShardReader(
        shards, budget_bytes=0, threads=threads, piece_rows=piece_rows, piece_bytes=piece_bytes,
        gap_bytes=gap_bytes,
    )  # fmt: skip
    assert resident.resident and not files.resident
    X, y = load_all(shards)
    for _ in range(2):  # and again, from the loaded shards and the reopened files
        for r in (resident, files):
            for dtype in (np.int64, np.int32):  # the indices as numpy and as JAX give them
                got_X, got_y = r.read(idx.astype(dtype))
                np.testing.assert_array_equal(got_X, X[idx])
                np.testing.assert_array_equal(got_y.ravel(), y[idx])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's RssAnon")
def test_reading_from_the_files_holds_no_copy_of_the_data(tmp_path, key):
    """Above the budget, a read's memory is its buffers and a piece at a time, not the data:
    a 51 MB dataset read at random grows the process by far less than 51 MB."""
    ds = stream.generate_shards(key, tmp_path / "big", 400_000, d=31, shards=4)
    reader = stream.ShardReader(ds, budget_bytes=0, threads=2)
    idx = np.random.default_rng(0).permutation(400_000)[:20_000]
    out = reader.read_buffers(idx.size)

    def anon_mib():
        with open("/proc/self/status") as f:
            status = f.read()
        return int(status.split("RssAnon:")[1].split()[0]) / 1024

    before = anon_mib()
    for _ in range(3):
        reader.read_sorted(idx, out)
    assert anon_mib() - before < 20
    reader.close()


def test_gather_equals_indexing_for_any_sorted_rows_and_gap(tmp_path):
    """Any sorted rows (repeats included), any span threshold: exactly ``X[rows]``."""
    X = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    np.save(tmp_path / "X-00000.npy", X)
    file = fmt.check_shard_file(tmp_path / "X-00000.npy", np.dtype(np.float32), 5, 300)
    fd = os.open(file.path, os.O_RDONLY)

    @given(
        rows=st.lists(st.integers(0, 299), min_size=1, max_size=120).map(sorted),
        gap_bytes=st.integers(0, 3000),
    )
    @settings(max_examples=150, deadline=None)
    def check(rows, gap_bytes):
        out = np.full((len(rows), 5), np.nan, np.float32)
        reader_module.gather(fd, file, np.array(rows), out, gap_bytes)
        np.testing.assert_array_equal(out, X[rows])

    try:
        check()
    finally:
        os.close(fd)


def test_reader_without_positional_reads_reads_the_same_rows(shards, key, monkeypatch):
    """Where the OS has no pread (Windows): seek and read, on one thread, the same rows."""
    monkeypatch.delattr(os, "preadv", raising=False)
    monkeypatch.setattr(reader_module, "_pread", reader_module._seek_read)
    monkeypatch.setattr(reader_module, "_POSITIONAL_READS", False)
    idx = np.asarray(jaxlin.shuffle.permutation(key, shards.num_examples))[:400]
    X, y = load_all(shards)
    for budget in (1 << 30, 0):
        reader = stream.ShardReader(shards, budget_bytes=budget, threads=4)
        assert reader.threads == 1
        got_X, got_y = reader.read(idx)
        np.testing.assert_array_equal(got_X, X[idx])
        np.testing.assert_array_equal(got_y.ravel(), y[idx])
        runs_X, _, rank = reader.read_runs(np.array([300, 0]), 64)
        np.testing.assert_array_equal(runs_X[rank[0] * 64 : rank[0] * 64 + 64], X[300:364])


def test_gather_reads_each_span_once(shards, monkeypatch):
    """Rows closer than gap_bytes share one read; consecutive rows go straight to the buffer."""
    calls = []
    real = reader_module._pread
    monkeypatch.setattr(reader_module, "_pread", lambda *a: calls.append(a[1:]) or real(*a))
    file = stream.ShardReader(shards, budget_bytes=0).files[0][0]  # 335 rows of 12 bytes
    out = np.empty((5, 3), np.float32)
    fd = os.open(file.path, os.O_RDONLY)
    try:
        reader_module.gather(fd, file, np.array([3, 4, 6, 100, 101]), out, gap_bytes=12)
        assert calls == [(48, file.offset + 36), (24, file.offset + 1200)]  # rows 3-6, 100-101
        calls.clear()
        reader_module.gather(fd, file, np.arange(7, 12), out, gap_bytes=0)
        assert calls == []  # one preadv into out
    finally:
        os.close(fd)
    np.testing.assert_array_equal(out, load_all(shards)[0][7:12])


def test_runs_order_trains_reproducibly_and_learns(shards, key):
    """order="runs": another shuffle than fit's, but keyed, repeatable, and it learns."""
    p0 = jaxlin.init_params(key, shards.num_features)
    kw = dict(lr=0.05, max_epochs=3, batch_size=16, key=jax.random.key(3), order="runs")
    (a, ha), (b, hb) = stream.fit_stream(p0, shards, **kw), stream.fit_stream(p0, shards, **kw)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(ha.train_loss, hb.train_loss)
    exact, _ = stream.fit_stream(p0, shards, **{**kw, "order": "exact"})
    assert not np.array_equal(np.asarray(exact["w"]), np.asarray(a["w"]))  # another order
    error = lambda p: np.abs(np.asarray(p["w"]).ravel() - shards.w).max()  # noqa: E731
    assert error(a) < 0.2 * error(p0)


def test_unknown_order_is_refused(shards, key):
    with pytest.raises(ValueError, match="order must be one of"):
        stream.fit_stream(jaxlin.init_params(key, shards.num_features), shards, key=key,
                          order="random")  # fmt: skip


@pytest.mark.parametrize("budget", [1 << 40, 0])
def test_read_runs_gives_the_rows_of_each_run(shards, key, budget):
    """Whole runs, some across shard ends (rows 0-334 | 335-668 | 669-1002), by start.

    Shard 0: 0, 64, 128 one gather, 300 and 330 across its end; shard 1: 400
    and 437 at different phases of 64 (copied one by one), 640 across its end.
    """
    reader = stream.ShardReader(shards, budget_bytes=budget, threads=2)
    starts = np.array([500, 0, 300, 640, 330, 939, 128, 64, 400, 437])
    X, y, rank = reader.read_runs(starts, 64)
    assert sorted(rank.tolist()) == list(range(starts.size))
    for j, start in enumerate(starts):
        want_X, want_y = stream.read_rows(shards, np.arange(start, start + 64))
        np.testing.assert_array_equal(X[rank[j] * 64 : (rank[j] + 1) * 64], want_X)
        np.testing.assert_array_equal(y[rank[j] * 64 : (rank[j] + 1) * 64], want_y)
    assert rank.tolist() == np.argsort(np.argsort(starts)).tolist()  # sorted by start


def test_runs_order_trains_on_permute_runs_order_as_fit_does(tmp_path, key):
    """Each epoch of ``order="runs"`` is ``fit``'s epoch on the data laid out in
    ``permute_runs``' order (no shuffle): whole blocks of full runs (read run by run)
    and the rest of the data (read row by row) alike."""
    n = 2 * stream.RUN_LENGTH * stream.RUNS_PER_BLOCK + 1000  # two full run-blocks and a rest
    ds = stream.generate_shards(key, tmp_path / "runs", n, d=2, shards=3)
    X, y = stream.read_rows(ds, np.arange(n))
    p0 = jaxlin.init_params(key, 2)
    kw = dict(lr=0.01, batch_size=256)
    got, hist = stream.fit_stream(p0, ds, max_epochs=2, key=key, order="runs", **kw)
    params = p0
    for epoch in range(2):
        order = shuffle.permute_runs(
            shuffle.epoch_key(key, epoch), np.arange(n), n, stream.RUN_LENGTH,
            stream.RUNS_PER_BLOCK,
        )  # fmt: skip
        params, h = jaxlin.fit(params, (X[order], y[order]), max_epochs=1, shuffle=False, **kw)
        np.testing.assert_allclose(hist.train_loss[epoch], h.train_loss[0], rtol=1e-5)
    for name in ("w", "b"):
        np.testing.assert_allclose(got[name], params[name], rtol=1e-5, atol=1e-6)


def test_runs_order_without_shuffle_reads_in_order(tmp_path, key):
    """shuffle=False reads rows in order whatever the order flag: fit's unshuffled run."""
    n = stream.RUN_LENGTH * stream.RUNS_PER_BLOCK + 300  # a full run-block, then a rest
    ds = stream.generate_shards(key, tmp_path / "plain", n, d=2, shards=2)
    X, y = load_all(ds)
    p0 = jaxlin.init_params(key, 2)
    kw = dict(lr=0.01, max_epochs=1, batch_size=256, shuffle=False)
    ref, h_ref = jaxlin.fit(p0, (X, y), **kw)
    got, h = stream.fit_stream(p0, ds, order="runs", **kw)
    np.testing.assert_array_equal(h.train_loss, h_ref.train_loss)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_reads_outside_the_data_are_refused(shards):
    reader = stream.ShardReader(shards)
    with pytest.raises(IndexError, match=r"row 1003 is outside \[0, 1003\)"):
        reader.read_sorted(np.array([5, 1003]))
    with pytest.raises(IndexError, match="row -1"):
        stream.read_rows(shards, np.array([-1, 2]))
    with pytest.raises(IndexError, match="do not fit"):
        reader.read_runs(np.array([0, 1000]), 64)
    with pytest.raises(IndexError, match=f"row {2**32 + 5} is outside"):  # not row 5
        reader.read(np.array([2**32 + 5]))
    with pytest.raises(ValueError, match="gap_bytes must be"):
        stream.ShardReader(shards, gap_bytes=-1)
    with pytest.raises(IndexError, match="do not fit"):  # not an overflow past the check
        reader.read_runs(np.array([2**63 - 1]), 1)
    with pytest.raises(ValueError, match=r"out: buffers of at least 10 rows"):
        reader.read_sorted(np.arange(10), reader.read_buffers(5))


def _slow_pread(fd, size, offset, pread=reader_module._pread):
    """``pread`` 2 ms late: pieces of a read still running when another fails."""
    time.sleep(0.002)
    return pread(fd, size, offset)


def test_a_failed_piece_leaves_no_piece_writing_after_the_error(tmp_path, key, monkeypatch):
    """Read from the files by 2 threads, the first piece fails (a NaN row) while the others
    are slow: when read_sorted raises, every piece is over and the buffers stay as they are."""
    ds = stream.generate_shards(key, tmp_path / "ds", 4000, d=3, shards=1)
    X = np.load(ds.shards[0].X)
    X[0, 0] = np.nan
    np.save(ds.shards[0].X, X)
    ds = stream.open_dataset(ds.root)
    monkeypatch.setattr(reader_module, "_pread", _slow_pread)
    reader = stream.ShardReader(ds, budget_bytes=0, threads=2, piece_rows=50, gap_bytes=0)
    out = reader.read_buffers(4000)
    idx = np.arange(0, 4000, 2)  # no two rows adjacent: one read per row
    with pytest.raises(ValueError, match=r"X-00000\.npy: row 0 holds NaN"):
        reader.read_sorted(idx, out)
    before = out[0].copy()
    decoy = tmp_path / "decoy"  # takes the numbers of the read's closed descriptors
    decoy.write_bytes(np.full(1 << 16, 7.0, np.float32).tobytes())
    fds = [os.open(decoy, os.O_RDONLY) for _ in range(4)]
    try:
        time.sleep(0.5)
    finally:
        for fd in fds:
            os.close(fd)
    np.testing.assert_array_equal(out[0], before)
    reader.close()


def test_a_read_interrupted_while_its_pieces_start_waits_for_them(tmp_path, key, monkeypatch):
    """Ctrl-C (or no thread to start) while pieces are being submitted: the pieces already
    running are over when the read raises, and write nothing afterwards."""
    ds = stream.generate_shards(key, tmp_path / "ds", 4000, d=3, shards=1)
    reader = stream.ShardReader(ds, budget_bytes=0, threads=2, piece_rows=50, gap_bytes=0)
    reader.read(np.arange(0, 400, 2))  # the pool is up
    submit, calls = reader._pool.submit, []

    def interrupted_submit(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return submit(*args)

    monkeypatch.setattr(reader._pool, "submit", interrupted_submit)
    monkeypatch.setattr(reader_module, "_pread", _slow_pread)
    out = reader.read_buffers(2000)
    out[0][:] = -1
    with pytest.raises(KeyboardInterrupt):
        reader.read_sorted(np.arange(0, 4000, 2), out)
    before = out[0].copy()
    time.sleep(0.5)
    np.testing.assert_array_equal(out[0], before)


def test_files_open_at_once_do_not_grow_with_the_number_of_shards(tmp_path, key):
    """A read from the files opens a shard's two files at a time per thread: 60 shards
    (120 files) are read under a limit of 16 more open files than the process has."""
    ds = stream.generate_shards(key, tmp_path / "many", 600, d=2, shards=60)
    lines = run_python(f"""
        import os, resource
        import numpy as np
        from jaxlin import stream
        data = stream.open_dataset({str(ds.root)!r})
        reader = stream.ShardReader(data, budget_bytes=0, threads=2)
        reader.read(np.array([0]))  # the thread pool and numpy are up
        now = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (now + 16, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        X, _ = reader.read(np.random.default_rng(0).permutation(600))
        X, _ = reader.read_runs(np.arange(0, 600, 7)[:80], 7)[:2]
        print("read", X.shape[0])
    """)
    assert lines == ["read 560"]


def test_a_shard_rewritten_while_it_is_read_is_refused_after_the_read(shards, monkeypatch):
    """Same size, new contents, during the read: refused once the read is over, not returned."""
    opened = reader_module.open_unchanged

    def open_then_rewrite(file):  # as rsync --inplace -t: same size, inode and mtime
        fd = opened(file)
        if file.path.name == "X-00001.npy":
            file.path.write_bytes(file.path.read_bytes())
            os.utime(file.path, ns=(file.ident.mtime_ns, file.ident.mtime_ns))
        return fd

    monkeypatch.setattr(reader_module, "open_unchanged", open_then_rewrite)
    for budget in (1 << 30, 0):  # the resident load, and a read from the files
        reader = stream.ShardReader(shards, budget_bytes=budget, threads=1)
        with pytest.raises(ValueError, match=r"X-00001\.npy: modified while the dataset"):
            reader.read(np.arange(340, 350))


def test_a_shard_that_cannot_be_opened_says_why(shards, monkeypatch):
    reader = stream.ShardReader(shards, budget_bytes=0)
    real = os.open

    def no_more_files(path, *args, **kwargs):
        if str(path).endswith(".npy"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_more_files)
    with pytest.raises(ValueError, match=r"-00000\.npy: cannot be opened \(Too many open files\)"):
        reader.read(np.array([3]))


def test_shards_without_rows_are_read_around(shards, tmp_path):
    """A Dataset built by hand may hold a shard of 0 rows: every read steps over it."""
    np.save(tmp_path / "X-empty.npy", np.zeros((0, 3), np.float32))
    np.save(tmp_path / "y-empty.npy", np.zeros((0,), np.float32))
    empty = stream.Shard(tmp_path / "X-empty.npy", tmp_path / "y-empty.npy", 0)
    parts = list(shards.shards)
    data = shards._replace(shards=(parts[0], empty, parts[1], empty, parts[2]))
    X, y = load_all(shards)
    for budget in (1 << 30, 0):
        reader = stream.ShardReader(data, budget_bytes=budget, threads=1)
        got_X, got_y = reader.read(np.arange(1003))
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_y.ravel(), y)
        runs_X, runs_y, rank = reader.read_runs(np.array([300, 650]), 64)  # over empty shards
        np.testing.assert_array_equal(runs_X[rank[1] * 64 :][:64], X[650:714])
        np.testing.assert_array_equal(runs_y[rank[0] * 64 :][:64].ravel(), y[300:364])


def test_huge_block_batches_reads_only_what_the_epoch_has(shards, key):
    """block_batches far above the epoch: one block, buffers sized by it (not 10**8 batches)."""
    p0 = jaxlin.init_params(key, 3)
    ref, _ = stream.fit_stream(p0, shards, key=key, max_epochs=1)
    got, _ = stream.fit_stream(p0, shards, key=key, max_epochs=1, block_batches=10**8)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


@pytest.mark.parametrize("batch_size", [3, 7])
def test_fit_stream_equals_fit_to_rounding_for_any_batch_size(shards, key, batch_size):
    """Small odd batches: the same batches, and fit's result to float32 rounding.

    Block programs and fit's epoch are different XLA programs: for some batch
    sizes a step's last bit rounds apart (as it does between fit's own scan
    and step engines), so this compares to 1e-6 rather than bit for bit.
    """
    X, y = load_all(shards)
    p0 = jaxlin.init_params(key, 3)
    kw = dict(lr=0.01, max_epochs=2, batch_size=batch_size, key=jax.random.key(1))
    ref, h_ref = jaxlin.fit(p0, (X, y), **kw)
    got, h = stream.fit_stream(p0, shards.root, block_batches=5, **kw)
    np.testing.assert_allclose(h.train_loss, h_ref.train_loss, rtol=1e-5, atol=1e-7)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7)
