"""``jaxlin.trajectory`` records the steps ``fit`` takes; ``plot_trajectory`` draws them."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import count_compiles
from matplotlib.figure import Figure

import jaxlin
from jaxlin.engines.trajectory import flatten

pytestmark = pytest.mark.slow


@pytest.fixture
def problem(key):
    """The lecture's data, initial params and shuffling key, all from the test's key."""
    key_data, key_init, key_shuffle = jax.random.split(key, 3)
    data = jaxlin.synthetic_splits(key_data, num_train=200, num_val=50)
    return data, jaxlin.init_params(key_init, 2), key_shuffle


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"batch_size": 64},  # a smaller last batch (200 = 3 * 64 + 8)
        {"batch_size": 200, "shuffle": False, "lr": 0.5},  # full batch
        {"batch_size": 7, "gradient_clip_val": 1.0},
    ],
    ids=["lecture", "partial-last-batch", "full-batch", "clipped"],
)
def test_path_starts_at_params_ends_at_fit_and_has_one_row_per_step(problem, overrides):
    data, params, key = problem
    config = jaxlin.TrainConfig(max_epochs=3, **overrides)
    path = np.asarray(jaxlin.trajectory(params, data.train, key=key, config=config))
    fitted, history = jaxlin.fit(params, data.train, key=key, config=config)

    steps = -(-200 // config.batch_size)
    assert path.shape == (config.max_epochs * steps + 1, 3)
    assert history.train_loss.size == path.shape[0] - 1
    np.testing.assert_array_equal(path[0], np.asarray(flatten(params)))
    np.testing.assert_allclose(path[-1], np.asarray(flatten(fitted)), rtol=0, atol=1e-6)


def test_each_row_is_the_lectures_loop_after_that_step(problem):
    data, params, key = problem
    path = np.asarray(jaxlin.trajectory(params, data.train, key=key, max_epochs=2, batch_size=32))
    expected = [np.asarray(flatten(params))]
    p = params
    for epoch in range(2):
        batches = jaxlin.minibatches(*data.train, 32, key=jaxlin.shuffle.epoch_key(key, epoch))
        for X, y in batches:
            p, _ = jaxlin.train_step(p, X, y, 0.03)
            expected.append(np.asarray(flatten(p)))
    np.testing.assert_allclose(path, np.stack(expected), rtol=0, atol=1e-5)


def test_a_new_lr_reuses_the_compiled_program(problem):
    data, params, key = problem
    jaxlin.trajectory(params, data.train, key=key, lr=0.01, max_epochs=1)
    with count_compiles() as compiles:
        jax.block_until_ready(jaxlin.trajectory(params, data.train, key=key, lr=0.2, max_epochs=1))
    assert compiles[0] == 0


def test_arguments_are_checked(problem):
    data, params, key = problem
    with pytest.raises(ValueError, match="key is required"):
        jaxlin.trajectory(params, data.train)
    with pytest.raises(ValueError, match="batch_size"):
        jaxlin.trajectory(params, data.train, key=key, batch_size=201)
    with pytest.raises(ValueError, match="lr"):
        jaxlin.trajectory(params, data.train, key=key, lr=-1.0)


def test_plot_trajectory_draws_contours_paths_and_the_solution(problem):
    data, params, key = problem
    paths = {
        f"lr {lr}": jaxlin.trajectory(params, data.train, key=key, lr=lr, max_epochs=1)
        for lr in (0.03, 0.3)
    }
    ax = jaxlin.plot.plot_trajectory(paths, data.train, Figure().subplots(), title="t")
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"lr 0.03", "lr 0.3", "least squares"} <= set(labels)
    assert ax.get_title() == "t" and ax.get_xlabel() and ax.get_ylabel()
    star = ax.get_lines()[labels.index("least squares")]
    X, y = (np.asarray(a, np.float64) for a in data.train)
    best = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y.ravel(), rcond=None)[0]
    np.testing.assert_allclose([star.get_xdata()[0], star.get_ydata()[0]], best[:2])


def test_the_contours_are_the_loss_at_the_best_bias(problem):
    """The highest contour drawn is the box's highest loss with b at its best for each
    w: on a quadratic bowl, at a corner of the box (computed here directly)."""
    from matplotlib.contour import ContourSet

    data, _, _ = problem
    X, y = (np.asarray(a, np.float64) for a in data.train)
    y = y.ravel()
    lims = ((-1.0, 4.0), (-5.0, 0.5))
    path = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    ax = jaxlin.plot.plot_trajectory(path, data.train, Figure().subplots(), lims=lims)
    (contours,) = [c for c in ax.collections if isinstance(c, ContourSet)]

    def loss_at_best_bias(w):
        r = y - X @ np.asarray(w)
        return np.mean((r - r.mean()) ** 2) / 2

    corners = [loss_at_best_bias((w1, w2)) for w1 in lims[0] for w2 in lims[1]]
    np.testing.assert_allclose(contours.levels[-1], max(corners), rtol=1e-5)


def test_plot_trajectory_refuses_other_shapes(problem):
    data, _, _ = problem
    with pytest.raises(ValueError, match="steps \\+ 1, 3"):
        jaxlin.plot.plot_trajectory(np.zeros((5, 4)), data.train, Figure().subplots())


def test_save_trajectory_plot_writes_a_file(problem, tmp_path):
    data, params, key = problem
    path = jaxlin.trajectory(params, data.train, key=key, max_epochs=1)
    jaxlin.plot.save_trajectory_plot(path, data.train, tmp_path / "t.png", title="t")
    assert (tmp_path / "t.png").stat().st_size > 0
