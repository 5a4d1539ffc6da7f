"""``python -m jaxlin``: the same as the ``jaxlin`` script."""

from jaxlin.command import entry

entry()
