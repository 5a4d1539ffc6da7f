"""The XLA compiler options of jaxlin's own top-level programs: quicker compiles, same code.

Where XLA:CPU has it, ``xla_cpu_use_fusion_emitters=False`` (the older fusion
code generator) compiles the training program faster at the same run time,
with the same results to float rounding (``benchmarks/bench.py`` times the
compiles). Newer XLA versions have no such option. Whether the installed one
knows it is probed once, the first time a jaxlin program is compiled; never
at import.

Only top-level programs use ``jit`` (``fit``'s epochs, the stream's blocks,
the sweep's grid, data parallelism): JAX refuses compiler options on a jit
nested in another, so public functions a user may call under ``jax.jit``
(``train_step``, ``synthetic_splits``) keep plain ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def options() -> dict:
    """``FAST_COMPILE`` when this XLA accepts it, else ``{}`` (probed once)."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=FAST_COMPILE)
        probe.lower(np.zeros((), np.float32)).compile()
    except Exception:  # JaxRuntimeError "No such compile option" on newer jaxlibs
        return {}
    return dict(FAST_COMPILE)


class jit:  # lower case: used like jax.jit
    """``jax.jit(fun, **kwargs)`` compiled with ``options()`` and ``extra``, made on first use.

    ``extra``: more XLA options for this program alone. Supports calling and
    ``.lower``, which is all jaxlin uses.
    """

    def __init__(self, fun, *, extra: dict | None = None, **kwargs):
        self.fun, self.extra, self.kwargs = fun, extra or {}, kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        """The ``jax.jit`` of ``fun`` with the options."""
        compiler_options = {**options(), **self.extra} or None
        return jax.jit(self.fun, compiler_options=compiler_options, **self.kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)
