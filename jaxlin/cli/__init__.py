"""The ``jaxlin`` command line: one module per subcommand, dispatched here.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args)``. Every
mistake a user can make is one line on stderr and a non-zero exit, never a
trace: a usage error names the flag (and suggests the near miss), a bad value
names the flag and what was expected. Ctrl-C is a flag the run checks at safe
points, so it always ends with exit status 130 and a line that says what was saved.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
import signal
import sys
import threading

from jaxlin.cli import assignment, generate, grade, sweep, train
from jaxlin.command import Interrupt

COMMANDS = {
    "train": train, "sweep": sweep, "generate": generate, "assignment": assignment, "grade": grade,
}  # fmt: skip

# Names users type for a flag that jaxlin spells otherwise (Python's, other tools').
ALIASES = {
    "--learning-rate": "--lr", "--learning-rates": "--lr", "--lrs": "--lr",
    "--max-epochs": "--epochs", "--num-epochs": "--epochs", "--n-epochs": "--epochs",
    "--gradient-clip-val": "--clip",
    "--grad-clip": "--clip", "--clip-norm": "--clip", "--batch": "--batch-size",
    "--bs": "--batch-size", "--weights": "--w", "--bias": "--b", "--random-seed": "--seed",
    "--random-state": "--seed", "--num-seeds": "--seeds", "--n-train": "--num-train",
    "--num-examples": "--num-train", "--n-val": "--num-val", "--init-std": "--sigma",
    "--output": "--json", "--checkpoint": "--checkpoint-dir", "--resume-from": "--resume",
    "--platform": "--device", "--silent": "--quiet", "--float64": "--x64",
}  # fmt: skip


class UsageError(Exception):
    """An argparse error, raised rather than printed, so ``main`` can word it in one line."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog, self.message = prog, message


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are raised (``UsageError``) instead of printing usage."""

    def error(self, message: str):
        """Raise, for ``main`` to print one line (argparse prints a usage block and exits)."""
        raise UsageError(self.prog, message)


def _version() -> str:
    """``jaxlin X (jax Y)`` from the installed metadata, without importing JAX."""
    from importlib import metadata

    def of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return f"jaxlin {of('jaxlin')} (jax {of('jax')}, jaxlib {of('jaxlib')})"


def _build() -> tuple[Parser, dict[str, Parser]]:
    """The parser and each subcommand's own parser, by name."""
    parser = Parser(
        prog="jaxlin",
        description="Linear regression by minibatch SGD in JAX: the lecture's model and "
        "training loop, as a command line.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser, dict(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    return _build()[0]


UNSET = object()  # the default of every flag when finding which ones were typed


def given_flags(argv: list[str], args: argparse.Namespace) -> frozenset[str]:
    """The ``dest`` of every flag the user typed: ``argv`` parsed again with ``UNSET`` defaults."""
    probe, commands = _build()
    dests = [dest for dest in vars(args) if dest != "command"]
    commands[args.command].set_defaults(**dict.fromkeys(dests, UNSET))
    typed = vars(probe.parse_args(argv))
    return frozenset(d for d in dests if typed.get(d, UNSET) is not UNSET)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """The long flags a parser knows, read from its help."""
    return sorted(set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", parser.format_help())))


def _suggest(word: str, known: list[str]) -> str | None:
    """The flag or value meant by ``word``: an alias, the same up to case, or a near miss."""
    if ALIASES.get(word) in known:
        return ALIASES[word]
    same = [k for k in known if k.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return close[0] if close else None


def explain(err: UsageError, argv: list[str]) -> str:
    """One line for an argparse error: what is wrong, and the likely fix."""
    _, commands = _build()
    command = next((a for a in argv if a in commands), None)
    parser = commands.get(err.prog.rpartition(" ")[2]) or commands.get(command)
    help_hint = f"see '{parser.prog if parser else 'jaxlin'} --help'"
    message = " ".join(err.message.split())
    if message.startswith("the following arguments are required: COMMAND") or (
        message.startswith("the following arguments are required: command")
    ):
        return f"expected a command: {', '.join(commands)} (see 'jaxlin --help')"
    if message.startswith("unrecognized arguments:"):
        words = message.partition(":")[2].split()
        bad = [w for w in words if w.startswith("-")] or words
        name = bad[0].partition("=")[0]
        meant = _suggest(name, _flags(parser)) if parser and name.startswith("-") else None
        hint = f"did you mean {meant}?" if meant else help_hint
        return f"{parser.prog if parser else 'jaxlin'}: unrecognized argument {bad[0]}; {hint}"
    found = re.match(r"argument (\S+): expected one argument$", message)
    if found:
        flag = found.group(1).split("/")[-1]
        value = next(
            (b for a, b in itertools.pairwise(argv) if a == flag and b.startswith("-")),
            None,
        )
        if value is not None:
            return f"{message}; a value that starts with '-' needs '=': {flag}={value}"
        return message
    found = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if found:
        choices = [c.strip(" '\"") for c in found.group(3).split(",")]
        meant = _suggest(found.group(2), choices)
        return f"{message}; did you mean '{meant}'?" if meant else message
    return message


# The library names arguments as Python does; the command line says the flag typed.
FLAG_OF_ARGUMENT = {
    "max_epochs": "--epochs", "batch_size": "--batch-size", "gradient_clip_val": "--clip",
    "lr": "--lr", "lrs": "--lr", "num_train": "--num-train", "num_val": "--num-val",
    "num_test": "--num-test", "num_examples": "--num-examples", "noise": "--noise",
    "sigma": "--sigma", "seeds": "--seeds", "w": "--w", "b": "--b", "engine": "--engine",
    "len(lrs)": "--lr-range COUNT",
}  # fmt: skip


def as_flags(message: str) -> str:
    """A library message in the command line's words: flags where it names arguments.

    The first word (``max_epochs``, or a size check's ``num_val=2147483648``) becomes the flag,
    and ``engine='affine'`` / ``gradient_clip_val`` inside the text become
    ``--engine affine`` / ``--clip``.
    """
    first, space, rest = message.partition(" ")
    name, equals, value = first.partition("=")
    if equals and not rest.startswith("needs "):  # only a size check's "name=value needs ..."
        name = first
    if name in FLAG_OF_ARGUMENT:
        first = f"{FLAG_OF_ARGUMENT[name]}{equals}{value}"
    text = f"{first}{space}{rest}"
    text = re.sub(r"\bengine='(\w+)'", r"--engine \1", text)
    return re.sub(r"\bgradient_clip_val\b", "--clip", text)


def _install(interrupt: Interrupt):
    """Route SIGINT to ``interrupt`` (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, interrupt.handle)


def main(argv: list[str] | None = None, *, interrupt: Interrupt | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Usage errors exit with status 2 (``SystemExit``, as argparse does);
    ``--help`` and ``--version`` exit with 0. ``interrupt``: the Ctrl-C flag
    already installed as the SIGINT handler (by ``jaxlin.command.entry``);
    without it, one is installed for the call and the previous handler restored.
    """
    previous = None
    if interrupt is None:
        interrupt = Interrupt()
        previous = _install(interrupt)  # first: a Ctrl-C from here on is never a traceback
    try:
        return _run(sys.argv[1:] if argv is None else list(argv), interrupt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(argv: list[str], interrupt: Interrupt) -> int:
    """Parse, run the subcommand, and turn every failure into one line and an exit status."""
    try:
        args = build_parser().parse_args(argv)
        args.given = given_flags(argv, args)
    except UsageError as err:
        print(f"jaxlin: error: {explain(err, argv)}", file=sys.stderr)
        raise SystemExit(2) from None
    args.interrupt = interrupt
    from jaxlin.trainer import TrainingDiverged

    try:
        interrupt.check(f"interrupted before {args.command} started; nothing saved")
        status = COMMANDS[args.command].run(args)  # an int is the exit status (grade)
        interrupt.check(f"interrupted as {args.command} finished; its output is complete")
    except KeyboardInterrupt as err:  # Ctrl-C: one line that says what was saved
        print(f"jaxlin: {printable(str(err) or f'interrupted; {interrupt.saved}')}",
              file=sys.stderr)  # fmt: skip
        return 130
    except TrainingDiverged as err:
        print(f"jaxlin: {printable(as_flags(str(err)))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `jaxlin train | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ImportError as err:  # an optional extra that is not installed
        print(f"jaxlin: error: {printable(str(err))}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as err:  # bad input, refused before the work
        print(f"jaxlin: error: {printable(as_flags(str(err)))}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that could not be read or written while running
        print(f"jaxlin: error: {printable(io_message(err))}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


def io_message(err: OSError) -> str:
    """One line for a failed read or write: the file, then what went wrong."""
    text = err.strerror or str(err)
    if err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename!s}: {text}"
    return text


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on escaped (``\\n``, ``\\x1b``...):
    a file or shard name read from disk can hold anything, and is shown, never run."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
