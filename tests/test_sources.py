"""The source digests that decide -resume cover exactly the code each process runs.

`LayerwiseUtils.DOWNSTREAM_ONLY` leaves files out of the extraction digest (editing them must not
re-run GPU work), so extraction must never import them; `LayerwiseUtils.SAE_SOURCES` is all that
TRAIN_SAE's digest covers, so SAE training must import nothing else. Both are checked on the static
import graph (every `import`, including those inside functions) from the commands' modules
(layerwise/commands/<command>.py, which bin/layerwise-<command> runs).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UTILS = ROOT / "lib" / "LayerwiseUtils.groovy"


def groovy_list(name: str) -> list[str]:
    m = re.search(rf"static final List<String> {name} = \[(.*?)\]", UTILS.read_text(), re.S)
    assert m, f"{name} not found in {UTILS}"
    return re.findall(r"'([^']+)'", m.group(1))


def module_file(module: str) -> Path | None:
    if not module.startswith("layerwise"):
        return None
    base = ROOT / Path(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imports_of(path: Path) -> set[str]:
    """Absolute names of the layerwise modules `path` imports (relative imports resolved)."""
    rel = path.relative_to(ROOT)
    package = ".".join(rel.with_suffix("").parts[:-1] if rel.name != "__init__.py" else rel.parent.parts) \
        if rel.parts[0] == "layerwise" else ""
    if rel.name == "__init__.py":
        package = ".".join(rel.parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}   # `from pkg import module`
    return {m for m in out if m.startswith("layerwise")}


def closure(entry: Path) -> set[str]:
    """Files (relative to the repository) reachable from `entry` through layerwise imports."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for mod in imports_of(f):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):       # a package's __init__ runs for its submodules
                g = module_file(".".join(parts[:i]))
                if g is not None and g not in seen:
                    todo.append(g)
    return {f.relative_to(ROOT).as_posix() for f in seen if f != entry}


def covered(rel: str, prefixes: list[str]) -> bool:
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in prefixes)


def test_extraction_never_imports_the_downstream_only_sources():
    downstream = groovy_list("DOWNSTREAM_ONLY")
    assert not covered("layerwise/commands/extract.py", downstream)   # the command itself is in the digest
    used = closure(ROOT / "layerwise" / "commands" / "extract.py")
    assert {"layerwise/extract.py", "layerwise/ptfile.py", "layerwise/model.py"} <= used
    bad = sorted(f for f in used if covered(f, downstream))
    assert not bad, f"layerwise/commands/extract.py (bin/layerwise-extract) imports files left out of the extraction digest: {bad}"


def test_sae_training_imports_only_the_sae_sources():
    sources = groovy_list("SAE_SOURCES")
    assert covered("layerwise/commands/train_sae.py", sources)   # the command itself is in the digest
    used = closure(ROOT / "layerwise" / "commands" / "train_sae.py")
    assert "layerwise/sae/train.py" in used
    outside = sorted(f for f in used if not covered(f, sources))
    assert not outside, f"layerwise/commands/train_sae.py (bin/layerwise-train-sae) imports files outside LayerwiseUtils.SAE_SOURCES: {outside}"


@pytest.mark.parametrize("name", ["DOWNSTREAM_ONLY", "SAE_SOURCES"])
def test_listed_sources_exist(name):
    for p in groovy_list(name):
        assert (ROOT / p).exists(), f"LayerwiseUtils.{name} names {p}, which does not exist"
