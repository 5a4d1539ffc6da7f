"""A stub of the student notebook: "not written yet", with jaxlin's function standing in.

The student notebook replaces each solution by ``return
jaxlin.course.not_written()``. Called from a notebook, the stub warns once and
returns what jaxlin's function of the same name returns, so the notebook still
runs top to bottom (and its checks then compare jaxlin with itself, which the
warning says). Called by the grader, it raises ``NotWritten``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import warnings

_GRADING = contextvars.ContextVar("jaxlin_course_grading", default=False)


class NotWritten(NotImplementedError):
    """A stub of the assignment was called: the function is not written yet."""

    def __init__(self, name: str):
        super().__init__(
            f"{name} is not written yet: write its body in place of the stub, then run its "
            "cell again"
        )
        self.name = name


class NotWrittenWarning(UserWarning):
    """A stub was called outside the grader: jaxlin's function stood in for it."""


@contextlib.contextmanager
def grading():
    """Within this block a stub raises ``NotWritten`` instead of standing in."""
    token = _GRADING.set(True)
    try:
        yield
    finally:
        _GRADING.reset(token)


def not_written():
    """The body of a stub: the caller's name and arguments, passed to jaxlin's function.

    Reads the calling function's name and arguments from its frame, so the
    stub is one fixed line (nbgrader's ``code_stub``) whatever the function.
    """
    frame = sys._getframe(1)
    code = frame.f_code
    name = code.co_name
    from jaxlin.course import reference

    stand_in = getattr(reference, name, None) if name in reference.TASKS else None
    if _GRADING.get() or stand_in is None:
        raise NotWritten(name)
    positional = code.co_varnames[: code.co_argcount]
    keywords = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    args = [frame.f_locals[arg] for arg in positional]
    kwargs = {arg: frame.f_locals[arg] for arg in keywords}
    del frame
    warnings.warn(
        f"{name} is not written yet: jaxlin's {name} stands in for it until you write it "
        "(checks of it in this notebook compare jaxlin with itself)",
        NotWrittenWarning,
        stacklevel=2,
    )
    return stand_in(*args, **kwargs)
