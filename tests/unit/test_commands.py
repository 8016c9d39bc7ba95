"""One entry script: bin/layerwise runs every command; bin/layerwise-<command> are symlinks to it.

Each command's code is layerwise/commands/<command>.py (`main(argv=None) -> int`); bin/layerwise is
the only file that puts the repository root on sys.path, and pyproject.toml installs the same
commands as scripts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from layerwise import commands

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
ENTRY = BIN / "layerwise"
# the sys.path bootstrap: the repository root (found from __file__) put on sys.path
BOOTSTRAP = re.compile(r"sys\.path\.insert|Path\(__file__\)\.resolve\(\)\.parent\.parent")


def run(*args, cwd="/"):
    """`python ARGS` from outside the checkout, with no PYTHONPATH: the script must find layerwise itself."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": ""})


def test_the_commands_are_the_modules_of_layerwise_commands():
    modules = {p.stem for p in (ROOT / "layerwise" / "commands").glob("*.py")} - {"__init__", "__main__"}
    assert sorted(c.replace("-", "_") for c in commands.COMMANDS) == sorted(modules)
    assert len(set(commands.COMMANDS)) == len(commands.COMMANDS)


def test_every_bin_script_is_a_relative_symlink_to_the_entry_script():
    assert ENTRY.is_file() and not ENTRY.is_symlink() and os.access(ENTRY, os.X_OK)
    links = sorted(p.name for p in BIN.iterdir() if p.name.startswith("layerwise-"))
    assert links == sorted(f"layerwise-{c}" for c in commands.COMMANDS)
    for name in links:
        path = BIN / name
        assert path.is_symlink(), f"bin/{name} is not a symlink"
        assert os.readlink(path) == "layerwise", f"bin/{name} -> {os.readlink(path)} (want the relative 'layerwise')"


def test_only_the_entry_script_has_the_sys_path_bootstrap():
    assert BOOTSTRAP.search(ENTRY.read_text(encoding="utf-8"))
    for path in sorted((ROOT / "layerwise" / "commands").glob("*.py")):
        assert not BOOTSTRAP.search(path.read_text(encoding="utf-8")), f"{path.relative_to(ROOT)} edits sys.path"


def test_help_lists_every_command_with_its_description():
    done = run(ENTRY, "--help")
    assert done.returncode == 0, done.stderr
    for command in commands.COMMANDS:
        line = next((ln for ln in done.stdout.splitlines() if ln.split()[:1] == [command]), None)
        assert line, f"`layerwise --help` does not list {command}:\n{done.stdout}"
        assert commands.summary(command) and commands.summary(command) in line
    no_args = run(ENTRY)
    assert no_args.returncode == 2 and all(c in no_args.stderr for c in commands.COMMANDS)


@pytest.mark.parametrize("command", commands.COMMANDS)
def test_each_command_help_through_its_symlink_and_the_entry_script(command):
    via_link = run(BIN / f"layerwise-{command}", "--help")
    assert via_link.returncode == 0, via_link.stderr
    via_entry = run(ENTRY, command, "--help")
    assert via_entry.returncode == 0, via_entry.stderr
    assert via_entry.stdout == via_link.stdout
    if command != "versions":   # `layerwise-versions --help` prints a versions.yml for a process named --help
        assert via_link.stdout.startswith(f"usage: layerwise-{command} ")


def test_a_symlink_outside_the_checkout_still_runs_the_checkout(tmp_path):
    (tmp_path / "layerwise-versions").symlink_to(BIN / "layerwise-versions")
    done = run(tmp_path / "layerwise-versions", "PROC", "no-such-package-xyz")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == '"PROC":' and '    no-such-package-xyz: "NA"' in done.stdout


def test_versions_imports_only_the_standard_library():
    code = """if True:
        import runpy, sys
        entry = sys.argv[1]
        sys.argv = [entry, "versions", "P"]
        try:
            runpy.run_path(entry, run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "pandas", "transformers")))
    """
    done = subprocess.run([sys.executable, "-c", code, str(ENTRY)], capture_output=True, text=True, timeout=120,
                          cwd="/", env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == '"P":' and "HEAVY []" in done.stdout


@pytest.mark.parametrize("how", ["entry", "symlink"])
def test_an_unknown_command_fails_naming_the_known_ones(tmp_path, how):
    if how == "entry":
        done = run(ENTRY, "no-such-command", "--help")
    else:
        (tmp_path / "layerwise-no-such-command").symlink_to(ENTRY)
        done = run(tmp_path / "layerwise-no-such-command", "--help")
    assert done.returncode == 2
    assert "unknown command 'no-such-command'" in done.stderr
    assert all(c in done.stderr for c in commands.COMMANDS)
    assert "Traceback" not in done.stderr


def test_command_names_in_process():
    assert commands.command_of("/x/bin/layerwise-train-sae") == "train-sae"
    assert commands.command_of("layerwise-extract.exe") == "extract"
    assert commands.command_of("/x/bin/layerwise") is None
    assert commands.main(["no-such-command"], prog="layerwise") == 2


def test_pyproject_scripts_are_the_commands():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert sorted(scripts) == sorted(["layerwise", *(f"layerwise-{c}" for c in commands.COMMANDS)])
    assert set(scripts.values()) == {"layerwise.commands:main"}
