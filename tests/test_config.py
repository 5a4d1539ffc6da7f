"""One configuration: every entry point accepts and refuses exactly the same values."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlin
from jaxlin import parallel, stream
from jaxlin.checkpoint import fit_with_checkpoints

KEY = jax.random.key(0)
P2 = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
X8, Y8 = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32), jnp.ones(8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return stream.generate_shards(KEY, tmp_path_factory.mktemp("cfg") / "ds", 8, d=2)


def _estimator(**kw):
    sk = pytest.importorskip("jaxlin.sklearn")
    return sk.SGDLinearRegression(**kw).fit(np.asarray(X8), np.asarray(Y8))


# Each entry point, called with one bad training setting (and good everything else): the
# one place where each refusal of a training setting is tested, for every entry point.
ENTRY_POINTS = {
    "fit": lambda t, **kw: jaxlin.fit(P2, (X8, Y8), key=KEY, **kw),
    "fit_data_parallel": lambda t, **kw: parallel.fit_data_parallel(
        P2, (X8, Y8), key=KEY, mesh=parallel.data_mesh(1), **kw
    ),
    "fit_stream": lambda t, **kw: stream.fit_stream(P2, t, key=KEY, **kw),
    "sweep": lambda t, **kw: jaxlin.sweep(
        (X8, Y8), (X8, Y8), lrs=[kw.pop("lr", 0.03)], seeds=1, key=KEY, **{"batch_size": 4, **kw}
    ),
    "estimator": lambda t, **kw: _estimator(**kw),
    "checkpoints": lambda t, **kw: fit_with_checkpoints(
        P2, (X8, Y8), key=KEY, checkpoint_dir=t.root.parent / "ckpt", **kw
    ),
}

BAD = [
    (dict(lr=-1.0), ValueError, "lr must be > 0, got -1.0"),
    (dict(lr=float("nan")), ValueError, "lr must be finite, got nan"),
    (dict(lr="0.1"), TypeError, "lr must be a real number, got '0.1'"),
    (dict(max_epochs=0), ValueError, "max_epochs must be an int >= 1, got 0"),
    (dict(max_epochs=2.0), TypeError, "max_epochs must be an int >= 1, got 2.0"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    (dict(batch_size=True), TypeError, "batch_size must be an int >= 1, got True"),
    (dict(shuffle=1), TypeError, "shuffle must be True or False, got 1"),
    (dict(gradient_clip_val=-1.0), ValueError, "gradient_clip_val must be >= 0, got -1.0"),
    (dict(gradient_clip_val=float("inf")), ValueError, "gradient_clip_val must be finite"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kwargs, error, message", BAD, ids=lambda v: str(v)[:30])
def test_every_entry_point_refuses_the_same_values_the_same_way(
    entry, kwargs, error, message, shards
):
    with pytest.raises(error) as info:
        ENTRY_POINTS[entry](shards, **dict(kwargs))
    with pytest.raises(error) as direct:
        jaxlin.TrainConfig(**kwargs)
    if entry == "sweep" and "lr" in kwargs:  # sweep's argument is a list, lrs
        message = message.replace("lr ", "lrs ", 1)
    else:
        assert str(direct.value) == str(info.value)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "entry", ["fit", "fit_data_parallel", "fit_stream", "checkpoints", "sweep"]
)
def test_entry_points_refuse_a_batch_larger_than_the_data_alike(entry, shards):
    with pytest.raises(ValueError) as info:
        ENTRY_POINTS[entry](shards, batch_size=9)
    assert str(info.value) == "batch_size must be <= the number of training examples (8), got 9"


# Each host driver, with its validation data (or its lr) traced by jax.jit.
TRACED = {
    "fit": lambda t, X: jaxlin.fit(P2, (X8, Y8), (X, Y8), key=KEY, max_epochs=1),
    "fit_data_parallel": lambda t, X: parallel.fit_data_parallel(
        P2, (X8, Y8), (X, Y8), key=KEY, mesh=parallel.data_mesh(1), max_epochs=1
    ),
    "fit_stream": lambda t, X: stream.fit_stream(P2, t, (X, Y8), key=KEY, max_epochs=1),
    "sweep": lambda t, X: jaxlin.sweep((X8, Y8), (X, Y8), lrs=[0.1], seeds=1, key=KEY),
    "sweep lrs": lambda t, X: jaxlin.sweep((X8, Y8), (X8, Y8), lrs=X[0], seeds=1, key=KEY),
    "trajectory": lambda t, X: jaxlin.trajectory(P2, (X, Y8), key=KEY),
    "checkpoints": lambda t, X: fit_with_checkpoints(
        P2, (X8, Y8), (X, Y8), key=KEY, checkpoint_dir=t.root.parent / "traced", max_epochs=1
    ),
}


@pytest.mark.parametrize("entry", TRACED)
def test_every_host_driver_refuses_to_run_inside_a_trace(entry, shards):
    """One message, naming the driver and the pure function to use, before any work."""
    name = {"sweep lrs": "sweep", "checkpoints": "fit_with_checkpoints"}.get(entry, entry)
    with pytest.raises(TypeError, match=rf"jaxlin.{name} is a checked host driver .*make_train"):
        jax.jit(lambda X: TRACED[entry](shards, X))(X8)
    assert not (shards.root.parent / "traced").exists()


# Each in-memory driver, on data whose working copies exceed the memory the test allows.
BIG = 6_000_000  # rows of 10 features: 46 floats a row need 1.03 GiB; the zeros are never touched
BEYOND_MEMORY = {
    "fit": lambda t, X, y: jaxlin.fit(jaxlin.init_params(KEY, 10), (X, y), key=KEY),
    "fit_data_parallel": lambda t, X, y: parallel.fit_data_parallel(
        jaxlin.init_params(KEY, 10), (X, y), key=KEY, mesh=parallel.data_mesh(1)
    ),
    "trajectory": lambda t, X, y: jaxlin.trajectory(jaxlin.init_params(KEY, 10), (X, y), key=KEY),
    "checkpoints": lambda t, X, y: fit_with_checkpoints(
        jaxlin.init_params(KEY, 10), (X, y), key=KEY, checkpoint_dir=t / "big"
    ),
    "estimator": lambda t, X, y: (
        pytest.importorskip("jaxlin.sklearn").SGDLinearRegression().fit(X, y)
    ),
}


@pytest.mark.parametrize("entry", BEYOND_MEMORY)
def test_training_data_beyond_memory_is_refused_before_any_copy(entry, tmp_path, monkeypatch):
    """About four working copies of (X, y) are counted (measured as peak RSS), against the
    memory there is: refused in one line before the device copy, the disk untouched."""
    from jaxlin import checks

    monkeypatch.setattr(checks, "memory_bytes", lambda: 2**30)
    X, y = np.zeros((BIG, 10), np.float32), np.zeros(BIG, np.float32)
    with pytest.raises(ValueError) as info:
        BEYOND_MEMORY[entry](tmp_path, X, y)
    assert str(info.value) == (
        "train=(6000000, 10) needs 1.03 GiB of memory for its arrays, but this machine has 1 GiB"
    )
    assert not (tmp_path / "big").exists()
    jaxlin.fit(P2, (X[:100_000, :2], y[:100_000]), key=KEY, max_epochs=1)  # small: not counted


def test_a_checkpointed_run_without_its_key_is_refused_before_the_disk(tmp_path):
    """A new shuffled run needs its key (a resumed one takes its checkpoint's)."""
    with pytest.raises(ValueError, match="key is required when shuffle=True"):
        fit_with_checkpoints(P2, (X8, Y8), checkpoint_dir=tmp_path / "c", batch_size=4)
    assert not (tmp_path / "c").exists()
    fit_with_checkpoints(P2, (X8, Y8), checkpoint_dir=tmp_path / "c", batch_size=4, key=KEY)
    params, _ = fit_with_checkpoints(
        P2, (X8, Y8), checkpoint_dir=tmp_path / "c", batch_size=4, resume=True, max_epochs=4
    )
    want, _ = jaxlin.fit(P2, (X8, Y8), batch_size=4, key=KEY, max_epochs=4)
    np.testing.assert_array_equal(params["w"], want["w"])


def test_host_devices_count_their_copies_and_arrays_without_a_dtype_are_left_to_the_checks(
    monkeypatch,
):
    from jaxlin import checks

    monkeypatch.setattr(checks, "memory_bytes", lambda: 2**30)
    X = np.zeros((4_000_000, 10), np.float32)
    checks.training_memory("train", (X, X[:, 0]))  # 46 floats a row: 0.69 GiB
    with pytest.raises(ValueError, match=r"train=\(4000000, 10\) needs 1.16 GiB"):
        checks.training_memory("train", (X, X[:, 0]), host_devices=8)  # 78 floats a row

    class Table:  # a DataFrame-like: 2-D, without a dtype
        shape = (4_000_000, 10)

    with pytest.raises(TypeError, match="train X must be an array, got Table"):
        jaxlin.fit(jaxlin.init_params(KEY, 10), (Table(), X[:, 0]), key=KEY)


def test_config_is_frozen_hashable_and_canonical():
    a = jaxlin.TrainConfig(lr=jnp.float32(0.5), max_epochs=np.int64(2))
    assert a == jaxlin.TrainConfig(lr=0.5, max_epochs=2) and hash(a) == hash(
        jaxlin.TrainConfig(lr=0.5, max_epochs=2)
    )
    assert type(a.lr) is float and type(a.max_epochs) is int
    with pytest.raises(AttributeError):
        a.lr = 0.1  # type: ignore[misc]
    assert jaxlin.TrainConfig().clip is None and jaxlin.TrainConfig(gradient_clip_val=2).clip == 2


def test_fit_keywords_override_the_config(key):
    s = jaxlin.synthetic_splits(key, num_train=64, num_val=16)
    p = jaxlin.init_params(key, 2)
    config = jaxlin.TrainConfig(lr=0.1, max_epochs=2, batch_size=16)
    _a, ha = jaxlin.fit(p, s.train, key=key, config=config, lr=0.05)
    _b, hb = jaxlin.fit(p, s.train, key=key, lr=0.05, max_epochs=2, batch_size=16)
    np.testing.assert_array_equal(ha.train_loss, hb.train_loss)
    assert ha.train_loss.shape == (2, 4)


def test_fit_accepts_a_jax_scalar_lr_and_refuses_to_be_traced(key):
    s = jaxlin.synthetic_splits(key, num_train=64, num_val=16)
    p = jaxlin.init_params(key, 2)
    a, _ = jaxlin.fit(p, s.train, key=key, lr=jnp.asarray(0.05))
    b, _ = jaxlin.fit(p, s.train, key=key, lr=0.05)
    np.testing.assert_array_equal(a["w"], b["w"])
    for transform in (jax.jit, jax.grad, jax.vmap):
        lrs = jnp.asarray([0.05, 0.1]) if transform is jax.vmap else jnp.asarray(0.05)
        with pytest.raises(TypeError, match=r"jaxlin.fit is a checked host driver .*make_train"):
            transform(lambda lr: jaxlin.fit(p, s.train, key=key, lr=lr)[0]["b"][0])(lrs)


def test_memory_is_the_containers_limit_where_lower(tmp_path, monkeypatch, request):
    """Sizes are checked against the process's cgroup limit (its own or a parent's, v2 or
    v1) when it is below the machine's memory; the files are read once, not per check."""
    from jaxlin import checks

    proc = tmp_path / "cgroup"
    monkeypatch.setattr(checks, "PROC_CGROUP", str(proc))
    monkeypatch.setattr(checks, "CGROUP_ROOT", str(tmp_path / "sys"))
    request.addfinalizer(checks.memory_bytes.cache_clear)  # later tests read the real files

    def memory_bytes():  # the (patched) files read again
        checks.memory_bytes.cache_clear()
        return checks.memory_bytes()

    proc.write_text("")  # no cgroup: the machine's memory
    physical = memory_bytes()
    assert physical > 2**30

    def limit(path, text):
        (tmp_path / "sys" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / path).write_text(text)

    proc.write_text("0::/user/job\n")  # v2: the job has no limit, its parent has 1 GiB
    limit("user/job/memory.max", "max\n")
    limit("user/memory.max", f"{2**30}\n")
    assert checks.memory_bytes() == physical  # cached: the files are not read per check
    assert memory_bytes() == 2**30
    with pytest.raises(ValueError, match=r"num_train=1 needs 2 GiB .* has 1 GiB"):
        checks.fits_in_memory("num_train", 1, 2**29)  # float32
    proc.write_text("5:cpu:/x\n4:memory:/x\n")  # v1, unlimited: a huge number
    limit("memory/x/memory.limit_in_bytes", "9223372036854771712\n")
    assert memory_bytes() == physical
    limit("memory/x/memory.limit_in_bytes", f"{3 * 2**30}\n")
    assert memory_bytes() == min(physical, 3 * 2**30)


def test_checks_of_the_same_arrays_are_remembered_only_while_they_cannot_change(key):
    """fit checks JAX arrays (immutable) once; numpy arrays (mutable) on every call; a
    changed argument is checked again; and fit keeps no array alive."""
    import gc
    import weakref

    s = jaxlin.synthetic_splits(key, num_train=32, num_val=8)
    p0 = jaxlin.init_params(key, 2)
    for _ in range(3):  # remembered from here on
        jaxlin.fit(p0, s.train, s.val, key=key, max_epochs=1)
    X = np.asarray(s.train[0]).copy()
    jaxlin.fit(p0, (X, s.train[1]), key=key, max_epochs=1)
    X[3, 1] = np.nan  # the same numpy array, changed in place: checked again
    with pytest.raises(ValueError, match=r"train X contains NaN or Inf values \(first at row 3\)"):
        jaxlin.fit(p0, (X, s.train[1]), key=key, max_epochs=1)
    bad_y = s.train[1].at[5].set(jnp.inf)  # a new array beside a remembered one
    with pytest.raises(ValueError, match=r"train y contains NaN or Inf values \(first at row 5\)"):
        jaxlin.fit(p0, (s.train[0], bad_y), key=key, max_epochs=1)
    with pytest.raises(TypeError, match="params must be a dict with keys 'w' and 'b'") as err:
        jaxlin.fit({**p0, "extra": p0["b"]}, s.train, s.val, key=key, max_epochs=1)
    assert "Tracer" not in str(err.value)  # refused by the checks, before any tracing
    with pytest.raises(ValueError, match="key is required when shuffle=True"):
        jaxlin.fit(p0, s.train, s.val, max_epochs=1)
    with pytest.raises(TypeError, match="shuffle must be True or False, got 1"):
        jaxlin.fit(p0, s.train, s.val, key=key, max_epochs=1, shuffle=1)
    with pytest.raises(TypeError, match="checked host driver"):
        jax.jit(lambda X: jaxlin.fit(p0, (X, s.train[1]), key=key)[0])(s.train[0])
    X_new = s.train[0] + 1.0
    jaxlin.fit(p0, (X_new, s.train[1]), key=key, max_epochs=1)
    jaxlin.fit(p0, (X_new, s.train[1]), key=key, max_epochs=1)
    alive = weakref.ref(X_new)
    del X_new
    gc.collect()
    assert alive() is None  # not held by what fit remembers


@pytest.mark.parametrize(
    "engine, shuffle, with_val", [("scan", True, True), ("scan", False, True),
                                  ("scan", False, False), ("affine", True, True)],
)  # fmt: skip
def test_fit_again_on_the_same_arrays_is_the_same_run(key, engine, shuffle, with_val):
    """A second fit on remembered arrays (its program bound once) gives what a fit of
    fresh copies gives, for that call's own key and config; a divergence is still raised."""
    s = jaxlin.synthetic_splits(key, num_train=50, num_val=10)
    p0 = jaxlin.init_params(key, 2)
    val = s.val if with_val else None
    other = jax.random.key(7)

    def run(params, train, val, key, **kw):
        return jaxlin.fit(params, train, val, key=key, shuffle=shuffle, engine=engine, **kw)

    def copies(tree):
        return jax.tree.map(lambda a: a + 0, tree)

    config = jaxlin.config.make_config(shuffle=shuffle, engine=engine)  # what fit makes
    for k in (key, other, key):
        twice = [run(p0, s.train, val, k) for _ in range(2)]
        kept = jaxlin.config.prepared(p0, s.train, val, k, config)
        assert ("fit", jax.config.jax_enable_x64) in kept  # the second call was the bound run
        fresh = run(copies(p0), copies(s.train), copies(val), k)
        for params, history in twice:
            np.testing.assert_array_equal(params["w"], fresh[0]["w"])
            np.testing.assert_array_equal(params["b"], fresh[0]["b"])
            np.testing.assert_array_equal(history.train_loss, fresh[1].train_loss)
            assert (history.val_loss is None) == (val is None)
            if val is not None:
                np.testing.assert_array_equal(history.val_loss, fresh[1].val_loss)
    if shuffle:
        assert not np.array_equal(
            run(p0, s.train, val, key)[0]["w"], run(p0, s.train, val, other)[0]["w"]
        )
    for _ in range(2):
        with pytest.raises(jaxlin.TrainingDiverged, match="training diverged"):
            run(p0, s.train, val, key, lr=1e30)


def test_what_fit_remembers_goes_with_its_config(key):
    """A JAX scalar lr makes a new config on every call: what fit bound for it goes when
    that config does, so a loop of such calls keeps nothing per call."""
    import gc

    s = jaxlin.synthetic_splits(key, num_train=32, num_val=8)
    p0 = jaxlin.init_params(key, 2)

    def configs_alive():
        gc.collect()
        return sum(isinstance(o, jaxlin.TrainConfig) for o in gc.get_objects())

    jaxlin.fit(p0, s.train, s.val, key=key, lr=jnp.float32(0.05), max_epochs=1)
    before = configs_alive()
    for _ in range(5):
        jaxlin.fit(p0, s.train, s.val, key=key, lr=jnp.float32(0.05), max_epochs=1)
    assert configs_alive() == before


def test_import_loads_nothing_and_every_name_on_first_use():
    """import jaxlin loads no JAX (the command installs its Ctrl-C handler first); a first
    fit loads neither plotting, checkpoints, sweeps nor the trajectory; each public name
    is listed by dir() and loads from its own module when first used."""
    code = """
import sys
import jaxlin
assert "jax" not in sys.modules, "import jaxlin loaded JAX"
assert set(jaxlin.__all__) <= set(dir(jaxlin))
jaxlin.fit
late = ("jaxlin.checkpoint", "jaxlin.sweeps", "jaxlin.plot", "jaxlin.engines.trajectory",
        "matplotlib")
assert not [m for m in late if m in sys.modules], [m for m in late if m in sys.modules]
assert jaxlin.checkpoint.save_checkpoint.__module__ == "jaxlin.checkpoint"
from jaxlin import sweep
from jaxlin.sweeps import select
assert jaxlin.sweep is sweep is jaxlin.sweeps.sweep
assert jaxlin.checkpoint.load_checkpoint is jaxlin.load_checkpoint
for name in jaxlin.__all__:
    if name != "SGDLinearRegression" or __import__("importlib").util.find_spec("sklearn"):
        assert name.isupper() or getattr(jaxlin, name).__module__.startswith("jaxlin"), name
try:
    jaxlin.no_such_name
except AttributeError as err:
    assert "no attribute 'no_such_name'" in str(err)
else:
    raise AssertionError("jaxlin.no_such_name did not raise")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_a_fit_refused_inside_a_trace_leaves_later_fits_working(key):
    """fit called inside jax.jit (on closed-over arrays) fails, and caches nothing traced:
    the fits after it, with and without shuffling, run as before."""
    s = jaxlin.synthetic_splits(key, num_train=32, num_val=8)
    p0 = jaxlin.init_params(key, 2)
    kw = dict(max_epochs=1, shuffle=False, lr=0.0123)
    with pytest.raises((TypeError, ValueError)):
        jax.jit(lambda: jaxlin.fit(p0, s.train, s.val, **kw)[0]["b"])()
    for engine in ("scan", "affine"):
        params, _ = jaxlin.fit(p0, s.train, s.val, engine=engine, **kw)
        reference, _ = jaxlin.fit(p0, s.train, s.val, engine="step", **kw)
        np.testing.assert_allclose(params["w"], reference["w"], rtol=1e-5)
