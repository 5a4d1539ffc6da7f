"""The ``jaxlin`` process: its Ctrl-C handler first, then the command line.

The ``jaxlin`` script and ``python -m jaxlin`` call ``entry``. It installs
the SIGINT handler before anything else is imported (the command line, JAX),
so a Ctrl-C at any moment of the run is recorded and honoured at the next
safe point: exit status 130 and one line on stderr, never a traceback. Only
the interpreter's own start-up, before this module runs, is left to Python.
"""

from __future__ import annotations

import _signal  # signal's C core: ``signal`` itself imports enum, which takes milliseconds
import os
import sys


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, honoured at a safe point; the message says what was saved."""


class Interrupt:
    """Ctrl-C as a flag: the handler only records it and the run stops at its next check.

    Raising from the handler could land inside a JAX callback or a compiled
    call's Python glue, where the exception is printed and dropped; a flag
    checked after each step of the run cannot be lost. A second Ctrl-C ends
    the process at once (``saved`` says what is on disk by then).
    """

    def __init__(self) -> None:
        self.count = 0
        self.saved = "nothing saved"

    def handle(self, signum, frame) -> None:
        """The SIGINT handler: count; the second one exits now, with one line."""
        del signum, frame
        self.count += 1
        if self.count > 1:
            os.write(2, f"jaxlin: interrupted twice: stopped at once; {self.saved}\n".encode())
            os._exit(130)

    def check(self, message: str) -> None:
        """Raise ``Interrupted(message)`` if Ctrl-C was pressed."""
        if self.count:
            raise Interrupted(message)


def entry() -> None:
    """Run the ``jaxlin`` command line and end the process with its exit status.

    Once the command is done and its output flushed, the process ends without
    tearing down the interpreter (JAX's objects take a fifth of a second to
    free, for nothing the command still needs). ``jaxlin.cli.main`` itself
    returns, for callers in Python.
    """
    interrupt = Interrupt()
    _signal.signal(_signal.SIGINT, interrupt.handle)  # first: nothing imported before it
    from jaxlin.cli import main

    try:
        status = main(interrupt=interrupt)
    except SystemExit as exit:  # usage errors, --help, --version
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if exit.code is not None and not isinstance(exit.code, int):
            print(exit.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the stream closed (>&-)
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, a full disk, a closed stream
            status = status or 1
    if "logging" in sys.modules:  # handlers a library added: flushed and closed
        sys.modules["logging"].shutdown()
    os._exit(status)
