"""Checkpoints: exact resume, atomic writes, refusal of another run's checkpoint."""

import os

import jax
import numpy as np
import pytest

import jaxlin
from jaxlin.checkpoint import (
    FILENAME,
    HISTORY_PATTERN,
    Checkpoint,
    fit_with_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from jaxlin.files import TEMPORARY_SUFFIX

pytestmark = pytest.mark.slow


class Stop(Exception):
    """Raised by a callback to interrupt a run after an epoch."""


@pytest.fixture
def problem():
    kd, ki = jax.random.split(jax.random.key(7))
    s = jaxlin.synthetic_splits(kd, num_train=200, num_val=50)
    return s, jaxlin.init_params(ki, 2)


def _stop_after(epoch):
    def callback(end):
        if end.epoch == epoch:
            raise Stop

    return callback


@pytest.mark.parametrize("engine", ["scan", "step"])
@pytest.mark.parametrize("with_val", [True, False])
def test_resume_after_epoch_k_is_bit_identical(problem, key, tmp_path, engine, with_val):
    s, params = problem
    val = s.val if with_val else None
    kwargs = dict(max_epochs=5, batch_size=24, lr=0.05, engine=engine)
    full, hist = jaxlin.fit(params, s.train, val, key=key, **kwargs)

    with pytest.raises(Stop):
        fit_with_checkpoints(
            params,
            s.train,
            val,
            key=key,
            checkpoint_dir=tmp_path,
            callback=_stop_after(1),
            **kwargs,
        )
    saved = load_checkpoint(tmp_path)
    assert saved.epoch == 2 and saved.history.train_loss.shape == (2, hist.train_loss.shape[1])
    # The resumed run needs neither the key nor the right params: both come from the checkpoint.
    junk = jax.tree.map(lambda p: p + 1.0, params)
    resumed, rhist = fit_with_checkpoints(
        junk, s.train, val, checkpoint_dir=tmp_path, resume=True, **kwargs
    )
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])
    np.testing.assert_array_equal(rhist.train_loss, hist.train_loss)
    if with_val:
        np.testing.assert_array_equal(rhist.val_loss, hist.val_loss)
    else:
        assert rhist.val_loss is None
    assert load_checkpoint(tmp_path).epoch == 5
    # Resuming a finished run returns its result; more epochs continue it.
    again, ahist = fit_with_checkpoints(
        junk, s.train, val, checkpoint_dir=tmp_path, resume=True, **kwargs
    )
    np.testing.assert_array_equal(again["w"], full["w"])
    np.testing.assert_array_equal(ahist.train_loss, hist.train_loss)


def test_uninterrupted_checkpointed_run_equals_fit(problem, key, tmp_path):
    s, params = problem
    kwargs = dict(max_epochs=3, batch_size=32, key=key)
    full, hist = jaxlin.fit(params, s.train, s.val, **kwargs)
    seen = []
    out, ohist = fit_with_checkpoints(
        params, s.train, s.val, checkpoint_dir=tmp_path / "new", callback=seen.append, **kwargs
    )
    assert [e.epoch for e in seen] == [0, 1, 2]
    np.testing.assert_array_equal(out["w"], full["w"])
    np.testing.assert_array_equal(ohist.train_loss, hist.train_loss)
    state = load_checkpoint(tmp_path / "new")
    np.testing.assert_array_equal(state.params["b"], full["b"])
    np.testing.assert_array_equal(state.history.val_loss, hist.val_loss)
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(key))


def _state(epoch, value):
    params = {"w": np.full((2, 1), value, np.float32), "b": np.zeros(1, np.float32)}
    hist = jaxlin.History(np.zeros((epoch, 3), np.float32), None)
    return Checkpoint(params, jax.random.key(1), epoch, hist, {"lr": 0.1})


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _state(1, 1.0))

    def crash(src, dst):
        raise OSError("simulated crash between the temporary file and the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, _state(2, 2.0))
    monkeypatch.undo()
    state = load_checkpoint(tmp_path)
    assert state.epoch == 1 and float(state.params["w"][0, 0]) == 1.0
    # The temporary file and the new history file are gone: the checkpoint and its history remain.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == FILENAME and HISTORY_PATTERN.fullmatch(names[1])


def test_a_crash_that_leaves_a_temporary_file_does_not_matter(tmp_path):
    save_checkpoint(tmp_path, _state(1, 1.0))
    leftover = tmp_path / f".{FILENAME}.abcd1234{TEMPORARY_SUFFIX}"
    leftover.write_bytes(b"half a zip")  # a killed writer's leftovers
    assert load_checkpoint(tmp_path).epoch == 1
    assert not leftover.exists()  # removed by the load
    save_checkpoint(tmp_path, _state(2, 2.0))
    assert load_checkpoint(tmp_path).epoch == 2


def test_a_run_that_differs_is_refused_naming_the_differing_fields(problem, key, tmp_path):
    s, params = problem
    run = {"seed": 0, "noise": 0.01}
    kwargs = dict(max_epochs=2, batch_size=32, key=key, checkpoint_dir=tmp_path)
    fit_with_checkpoints(params, s.train, s.val, run=run, **kwargs)
    other_data = (s.train[0] + 1.0, s.train[1])
    differing = [  # (what the resume changes, the message)
        (dict(batch_size=16), r"differing fields: batch_size: saved 32, requested 16"),
        (
            dict(lr=0.1, run={**run, "seed": 1}),
            r"differing fields: lr: .*seed: saved 0, requested 1",
        ),
        (dict(train=other_data), r"differing fields: train_data"),
        (dict(key=jax.random.key(123)), r"differing fields: key"),
        (dict(engine="affine"), r"differing fields: engine: saved 'scan', requested 'affine'"),
    ]
    for change, message in differing:
        call = {"train": s.train, "run": run, **kwargs, **change}
        with pytest.raises(ValueError, match=message):
            fit_with_checkpoints(params, call.pop("train"), s.val, resume=True, **call)


def test_missing_and_corrupt_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {FILENAME} to resume from"):
        load_checkpoint(tmp_path)
    (tmp_path / FILENAME).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a readable jaxlin checkpoint"):
        load_checkpoint(tmp_path)
