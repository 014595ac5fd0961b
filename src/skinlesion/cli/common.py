"""What every subcommand's parser shares: a description, the examples `--help` ends with, error lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "skinlesion"


def examples_text(examples: Sequence[str]) -> str:
    return ("examples:" if len(examples) > 1 else "example:") + "".join(f"\n  {e}" for e in examples)


def command_parser(prog: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose `--help` says what the command does and ends with how to call it."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=examples_text(examples),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_command(commands: argparse._SubParsersAction, name: str, summary: str, description: str,
                examples: Sequence[str]) -> argparse.ArgumentParser:
    """A sub-subcommand (`skinlesion data split`) with the same kind of help as a subcommand."""
    return commands.add_parser(name, help=summary, description=description, epilog=examples_text(examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def report_error(prog: str, err: BaseException, code: int) -> int:
    """An expected problem the user can fix: its message on stderr, no traceback; returns the exit code."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return code
