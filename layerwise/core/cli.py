"""Shared behaviour of the layerwise commands (bin/layerwise, layerwise/commands/)."""
from __future__ import annotations

from collections.abc import Callable

from layerwise.core.errors import LayerwiseError, report_and_exit


def run_cli(main: Callable[[], int | None]) -> int:
    """Run `main` and return its exit status (None: 0); a LayerwiseError (bad input) is one clear line
    on stderr and exit status 2."""
    try:
        return main() or 0
    except LayerwiseError as exc:
        report_and_exit(exc)
