"""The XLA compiler options of jaxlin's own compiled programs: quicker compiles, same code.

On jaxlib 0.10's XLA:CPU, ``xla_cpu_use_fusion_emitters=False`` (the older
fusion code generator) compiles the training program 30-40 % faster (the
lecture's problem: 0.28 -> 0.19 s) at the same speed (measured at n up to 1e6
and d up to 100), with the same results to float rounding (the same bits on
the lecture's problem; a sum's last bit may round apart elsewhere: tested to
1e-6). Newer jaxlibs dropped the option,
and compile faster without it. Whether the installed XLA knows it is probed
once, by compiling a one-op program, the first time a jaxlin program is
compiled; never at import.

Only private, top-level programs use ``jit`` (``fit``'s epochs, the stream's
blocks, the sweep's grid, data parallelism): JAX refuses compiler options on
a jit nested in another, so public functions a user may call under ``jax.jit``
(``train_step``, ``synthetic_splits``) keep plain ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def options() -> dict:
    """``FAST_COMPILE`` when this XLA accepts it, else ``{}`` (probed once)."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=FAST_COMPILE)
        probe.lower(jnp.zeros((), jnp.float32)).compile()
    except Exception:  # JaxRuntimeError "No such compile option" on newer jaxlibs
        return {}
    return dict(FAST_COMPILE)


class jit:  # lower case: used like jax.jit
    """``jax.jit(fun, **kwargs)`` compiled with ``options()``, made on first use.

    Supports calling and ``.lower``, which is all jaxlin uses. ``extra``:
    further compiler options of this program (e.g. an LLVM level).
    """

    def __init__(self, fun, *, extra: dict | None = None, **kwargs):
        self.fun, self.extra, self.kwargs = fun, extra or {}, kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        compiler_options = {**options(), **self.extra} or None
        return jax.jit(self.fun, compiler_options=compiler_options, **self.kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)
