"""sweep: each configuration equals its own fit; selection; divergence stays put; CLI; errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles

import jaxlin
from jaxlin.cli import main
from jaxlin.cli.sweep import lr_range

pytestmark = pytest.mark.slow

LRS = [0.01, 0.05, 0.2]


@pytest.fixture(scope="module")
def data():
    """The lecture's shape, smaller: 200 / 100 / 100 examples, d = 2 (200 = 6 * 32 + 8)."""
    return jaxlin.synthetic_splits(jax.random.key(7), num_train=200, num_val=100, num_test=100)


@pytest.fixture(scope="module")
def result(data):
    return jaxlin.sweep(
        data.train, data.val, data.test, lrs=LRS, seeds=[3, 11], key=jax.random.key(1),
        max_epochs=2, per_step=True,
    )  # fmt: skip


def test_shapes(result):
    assert result.params["w"].shape == (3, 2, 2, 1) and result.params["b"].shape == (3, 2, 1)
    assert result.train_loss.shape == (3, 2, 2, 7)  # per_step: (L, S, epochs, steps)
    assert result.val_loss.shape == (3, 2, 2) and result.test_loss.shape == (3, 2)
    assert result.diverged.shape == (3, 2) and not result.diverged.any()
    np.testing.assert_array_equal(result.seeds, [3, 11])


@pytest.mark.parametrize("i, j", [(0, 0), (1, 1), (2, 0), (2, 1)])
def test_each_configuration_is_its_own_fit(data, result, i, j):
    """Configuration (lrs[i], seeds[j]) == fit with config_keys(key, seed), to 1e-6."""
    init_key, shuffle_key = jaxlin.sweeps.config_keys(jax.random.key(1), int(result.seeds[j]))
    params, hist = jaxlin.fit(
        jaxlin.init_params(init_key, 2), data.train, data.val,
        lr=LRS[i], max_epochs=2, batch_size=32, key=shuffle_key,
    )  # fmt: skip
    assert_config_is_fit(result, i, j, params, hist, data.test)


