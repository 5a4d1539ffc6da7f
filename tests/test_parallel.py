"""Data parallelism: 8 forced CPU devices give single-device results; bad batch sizes refused.

JAX fixes its device count when it starts, so the 8-device checks run in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlin
from jaxlin import parallel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

EIGHT_DEVICES = textwrap.dedent(
    """
    import json, re
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    import jaxlin
    from jaxlin import parallel
    from jaxlin.engines.compiled import epochs_program
    from jax.sharding import NamedSharding

    assert jax.device_count() == 8
    out = {}
    key = jax.random.key(7)
    # (n, batch, shuffle, clip): last batch 11 (replicated), 8 (sharded), none; clipping on
    for n, batch, shuffle, clip in [(203, 32, True, 0.0), (200, 16, True, 0.5),
                                    (192, 64, False, 0.0)]:
        s = jaxlin.synthetic_splits(key, [1.0, -2.0, 0.5], 0.3, num_train=n, num_val=40)
        p0 = jaxlin.init_params(key, 3)
        kw = dict(lr=0.05, max_epochs=3, batch_size=batch, key=key, shuffle=shuffle,
                  gradient_clip_val=clip)
        ref, h_ref = jaxlin.fit(p0, s.train, s.val, **kw)
        got, h = parallel.fit_data_parallel(p0, s.train, s.val, **kw)
        out[f"{n}/{batch}"] = dict(
            dw=float(np.abs(np.asarray(got["w"]) - np.asarray(ref["w"])).max()),
            db=float(np.abs(np.asarray(got["b"]) - np.asarray(ref["b"])).max()),
            dloss=float(np.abs(h.train_loss - h_ref.train_loss).max()),
            dval=float(np.abs(h.val_loss - h_ref.val_loss).max()),
            moved=float(np.abs(np.asarray(got["w"]) - np.asarray(p0["w"])).max()),
            replicated=got["w"].is_fully_replicated, ndev=len(got["w"].sharding.device_set))
    # the compiled program: per-device batches of 32 / 8 = 4 rows, and an all-reduce
    mesh = parallel.data_mesh()
    s = jaxlin.synthetic_splits(key, num_train=64, num_val=8)
    args = parallel.replicate(mesh, (jaxlin.init_params(key, 2), *s.train, None))
    program = epochs_program(
        32, True, 1, constrain=parallel.ShardBatch(NamedSharding(mesh, jax.P("data")))
    )
    hlo = program.lower(*args, key, 0, np.float32(0.03), None).compile().as_text()
    out["hlo"] = dict(all_reduce="all-reduce" in hlo, local_batch="f32[4,2]" in hlo,
                      full_batch="f32[32,2]" in hlo)
    try:
        parallel.fit_data_parallel(args[0], s.train, batch_size=30, key=key)
    except ValueError as err:
        out["error"] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["203/32", "200/16", "192/64"])
def test_eight_devices_equal_one_device(eight_devices, case):
    r = eight_devices[case]
    assert r["moved"] > 1e-2  # it trained
    assert r["dw"] < 1e-5 and r["db"] < 1e-5 and r["dloss"] < 1e-5 and r["dval"] < 1e-5
    assert r["ndev"] == 8 and r["replicated"]  # params replicated


def test_eight_devices_split_each_batch_and_all_reduce(eight_devices):
    hlo = eight_devices["hlo"]
    assert hlo["all_reduce"] and hlo["local_batch"] and not hlo["full_batch"]


def test_batch_size_that_does_not_split_is_refused_with_valid_sizes(eight_devices):
    msg = eight_devices["error"]
    assert "batch_size=30" in msg and "8 devices" in msg and "24" in msg and "32" in msg


def test_one_device_mesh_equals_fit(key):
    s = jaxlin.synthetic_splits(key, num_train=100, num_val=20)
    p0 = jaxlin.init_params(key, 2)
    ref, h_ref = jaxlin.fit(p0, s.train, s.val, batch_size=16, key=key, max_epochs=2)
    got, h = parallel.fit_data_parallel(
        p0, s.train, s.val, batch_size=16, key=key, max_epochs=2, mesh=parallel.data_mesh(1)
    )
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-6)
    np.testing.assert_allclose(h.train_loss, h_ref.train_loss, rtol=1e-6)


def test_valid_batch_sizes():
    assert parallel.valid_batch_sizes(8, 30) == [16, 24, 32, 40, 48]
    assert all(m % 3 == 0 and m > 0 for m in parallel.valid_batch_sizes(3, 1))


def test_bad_mesh_and_device_count():
    with pytest.raises(ValueError, match="only"):
        parallel.data_mesh(jax.device_count() + 1)
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    s = jaxlin.synthetic_splits(jax.random.key(0), num_train=16, num_val=4)
    with pytest.raises(ValueError, match="'data'"):
        parallel.fit_data_parallel(
            jaxlin.init_params(jax.random.key(0), 2), s.train, mesh=mesh, key=jax.random.key(1)
        )


def test_initialize_distributed_without_configuration_does_nothing(monkeypatch):
    monkeypatch.delenv("JAXLIN_COORDINATOR", raising=False)
    assert parallel.initialize_distributed() is False
    monkeypatch.setenv("JAXLIN_COORDINATOR", "127.0.0.1:1")
    monkeypatch.delenv("JAXLIN_NUM_PROCESSES", raising=False)
    with pytest.raises(ValueError, match="JAXLIN_NUM_PROCESSES"):
        parallel.initialize_distributed()


def _jaxlin_train(*args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "jaxlin", "train", "--num-train", "203", "--num-val", "50",
         "--no-cache", "--quiet", *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip


def test_cli_devices_splits_the_cpu_and_equals_one_device(tmp_path):
    """``--device cpu --devices 4``: four host devices, the one-device result to 1e-5."""
    four = _jaxlin_train("--device", "cpu", "--devices", "4", "--batch-size", "16",
                         "--json", "four.json", tmp_path=tmp_path)  # fmt: skip
    ref = _jaxlin_train("--batch-size", "16", "--json", "ref.json", tmp_path=tmp_path)
    for proc in (four, ref):
        assert proc.returncode == 0, proc.stderr[-2000:]
    got, want = (json.loads((tmp_path / f).read_text()) for f in ("four.json", "ref.json"))
    assert got["devices"] == 4 and want["devices"] == 1
    np.testing.assert_allclose(got["w"] + [got["b"]], want["w"] + [want["b"]], atol=1e-5)
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5, atol=1e-6)


def test_cli_devices_batch_that_does_not_split_names_sizes_that_do(tmp_path):
    proc = _jaxlin_train("--device", "cpu", "--devices", "3", tmp_path=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "batch_size=32 does not split over 3 devices" in proc.stderr and "30" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "2"], "--devices 2: only 1 cpu device(s) here; on a CPU, add --device cpu"),
        (["--devices", "2", "--engine", "step"], "cannot be combined with --engine step"),
        (
            ["--devices", "all", "--checkpoint-dir", "ck"],
            "cannot be combined with --checkpoint-dir",
        ),
    ],
)
def test_cli_devices_errors_are_one_line(args, message, capsys):
    from jaxlin.cli import main

    if "only 1" in message and (jax.device_count() != 1 or jax.default_backend() != "cpu"):
        pytest.skip("this machine has more than one device")
    assert main(["train", "--num-train", "64", "--no-cache", *args]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_cli_devices_flag_must_be_a_positive_int_or_all(value, capsys):
    from jaxlin.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--devices", value])
    assert "expected a positive int or 'all'" in capsys.readouterr().err
