"""The layerwise commands: `layerwise <command> [args]`, or `layerwise-<command> [args]`.

Each command is a module `layerwise.commands.<command>` (dashes as underscores) with
`main(argv=None) -> int`. A command's module is imported only when it runs, by name: several keep
their heavy imports (torch, SAELens) until their options are checked, `versions` imports only the
standard library, and the source digests of -resume follow only the imports a command makes
(layerwise/stages.json, tests/unit/test_stages.py). This module itself imports the standard library only.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

PROG = "layerwise"

# Every command, in the order `layerwise --help` lists them (pyproject.toml names a
# `layerwise-<command>` script for each, and bin/ a `layerwise-<command>` symlink to bin/layerwise).
COMMANDS = ("preflight", "extract", "publish", "validate", "train-sae", "publish-sae", "analyze", "select-latents",
            "intervene", "summarize-intervention", "record-inputs", "label", "compare", "versions")


def module_name(command: str) -> str:
    return f"{__name__}.{command.replace('-', '_')}"


def summary(command: str) -> str:
    """The first line of the command's docstring, read without importing the command."""
    spec = importlib.util.find_spec(module_name(command))
    try:
        with open(spec.origin, encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read())) or ""
    except (OSError, ValueError, SyntaxError, AttributeError, TypeError):   # no readable source: no summary
        doc = ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"usage: {PROG} COMMAND [ARGS...]   (or {PROG}-COMMAND [ARGS...])", "",
             "Record and analyse the hidden states of every decoder layer of a vision-language model.", "",
             "commands:"]
    lines += [f"  {c:<{width}}  {summary(c)}" for c in COMMANDS]
    lines += ["", f"`{PROG} COMMAND --help` describes a command's options."]
    return "\n".join(lines)


def unknown(command: str) -> str:
    return f"{PROG}: unknown command {command!r} (commands: {', '.join(COMMANDS)})"


def run(command: str, argv: Sequence[str] | None = None) -> int:
    """Run one command with `argv` (its arguments; default: the rest of sys.argv), as bin/ does.

    A LayerwiseError (bad input) is one line on stderr and exit status 2 (`layerwise.core.cli.run_cli`).
    """
    if command not in COMMANDS:
        print(unknown(command), file=sys.stderr)
        return 2
    from layerwise.core.cli import run_cli

    module = importlib.import_module(module_name(command))
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: module.main(args))


def command_of(prog: str) -> str | None:
    """`layerwise-extract` (a symlink to bin/layerwise or an installed script) -> `extract`; else None."""
    name = os.path.basename(prog)
    for suffix in (".exe", ".py"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name[len(PROG) + 1:] if name.startswith(PROG + "-") else None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`layerwise COMMAND ARGS`, or `layerwise-COMMAND ARGS` when invoked under that name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_of(sys.argv[0] if prog is None else prog)
    if command is not None:
        return run(command, argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    return run(argv[0], argv[1:])
