"""A griffe extension for the API reference (``mkdocs.yml``: mkdocstrings' ``extensions``).

Google style names the section of doctests ``Examples:``; a docstring that
says ``Example:`` would otherwise render its ``>>>`` lines as Markdown (where
``f(x)[1][1]`` reads as a reference link). Read both as the examples section.
"""

from __future__ import annotations

import re

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Treat an ``Example:`` section title as Google style's ``Examples:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        """Rewrite the section title in the object's docstring, if it has one."""
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
