"""Every example a reader sees runs as written, checked by sybil.

* README.md and docs/*.md: each page's ```python and ```bash blocks run in the
  order of the page, in one fresh namespace per page and an empty temporary
  folder (nothing but what the page itself imports, defines and writes), so a
  page's Python can read the files its shell commands wrote. A ```bash block
  runs in ``bash -e`` in that folder, with the ``bin`` folder of the Python
  running the tests first on ``PATH``: its ``jaxlin`` is this environment's
  console script. A command that fails fails the example, with its output.
  ``<!-- skip: next "reason" -->`` skips a block, with its reason: the
  blocks that install packages, serve the site, need a GPU, other hosts or
  students' submissions, or run for minutes, each say so where they are.
* jaxlin/**/*.py: the ``>>>`` examples of the docstrings run as doctests, in a
  namespace of their own per module, without the module's globals: an example
  imports what it uses, as a reader pasting it must.

They are marked ``slow`` (``pytest -m "not slow"`` leaves them out). The test
suite's own settings and fixtures are in tests/conftest.py.
"""

import doctest
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sybil import Document, Sybil
from sybil.document import PythonDocStringDocument
from sybil.example import Example
from sybil.integration.pytest import SybilItem
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

os.environ.setdefault("MPLBACKEND", "Agg")  # the examples draw figures; never a window

_FOLDERS: dict[int, tuple[str, tempfile.TemporaryDirectory]] = {}  # id(namespace) -> its folder
_NEEDS_SKLEARN = ("docs/sklearn.md", "jaxlin/sklearn.py")  # the scikit-learn extra's examples


def _enter_empty_folder(namespace: dict) -> None:
    """Before a page's first example: its working directory is a new, empty folder.

    The folder is ``page/`` inside a temporary folder of its own, so that a
    command writing next to it (``--out ../course``) writes inside that too.
    """
    folder = tempfile.TemporaryDirectory(prefix="jaxlin-examples-")
    _FOLDERS[id(namespace)] = (os.getcwd(), folder)
    page = Path(folder.name, "page")
    page.mkdir()
    os.chdir(page)


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


BIN = str(Path(sys.executable).parent)  # this environment's scripts: jaxlin, pytest, ...
SHELL_HANG_S = 600  # a block that has not ended by then is stuck: fail it, with its output


def _run_shell(example: Example) -> str | None:
    """A ```bash block, run by ``bash -e`` in the page's folder: ``None`` if every command
    succeeds, else the failure and the output (sybil fails the example with that text).
    The commands' compile cache is the page's own, not the user's."""
    path = os.pathsep.join([BIN, os.environ.get("PATH", "")])
    found = shutil.which("jaxlin", path=path)
    if found is None or Path(found).parent != Path(BIN):
        return f"no jaxlin console script in {BIN}: pip install -e . with this Python"
    try:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", example.parsed],
            env={**os.environ, "PATH": path, "XDG_CACHE_HOME": str(Path.cwd().parent / "cache")},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=SHELL_HANG_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:  # its output comes as bytes, text=True or not
        output = (
            err.output.decode(errors="replace") if isinstance(err.output, bytes) else err.output
        )
        return f"still running after {SHELL_HANG_S} s:\n{example.parsed}\noutput:\n{output}"
    if done.returncode != 0:
        return f"exit status {done.returncode} of\n{example.parsed}\noutput:\n{done.stdout}"
    return None


_OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

pytest_collect_file = (
    Sybil(
        parsers=[
            PythonCodeBlockParser(),
            CodeBlockParser(language="bash", evaluator=_run_shell),
            SkipParser(),
        ],
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
