"""``jaxlin assignment``: the student notebook and nbgrader's folder, made from the lecture."""

from __future__ import annotations

from pathlib import Path

from jaxlin.cli.common import path_flag


def add_parser(sub) -> None:
    """Register ``assignment`` and its flags."""
    a = sub.add_parser(
        "assignment",
        help="make the student notebook and nbgrader's source from the lecture notebook",
        description="Write OUT/NAME.ipynb, the lecture notebook with each solution (between "
        "'### BEGIN SOLUTION' and '### END SOLUTION') replaced by a stub, and OUT/nbgrader/, "
        "an nbgrader course folder whose source notebook runs jaxlin's checks as hidden "
        "autograded tests. Grade submissions with 'jaxlin grade'.",
    )
    a.add_argument("--out", type=path_flag, required=True, help="folder to write into")
    a.add_argument(
        "--lecture",
        type=path_flag,
        default=None,
        help="the lecture notebook (default: notebooks/01_lecture.py of this checkout)",
    )
    a.add_argument("--name", default="lecture", help="the assignment's name (default: lecture)")


def run(args) -> int:
    """Write the files and list them."""
    from jaxlin.course import require

    require("jupytext", "nbformat")
    from jaxlin.course.assignment import lecture_path, write

    lecture = Path(args.lecture) if args.lecture else lecture_path()
    if not lecture.is_file():
        raise ValueError(
            f"--lecture {str(lecture)!r} not found"
            + ("" if args.lecture else ": pass the lecture notebook's path")
        )
    paths = write(lecture, args.out, args.name)
    for role, path in paths.items():
        print(f"{role.replace('_', ' ')}: {path}")
    return 0
