"""``jaxlin grade``'s core: a submission graded in a fresh process, with a time limit.

The submission never runs in the grader's process: a child process
(``jaxlin.course.worker``) executes it and grades what it defined, with no
network and no processes of its own, and is killed, its whole process
group, when the time limit passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jaxlin.course.checks import TASKS, Verdict, score, table


@dataclass(frozen=True)
class Report:
    """One submission's grading: the verdicts, notes on its cells, and why it stopped early."""

    submission: str
    verdicts: list[Verdict]
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        """Every check passed."""
        points, total = score(self.verdicts)
        return not self.error and points == total

    def text(self) -> str:
        """The table, the notes and the score, as ``jaxlin grade`` prints them."""
        lines = [f"{self.submission}:"]
        if self.error:
            lines.append(f"  not graded: {self.error}")
        if self.verdicts:
            lines.append(table(self.verdicts))
        lines += [f"note: {note}" for note in self.notes]
        points, total = score(self.verdicts)
        total = total or sum(1 for _ in TASKS)
        lines.append(f"score: {points}/{total}" + (" - every check passed" if self.passed else ""))
        return "\n".join(lines)


def check_submission(path: str | os.PathLike) -> Path:
    """The submission's path, or a ``ValueError`` that says what was expected."""
    path = Path(path)
    if path.suffix not in (".ipynb", ".py"):
        raise ValueError(f"SUBMISSION must be a .ipynb or .py file, got {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"SUBMISSION {str(path)!r} not found")
    return path


def grade(path: str | os.PathLike, timeout: float = 600.0, stop=None) -> Report:
    """Grade one submission in a fresh process; the grader's own state is never touched.

    The child is killed after ``timeout`` seconds (the whole grading: running
    the submission, then the checks). ``stop``, called while waiting, may
    raise (Ctrl-C) to end the grading; the child is killed either way.
    """
    path = check_submission(path)
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    with tempfile.TemporaryDirectory(prefix="jaxlin-grade-") as folder:
        result, log = Path(folder) / "result.json", Path(folder) / "stderr.txt"
        env = dict(os.environ, MPLBACKEND="agg", PYTHONDONTWRITEBYTECODE="1")
        with open(log, "wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-m", "jaxlin.course.worker", str(path.resolve()), str(result)],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: killed whole when stopped
            )
        deadline = time.monotonic() + timeout
        try:
            while child.poll() is None:
                if stop is not None:
                    stop()  # raises (Ctrl-C): the child is killed below
                if time.monotonic() > deadline:
                    error = f"it ran past the time limit of {timeout:g} s"
                    return Report(str(path), [], error=error)
                time.sleep(0.05)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if child.returncode != 0 or not result.is_file():
            lines = log.read_text(errors="replace").strip().splitlines()
            how = (
                f"killed by signal {-child.returncode}"
                if child.returncode < 0
                else f"exit status {child.returncode}"
            )
            last = f": {lines[-1][:200]}" if lines else ""
            return Report(str(path), [], error=f"the grading process ended ({how}){last}")
        data = json.loads(result.read_text(encoding="utf-8"))
    return Report(str(path), [Verdict(**v) for v in data["verdicts"]], data["notes"])
