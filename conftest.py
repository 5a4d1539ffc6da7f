"""Every Python example a reader sees runs as written, checked by sybil.

* README.md and docs/*.md: each page's ```python blocks run in order in one fresh
  namespace per page, in an empty temporary folder (nothing but what the page
  itself imports, defines and writes). ``<!-- skip: next "reason" -->`` skips a
  block, with its reason.
* jaxlin/**/*.py: the ``>>>`` examples of the docstrings run as doctests, in a
  namespace of their own per module, without the module's globals: an example
  imports what it uses, as a reader pasting it must.

They are marked ``slow`` (``pytest -m "not slow"`` leaves them out). The test
suite's own settings and fixtures are in tests/conftest.py.
"""

import doctest
import importlib.util
import os
import sys
import tempfile

import pytest
from sybil import Document, Sybil
from sybil.document import PythonDocStringDocument
from sybil.integration.pytest import SybilItem
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

os.environ.setdefault("MPLBACKEND", "Agg")  # the examples draw figures; never a window

_FOLDERS: dict[int, tuple[str, tempfile.TemporaryDirectory]] = {}  # id(namespace) -> its folder
_NEEDS_SKLEARN = ("docs/sklearn.md", "jaxlin/sklearn.py")  # the scikit-learn extra's examples


def _enter_empty_folder(namespace: dict) -> None:
    """Before a page's first example: its working directory is a new, empty folder."""
    folder = tempfile.TemporaryDirectory(prefix="jaxlin-examples-")
    _FOLDERS[id(namespace)] = (os.getcwd(), folder)
    os.chdir(folder.name)


def _leave_folder(namespace: dict) -> None:
    """After a page's last example: back to where the tests run, its folder and figures gone."""
    cwd, folder = _FOLDERS.pop(id(namespace))
    os.chdir(cwd)
    folder.cleanup()
    namespace.clear()  # the page's arrays are not kept for the rest of the session
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


class _Docstrings(PythonDocStringDocument):
    """A module's docstrings, whose examples run without the module's globals.

    sybil's own ``PythonDocStringDocument`` imports the module into the
    namespace first, so an example could use a name it never imports. (Its
    ``__init__`` is ``Document``'s plus that import, in sybil 7.0 to 10.1.)
    """

    def __init__(self, text: str, path: str) -> None:
        Document.__init__(self, text, path)  # not PythonDocument's: no import of the module


_OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

pytest_collect_file = (
    Sybil(
        parsers=[PythonCodeBlockParser(), SkipParser()],
        patterns=["README.md", "docs/*.md"],
        setup=_enter_empty_folder,
        teardown=_leave_folder,
        name="docs",
    )
    + Sybil(
        parsers=[DocTestParser(optionflags=_OPTIONS)],
        patterns=["jaxlin/*.py", "jaxlin/*/*.py"],
        document_types={".py": _Docstrings},
        setup=_enter_empty_folder,
        teardown=_leave_folder,
        name="docstrings",
    )
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    sklearn = importlib.util.find_spec("sklearn") is not None
    for item in items:
        if not isinstance(item, SybilItem):
            continue
        item.add_marker(pytest.mark.slow)
        if not sklearn and any(item.path.match(p) for p in _NEEDS_SKLEARN):
            item.add_marker(pytest.mark.skip(reason='needs scikit-learn: pip install ".[test]"'))
