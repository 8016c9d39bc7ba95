"""Print a process's versions.yml (nf-core convention): python, the named packages, layerwise.

Usage: layerwise-versions PROCESS_NAME [package ...]
Standard library only, so it also works where a package is missing (reported as "NA").
"""
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str:
    if name == "layerwise":
        try:
            import layerwise
            return layerwise.__version__
        except ImportError:
            return "NA"
    try:
        return version(name)
    except PackageNotFoundError:
        return "NA"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.exit("usage: layerwise-versions PROCESS_NAME [package ...]")
    print(f'"{argv[0]}":')
    print(f'    python: "{platform.python_version()}"')
    for name in [*argv[1:], "layerwise"]:
        print(f'    {name}: "{package_version(name)}"')
    return 0

