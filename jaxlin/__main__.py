"""``python -m jaxlin``: the same as the ``jaxlin`` script."""

import sys

from jaxlin.cli import main

sys.exit(main())
