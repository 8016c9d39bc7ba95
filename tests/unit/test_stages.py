"""The layout by stage (layerwise/stages.json) is what the code does.

A stage's code digest (lib/LayerwiseUtils.groovy `stageDigests`) covers the shared packages, its own
folder, the packages it declares in `uses`, its commands and assets. These tests check, on the static
import graph (every `import`, including those inside functions), that nothing reachable from a stage's folder
or its commands lies outside that set, so the digest covers exactly the code the stage runs; and,
through the Groovy function itself, that editing one stage's code changes the digests it should only.
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.engine import java as _java

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = json.loads((ROOT / "layerwise" / "stages.json").read_text())
STAGES = MANIFEST["stages"]
PACKAGES = {p.name for p in (ROOT / "layerwise").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


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
    package = path.relative_to(ROOT).parent.parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(package[: len(package) - node.level + 1])
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}   # `from pkg import module`
    return {m for m in out if m.split(".")[0] == "layerwise"}


def imported_files(path: Path) -> set[str]:
    """Files (relative to the repository) that `path` imports directly (a package's __init__ included)."""
    files = set()
    for mod in imports_of(path):
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):       # a package's __init__ runs for its submodules
            f = module_file(".".join(parts[:i]))
            if f is not None:
                files.add(f.relative_to(ROOT).as_posix())
    return files


def closure(entries: list[Path]) -> dict[str, str]:
    """Every file reachable from `entries` through layerwise imports -> the file that imports it."""
    seen: dict[str, str] = {}
    todo = [(f, None) for f in entries]
    while todo:
        f, by = todo.pop()
        rel = f.relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        seen[rel] = by
        todo += [(ROOT / g, rel) for g in imported_files(f)]
    return seen


def digest_set(stage: str) -> list[str]:
    s = STAGES[stage]
    return (MANIFEST["shared"] + [f"layerwise/{stage}/"] + [f"layerwise/{u}/" for u in s["uses"]]
            + [f"layerwise/commands/{c}.py" for c in s["commands"]] + s["assets"])


def covered(rel: str, prefixes: list[str]) -> bool:
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in prefixes)


def stage_files(stage: str) -> list[Path]:
    s = STAGES[stage]
    return sorted((ROOT / "layerwise" / stage).rglob("*.py")) + [ROOT / "layerwise" / "commands" / f"{c}.py"
                                                                for c in s["commands"]]


def shared_packages() -> list[str]:
    return [p.split("/")[1] for p in MANIFEST["shared"] if p.endswith("/")]


def test_every_package_is_shared_a_stage_or_a_declared_package():
    known = set(shared_packages()) | set(STAGES) | set(MANIFEST["packages"]) | {"commands"}
    assert PACKAGES <= known, f"packages of layerwise/ missing from layerwise/stages.json: {sorted(PACKAGES - known)}"
    for name, s in STAGES.items():
        assert (ROOT / "layerwise" / name / "__init__.py").is_file(), name
        assert set(s["uses"]) <= set(STAGES) | set(MANIFEST["packages"]), name
        for c in s["commands"]:
            assert (ROOT / "layerwise" / "commands" / f"{c}.py").is_file(), f"{name}: command {c}"
    commands = {p.stem for p in (ROOT / "layerwise" / "commands").glob("*.py")} - {"__init__"}
    owned = {c for s in STAGES.values() for c in s["commands"]}
    shared = {Path(p).stem for p in MANIFEST["shared"] if p.startswith("layerwise/commands/") and p.endswith(".py")}
    # the commands no stage owns: versions (standard library only, run by every task) and the shared ones
    # (record_inputs: in every stage's digest, used by the stages after publishing)
    assert commands - owned - shared <= {"versions"}, sorted(commands - owned - shared)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_imports_only_the_shared_packages_its_declared_uses_and_itself(stage):
    allowed = digest_set(stage)
    bad = {g: by for g, by in closure(stage_files(stage)).items() if not covered(g, allowed)}
    assert not bad, f"stage {stage} imports code outside its digest (layerwise/stages.json): {bad}"


def test_shared_and_declared_packages_import_no_stage():
    for pkg in shared_packages() + list(MANIFEST["packages"]):
        allowed = MANIFEST["shared"] + [f"layerwise/{pkg}/"]
        reached = closure(sorted((ROOT / "layerwise" / pkg).rglob("*.py")))
        outside = {g: by for g, by in reached.items() if not covered(g, allowed)}
        assert not outside, f"the shared package {pkg} imports (file: imported by) {outside}"


def test_core_is_torch_free():
    for f in sorted((ROOT / "layerwise" / "core").rglob("*.py")):
        mods = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods.add((node.module or "").split(".")[0])
        assert not mods & {"torch", "transformers", "sae_lens", "numpy"}, f"{f.relative_to(ROOT)} imports {mods}"


GROOVY = """
def gcl = new GroovyClassLoader(); gcl.addClasspath(args[0])
def U = gcl.loadClass('LayerwiseUtils')
println groovy.json.JsonOutput.toJson(args[1..-1].collect { U.stageDigests(java.nio.file.Paths.get(it)) })
"""


def groovy_digests(tmp_path: Path, trees: list[Path]) -> list[dict[str, str]]:
    """LayerwiseUtils.stageDigests of each tree, in one JVM."""
    script = tmp_path / "digests.groovy"
    script.write_text(GROOVY)
    run = subprocess.run([_java(), "-XX:TieredStopAtLevel=1", "-cp", f"{ROOT / 'nextflow-runtime' / 'lib'}/*",
                          "groovy.ui.GroovyMain", str(script), str(ROOT / "lib"), *map(str, trees)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "layerwise", dest / "layerwise", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "assets").mkdir()
    shutil.copy(ROOT / "assets" / "prompts.json", dest / "assets")
    return dest


def test_editing_a_stage_changes_its_digest_and_those_of_the_stages_that_use_it_only(tmp_path):
    edits = {"layerwise/analysis/run.py": {s for s, d in STAGES.items() if s == "analysis" or "analysis" in d["uses"]},
             "layerwise/extract/unit.py": {"extract"},
             "layerwise/core/errors.py": set(STAGES),
             "layerwise/models/inputs.py": {s for s, d in STAGES.items() if "models" in d["uses"]},
             "layerwise/sae/train.py": {s for s, d in STAGES.items() if s == "sae" or "sae" in d["uses"]},
             "assets/prompts.json": {s for s, d in STAGES.items() if "assets/prompts.json" in d["assets"]}}
    trees = [copy_tree(tmp_path / "base")]
    for i, rel in enumerate(edits):
        tree = copy_tree(tmp_path / f"edit{i}")
        f = tree / rel
        f.write_bytes(f.read_bytes() + (b"\n# edited\n" if rel.endswith(".py") else b" "))
        trees.append(tree)
    before, *afters = groovy_digests(tmp_path, trees)
    assert set(before) == set(STAGES) and len(set(before.values())) == len(STAGES)
    for (rel, expected), after in zip(edits.items(), afters):
        changed = {s for s in STAGES if after[s] != before[s]}
        assert changed == expected, f"editing {rel} changed the digests of {sorted(changed)}"
    assert "extract" not in edits["layerwise/analysis/run.py"]   # editing the analysis never re-runs extraction
    assert "extract" in edits["layerwise/extract/unit.py"]       # editing extraction always does
