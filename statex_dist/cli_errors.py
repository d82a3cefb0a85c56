"""How every command line of the project refuses bad input: ``PROG: error: MESSAGE``, one line on stderr,
exit status 2, before any work. ``STATEX_DEBUG=1`` adds the traceback.

The project's own errors (ConfigError, CheckpointError, DataError) are ValueErrors and name the key or file
at fault, so a ValueError or an OSError (a path that is missing or cannot be read) is the user's input, and
so is a KernelUnavailable (the machine lacks a kernel the run needs; its message names the fix); anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Optional

from statex_dist.ops._dispatch import KernelUnavailable

EXIT_BAD_INPUT = 2
EXPECTED = (ValueError, OSError, KernelUnavailable)


def debug() -> bool:
    return os.environ.get("STATEX_DEBUG", "0") not in ("", "0")


def one_line(e: BaseException) -> str:
    """The error's message with its line breaks folded (a wrapped library message stays one line)."""
    return " ".join(str(e).split()) or type(e).__name__


def fail(prog: str, e: BaseException) -> int:
    if debug():
        traceback.print_exception(e)
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def run_main(prog: str, body: Callable[[Optional[list[str]]], Optional[int]],
             argv: Optional[list[str]] = None) -> int:
    """``body(argv)``'s exit status, or 2 with one line on stderr when it refuses its input."""
    try:
        return body(argv) or 0
    except EXPECTED as e:
        return fail(prog, e)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description and epilog as written; every option with its type (the metavar) and default."""

    def _get_default_metavar_for_optional(self, action):
        return getattr(action.type, "metavar", None) or {int: "INT", float: "FLOAT"}.get(action.type) or "STR"

    def _get_default_metavar_for_positional(self, action):
        return action.dest.upper()

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in h or "default" in h:
            return h
        return h + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error (argparse's own prints the usage first) and help layout."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)


def _ranged(kind: type, metavar: str, ok: Callable, what: str):
    def convert(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    convert.metavar = metavar
    convert.__name__ = what  # argparse names the type in some messages
    return convert


positive_int = _ranged(int, "INT", lambda v: v >= 1, "an integer >= 1")
count = _ranged(int, "INT", lambda v: v >= 0, "an integer >= 0")
positive_float = _ranged(float, "FLOAT", lambda v: v > 0, "a number > 0")
fraction_below_one = _ranged(float, "FLOAT", lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_list(s: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32]: positive integers."""
    items = [x.strip() for x in s.split(",") if x.strip()]
    if not items or not all(x.isdigit() and int(x) > 0 for x in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {s!r}")
    return [int(x) for x in items]


def fraction_list(s: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]: numbers in [0, 1]."""
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or not all(0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {s!r}")
    return vals


int_list.metavar = "INT,INT,..."
fraction_list.metavar = "FLOAT,FLOAT,..."


def path_inside(inner, outer) -> bool:
    """Whether ``inner`` is ``outer`` or below it (resolved: symlinks and .. included)."""
    from pathlib import Path
    a, b = Path(inner).resolve(), Path(outer).resolve()
    return a == b or b in a.parents
