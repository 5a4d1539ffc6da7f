"""The course kit: the lecture notebook as a graded assignment.

- ``jaxlin.course.assignment`` makes the student notebook (each solution in
  the lecture notebook, between nbgrader's ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` lines, replaced by a stub) and nbgrader's source
  notebook, from the lecture notebook, which stays the one source.
- ``jaxlin.course.checks`` grades the functions a student writes: equal to
  jaxlin's on random inputs, pure, composable with ``jit``, ``vmap`` and
  ``grad``, with a one-line verdict and a hint per check.
- ``jaxlin.course.grade`` runs a submission (a notebook or a ``.py``) in a
  fresh process with a time limit and no network, and grades it there.
- ``jaxlin.course.stub`` is what a stub calls: ``not_written()``.

Command line: ``jaxlin assignment`` and ``jaxlin grade``.
"""

from jaxlin.course.stub import NotWritten, not_written

__all__ = ["NotWritten", "check", "not_written"]


def check(namespace: dict, task: str) -> None:
    """Grade one task of ``namespace`` (a notebook's ``globals()``); raise if a check fails.

    This is the autograded cell of nbgrader's source notebook: it prints the
    task's verdicts, and an ``AssertionError`` gives the cell no points.
    """
    from jaxlin.course.checks import grade_task, table

    verdicts = grade_task(namespace, task)
    print(table(verdicts))
    failed = [v for v in verdicts if v.status != "pass"]
    if failed:
        raise AssertionError(f"{task}: {failed[0].status}: {failed[0].message}")
