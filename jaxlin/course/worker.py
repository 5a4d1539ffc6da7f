"""The grading process: run one submission, grade what it defined, write the verdicts as JSON.

``python -m jaxlin.course.worker SUBMISSION CHECK_TIMEOUT MEMORY_BYTES`` is started by
``jaxlin.course.grade`` in a fresh process, and reads the path of its result
file from stdin before the submission runs. The submission's cells run one
by one (a cell that raises is noted and the next one runs, as in a notebook
run with errors allowed); its prints are discarded; sockets and new processes
are refused; its memory (the data segment: heap and anonymous maps) is
capped, so an array too large fails with ``MemoryError`` rather than taking
the machine. Then each task is graded, and its verdicts are written to the
result file as one JSON line as soon as they are known, so a process that is
stopped later still reports the tasks it finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import asdict

# Audit events that reach the network: refused while a submission runs, as are NO_PROCESSES.
NO_NETWORK = ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto")
# Audit events that start a process.
NO_PROCESSES = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork")


def _refuse(event: str, args) -> None:
    """The audit hook: no network and no new processes for the submission."""
    del args
    if event in NO_NETWORK:
        raise PermissionError("jaxlin grade runs a submission without network access")
    if event in NO_PROCESSES:
        raise PermissionError("jaxlin grade runs a submission without starting processes")


def cells(path: str) -> list[tuple[int, str]]:
    """``(cell number, source)`` of each code cell of a notebook or a ``.py`` (``# %%`` cells).

    Numbers count every cell from 1, markdown included, as Jupyter shows them.
    """
    if path.endswith(".ipynb"):
        with open(path, encoding="utf-8") as file:
            notebook = json.load(file)
        found = []
        for number, cell in enumerate(notebook.get("cells", []), start=1):
            if cell.get("cell_type") != "code":
                continue
            source = cell["source"]
            source = "".join(source) if isinstance(source, list) else source
            # IPython's magics and shell escapes are not Python: left out.
            lines = source.splitlines()
            kept = [line for line in lines if not line.lstrip().startswith(("%", "!"))]
            found.append((number, "\n".join(kept)))
        return found
    with open(path, encoding="utf-8") as file:
        text = file.read()
    chunks, current, kind = [], [], "code"
    for line in text.splitlines():
        if line.startswith("# %%"):
            chunks.append((kind, current))
            current, kind = [], "markdown" if "[markdown]" in line else "code"
            continue
        current.append(line)
    chunks.append((kind, current))
    # What comes before the first marker is a cell only if it holds code (jupytext's
    # header is comments).
    if not any(line.strip() and not line.lstrip().startswith("#") for line in chunks[0][1]):
        chunks = chunks[1:]
    return [
        (number, "\n".join(lines))
        for number, (kind, lines) in enumerate(chunks, start=1)
        if kind == "code"
    ]


def run(path: str) -> tuple[dict, list[str]]:
    """Execute the submission's cells in a namespace of their own: ``(namespace, notes)``."""
    namespace = {"__name__": "__submission__", "__file__": path}
    notes = []
    for index, source in cells(path):
        try:
            code = compile(source, f"<cell {index}>", "exec")
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(code, namespace)
        except BaseException as err:  # SystemExit too: a submission does not end the grading
            line = str(err).strip().splitlines()
            notes.append(
                f"cell {index} raised {type(err).__name__}" + (f": {line[0][:160]}" if line else "")
            )
    return namespace, notes


def main(argv: list[str]) -> int:
    """Run and grade ``argv[0]``: a line of notes, then a line of verdicts per task."""
    submission, check_timeout, memory = argv[0], float(argv[1]), int(argv[2])
    result = sys.stdin.readline().strip()
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    os.environ["MPLBACKEND"] = "agg"
    import jax  # noqa: F401  (before the hook: the backend may read its configuration)

    from jaxlin.course import checks

    checks.use_cache()

    sys.addaudithook(_refuse)
    with open(result, "w", encoding="utf-8") as out:
        namespace, notes = run(submission)
        out.write(json.dumps({"notes": notes}) + "\n")
        out.flush()
        for task in checks.TASKS:
            out.write(json.dumps({"task": task, "started": True}) + "\n")
            out.flush()
            verdicts = checks.grade_task(namespace, task, check_timeout or None)
            out.write(json.dumps({"verdicts": [asdict(v) for v in verdicts]}) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
