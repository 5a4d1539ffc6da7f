"""Bad input, everywhere: one table of refused inputs across the API and the command line.

Each row is a call that must fail *before any work* with a message that names
the argument, what was given and what was expected. (``fit``'s own table is in
test_train.py and the first CLI errors in test_cli.py; they are not repeated.)
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlin
from jaxlin.checkpoint import Checkpoint, fit_with_checkpoints, load_checkpoint, save_checkpoint
from jaxlin.cli import main

pytestmark = pytest.mark.slow

KEY = jax.random.key(0)
P2 = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
X4, Y4 = jnp.ones((4, 2)), jnp.ones(4)
SMALL = ["train", "--num-train", "32", "--num-val", "8", "--no-cache", "--quiet"]


def _sk():
    return pytest.importorskip("jaxlin.sklearn").SGDLinearRegression


def _train(batch_size=8):
    return jaxlin.make_train(jaxlin.TrainConfig(batch_size=batch_size))


def _fit_ckpt(tmp_path, **kw):
    args = dict(checkpoint_dir=tmp_path / "ckpt", key=KEY, batch_size=2)
    return fit_with_checkpoints(P2, (X4, Y4), **{**args, **kw})


# (id, call(tmp_path), exception types, regex of the message)
API = [
    # data
    ("splits num_val=0", lambda t: jaxlin.synthetic_splits(KEY, num_val=0), ValueError,
     r"num_val must be an int >= 1, got 0"),
    # values the data's dtype would silently change
    ("splits b overflows", lambda t: jaxlin.synthetic_splits(KEY, b=1e39), ValueError,
     r"b makes labels overflow float32 \(its largest value is 3.4e\+38\): got 1e\+39"),
    ("splits w overflows", lambda t: jaxlin.synthetic_splits(KEY, w=[1e39, 1.0]), ValueError,
     r"w makes labels overflow float32 .*: got \[1e\+39, 1.0\]"),
    ("data noise overflows", lambda t: jaxlin.synthetic_data(KEY, [1.0], 0.0, 4, noise=1e38),
     ValueError, r"noise makes labels overflow float32"),
    ("fit lr rounds to 0", lambda t: jaxlin.fit(P2, (X4, Y4), key=KEY, batch_size=2, lr=1e-50),
     ValueError, r"lr rounds to 0 in float32, the data's dtype: got 1e-50; the smallest is "
                 r"1.4e-45"),
    ("fit clip rounds to 0", lambda t: jaxlin.fit(P2, (X4, Y4), key=KEY, batch_size=2,
                                                  gradient_clip_val=1e-50),
     ValueError, r"gradient_clip_val rounds to 0 in float32"),
    ("sweep lr rounds to 0", lambda t: jaxlin.sweep((X4, Y4), (X4, Y4), lrs=[0.1, 1e-320],
                                                    seeds=1, key=KEY, batch_size=2),
     ValueError, r"lrs rounds to 0 in float32"),
    ("sweep other engine", lambda t: jaxlin.sweep((X4, Y4), (X4, Y4), lrs=[0.1], seeds=1, key=KEY,
                                                  config=jaxlin.TrainConfig(engine="step")),
     ValueError, r"engine='step': a sweep runs its own vectorised scan engine"),
    ("splits num_test<0", lambda t: jaxlin.synthetic_splits(KEY, num_test=-1), ValueError,
     r"num_test must be an int >= 0, got -1"),
    ("splits w has NaN", lambda t: jaxlin.synthetic_splits(KEY, [1.0, np.nan]), ValueError,
     r"w contains NaN or Inf"),
    ("splits w empty", lambda t: jaxlin.synthetic_splits(KEY, []), ValueError,
     r"w must not be empty, got shape \(0,\)"),
    ("splits w strings", lambda t: jaxlin.synthetic_splits(KEY, ["a", "b"]), TypeError,
     r"w must be a 1-D sequence of numbers, got \['a', 'b'\]"),
    ("splits b vector", lambda t: jaxlin.synthetic_splits(KEY, b=np.ones(2)), ValueError,
     r"b must be a scalar, got shape \(2,\)"),
    ("splits b inf", lambda t: jaxlin.synthetic_splits(KEY, b=float("inf")), ValueError,
     r"b must be finite, got inf"),
    ("data num float", lambda t: jaxlin.synthetic_data(KEY, [1.0], 0.0, 5.0), TypeError,
     r"num_examples must be an int >= 1, got 5.0"),
    ("minibatches int X", lambda t: jaxlin.minibatches(X4.astype(jnp.int32), Y4, 2), TypeError,
     r"X must have dtype float32 or float64, got int32"),
    ("minibatches float16 y", lambda t: jaxlin.minibatches(X4, Y4.astype(jnp.float16), 2),
     TypeError, r"y must have dtype float32 or float64, got float16"),
    ("minibatches empty", lambda t: jaxlin.minibatches(jnp.ones((0, 2)), jnp.ones(0), 2),
     ValueError, r"X must not be empty, got shape \(0, 2\)"),
    ("minibatches bad key", lambda t: jaxlin.minibatches(X4, Y4, 2, key=7), TypeError,
     r"key must be a jax.random.key\(seed\), got int"),
    # shuffle
    ("permutation n=0", lambda t: jaxlin.shuffle.permutation(KEY, 0), ValueError,
     r"n must be an int in \[1, 2\*\*31\), got 0"),
    ("permutation int key", lambda t: jaxlin.shuffle.permutation(3, 5), TypeError,
     r"key must be a jax.random.key\(seed\), got int"),
    ("permute_indices floats", lambda t: jaxlin.shuffle.permute_indices(KEY, jnp.ones(3), 5),
     TypeError,
     r"positions must be integers, got dtype float32"),
    # model
    ("init_params sigma<0", lambda t: jaxlin.init_params(KEY, 2, sigma=-1.0), ValueError,
     r"sigma must be >= 0, got -1.0"),
    ("init_params d=2.0", lambda t: jaxlin.init_params(KEY, 2.0), TypeError,
     r"num_inputs must be an int >= 1, got 2.0"),
    ("linreg X features", lambda t: jaxlin.linreg(P2, jnp.ones((4, 3))), ValueError,
     r"X must have shape \(n, 2\) to match params\['w'\], got \(4, 3\)"),
    ("squared_loss sizes", lambda t: jaxlin.squared_loss(jnp.ones((4, 1)), jnp.ones(5)),
     ValueError, r"y has 5 values but y_hat has 4"),
    ("estimation_error w", lambda t: jaxlin.estimation_error(P2, [1.0, 2.0, 3.0], 1.0),
     ValueError, r"w and b must have shapes \(2,\) and \(\) to match params, got \(3,\)"),
    # train_step
    ("train_step features", lambda t: jaxlin.train_step(P2, jnp.ones((4, 3)), Y4, 0.1),
     ValueError, r"batch X has 3 features but params\['w'\] expects 2"),
    ("train_step params", lambda t: jaxlin.train_step({"w": P2["w"]}, X4, Y4, 0.1), TypeError,
     r"params must be a dict with keys 'w' and 'b'"),
    ("train_step int X", lambda t: jaxlin.train_step(P2, X4.astype(int), Y4, 0.1), TypeError,
     r"batch X must have dtype float32 or float64, got int32"),
    ("train_step lr vector", lambda t: jaxlin.train_step(P2, X4, Y4, jnp.ones(2)), ValueError,
     r"lr must be a scalar, got shape \(2,\)"),
    # fit: what test_train.py's table does not cover
    ("fit y dtype", lambda t: jaxlin.fit(P2, (X4, Y4.astype(jnp.float16)), key=KEY), TypeError,
     r"train y must have dtype float32 or float64, got float16"),
    ("fit empty", lambda t: jaxlin.fit(P2, (jnp.ones((0, 2)), jnp.ones(0)), key=KEY),
     ValueError, r"train X must not be empty, got shape \(0, 2\)"),
    ("fit start_epoch", lambda t: jaxlin.fit(P2, (X4, Y4), key=KEY, batch_size=2,
                                             start_epoch=3), ValueError,
     r"start_epoch must be in \[0, max_epochs=3\), got 3"),
    ("fit shuffle=1", lambda t: jaxlin.fit(P2, (X4, Y4), key=KEY, batch_size=2, shuffle=1),
     TypeError, r"shuffle must be True or False, got 1"),
    ("fit val y length", lambda t: jaxlin.fit(P2, (X4, Y4), (X4, jnp.ones(3)), key=KEY,
                                              batch_size=2), ValueError,
     r"val y has 3 examples but val X has 4"),
    # make_train's function: what shapes and dtypes tell, checked when it is traced
    ("train batch > n", lambda t: _train()(P2, (X4, Y4), key=KEY), ValueError,
     r"batch_size must be <= the number of training examples \(4\), got 8"),
    ("train int X", lambda t: _train(2)(P2, (X4.astype(jnp.int32), Y4), key=KEY), TypeError,
     r"data X must be a 2-D float32/float64 array, got 2-D int32"),
    ("train wrong d", lambda t: _train(2)({"w": jnp.zeros((3, 1)), "b": jnp.zeros(1)},
                                          (X4, Y4), key=KEY), ValueError,
     r"params must be \{'w': \(2, 1\), 'b': \(1,\)\} for X with 2 features, got w \(3, 1\)"),
    ("train y length", lambda t: _train(2)(P2, (X4, jnp.ones(3)), key=KEY), TypeError,
     r"data y must hold 4 float32 values"),
    ("train int key, jitted", lambda t: jax.jit(_train(2))(P2, (X4, Y4), key=jnp.uint32(3)),
     TypeError, r"key must be a jax.random.key\(seed\), got uint32"),
    ("train val d", lambda t: _train(2)(P2, (X4, Y4), (jnp.ones((4, 3)), Y4), key=KEY),
     ValueError, r"val X must be \(m, 2\) float32 like X, got \(4, 3\)"),
    # checkpoints
    ("load missing", lambda t: load_checkpoint(t / "nowhere"), FileNotFoundError,
     r"checkpoint_dir .*nowhere: no checkpoint.npz to resume from"),
    ("save not a state", lambda t: save_checkpoint(t, {"params": P2}), TypeError,
     r"state must be a Checkpoint, got dict"),
    ("save run not JSON", lambda t: save_checkpoint(
        t, Checkpoint(P2, KEY, 1, jaxlin.History(np.zeros((1, 2)), None), {"f": object()})),
     TypeError, r"run must hold only finite JSON values"),
    ("save run NaN", lambda t: save_checkpoint(
        t, Checkpoint(P2, KEY, 1, jaxlin.History(np.zeros((1, 2)), None), {"f": np.nan})),
     TypeError, r"run must hold only finite JSON values"),
    ("save NaN params", lambda t: save_checkpoint(t, Checkpoint(
        {**P2, "b": jnp.full((1,), jnp.nan)}, KEY, 1, jaxlin.History(np.zeros((1, 2)), None), {})),
     ValueError, r"state.params hold NaN or Inf"),
    ("save inf losses", lambda t: save_checkpoint(t, Checkpoint(
        P2, KEY, 1, jaxlin.History(np.full((1, 2), np.inf), None), {})),
     ValueError, r"state.history holds NaN or Inf losses"),
    ("save to ''", lambda t: save_checkpoint("", Checkpoint(
        P2, KEY, 1, jaxlin.History(np.zeros((1, 2)), None), {})),
     ValueError, r"directory is empty: give a folder"),
    ("load ''", lambda t: load_checkpoint(""), ValueError, r"directory is empty: give a folder"),
    ("checkpoint_dir ''", lambda t: _fit_ckpt(t, checkpoint_dir=""), ValueError,
     r"checkpoint_dir is empty: give a folder \(use '.' for the current folder\)"),
    ("resume, other engine", lambda t: (_fit_ckpt(t, max_epochs=1),
                                        _fit_ckpt(t, max_epochs=2, resume=True, engine="affine")),
     ValueError, r"would not continue bit for bit; differing fields: engine: saved 'scan', "
                 r"requested 'affine'"),
    ("resume nothing", lambda t: _fit_ckpt(t, resume=True), FileNotFoundError,
     r"no checkpoint.npz to resume from"),
    ("checkpoint_dir file", lambda t: _fit_ckpt(t, checkpoint_dir=Path(__file__)), ValueError,
     r"checkpoint_dir .*test_bad_input.py: exists and is not a folder"),
    ("checkpoint start_epoch", lambda t: _fit_ckpt(t, start_epoch=1), TypeError,
     r"unexpected keyword argument 'start_epoch'"),
    ("resume, fewer epochs", lambda t: (_fit_ckpt(t, max_epochs=2),
                                        _fit_ckpt(t, max_epochs=1, resume=True)), ValueError,
     r"max_epochs must be >= the 2 epochs the checkpoint has done, got 1"),
    ("checkpoint_dir unwritable", lambda t: _fit_ckpt(t, checkpoint_dir=Path("/proc/1/x/y")),
     ValueError, r"checkpoint_dir /proc/1/x/y: folder /proc/1 is not writable"),
    ("resume='yes'", lambda t: _fit_ckpt(t, resume="yes"), TypeError,
     r"resume must be True or False, got 'yes'"),
    # the scikit-learn estimator
    ("sk lr<0", lambda t: _sk()(lr=-1).fit(np.ones((3, 2)), np.ones(3)), ValueError,
     r"lr must be > 0, got -1.0"),
    ("sk max_epochs=0", lambda t: _sk()(max_epochs=0).fit(np.ones((3, 2)), np.ones(3)),
     ValueError, r"max_epochs must be an int >= 1, got 0"),
    ("sk NaN X", lambda t: _sk()().fit(np.array([[np.nan, 1.0], [1.0, 1.0]]), np.ones(2)),
     ValueError, r"Input X contains NaN"),
    ("sk inf y", lambda t: _sk()().fit(np.ones((2, 2)), np.array([1.0, np.inf])), ValueError,
     r"Input y contains infinity"),
    ("sk string y", lambda t: _sk()().fit(np.ones((2, 2)), np.array(["a", "b"])), ValueError,
     r"y must hold numbers \(a regression target\), got dtype <U1"),
    ("sk lengths", lambda t: _sk()().fit(np.ones((3, 2)), np.ones(4)), ValueError,
     r"inconsistent numbers of samples: \[3, 4\]"),
    ("sk empty", lambda t: _sk()().fit(np.ones((0, 2)), np.ones(0)), ValueError,
     r"Found array with 0 sample\(s\) \(shape=\(0, 2\)\)"),
    ("sk predict features", lambda t: _sk()().fit(np.ones((3, 2)), np.ones(3)).predict(
        np.ones((2, 3))), ValueError, r"X has 3 features, but SGDLinearRegression is expecting 2"),
    ("sk not fitted", lambda t: _sk()().predict(np.ones((2, 3))), Exception,
     r"This SGDLinearRegression instance is not fitted yet"),
]  # fmt: skip


@pytest.mark.parametrize("call, exc, match", [r[1:] for r in API], ids=[r[0] for r in API])
def test_api_refuses_bad_input(call, exc, match, tmp_path):
    with pytest.raises(exc, match=match):
        call(tmp_path)


def _file(t):
    (t / "a_file").write_text("x")
    return str(t / "a_file")


# (id, extra CLI args (given tmp_path), message on stderr); exit status 2, one line, no trace.
CLI = [
    ("batch > data", lambda t: ["--batch-size", "100"],
     "--batch-size must be <= the number of training examples (32), got 100"),
    ("noise < 0", lambda t: ["--noise", "-1"], "--noise must be >= 0, got -1.0"),
    ("lr nan", lambda t: ["--lr", "nan"], "--lr must be finite, got nan"),
    ("w inf", lambda t: ["--w=1,inf"], "--w contains NaN or Inf"),
    ("num-val 0", lambda t: ["--num-val", "0"], "--num-val must be an int >= 1, got 0"),
    ("clip < 0", lambda t: ["--clip", "-1"], "--clip must be >= 0, got -1.0"),
    ("sigma < 0", lambda t: ["--sigma", "-0.5"], "--sigma must be >= 0, got -0.5"),
    ("plot is a folder", lambda t: ["--plot", str(t)], "--plot {t}: is a directory"),
    ("json unwritable", lambda t: ["--json", str(t / "ro" / "o.json")],
     "--json {t}/ro/o.json: folder {t}/ro is not writable"),
    ("resume without dir", lambda t: ["--resume"], "--resume needs --checkpoint-dir DIR"),
    ("resume, no checkpoint", lambda t: ["--checkpoint-dir", str(t / "c"), "--resume"],
     "--checkpoint-dir {t}/c: no checkpoint.npz to resume from"),
    ("checkpoint-dir is a file", lambda t: ["--checkpoint-dir", _file(t)],
     "--checkpoint-dir {t}/a_file: exists and is not a folder"),
    ("checkpoint-dir unwritable", lambda t: ["--checkpoint-dir", str(t / "ro" / "c")],
     "--checkpoint-dir {t}/ro/c: folder {t}/ro is not writable"),
    # an output may be neither another output nor one of the run's own files
    ("lr rounds to 0", lambda t: ["--lr", "1e-50"], "--lr rounds to 0 in float32"),
    ("devices 100000", lambda t: ["--devices", "100000", "--device", "cpu"],
     "--devices 100000: at most 256"),
    ("w overflows", lambda t: ["--w=1e39,1"], "--w makes labels overflow float32"),
    ("b overflows", lambda t: ["--b=-1e39"], "--b makes labels overflow float32"),
    ("json is plot", lambda t: ["--json", str(t / "r.png"), "--plot", str(t / "r.png")],
     "--plot {t}/r.png: is also --json; give each output its own file"),
    ("plot is plot-trajectory, through a link", lambda t: [
        "--plot", _link(t, "p.png", "q.png"), "--plot-trajectory", str(t / "q.png")],
     "--plot-trajectory {t}/q.png: is also --plot"),
    ("json is a device", lambda t: ["--json", "/dev/null"],
     "--json /dev/null: is not a regular file (a device or pipe), expected a file path"),
    ("json in the dataset", lambda t: [
        "--data", _folder(t, "ds"), "--json", str(t / "ds" / "manifest.json")],
     "--json {t}/ds/manifest.json: would overwrite a file of --data {t}/ds; write it elsewhere"),
    ("json is the checkpoint folder", lambda t: [
        "--checkpoint-dir", str(t / "run1"), "--json", str(t / "run1")],
     "--json {t}/run1: is where --checkpoint-dir {t}/run1 goes; write it elsewhere"),
    ("json is the checkpoint", lambda t: [
        "--checkpoint-dir", _folder(t, "c"), "--json", str(t / "c" / "checkpoint.npz")],
     "--json {t}/c/checkpoint.npz: would overwrite a file of --checkpoint-dir {t}/c"),
]  # fmt: skip


def _folder(t, name):
    (t / name).mkdir(exist_ok=True)
    return str(t / name)


def _link(t, name, target):
    (t / name).symlink_to(t / target)
    return str(t / name)


@pytest.mark.parametrize("args, message", [r[1:] for r in CLI], ids=[r[0] for r in CLI])
def test_cli_refuses_bad_input(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "ro").mkdir()
    real_access = os.access  # root may write anywhere: make "ro" read-only for os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: Path(p) != tmp_path / "ro" and real_access(p, mode)
    )
    assert main([*SMALL, *args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message.format(t=tmp_path) in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
        (["--engine", "fast"], "argument --engine: invalid choice: 'fast'"),
        (["--w", "1,x"], "expected comma-separated numbers, got '1,x'"),
        (["--seed", "1.5"], "argument --seed: expected an int in [0, 2**32), got '1.5'"),
        (["--checkpoint-dir", ""], "argument --checkpoint-dir: expected a path, got ''"),
        (["--json", ""], "argument --json: expected a path, got ''"),
    ],
)
def test_cli_non_numeric_flags_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*SMALL, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "usage:" not in err
