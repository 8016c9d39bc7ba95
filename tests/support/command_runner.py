"""Test helper: run a layerwise command in-process, as bin/layerwise runs it (starting torch per call is slow)."""
from __future__ import annotations

import importlib
from collections.abc import Sequence


def command_module(name: str):
    """layerwise/commands/<command>.py for `layerwise-<command>` or `<command>` (dashes become underscores)."""
    return importlib.import_module("layerwise.commands." + name.removeprefix("layerwise-").replace("-", "_"))


def run_in_process(name: str, args: Sequence, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `layerwise-<name> ARGS`, with bin/'s error handling (layerwise.core.cli.run_cli)."""
    from layerwise.core.cli import run_cli

    main = command_module(name).main
    capsys.readouterr()
    try:
        run_cli(lambda: main([str(a) for a in args]))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
