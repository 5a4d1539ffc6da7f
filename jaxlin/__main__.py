"""``python -m jaxlin``: the same as the ``jaxlin`` script."""

from jaxlin.cli import entry

entry()
