"""Conventions that tie the repository's files together, checked by the tools that define them.

- The nf-test specs (modules/local/*/tests/main.nf.test, tests/main.nf.test, nf-test.config) are checked
  by tests/nf_test_parse.groovy, run on the Groovy of Nextflow's own jars (nf-test itself is published
  on no registry reachable here): syntax, nf-test's DSL, and the processes, inputs, emits and
  parameters they name against the pipeline. A spec broken in any of these ways fails the check.
- Every profile's resolved parameters (`nextflow config -o json`) validate against nextflow_schema.json
  with a standard JSON-schema validator (jsonschema, Draft 2020-12): 2 is not a string.
- `nf-core pipelines lint` (nf-core tools in .venv-nfcore, from scripts/setup.sh) passes with no
  failure, offline; each module's meta.yml matches its main.nf as nf-core's own parser reads it.

Each check starts one or a few JVMs (about 5 s of CPU each); the lint takes about 30 s.
"""
from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import jsonschema
import pytest

from tests.support.engine import NFCORE_VENV, PROFILES, java, nextflow_env, require_nf_core

ROOT = Path(__file__).resolve().parents[2]
NEXTFLOW = ROOT / "nextflow"
LIB = ROOT / "nextflow-runtime" / "lib"
CHECKER = ROOT / "tests" / "nf_test_parse.groovy"
SCHEMA = ROOT / "nextflow_schema.json"

MODULE_DIRS = sorted(p.parent for p in (ROOT / "modules" / "local").glob("*/main.nf"))
SPECS = [d / "tests" / "main.nf.test" for d in MODULE_DIRS] + [ROOT / "tests" / "main.nf.test"]

# Required parameters that a profile leaves to the command line get the README's values
COMMAND_LINE = {"input": "samples.csv", "outdir": "results"}


_env = nextflow_env
_java = java


