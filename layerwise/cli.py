"""Shared behaviour of the bin/ command-line scripts."""
from __future__ import annotations

from collections.abc import Callable

from .errors import LayerwiseError, report_and_exit


def run_cli(main: Callable[[], None]) -> None:
    """Run `main`; a LayerwiseError (bad input) is one clear line on stderr and exit status 2."""
    try:
        main()
    except LayerwiseError as exc:
        report_and_exit(exc)
