"""A griffe extension for the API reference (``mkdocs.yml``: mkdocstrings' ``extensions``).

- Google style names the section of doctests ``Examples:``; a docstring that
  says ``Example:`` would otherwise render its ``>>>`` lines as Markdown
  (where ``f(x)[1][1]`` reads as a reference link). Both are read as examples.
- The code documents related arguments together (``lr, max_epochs: ...``),
  which Google style reads as one parameter with no type and no default. Each
  name gets its own row, so its type and default come from the signature.
- A constant's trailing comment (``ENGINES = (...)  # how fit runs``) is its
  description, as a docstring would be.
"""

from __future__ import annotations

import re

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
GROUPED = re.compile(r"^(\s+)(\*{0,2}\w+(?:,\s*\*{0,2}\w+)+):\s*(.*)$")
COMMENT = re.compile(r"#\s*(?!fmt:|noqa|type:)(.+)$")


def split_grouped_parameters(text: str) -> str:
    """``a, b: text`` in an Args section becomes ``a: text`` and ``b: as for ``a``.``."""
    lines, out, i, header = text.splitlines(), [], 0, None  # header: the Args line's indent
    while i < len(lines):
        line = lines[i]
        i += 1
        found = SECTION.match(line)
        if found:
            header = found.group(1)
        elif header is not None and line.strip() and not line.startswith(header + " "):
            header = None  # a line at the header's indent or less: the section ended
        in_args = header is not None and not found
        grouped = GROUPED.match(line) if in_args else None
        if not grouped:
            out.append(line)
            continue
        indent, names, text_ = grouped.group(1), grouped.group(2), grouped.group(3)
        first, *rest = [n.strip() for n in names.split(",")]
        out.append(f"{indent}{first}: {text_}")
        while i < len(lines) and lines[i].startswith(indent + " "):  # its continuation
            out.append(lines[i])
            i += 1
        out += [f"{indent}{name}: as for ``{first}``." for name in rest]
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """The three rewrites above, applied to every object as griffe loads it."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        """Rewrite the docstring's sections; give a commented constant its comment."""
        del kwargs
        if obj.docstring is not None:
            text = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = split_grouped_parameters(text)
        elif obj.is_attribute and obj.lineno is not None:
            try:
                line = obj.lines_collection[obj.filepath][obj.lineno - 1]
            except (KeyError, IndexError, TypeError):
                return
            found = COMMENT.search(line.partition("=")[2])
            if found:
                obj.docstring = griffe.Docstring(found.group(1).strip(), parent=obj)