def assert_config_is_fit(result, i, j, params, hist, test):
    """Configuration ``(i, j)`` of a sweep equals ``fit``'s params and losses, to 1e-6."""
    for k in params:
        np.testing.assert_allclose(result.params[k][i, j], params[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.train_loss[i, j], hist.train_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.val_loss[i, j], hist.val_loss, rtol=1e-6, atol=1e-6)
    test_loss = jaxlin.loss_fn(params, *test)
    np.testing.assert_allclose(result.test_loss[i, j], test_loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "d, lrs, seeds, options",
    [
        (2, [0.02, 0.3], [5, 9], dict(gradient_clip_val=0.5)),  # clipping, per configuration
        (2, [0.02, 0.3], [5, 9], dict(shuffle=False)),  # in order: flat lanes, shared data
        (2, [0.02, 0.3], [5, 9], dict(batch_size=50)),  # 50 divides 200: no partial batch
        (2, [0.3], [5, 9, 4], {}),  # one lr: flat lanes of seeds
        (2, [0.02, 0.3, 0.1], [9], {}),  # one seed: flat lanes of lrs
        (20, [0.02, 0.3], [5, 9], {}),  # wider than model.NARROW
    ],
)
def test_every_code_path_of_the_grid_is_fit(d, lrs, seeds, options):
    s = jaxlin.synthetic_splits(
        jax.random.key(d), jnp.linspace(-1, 1, d), num_train=200, num_val=50, num_test=50
    )
    key = jax.random.key(2)
    result = jaxlin.sweep(s.train, s.val, s.test, lrs=lrs, seeds=seeds, key=key,
                          max_epochs=2, per_step=True, **options)  # fmt: skip
    assert result.val_loss.shape == (len(lrs), len(seeds), 2)
    for i, j in {(0, 0), (len(lrs) - 1, len(seeds) - 1), (len(lrs) - 1, 0)}:
        init_key, shuffle_key = jaxlin.sweeps.config_keys(key, seeds[j])
        params, hist = jaxlin.fit(jaxlin.init_params(init_key, d), s.train, s.val, lr=lrs[i],
                                  max_epochs=2, key=shuffle_key, **options)  # fmt: skip
        assert_config_is_fit(result, i, j, params, hist, s.test)


def test_epoch_means_are_the_step_means(data, result):
    short = jaxlin.sweep(data.train, data.val, lrs=LRS, seeds=[3, 11], key=jax.random.key(1),
                         max_epochs=2)  # fmt: skip
    assert short.test_loss is None
    np.testing.assert_allclose(short.train_loss, result.train_loss.mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(short.val_loss, result.val_loss)


def test_select_picks_the_least_mean_val_loss_and_reports_its_test_loss(result):
    """Two epochs on 200 examples: a larger lr (all three are stable) ends lower."""
    final = result.val_loss[..., -1].mean(axis=1)
    assert np.argmin(final) == 2  # the case where the answer is known
    chosen = jaxlin.sweeps.select(result)
    assert chosen.index == 2 and chosen.lr == pytest.approx(0.2)
    assert chosen.val_loss == pytest.approx(final[2], rel=1e-6)
    assert chosen.test_loss == pytest.approx(result.test_loss[2].mean(), rel=1e-6)


def test_select_ignores_a_better_looking_lr_with_a_diverged_seed(result):
    """Hand-made: lr 0 has the least mean but one seed diverged; lr 1 is chosen."""
    val = np.array([[[1.0], [np.inf]], [[3.0], [3.0]], [[2.0], [9.0]]])  # (L, S, 1)
    fake = result._replace(
        val_loss=val, diverged=~np.isfinite(val[..., -1]), test_loss=np.ones((3, 2))
    )
    summary = jaxlin.sweeps.summarize(fake)
    np.testing.assert_array_equal(summary.num_diverged, [1, 0, 0])
    assert np.isnan(summary.val_mean[0]) and summary.val_mean[2] == 5.5
    assert jaxlin.sweeps.select(fake).index == 1
    with pytest.raises(jaxlin.TrainingDiverged, match="every learning rate diverged"):
        jaxlin.sweeps.select(fake._replace(diverged=np.ones((3, 2), bool)))


def test_a_diverging_lr_is_flagged_and_leaves_the_others_alone(data, result):
    wild = jaxlin.sweep(
        data.train, data.val, data.test, lrs=[*LRS, 50.0], seeds=[3, 11], key=jax.random.key(1),
        max_epochs=2, per_step=True,
    )  # fmt: skip
    np.testing.assert_array_equal(wild.diverged, [[False] * 2] * 3 + [[True] * 2])
    for k in result.params:
        np.testing.assert_allclose(wild.params[k][:3], result.params[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(wild.val_loss[:3], result.val_loss, rtol=1e-6)
    assert jaxlin.sweeps.select(wild).index == jaxlin.sweeps.select(result).index
    assert np.isnan(jaxlin.sweeps.summarize(wild).val_mean[3])


def test_no_recompile_for_new_lr_and_seed_values(data):
    kwargs = dict(max_epochs=1, batch_size=50, key=jax.random.key(0))
    jaxlin.sweep(data.train, data.val, lrs=[0.1, 0.2], seeds=3, **kwargs)
    with count_compiles() as n:
        jaxlin.sweep(data.train, data.val, lrs=[0.01, 0.5], seeds=[4, 8, 9], **kwargs)
        jaxlin.sweep(data.train, data.val, lrs=np.array([1e-3, 1.0]), seeds=3,
                     **{**kwargs, "key": jax.random.key(5)})  # fmt: skip
    assert n[0] == 0


def test_lr_range_is_log_spaced():
    got = lr_range("1e-4:1:5").values()
    np.testing.assert_allclose(got, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    assert got[-1] == 1.0 and len(lr_range("1e-4:1:64").values()) == 64


def test_lr_range_is_parsed_without_making_its_values():
    """A huge COUNT is three numbers until the sweep's size is checked (refused, not built)."""
    assert tuple(lr_range("1e-4:1:1000000000")) == (1e-4, 1.0, 10**9)


def test_grid_memory_counts_every_step_loss_of_every_configuration():
    from jaxlin.sweeps import grid_values

    small = grid_values(3, 2, 200, 2, max_epochs=2, batch_size=32)
    assert small >= 3 * 2 * 2 * 7  # the per-step losses alone: L x S x epochs x steps
    more = grid_values(3, 2, 200, 2, max_epochs=20, batch_size=32)
    assert more - small >= 3 * 2 * 18 * (7 + 1)  # each epoch adds at least its steps and a val
    wider = grid_values(3, 2, 200, 10, max_epochs=2, batch_size=32)
    assert wider - small >= 2 * 200 * 8  # each seed's shuffled copy of X grows with d


def test_cli_writes_json_png_and_prints_the_table(tmp_path, capsys):
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    small = ["--num-train", "200", "--num-val", "100", "--num-test", "100", "--no-cache"]
    argv = ["sweep", *small, "--lr", "0.01,0.1,40", "--seeds", "3", "--epochs", "2"]
    assert main([*argv, "--json", str(out_json), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "9 configurations (3 lr x 3 seeds)" in text
    assert "diverged (3/3 seeds)" in text and "chosen lr: 0.1" in text
    assert "test loss of the chosen lr" in text
    record = json.loads(out_json.read_text())  # strict JSON: diverged losses are null
    assert record["lrs"] == [0.01, 0.1, 40.0] and record["chosen"]["lr"] == pytest.approx(0.1)
    assert record["diverged"][2] == [True] * 3 and record["val_mean"][2] is None
    assert np.array(record["val_loss"][:2]).shape == (2, 3, 2)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 5000


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["--lr", "-0.1"], "--lr must be > 0", 2),
        (["--seeds", "0"], "--seeds must be an int >= 1", 2),
        (["--num-test", "0"], "--num-test must be an int >= 1", 2),
        (["--lr", "100,200"], "every learning rate diverged", 1),
    ],
)
def test_cli_errors_are_one_line(args, message, status, capsys):
    small = ["--num-train", "100", "--num-val", "20", "--num-test", "20", "--no-cache"]
    assert main(["sweep", *small, "--seeds", "2", *args]) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_lr_flags_are_exclusive_and_checked(capsys):
    for argv in (["--lr", "0.1", "--lr-range", "1e-3:1:4"], ["--lr-range", "1:0.1:4"]):
        with pytest.raises(SystemExit):
            main(["sweep", *argv])
    assert "LOW < HIGH" in capsys.readouterr().err


X = jnp.ones((20, 2))
BAD = [
    (dict(lrs=[]), "lrs must be a non-empty"),
    (dict(lrs=0.1), "lrs must be a non-empty"),
    (dict(lrs=[[0.1, 0.2]]), "lrs must be a 1-D sequence"),
    (dict(lrs=np.ones((2, 1))), "lrs must be a 1-D sequence"),
    (dict(lrs=[0.1, float("nan")]), "lrs must be finite"),
    (dict(lrs=[0.1, 0.0]), "lrs must be > 0"),
    (dict(seeds=0), "seeds must be an int >= 1"),
    (dict(seeds=[]), "seeds must not be empty"),
    (dict(seeds=[1, -2]), "seeds must be ints in"),
    (dict(seeds=[1, 1]), "seeds must be distinct"),
    (dict(seeds="3"), "seeds must be an int"),
    (dict(key=3), "key must be a jax.random.key"),
    (dict(sigma=-1.0), "sigma must be >= 0"),
    (dict(val=(jnp.ones((5, 3)), jnp.ones(5))), "val X has 3 features"),
    (dict(test=(X, jnp.ones(19))), "test y has 19 examples"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_refused_with_a_named_argument(overrides, match):
    kwargs = dict(train=(X, jnp.ones(20)), val=(X[:5], jnp.ones(5)), test=None, lrs=[0.1],
                  seeds=2, key=jax.random.key(0), batch_size=8)  # fmt: skip
    kwargs.update(overrides)
    train, val, test = kwargs.pop("train"), kwargs.pop("val"), kwargs.pop("test")
    with pytest.raises((ValueError, TypeError), match=match):
        jaxlin.sweep(train, val, test, **kwargs)
