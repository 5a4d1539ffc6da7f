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

from jaxlin.course.checks import CACHE_VARIABLE, CHECKS, TASKS, Verdict, score, table


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
            lines.append(f"stopped early: {self.error}")
        if self.verdicts:
            lines.append(table(self.verdicts))
        lines += [f"note: {note}" for note in self.notes]
        points, total = score(self.verdicts)
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


def grade(
    path: str | os.PathLike,
    timeout: float = 600.0,
    check_timeout: float = 120.0,
    memory_gib: float = 4.0,
    cache_dir: str | os.PathLike | None = None,
    stop=None,
) -> Report:
    """Grade one submission in a fresh process; the grader's own state is never touched.

    The child is killed after ``timeout`` seconds (the whole grading: running
    the submission, then the checks); one check that runs past
    ``check_timeout`` seconds fails on its own. The child's memory is capped
    at ``memory_gib`` GiB (its data segment). ``cache_dir``: JAX's
    compilation cache for the checks, shared by the gradings that name it (the
    second and later ones skip most compiles); ``None``, none. ``stop``, called while
    waiting, may raise (Ctrl-C) to end the grading; the child is killed
    either way. Tasks graded before the child ended keep their verdicts.
    """
    path = check_submission(path)
    for name, value in (
        ("timeout", timeout), ("check_timeout", check_timeout), ("memory_gib", memory_gib)
    ):  # fmt: skip
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    with tempfile.TemporaryDirectory(prefix="jaxlin-grade-") as folder:
        result, log = Path(folder) / "result.jsonl", Path(folder) / "stderr.txt"
        work = Path(folder) / "work"  # the submission's current folder, empty
        work.mkdir()
        env = dict(os.environ, MPLBACKEND="agg", PYTHONDONTWRITEBYTECODE="1")
        env.pop(CACHE_VARIABLE, None)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            env[CACHE_VARIABLE] = str(Path(cache_dir).resolve())
        command = [sys.executable, "-m", "jaxlin.course.worker", str(path.resolve())]
        with open(log, "wb") as stderr:
            child = subprocess.Popen(
                [*command, str(check_timeout), str(int(memory_gib * 2**30))],
                cwd=work,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: killed whole when stopped
            )
        child.stdin.write(f"{result}\n".encode())
        child.stdin.close()
        deadline, error = time.monotonic() + timeout, ""
        try:
            while child.poll() is None:
                if stop is not None:
                    stop()  # raises (Ctrl-C): the child is killed below
                if time.monotonic() > deadline:
                    error = f"it ran past the time limit of {timeout:g} s"
                    break
                time.sleep(0.05)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if not error and child.returncode != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            how = (
                f"killed by signal {-child.returncode}"
                if child.returncode < 0
                else f"exit status {child.returncode}"
            )
            error = f"the grading process ended ({how})" + (f": {lines[-1][:200]}" if lines else "")
        return _report(str(path), result, error)


def _report(submission: str, result: Path, error: str) -> Report:
    """The report from the result file, however far the child got."""
    notes, verdicts, started = [], [], None
    lines = result.read_text(encoding="utf-8").splitlines() if result.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the child was killed
            break
        notes = record.get("notes", notes)
        started = record.get("task", started)
        if "verdicts" in record:
            verdicts += [Verdict(**v) for v in record["verdicts"]]
            started = None
    if not error and len(verdicts) == sum(len(c) for c in CHECKS.values()):
        return Report(submission, verdicts, notes)
    error = error or "the grading process ended without its verdicts"
    graded = {v.task for v in verdicts}
    for task in TASKS:  # the tasks it did not finish: the one in progress fails, the rest skip
        if task in graded:
            continue
        names = [name for name, _ in CHECKS[task]]
        if task == started:
            verdicts.append(Verdict(task, names[0], "fail", f"not finished: {error}"))
            names = names[1:]
        verdicts += [Verdict(task, name, "skip", "not graded") for name in names]
    return Report(submission, verdicts, notes, error=error)
