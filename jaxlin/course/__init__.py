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

__all__ = ["NotWritten", "check", "not_written", "require"]


def require(*modules: str) -> None:
    """Raise ``ImportError`` naming the course extra if one of ``modules`` is not installed."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f'the course kit needs {", ".join(missing)}: pip install -e ".[course]" '
            '(or pip install "jaxlin[course]")'
        )


def check(namespace: dict, task: str) -> int:
    """Grade one task of ``namespace`` (a notebook's ``globals()``): print it, return the points.

    This is the autograded cell of nbgrader's source notebook: it prints the
    task's verdicts and returns the number of checks passed, which nbgrader
    takes as the cell's partial credit (one point per check). Warnings are
    kept off stderr, where nbgrader would read any output as a failure. With
    ``JAXLIN_GRADE_CACHE`` set, the checks' programs are compiled once for all
    submissions (JAX's persistent compilation cache in that folder).
    """
    import contextlib
    import sys
    import warnings

    from jaxlin.course.checks import grade_task, score, table, use_cache

    use_cache()
    with warnings.catch_warnings(), contextlib.redirect_stderr(sys.stdout):
        warnings.simplefilter("ignore")
        verdicts = grade_task(namespace, task)
    print(table(verdicts))
    return score(verdicts)[0]
