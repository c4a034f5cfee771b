"""What the command-line tools share: how a run that cannot start on its input ends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

INPUT_ERRORS = (FileNotFoundError, ValueError)
"""What reading a missing or refused input raises: no such model or dataset folder, a file that is not a t2i model,
a split a dataset lacks."""


def run_main(main: Callable[[], object]) -> None:
    """Run a tool's ``main()``. An `INPUT_ERRORS` error ends the process with ``error: <message>`` on stderr and exit
    status 1 instead of a traceback: the message names the input and what to give instead; a traceback would bury it.

    Raises:
        SystemExit: on an input error (status 1), or whatever ``main`` exits with.
    """
    try:
        main()
    except INPUT_ERRORS as error:
        sys.exit(f"error: {error}")


def named_path(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` → (name, path): an argparse ``type`` for options that label what they compare.

    Raises:
        argparse.ArgumentTypeError: no ``=``, or an empty name or path.
    """
    name, equals, path = spec.partition("=")
    if not (equals and name.strip() and path.strip()):
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (a label, '=', then a folder or id), got {spec!r}")
    return name, path
