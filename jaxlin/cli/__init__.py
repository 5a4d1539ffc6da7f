"""The ``jaxlin`` command line: one module per subcommand, dispatched here.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args)``. Errors
a user can fix become one line on stderr and a non-zero exit, never a trace.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxlin.cli import generate, sweep, train

COMMANDS = {"train": train, "sweep": sweep, "generate": generate}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxlin", description="Linear regression by minibatch SGD in pure JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


# The library names arguments as Python does; the command line says the flag typed.
FLAG_OF_ARGUMENT = {
    "max_epochs": "--epochs", "batch_size": "--batch-size", "gradient_clip_val": "--clip",
    "lr": "--lr", "lrs": "--lr", "num_train": "--num-train", "num_val": "--num-val",
    "num_test": "--num-test", "num_examples": "--num-examples", "noise": "--noise",
    "sigma": "--sigma", "seeds": "--seeds", "w": "--w", "b": "--b",
}  # fmt: skip


def as_flags(message: str) -> str:
    """A library message that starts with an argument's name, with the flag's name instead."""
    first, space, rest = message.partition(" ")
    return f"{FLAG_OF_ARGUMENT[first]}{space}{rest}" if first in FLAG_OF_ARGUMENT else message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxlin`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    from jaxlin.trainer import TrainingDiverged

    try:
        COMMANDS[args.command].run(args)
    except KeyboardInterrupt as err:  # Ctrl-C: a message, never a traceback
        print(f"jaxlin: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"jaxlin: {str(err).replace('gradient_clip_val', '--clip')}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `jaxlin train | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, TypeError, OSError) as err:
        print(f"jaxlin: error: {as_flags(str(err))}", file=sys.stderr)
        return 2
    return 0