def run_checker(*specs: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """tests/nf_test_parse.groovy on ROOT (and only `specs`, if given), with the Groovy of Nextflow's jars."""
    assert list(LIB.glob("nextflow-*.jar")), f"no Nextflow jars in {LIB}: run scripts/setup.sh"
    cmd = [_java(), "-XX:TieredStopAtLevel=1", "-cp", f"{LIB}/*", "groovy.ui.GroovyMain", str(CHECKER), str(ROOT),
           *map(str, specs)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def checker_report(out: str) -> dict[str, list[str]]:
    """{file as printed: problem lines ([] when ok)} from the checker's output."""
    report: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith(("ok   ", "FAIL ")):
            current = line[5:].strip()
            report[current] = [] if line.startswith("ok") else ["FAIL"]
        elif current and line.startswith("     "):
            report[current].append(line.strip())
    return report


# -- 1. nf-test specs ------------------------------------------------------------------------------
def test_every_module_has_a_spec_and_no_spec_outlives_its_module():
    assert MODULE_DIRS, "no modules/local/*/main.nf"
    for d in MODULE_DIRS:
        assert (d / "tests" / "main.nf.test").is_file(), f"{d.relative_to(ROOT)} has no tests/main.nf.test"
    for spec in (ROOT / "modules").rglob("*.nf.test"):
        assert (spec.parent.parent / "main.nf").is_file(), f"{spec.relative_to(ROOT)}: its module is gone"


def test_nf_test_specs_parse(fixture_dir):
    # fixture_dir: the specs name tests/fixtures/build/... paths, which must exist
    run = run_checker()
    report = checker_report(run.stdout)
    expected = [str(p.relative_to(ROOT)) for p in SPECS] + ["nf-test.config"]
    assert run.returncode == 0, run.stdout + run.stderr
    for name in expected:
        assert report.get(name) == [], f"{name} not checked or failed:\n{run.stdout}{run.stderr}"


def _spec_with_absolute_scripts(spec: Path) -> str:
    """The spec's text with its `script "..."` paths made absolute, so that a copy works anywhere."""
    def absolute(m: re.Match) -> str:
        ref = m.group(2)
        return f'{m.group(1)}"{(spec.parent / ref).resolve() if ref.startswith(".") else ROOT / ref}"'
    return re.sub(r'(?m)^(\s*script\s+)"([^"]+)"', absolute, spec.read_text())


def _variant(text: str, old: str, new: str) -> str:
    assert old in text, f"the spec no longer contains {old!r}: update the broken-spec cases"
    return text.replace(old, new, 1)


def test_broken_nf_test_specs_fail_the_check(tmp_path, fixture_dir):
    extract = _spec_with_absolute_scripts(ROOT / "modules/local/extract_activations/tests/main.nf.test")
    preflight = _spec_with_absolute_scripts(ROOT / "modules/local/preflight/tests/main.nf.test")
    pipeline = _spec_with_absolute_scripts(ROOT / "tests/main.nf.test")
    cases = {
        # name: (spec text, a problem line must contain this)
        "valid_copy": (extract, None),
        "syntax": (_variant(extract, "then {", "then {{"), "syntax:"),
        "dsl_typo": (_variant(extract, "when {", "wen {"), "`wen` is not an nf-test keyword"),
        "removed_process": (_variant(extract, 'process "EXTRACT_ACTIVATIONS"', 'process "MERGE_ACTIVATIONS"'),
                            "process MERGE_ACTIVATIONS is not defined"),
        "wrong_emit": (_variant(extract, "process.out.unit[0]", "process.out.layers[0]"),
                       "process.out.layers: EXTRACT_ACTIVATIONS emits unit, versions"),
        "missing_input": (_variant(preflight, "input[4] = 'nf-test'", ""), "declares 7 input(s)"),
        "meta_key_missing": (_variant(extract, ", model_fingerprint: 'stub:fixture'", ""), "lacks model_fingerprint"),
        "param_type": (_variant(pipeline, "layer_groups     = '1'", "layer_groups     = 1"),
                       "params.layer_groups = 1 is integer, nextflow_schema.json says string"),
        "unknown_param": (_variant(pipeline, "layout = 'zigzag'", "langauges = 'english'"),
                          "params.langauges is not in nextflow_schema.json"),
        "old_process_in_assertion": (_variant(pipeline, "contains('PUBLISH_RESULTS')", "contains('COMBINE_LAYERS')"),
                                     "COMBINE_LAYERS is not a process or workflow of the pipeline"),
        "missing_path": (_variant(extract, "assets/prompts.json", "assets/no_such_prompts.json"),
                         "no such path in the repository: assets/no_such_prompts.json"),
    }
    files = {}
    for name, (text, _) in cases.items():
        files[name] = tmp_path / f"{name}.nf.test"
        files[name].write_text(text)

    run = run_checker(*files.values())
    report = checker_report(run.stdout)
    assert run.returncode == 1, run.stdout + run.stderr
    for name, (_, needle) in cases.items():
        problems = report.get(str(files[name]))
        assert problems is not None, f"{name}: not in the output\n{run.stdout}{run.stderr}"
        if needle is None:
            assert problems == [], f"{name}: {problems}"
        else:
            assert problems[:1] == ["FAIL"] and any(needle in p for p in problems), f"{name}: {problems}"


# -- 2. resolved params of every profile against nextflow_schema.json ---------------------------------
def _schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = schema.get("$defs", {})
    # nf-core's layout: one $defs entry per group, combined by allOf at the top
    assert {r["$ref"] for r in schema.get("allOf", [])} == {f"#/$defs/{k}" for k in defs}, \
        "nextflow_schema.json: allOf must reference every $defs group"
    combined = {"$schema": schema["$schema"], "$defs": defs, "allOf": [{"$ref": f"#/$defs/{k}"} for k in defs],
                "properties": schema.get("properties", {})}
    return jsonschema.Draft202012Validator(combined)


def _schema_params() -> set[str]:
    schema = json.loads(SCHEMA.read_text())
    names = set(schema.get("properties", {}))
    for group in schema.get("$defs", {}).values():
        names |= set(group.get("properties", {}))
    return names


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_params_validate_against_the_schema(resolved_configs, profile):
    params = resolved_configs[profile]["params"]
    unknown = set(params) - _schema_params()
    assert not unknown, f"-profile {profile}: params not in nextflow_schema.json: {sorted(unknown)}"
    # Nextflow's null is "not set" (as for nf-schema); required values left to the command line are given
    values = {k: v for k, v in params.items() if v is not None}
    for k, v in COMMAND_LINE.items():
        values.setdefault(k, v)
    errors = sorted(_schema_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    assert not errors, f"-profile {profile}:\n" + "\n".join(
        f"  params.{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors)


# -- 2b. parameters derived from their Python owners --------------------------------------------------
def test_derived_schema_groups_are_in_sync_with_their_owners():
    """sae_options / analysis_options of nextflow_schema.json are what layerwise.params_schema derives."""
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "sync-schema.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_config_defaults_of_the_derived_params_are_the_owners_defaults(resolved_configs):
    from layerwise.params_schema import derived_groups

    params = resolved_configs["venv"]["params"]      # no profile changes these
    for group in derived_groups().values():
        for name, prop in group["properties"].items():
            assert name in params, f"nextflow.config lacks params.{name}"
            want, got = prop["default"], params[name]
            if isinstance(want, (bool, str)):
                assert got == want, (name, got, want)
            else:
                assert float(got) == float(want) and not isinstance(got, (bool, str)), (name, got, want)


def test_sae_param_defaults_are_the_default_sae_options():
    from layerwise.sae.options import SAEOptions

    props = json.loads(SCHEMA.read_text())["$defs"]["sae_options"]["properties"]
    values = {k[len("sae_"):]: p["default"] for k, p in props.items() if k.startswith("sae_") and k != "sae_per_language"}
    assert SAEOptions.from_mapping(values) == SAEOptions()


def test_every_analysis_param_is_a_flag_of_the_analysis_cli():
    """conf/modules.config turns every analysis_<option> param into --<option> of bin/layerwise-analyze."""
    props = json.loads(SCHEMA.read_text())["$defs"]["analysis_options"]["properties"]
    names = [k[len("analysis_"):] for k in props if k.startswith("analysis_")]
    assert len(names) >= 5
    help_text = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "bin" / "layerwise-analyze"), "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    for name in names:
        assert f"--{name.replace('_', '-')} " in help_text, name


# -- 3. nf-core lint -----------------------------------------------------------------------------------
# nf-core's own reading of a module (NFCoreComponent) and of its meta.yml (obtain_inputs/outputs), the
# checks meta_name / correct_meta_inputs / correct_meta_outputs of `nf-core modules lint`, plus the
# required keys of nf-core's meta.yml schema. (`nf-core modules lint` itself clones github.com/nf-core/modules
# even for --local, and validates meta.yml against modules/meta-schema.json of that clone: not offline.)
META_CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import yaml
    from nf_core.components.nfcore_component import NFCoreComponent
    from nf_core.modules.lint.meta_yml import obtain_inputs, obtain_outputs

    TYPES = {"map", "file", "directory", "string", "integer", "float", "boolean", "list"}
    root = Path(sys.argv[1])
    problems = {}
    for main in sorted((root / "modules" / "local").glob("*/main.nf")):
        d = main.parent
        p = problems.setdefault(d.name, [])
        m = NFCoreComponent(d.name, None, d, "pipeline", root, "modules", remote_component=False)
        m.get_inputs_from_main_nf()
        m.get_outputs_from_main_nf()
        if not (d / "meta.yml").is_file():
            p.append("no meta.yml")
            continue
        meta = yaml.safe_load((d / "meta.yml").read_text())
        for key in ("name", "description", "keywords", "authors", "output", "tools"):
            if not meta.get(key):
                p.append(f"meta.yml: no {key}")
        if len(meta.get("keywords") or []) < 3:
            p.append("meta.yml: fewer than 3 keywords")
        if str(meta.get("name", "")).upper() != m.process_name:
            p.append(f"meta.yml name {meta.get('name')!r} is not process {m.process_name}")
        if obtain_inputs(None, m.inputs) != obtain_inputs(None, meta.get("input") or []):
            p.append(f"inputs: main.nf has {obtain_inputs(None, m.inputs)}, "
                     f"meta.yml {obtain_inputs(None, meta.get('input') or [])}")
        if obtain_outputs(None, m.outputs) != obtain_outputs(None, meta.get("output") or {}):
            p.append(f"outputs: main.nf has {obtain_outputs(None, m.outputs)}, "
                     f"meta.yml {obtain_outputs(None, meta.get('output') or {})}")
        elements = [e for ch in meta.get("input") or [] for e in (ch if isinstance(ch, list) else [ch])]
        elements += [e for ch in (meta.get("output") or {}).values() for item in ch
                     for e in (item if isinstance(item, list) else [item])]
        for e in elements:
            for name, spec in e.items():
                if not isinstance(spec, dict) or spec.get("type") not in TYPES or not spec.get("description"):
                    p.append(f"element {name}: needs a type in {sorted(TYPES)} and a description")
        for tool in meta.get("tools") or []:
            for name, spec in tool.items():
                if not spec.get("description") or not any(spec.get(k) for k in ("homepage", "documentation", "doi")):
                    p.append(f"tool {name}: needs a description and a homepage")
    print(json.dumps(problems))
""")


def test_module_meta_yml_matches_main_nf():
    require_nf_core()
    run = subprocess.run([str(NFCORE_VENV / "bin" / "python"), "-c", META_CHECK, str(ROOT)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    problems = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(problems) == {d.name for d in MODULE_DIRS}
    assert not any(problems.values()), json.dumps(problems, indent=1)


# -- Python lint -------------------------------------------------------------------------------------
def test_ruff_is_clean():
    """`ruff check` (configured in pyproject.toml; pinned in requirements-test.txt) reports nothing."""
    import sys

    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), f"{ruff} is missing: scripts/setup.sh installs requirements-test.txt (ruff==0.17.5)"
    done = subprocess.run([str(ruff), "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
