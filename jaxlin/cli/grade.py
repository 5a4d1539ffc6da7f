"""``jaxlin grade``: a submission's functions checked in a fresh process, a table and a score."""

from __future__ import annotations

import argparse

from jaxlin.cli.common import DEFAULT_CACHE, path_flag


def add_parser(sub) -> None:
    """Register ``grade`` and its flags."""
    g = sub.add_parser(
        "grade",
        help="grade a submission of the lecture's assignment",
        description="Run a submission (a notebook or a .py file) in a fresh process, with no "
        "network and a time limit, and check each function the assignment asks for: equal "
        "to jaxlin's on random inputs, pure, and composable with jax.jit, jax.vmap and "
        "jax.grad. Prints a table of checks, a hint under each failure, and a score; the "
        "exit status is 0 when every check passes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("submission", nargs="+", type=path_flag, help=".ipynb or .py files")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per submission")
    g.add_argument(
        "--check-timeout", type=float, default=120.0, help="seconds per check of one function"
    )
    g.add_argument("--memory", type=float, default=4.0, help="GiB of memory per submission")
    g.add_argument(
        "--cache-dir",
        type=path_flag,
        default=DEFAULT_CACHE.parent / "grade",
        help="JAX's compilation cache for the checks: the second grading on a machine loads "
        "the programs the first compiled",
    )
    g.add_argument("--no-cache", action="store_true", help="compile every check every time")


def run(args) -> int:
    """Grade each submission in turn; 0 when every one passes every check."""
    from jaxlin.course import require

    require("hypothesis")
    from jaxlin.course.grade import check_submission, grade

    for path in args.submission:
        check_submission(path)  # every path checked before any is run
    for flag, value, unit in (
        ("--timeout", args.timeout, "seconds"),
        ("--check-timeout", args.check_timeout, "seconds"),
        ("--memory", args.memory, "GiB"),
    ):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0 {unit}, got {value:g}")
    status = 0
    for path in args.submission:
        report = grade(
            path,
            args.timeout,
            args.check_timeout,
            args.memory,
            cache_dir=None if args.no_cache else args.cache_dir,
            stop=_stop(args, path),
        )
        print(report.text(), flush=True)
        status = status or (0 if report.passed else 1)
    return status


def _stop(args, path):
    """What ``grade`` calls while it waits: raises once Ctrl-C was pressed."""
    interrupt = getattr(args, "interrupt", None)
    if interrupt is None:
        return None
    return lambda: interrupt.check(f"interrupted while grading {path}; nothing written")
