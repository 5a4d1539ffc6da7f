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
