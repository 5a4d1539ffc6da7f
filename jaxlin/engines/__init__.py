"""The engines that run the lecture's SGD fast: compiled epochs and runs, the affine epoch.

``jaxlin.fit(engine=...)`` picks one; every engine gives the same batches and
the same parameters (to float rounding) as the lecture's loop in
``jaxlin.train``:

* ``compiled``: an epoch is one ``lax.scan`` of the step inside ``jax.jit``;
  ``run_epochs`` (what ``fit`` runs) and ``make_train`` (the whole run as a
  pure, composable function);
* ``affine``: an epoch's steps composed as affine maps, in logarithmic depth;
* ``compiler``: the XLA options jaxlin's own top-level programs compile with.
"""

from jaxlin.engines.affine import affine_epoch
from jaxlin.engines.compiled import make_train, run_epochs, scan_batches, scan_epoch

__all__ = ["affine_epoch", "make_train", "run_epochs", "scan_batches", "scan_epoch"]
