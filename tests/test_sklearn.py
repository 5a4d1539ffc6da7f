"""The scikit-learn estimator: scikit-learn's own estimator checks, and jaxlin in pipelines."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import estimator_checks_generator

import jaxlin
from jaxlin.sklearn import SGDLinearRegression

pytestmark = pytest.mark.slow

# Every check passes; a check that cannot would be listed here with its reason.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _check_id(value):
    """``SGDLinearRegression-check_fit_idempotent``-style ids (no private sklearn helper)."""
    if isinstance(value, SGDLinearRegression):
        return type(value).__name__
    return getattr(value, "func", value).__name__


# estimator_checks_generator (public since 1.6) rather than parametrize_with_checks: the
# latter hands pytest a generator, which pytest >= 9 deprecates (an error here) in 1.6.
@pytest.mark.parametrize(
    "estimator, check",
    list(
        estimator_checks_generator(
            SGDLinearRegression(max_epochs=20),
            expected_failed_checks=EXPECTED_FAILED_CHECKS,
            mark="xfail",
        )
    ),
    ids=_check_id,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _problem(n=300, d=3, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    X = scale * rng.normal(size=(n, d))
    coef = np.arange(1.0, d + 1)
    return X, X @ coef + 4.2 + 0.01 * rng.normal(size=n), coef


def test_learns_the_coefficients_at_any_feature_scale():
    for scale in (1.0, 1000.0):
        X, y, coef = _problem(scale=scale)
        est = SGDLinearRegression(max_epochs=100, random_state=0).fit(X, y)
        np.testing.assert_allclose(est.coef_, coef, rtol=1e-2)
        assert abs(est.intercept_ - 4.2) < 1e-2 and est.score(X, y) > 0.999
        assert est.n_features_in_ == 3 and est.history_.train_loss.shape[0] == 100


def test_same_random_state_same_model_and_tiny_data_fits():
    X, y, _ = _problem(n=50)
    a = SGDLinearRegression(random_state=3).fit(X, y)
    b = SGDLinearRegression(random_state=3).fit(X.tolist(), y.tolist())
    np.testing.assert_array_equal(a.coef_, b.coef_)
    one = SGDLinearRegression(batch_size=32).fit(X[:1], y[:1])  # batch clipped to 1 sample
    assert np.isfinite(one.predict(X)).all()


def test_pipeline_cross_validation_and_grid_search():
    X, y, _ = _problem()
    pipe = make_pipeline(StandardScaler(), SGDLinearRegression(max_epochs=30, random_state=0))
    assert cross_val_score(pipe, X, y, cv=3).min() > 0.99
    grid = GridSearchCV(
        SGDLinearRegression(max_epochs=5, random_state=0), {"lr": [1e-4, 0.03]}, cv=3
    ).fit(X, y)
    assert grid.best_params_ == {"lr": 0.03}


def test_import_jaxlin_works_without_scikit_learn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import jaxlin\n"
        "try:\n    jaxlin.SGDLinearRegression\n"
        "except ImportError as e:\n    print(e)\n"
        "from jaxlin import *\n"
        "print('star import:', callable(fit), 'SGDLinearRegression' in dir())\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
        check=True,
    )
    assert 'needs scikit-learn: pip install "jaxlin[sklearn]"' in proc.stdout
    assert "star import: True False" in proc.stdout
    assert jaxlin.SGDLinearRegression is SGDLinearRegression
