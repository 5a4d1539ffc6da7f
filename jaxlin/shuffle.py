"""Keyed permutations of ``range(n)`` that are cheap to make on the device.

``jax.random.permutation`` sorts ``n`` random keys, which for a million
indices costs more than an epoch of SGD on a small model. Here the shuffle is
a keyed bijection evaluated elementwise: a generalised Feistel network on
``Z_a x Z_b`` (``a * b >= n``, ``a ~ b ~ sqrt(n)``) with cycle-walking for the
few points that land in ``[n, a * b)``. Any position's index can be computed
on its own, so the same function shuffles data that never fits in memory.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from jaxlin import checks

NUM_ROUNDS = 6  # Feistel rounds (even); each is one keyed hash per index.
SMALL_ROUNDS = 16  # tiny domains (Z_2 x Z_4, say) mix slowly: more rounds, still cheap.
SMALL_N = 64


def _round_keys(key: jax.Array, n: int) -> jax.Array:
    """The per-round keys of the network for size ``n`` (uint32, even length).

    Hashed from the key's words with ``_mix32`` rather than drawn with
    ``jax.random.bits``: the same 2**64 keys, and one fewer threefry to compile
    into every epoch.
    """
    rounds = jnp.arange(SMALL_ROUNDS if n < SMALL_N else NUM_ROUNDS, dtype=jnp.uint32)
    h = _mix32(rounds * jnp.uint32(0x9E3779B9) + jnp.uint32(0x85EBCA6B))
    for word in jax.random.key_data(key).reshape(-1):  # 2 words for threefry keys
        h = _mix32(h ^ word)
    return h


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit avalanche hash (the ``lowbias32`` mixer): uint32 -> uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _domain(n: int) -> tuple[int, int]:
    """Factors ``(a, b)``, ``2 <= a``, ``a <= b <= 16 a``, with ``a * b >= n`` and the excess least.

    Most sizes people pick (1000, 10**6, 10**7) factor exactly, so no point
    needs cycle-walking; for a prime the excess is still below ``sqrt(n)``.
    """
    if n <= 1:
        return 1, 1
    root = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
    best = (root, -(-n // root))
    for a in range(root, max(2, root // 4) - 1, -1):  # a >= 2: Z_1 x Z_n only rotates
        b = -(-n // a)
        if a * b - n < best[0] * best[1] - n:
            best = (a, b)
            if a * b == n:
                break
    return best


def _round_fn(right: jax.Array, round_key: jax.Array, p: int) -> jax.Array:
    """The keyed round function of the Feistel network, into ``Z_p``."""
    return _mix32(right ^ round_key) % jnp.uint32(p)


def _feistel(x: jax.Array, round_keys: jax.Array, a: int, b: int) -> jax.Array:
    """The keyed bijection on ``[0, a * b)`` (uint32 in, uint32 out)."""
    # The barrier hides where ``x`` came from (often an iota): XLA 0.12's index
    # simplifier otherwise folds the rounds into one index expression, in time
    # exponential in the rounds when a or b is a power of two (n = 4 never compiled).
    x = jax.lax.optimization_barrier(x)
    left, right = x // jnp.uint32(b), x % jnp.uint32(b)  # left in Z_a, right in Z_b
    p, q = a, b
    for r in range(round_keys.shape[0]):
        s = left + _round_fn(right, round_keys[r], p)
        left, right = right, jnp.where(s >= p, s - jnp.uint32(p), s)  # (Z_q, Z_p)
        p, q = q, p
    return left * jnp.uint32(b) + right  # an even number of rounds: back in Z_a x Z_b


def _feistel_inverse(x: jax.Array, round_keys: jax.Array, a: int, b: int) -> jax.Array:
    """The inverse of ``_feistel``: undo the rounds in reverse order."""
    x = jax.lax.optimization_barrier(x)  # as in _feistel: an iota is often the input
    left, right = x // jnp.uint32(b), x % jnp.uint32(b)
    for r in reversed(range(round_keys.shape[0])):
        p = a if r % 2 == 0 else b  # round r mapped (Z_p x Z_q) -> (Z_q x Z_p)
        f = _round_fn(left, round_keys[r], p)
        right, left = left, jnp.where(right >= f, right - f, right + jnp.uint32(p) - f)
    return left * jnp.uint32(b) + right


def _cycle_walk(x: jax.Array, round_keys: jax.Array, a: int, b: int, n: int) -> jax.Array:
    """Re-apply the bijection to every entry ``>= n`` until all are in ``[0, n)``.

    At most ``a * b - n`` entries (the preimages of ``[n, a * b)``) need it, and
    ``_domain`` keeps that excess small, so this loop runs once or twice.
    """
    return jax.lax.while_loop(
        lambda x: jnp.any(x >= n),
        lambda x: jnp.where(x >= n, _feistel(x, round_keys, a, b), x),
        x,
    )


@partial(jax.jit, static_argnames=("n",))
def permute_indices(key: jax.Array, positions: jax.Array, n: int) -> jax.Array:
    """The index at each of ``positions`` of the keyed permutation of ``range(n)``.

    Args:
      key: a ``jax.random.key``; the same key gives the same permutation.
      positions: integer array of any shape, values in ``[0, n)``.
      n: static size of the index space, ``1 <= n < 2**31``.

    Returns:
      int32 array shaped like ``positions``: ``perm[positions]``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < 2**31:
        raise ValueError(f"n must be an int in [1, 2**31), got {n!r}")
    key = checks.key("key", key)
    if not jnp.issubdtype(jnp.asarray(positions).dtype, jnp.integer):
        raise TypeError(f"positions must be integers, got dtype {jnp.asarray(positions).dtype}")
    a, b = _domain(n)
    round_keys = _round_keys(key, n)
    x = _feistel(jnp.asarray(positions).astype(jnp.uint32), round_keys, a, b)
    if a * b > n:
        x = _cycle_walk(x, round_keys, a, b, n)
    return x.astype(jnp.int32)


