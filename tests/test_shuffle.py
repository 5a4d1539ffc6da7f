"""The keyed permutation: a bijection for every size, uniform, reproducible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlin import shuffle

SIZES = [1, 2, 3, 5, 7, 8, 16, 31, 64, 97, 128, 1000, 1024, 4099, 65536, 65537, 100003, 2**20 + 1]


@pytest.mark.slow
@pytest.mark.parametrize("n", SIZES)
def test_permutation_is_a_bijection(n, key):
    perm = np.asarray(shuffle.permutation(key, n))
    assert perm.dtype == np.int32 and perm.shape == (n,)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
def test_bijection_for_random_sizes_and_keys(n, seed):
    perm = np.asarray(shuffle.permutation(jax.random.key(seed), n))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, 97, 1000, 1001, 4099, 65537])
def test_elementwise_form_agrees_with_full_permutation(n, key):
    """``permutation`` inverts the keyed network to find the few positions that need
    cycle-walking; ``permute_indices`` walks every position: the two must agree."""
    positions = jnp.arange(n).reshape(1, n)  # a 2-D batch of positions, any shape works
    elementwise = shuffle.permute_indices(key, positions, n)[0]
    np.testing.assert_array_equal(elementwise, shuffle.permutation(key, n))
    some = jnp.array([n - 1, 0, n // 2])
    np.testing.assert_array_equal(
        shuffle.permute_indices(key, some, n), shuffle.permutation(key, n)[some]
    )


def test_same_key_same_order_different_keys_differ():
    k0, k1 = jax.random.key(0), jax.random.key(1)
    np.testing.assert_array_equal(shuffle.permutation(k0, 500), shuffle.permutation(k0, 500))
    assert not np.array_equal(shuffle.permutation(k0, 500), shuffle.permutation(k1, 500))
    e0, e1 = shuffle.epoch_key(k0, 0), shuffle.epoch_key(k0, 1)
    assert not np.array_equal(shuffle.permutation(e0, 500), shuffle.permutation(e1, 500))


def _chi2_bound(dof: int) -> float:
    """Upper 1e-4 quantile of chi-square(dof), Wilson-Hilferty approximation."""
    z = 3.719  # standard normal quantile at 1 - 1e-4
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5, 10, 33])
def test_positions_are_uniform_over_keys(n):
    """Over many keys, index i lands in each position j about equally often."""
    num_keys = 400 * n
    keys = jax.random.split(jax.random.key(123), num_keys)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffle.permutation(k, n)))(keys))
    counts = np.zeros((n, n))
    np.add.at(counts, (perms, np.broadcast_to(np.arange(n), perms.shape)), 1)
    expected = num_keys / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < _chi2_bound((n - 1) ** 2), chi2


def test_adjacent_pairs_are_uniform():
    """The ordered pair (perm[0], perm[1]) is uniform over the n(n-1) possibilities."""
    n, num_keys = 8, 20000  # Z_2 x Z_4: the hardest small domain
    keys = jax.random.split(jax.random.key(7), num_keys)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffle.permutation(k, n)))(keys))
    counts = np.zeros((n, n))
    np.add.at(counts, (perms[:, 0], perms[:, 1]), 1)
    cells = counts[~np.eye(n, dtype=bool)]
    expected = num_keys / (n * (n - 1))
    assert ((cells - expected) ** 2 / expected).sum() < _chi2_bound(n * (n - 1) - 1)


def test_large_permutation_looks_random(key):
    """No drift: the displacement of a 10**5 shuffle is as wide as a random one's."""
    n = 100_000
    perm = np.asarray(shuffle.permutation(key, n))
    # Spearman correlation of position and index is ~N(0, 1/n) for a random permutation.
    rho = np.corrcoef(np.arange(n), perm)[0, 1]
    assert abs(rho) < 5 / np.sqrt(n)


def test_bad_sizes_are_refused(key):
    for n in (0, -1, 2**31, 1.5, True):
        with pytest.raises(ValueError, match="n must be an int"):
            shuffle.permutation(key, n)


@pytest.mark.parametrize(
    "n, run, per_block",
    [(1, 64, 4), (63, 64, 4), (64, 64, 4), (1000, 8, 5), (1003, 8, 5), (4096, 16, 16),
     (777, 1, 10), (5000, 64, 3), (65536 + 13, 64, 1024)],
)  # fmt: skip
@pytest.mark.slow
def test_run_order_is_a_bijection(n, run, per_block, key):
    perm = np.asarray(shuffle.permute_runs(key, np.arange(n), n, run, per_block))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


@pytest.mark.slow
def test_run_order_reads_stretches_and_mixes_runs_in_each_batch(key):
    """A block of G runs is G contiguous stretches on disk; a batch of B <= G has B runs."""
    n, run, G = 20_000, 16, 64
    perm = np.asarray(shuffle.permute_runs(key, np.arange(n), n, run, G))
    block = np.sort(perm[: G * run])
    assert (np.diff(block) != 1).sum() <= G - 1  # at most G stretches
    for batch in perm[: G * run].reshape(-1, 32):
        assert np.unique(batch // run).size == 32  # 32 examples from 32 different runs
    other = np.asarray(shuffle.permute_runs(jax.random.fold_in(key, 1), np.arange(n), n, run, G))
    assert not np.array_equal(perm, other)  # keyed
    np.testing.assert_array_equal(  # reproducible, and elementwise: any positions alone
        np.asarray(shuffle.permute_runs(key, np.arange(100, 200), n, run, G)), perm[100:200]
    )
