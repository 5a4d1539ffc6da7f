"""The student notebook and nbgrader's source notebook, made from the lecture notebook.

The lecture notebook (``notebooks/01_lecture.py``) marks each solution with
nbgrader's lines ``### BEGIN SOLUTION`` and ``### END SOLUTION``. The student
notebook is the lecture with each marked region replaced by ``STUB`` (at the
region's indentation), and nothing else changed. nbgrader's source notebook
is the lecture with nbgrader's cell metadata, and after each solution cell a
locked cell whose hidden test runs ``jaxlin.course.check`` on that function:
nbgrader's ``generate_assignment`` then makes the same student notebook (with
``nbgrader_config.py``'s ``code_stub``), and its ``autograde`` runs the same
checks as ``jaxlin grade``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "return jaxlin.course.not_written()  # YOUR CODE HERE"
NBGRADER_CONFIG = f"""\
# nbgrader's settings for the jaxlin assignment (written by `jaxlin assignment`).
c = get_config()  # noqa: F821
# The stub in place of each solution: jaxlin's function stands in (with a warning) in the
# notebook; the grader reports it as not written.
c.ClearSolutions.code_stub = {{"python": {STUB!r}}}
"""


def lecture_path() -> Path:
    """The lecture notebook of a source checkout (``notebooks/01_lecture.py``)."""
    return Path(__file__).resolve().parents[2] / "notebooks" / "01_lecture.py"


def read(path: str | Path):
    """The lecture notebook (a jupytext ``.py`` or an ``.ipynb``) as an nbformat notebook."""
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"lecture notebook {str(path)!r} not found")
    return jupytext.read(path)


def _regions(source: str) -> list[tuple[int, int, str]]:
    """``(begin line, end line, indentation)`` of each solution region of a cell."""
    lines, regions, begin = source.splitlines(), [], None
    for index, line in enumerate(lines):
        if line.strip() == BEGIN:
            if begin is not None:
                raise ValueError(f"a {BEGIN!r} line inside another solution region")
            begin = index
        elif line.strip() == END:
            if begin is None:
                raise ValueError(f"an {END!r} line without its {BEGIN!r}")
            regions.append((begin, index, re.match(r"\s*", lines[begin]).group(0)))
            begin = None
    if begin is not None:
        raise ValueError(f"a {BEGIN!r} line without its {END!r}")
    return regions


def functions(source: str) -> list[str]:
    """The names of the functions whose bodies hold a solution region."""
    names, lines = [], source.splitlines()
    for begin, _, _ in _regions(source):
        for line in reversed(lines[:begin]):
            match = re.match(r"def (\w+)\(", line)
            if match:
                names.append(match.group(1))
                break
    return names


def strip(source: str) -> str:
    """A cell's source with each solution region replaced by the stub."""
    lines = source.splitlines()
    for begin, end, indent in reversed(_regions(source)):
        lines[begin : end + 1] = [indent + STUB]
    return "\n".join(lines)


def student(lecture):
    """The student notebook: the lecture with every solution replaced by the stub."""
    notebook = copy.deepcopy(lecture)
    tasks = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and BEGIN in cell.source:
            tasks += functions(cell.source)
            cell.source = strip(cell.source)
    if not tasks:
        raise ValueError(f"the lecture notebook has no solution marked with {BEGIN!r}")
    return notebook


def nbgrader_source(lecture):
    """nbgrader's source notebook: solution cells, and a hidden autograded check after each."""
    import nbformat

    from jaxlin.course.checks import CHECKS

    notebook = copy.deepcopy(lecture)
    cells = []
    for index, cell in enumerate(notebook.cells):
        cells.append(cell)
        if cell.cell_type != "code" or BEGIN not in cell.source:
            continue  # no nbgrader metadata: an ordinary cell
        cell.metadata["nbgrader"] = {
            "solution": True, "grade": False, "locked": False, "schema_version": 3,
            "grade_id": f"solution-{index}",
        }  # fmt: skip
        for task in functions(cell.source):
            if task not in CHECKS:
                raise ValueError(f"the lecture's solution {task!r} has no checks in the grader")
            test = nbformat.v4.new_code_cell(
                f"# jaxlin's checks of {task} (the same as `jaxlin grade`)\n"
                f"### BEGIN HIDDEN TESTS\njaxlin.course.check(globals(), {task!r})\n"
                "### END HIDDEN TESTS"
            )
            test.metadata["nbgrader"] = {
                "solution": False, "grade": True, "locked": True, "schema_version": 3,
                "grade_id": f"check-{task}", "points": len(CHECKS[task]),
            }  # fmt: skip
            cells.append(test)
    notebook.cells = cells
    return notebook


def write(lecture_file: str | Path, out: str | Path, name: str = "lecture") -> dict[str, Path]:
    """Write the student notebook, nbgrader's source notebook and its config under ``out``.

    ``out/NAME.ipynb`` is the student notebook; ``out/nbgrader/`` is an
    nbgrader course folder (``nbgrader_config.py`` and
    ``source/NAME/NAME.ipynb``). Returns the paths written, by role.
    """
    import nbformat

    from jaxlin.files import atomic_write

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}")
    lecture = read(lecture_file)
    lecture.metadata.pop("jupytext", None)
    out = Path(out)
    paths = {
        "student": out / f"{name}.ipynb",
        "nbgrader_config": out / "nbgrader" / "nbgrader_config.py",
        "nbgrader_source": out / "nbgrader" / "source" / name / f"{name}.ipynb",
    }
    texts = {
        "student": nbformat.writes(student(lecture)),
        "nbgrader_config": NBGRADER_CONFIG,
        "nbgrader_source": nbformat.writes(nbgrader_source(lecture)),
    }
    for role, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file, text=texts[role]: file.write(text.encode()))
    return paths