@partial(jax.jit, static_argnames=("n", "multiple"))
def padded_permutation(key: jax.Array, n: int, multiple: int = 8) -> jax.Array:
    """``permutation(key, n)`` followed by junk up to a multiple of ``multiple``.

    XLA:CPU vectorises elementwise loops only over lengths it can split into
    whole vectors, so a length that is a multiple of 8 hashes much faster. The
    compiled engine reads only the first ``n`` entries, so it takes this form.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < 2**31:
        raise ValueError(f"n must be an int in [1, 2**31), got {n!r}")
    a, b = _domain(n)
    round_keys = _round_keys(key, n)
    # Two halves through a loop, so that XLA writes the permutation to memory
    # once: straight-line, it fuses the rounds into each consumer's gather and
    # re-evaluates them for every gathered element.
    halves = jnp.arange(-(-n // (2 * multiple)) * 2 * multiple, dtype=jnp.uint32).reshape(2, -1)
    x = jax.lax.map(lambda half: _feistel(half, round_keys, a, b), halves).reshape(-1)
    if a * b > n:  # the few positions that land in [n, a*b): invert, walk, write back
        outside = jnp.arange(n, a * b, dtype=jnp.uint32)
        origin = _feistel_inverse(outside, round_keys, a, b)  # positions that landed there
        real = origin < n  # origins >= n are not positions; their orbit may never leave
        start = jnp.where(real, _feistel(outside, round_keys, a, b), 0)
        walked = _cycle_walk(start, round_keys, a, b, n)
        landed_outside = jnp.where(real, origin, x.size)  # index x.size: dropped
        x = x.at[landed_outside].set(walked, mode="drop", unique_indices=True)
    return x.astype(jnp.int32)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly shuffled ``arange(n)`` (int32, shape ``(n,)``) from ``key``.

    Equal to ``permute_indices(key, arange(n), n)``, but the few positions that
    need cycle-walking are found by inverting the network on ``[n, a * b)``
    instead of re-hashing all ``n`` entries in a loop.
    """
    return padded_permutation(checks.key("key", key), n)[:n]


def epoch_key(key: jax.Array, epoch) -> jax.Array:
    """The shuffling key of one epoch: ``fold_in(key, epoch)``, never ``key`` itself."""
    return jax.random.fold_in(key, epoch)


@partial(jax.jit, static_argnames=("n", "run", "runs_per_block"))
def permute_runs(
    key: jax.Array, positions: jax.Array, n: int, run: int = 64, runs_per_block: int = 1024
) -> jax.Array:
    """A keyed permutation of ``range(n)`` that reads data in runs: for data on disk.

    The index space is cut into runs of ``run`` consecutive examples, and the
    runs are shuffled with the keyed network (``permute_indices`` over run
    numbers). Consecutive groups of ``runs_per_block`` shuffled runs form
    blocks; a block is read row by row *across* its runs (position ``i * G + g``
    is row ``i`` of the block's run ``g``), so a minibatch of ``B <= G``
    examples draws from ``B`` different runs (except in the last block, which
    may hold fewer runs), while a block's examples lie in ``G`` contiguous
    stretches of the files: one read per run, not per row. The last
    ``n % run`` examples are shuffled among themselves at the end.

    Every example still comes exactly once per epoch and the same key gives
    the same order, but it is not ``permutation(key, n)``: neighbours on disk
    share a block (a stratified, coarser shuffle; ``fit``'s exact order is
    ``permute_indices``).

    Args:
      key: a ``jax.random.key``.
      positions: integer array of any shape, values in ``[0, n)``.
      n, run, runs_per_block: static sizes, ``>= 1``.

    Returns:
      int32 array shaped like ``positions``: the example at each position.
    """
    for name, v in (("n", n), ("run", run), ("runs_per_block", runs_per_block)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31:
            raise ValueError(f"{name} must be an int in [1, 2**31), got {v!r}")
    if run * runs_per_block >= 2**31:
        raise ValueError(f"run * runs_per_block must be < 2**31, got {run} * {runs_per_block}")
    key = checks.key("key", key)
    p = jnp.asarray(positions).astype(jnp.int32)
    num_runs = n // run  # full runs; the tail [num_runs * run, n) is shuffled apart
    tail_start = num_runs * run
    run_key, tail_key = jax.random.split(key)
    out = jnp.zeros_like(p)
    if num_runs:
        block_size = runs_per_block * run
        block = p // block_size
        full_blocks = num_runs // runs_per_block
        height = jnp.where(block < full_blocks, runs_per_block, num_runs % runs_per_block)
        within = p - block * block_size
        g = within % jnp.maximum(height, 1)  # which run of the block
        row = within // jnp.maximum(height, 1)  # which row of that run
        which = jnp.clip(block * runs_per_block + g, 0, num_runs - 1)
        out = permute_indices(run_key, which, num_runs) * run + row
    if n > tail_start:
        tail = tail_start + permute_indices(
            tail_key, jnp.clip(p - tail_start, 0, n - tail_start - 1), n - tail_start
        )
        out = jnp.where(p >= tail_start, tail, out)
    return out
