"""User-facing input errors.

`LayerwiseError` is raised for anything the user can fix (a bad option value, a broken
samplesheet, a model that cannot be found). Its message is complete and self-explanatory:
`bin/` scripts catch it, print ``ERROR: <message>`` to stderr and exit with status 2 (no
traceback). Any other exception is a bug and keeps its traceback (exit status 1).
"""
from __future__ import annotations

import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class LayerwiseError(Exception):
    """An error in the user's input; the message says what is wrong and how to fix it."""


def report_and_exit(error: LayerwiseError) -> NoReturn:
    """Print ``ERROR: <message>`` to stderr and exit with status 2 (for `bin/` scripts)."""
    print(f"ERROR: {error}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)
