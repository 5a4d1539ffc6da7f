"""Test settings: shape and dtype traps become errors; each test gets a fresh key."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Before scipy is imported: lets scikit-learn run its array-API estimator check
# (test_sklearn.py) instead of skipping it.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import contextlib
import subprocess
import sys
import textwrap
import zlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")  # (n, 1) vs (n,) must fail loudly
jax.config.update("jax_numpy_dtype_promotion", "strict")

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def key(request):
    """A key derived from the test's name: fresh per test, the same on every run."""
    return jax.random.key(zlib.crc32(request.node.name.encode()) % (2**31))  # not hash(): salted


def run_python(code: str) -> list[str]:
    """Run ``code`` (dedented) in a child Python; its lines of output. A signal there
    (SIGBUS, SIGSEGV) fails the calling test instead of ending the test run."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    return out.stdout.splitlines()


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations in the block: ``with count_compiles() as n: ...``, then ``n[0]``."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# `pytest -m "not slow"`: the lecture's core in under a minute. Slow are the
# tests of the scale-out and the tools (subprocesses, notebooks, many devices,
# files on disk, the command line) and the property tests that compile a new
# program per drawn example; plain `pytest` runs everything.
SLOW_FILES = {
    "test_bad_input.py",
    "test_checkpoint.py",
    "test_cli.py",
    "test_cli_robust.py",
    "test_multihost.py",
    "test_notebooks.py",
    "test_parallel.py",
    "test_sklearn.py",
    "test_stream.py",
    "test_stream_files.py",
    "test_checkpoint_files.py",
    "test_docs.py",
    "test_trajectory.py",
    "test_cli_errors.py",
    "test_sweep.py",
}
SLOW_TESTS = {
    "test_gradient_equals_analytic_gradient",
    "test_bijection_for_random_sizes_and_keys",
    "test_full_batch_shuffled_epochs_compile_for_power_of_two_sizes",
    "test_gradient_of_the_final_val_loss_wrt_lr_matches_finite_differences",
    "test_every_example_exactly_once_and_last_batch_partial",
    "test_fit_never_returns_non_finite_params_without_raising",
    "test_same_key_same_result_bit_for_bit",
    "test_compiled_engine_uses_every_example_exactly_once_per_epoch",
    "test_positions_are_uniform_over_keys",
    "test_permutation_is_a_bijection",
    "test_elementwise_form_agrees_with_full_permutation",
    "test_run_order_is_a_bijection",
    "test_run_order_reads_stretches_and_mixes_runs_in_each_batch",
    "test_feistel_inverse_undoes_the_network",
    "test_make_train_is_fit_and_composes_with_jit_and_vmap",
    "test_step_engine_compiles_nothing_that_grows_with_the_number_of_steps",
    "test_affine_engine_matches_steps_over_many_small_batches",
    "test_start_epoch_continues_the_same_run",
    "test_engines_agree_on_shuffled_batches",
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of ``SLOW_FILES`` and ``SLOW_TESTS`` as ``slow``."""
    del config
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
