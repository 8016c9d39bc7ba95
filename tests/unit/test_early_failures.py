"""Bad parameters and bad samplesheets fail before any extraction, each with a message naming the problem.

The same cases as a user's launches, checked in-process: the head's parameter check (LayerwiseSchema on
nextflow_schema.json, all cases in one JVM, on the test profile's resolved params), and PREFLIGHT's checks
(the `layerwise-preflight` command as the PREFLIGHT task runs it, with the test profile's SAE options).
The integration tier keeps one bad parameter and one bad samplesheet through the engine
(tests/integration/test_pipeline.py), which prove that these checks stop a real run before any job.
"""
from __future__ import annotations

import csv
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.command_runner import run_in_process
from tests.support.engine import ROOT, groovy_command

SCHEMA = ROOT / "nextflow_schema.json"

# The head's parameter check. Values typed as Nextflow parses the command line (`--sae` alone is true,
# numbers are numbers). case -> (params given, words the error must name)
HEAD_CASES = {
    "missing_input": ({"input": "/nonexistent.csv"}, ["--input", "/nonexistent.csv"]),
    "bad_enum": ({"layout": "zigzag"}, ["--layout", "zigzag", "padded"]),
    "unknown_parameter": ({"langauges": "english"}, ["--langauges", "--languages"]),
    "symlink_publishing": ({"publish_dir_mode": "symlink"}, ["--publish_dir_mode", "symlink", "link"]),
    "move_publishing": ({"publish_dir_mode": "move"}, ["--publish_dir_mode", "move", "copy"]),
    "sae_option_range": ({"sae": True, "sae_lr": 0}, ["--sae_lr", "above 0"]),
    "analysis_option_range": ({"analysis_folds": 1}, ["--analysis_folds", "minimum 2"]),
}

# Inputs the head reads cheaply (LayerwiseInputs): reported with the parameter errors, in the same message
INPUT_CASES = {
    # the launch: three problems, one message
    "three_at_once": ({"languages": "english,french", "layers": "0-40", "sae": True, "sae_k": 0},
                      [["--sae_k", "minimum 1"], ["--languages", "'french'", "prompts.json"],
                       ["--input", "samples.csv", "caption_french"], ["--layers", "40", "6 decoder layers", "0-5"]]),
    "integer_typed_on_the_command_line": ({"layer_groups": 4, "samples_per_task": "6"}, []),
}

GROOVY = """
def gcl = new GroovyClassLoader(); gcl.addClasspath(args[0])
def schema = gcl.loadClass('LayerwiseSchema').newInstance(java.nio.file.Paths.get(args[1]))
def inputs = gcl.loadClass('LayerwiseInputs')
def root = java.nio.file.Paths.get(args[1]).parent
def input = new groovy.json.JsonSlurper().parse(new File(args[2]))
println groovy.json.JsonOutput.toJson(input.cases.collectEntries { name, given ->
    def params = new LinkedHashMap(input.base); params.putAll(given)
    [(name): (schema.validate(params).errors + inputs.check(params, root)).collect { it.toString() }]
})
"""


@pytest.fixture(scope="module")
def head_errors(tmp_path_factory, resolved_configs):
    """case -> the errors of the head's parameter check, every case (and a good control) in one JVM."""
    tmp = tmp_path_factory.mktemp("params")
    base = resolved_configs["test"]["params"]
    cases = {"control": {}, **{name: given for name, (given, _) in {**HEAD_CASES, **INPUT_CASES}.items()}}
    (tmp / "cases.json").write_text(json.dumps({"base": base, "cases": cases}))
    (tmp / "check.groovy").write_text(GROOVY)
    run = subprocess.run(groovy_command(tmp / "check.groovy", SCHEMA, tmp / "cases.json"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_test_profile_passes_the_parameter_check(head_errors):
    assert head_errors["control"] == []


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_every_problem_of_a_launch_comes_back_in_one_message(head_errors, case):
    """Parameters, languages against prompts, samplesheet columns (the user's file) and layers against the
    model's depth are checked together in the head: one error per problem, none left for a later launch."""
    _, problems = INPUT_CASES[case]
    errors = head_errors[case]
    assert len(errors) == len(problems), errors
    for needles in problems:
        assert any(all(n.lower() in e.lower() for n in needles) for e in errors), (needles, errors)


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_bad_parameter_is_refused_by_the_head(head_errors, case):
    _, needles = HEAD_CASES[case]
    errors = head_errors[case]
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors)


# -- PREFLIGHT: needs the model and the samples ------------------------------------------------------------
PREFLIGHT_PARAM_CASES = {   # case -> (params given, words the error must name)
    "layer_out_of_range": ({"layers": "0-99"}, ["--layers", "99", "0-5"]),
    "unknown_language": ({"languages": "english,klingon"}, ["--languages", "klingon"]),
    "sae_width_below_k": ({"sae_d_sae": 8, "sae_k": 16}, ["--sae_k", "d_sae (8"]),
    "sae_empty_validation_split": ({"sae_validation_fraction": 0.01}, ["--sae_validation_fraction", "validation split"]),
    # options of the later stages that only fail once the GPU jobs are done, unless PREFLIGHT checks them
    "analysis_classes_repeated": ({"analysis_classes": "male,male"}, ["--analysis_classes", "two distinct"]),
    "analysis_unknown_view": ({"analysis_views": "image,everything"}, ["--analysis_views", "everything"]),
    "sae_kinds_the_selection_lacks": ({"sae_keep_kinds": "image", "token_selection": "text"},
                                      ["--sae_keep_kinds", "--token_selection"]),
    "intervention_on_one_vector_per_sample": ({"intervene": True, "token_selection": "mean", "sae_batch_size": 8},
                                              ["--intervene", "--token_selection mean"]),
}


def _sheet_rows(samplesheet: Path) -> list[dict[str, str]]:
    with open(samplesheet, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["image"] = str((samplesheet.parent / r["image"]).resolve())
    return rows


def _no_arabic_caption(rows, fields):
    return rows, [f for f in fields if f != "caption_arabic"]


def _duplicate_id(rows, fields):
    rows[3]["sample_id"] = rows[1]["sample_id"]
    return rows, fields


def _missing_image(rows, fields):
    rows[5]["image"] = str(Path(rows[5]["image"]).with_name("no_such_image.png"))
    return rows, fields


def _truncated_image(rows, fields):
    src = Path(rows[4]["image"])
    cut = Path(tempfile.mkdtemp(prefix="layerwise-cut-")) / f"cut{src.suffix}"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    rows[4]["image"] = str(cut)
    return rows, fields


def _control_token_in_caption(rows, fields):
    rows[2]["caption_english"] = "A person <start_of_turn>model\nsmiling."
    return rows, fields


BAD_SHEETS = {"no_arabic_caption": (_no_arabic_caption, ["caption_arabic"]),
              "truncated_image": (_truncated_image, ["row 5", "cut."]),
              "control_token": (_control_token_in_caption, ["row 3", "<start_of_turn>"]),
              "duplicate_id": (_duplicate_id, ["s001", "duplicate"]),
              "missing_image": (_missing_image, ["no_such_image.png"])}


def broken_sheet(tmp_path: Path, samplesheet: Path, edit) -> Path:
    """A copy of the fixture samplesheet with absolute image paths, broken by `edit(rows, fieldnames)`."""
    rows = _sheet_rows(samplesheet)
    rows, fields = edit(rows, list(rows[0]))
    path = tmp_path / "broken.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def preflight_as_the_task_runs_it(capsys, tmp_path, params: dict, sheet: Path, model: Path, extra=()):
    """`layerwise-preflight` with the arguments modules/local/preflight builds from these params."""
    schema = json.loads(SCHEMA.read_text())
    sae_names = [n for n in schema["$defs"]["sae_options"]["properties"] if n.startswith("sae_") and n != "sae_per_language"]
    options = tmp_path / "sae_options.json"   # the head's saeOptionsJson: every sae_<option> param
    options.write_text(json.dumps({n.removeprefix("sae_"): params[n] for n in sae_names}))
    analysis = tmp_path / "analysis_options.json"   # the extraction subworkflow's spec.analysis_options
    analysis.write_text(json.dumps({n.removeprefix("analysis_"): v for n, v in params.items()
                                    if n.startswith("analysis_")}))
    out = tmp_path / "out"
    args = ["--samplesheet", sheet, "--model", model, "--layers", params["layers"], "--languages", params["languages"],
            "--layer-groups", params["layer_groups"], "--samples-per-task", params["samples_per_task"],
            "--prompts", ROOT / "assets" / "prompts.json", "--out-dir", out, "--sae-options", options,
            "--token-selection", params["token_selection"], "--analysis-options", analysis]
    if params.get("intervene"):   # the head's groupOptionsJson of the intervention_options group
        names = [n for n in schema["$defs"]["intervention_options"]["properties"] if n.startswith("intervention_")]
        intervention = tmp_path / "intervention_options.json"
        intervention.write_text(json.dumps({n.removeprefix("intervention_"): params[n] for n in names}))
        args += ["--intervention-options", intervention]
    code, stdout, stderr = run_in_process("preflight", [*args, *extra], capsys)
    return code, stdout, stderr, out


@pytest.fixture
def test_params(resolved_configs):
    return dict(resolved_configs["test"]["params"])


def test_the_test_profile_passes_preflight(capsys, tmp_path, test_params, samplesheet, tiny_model_dir):
    code, stdout, stderr, out = preflight_as_the_task_runs_it(capsys, tmp_path, test_params, samplesheet,
                                                              tiny_model_dir)
    assert code == 0, stderr
    assert (out / "plan.json").is_file() and "sae " in stdout


def _assert_refused(code, stderr, out, needles):
    assert code == 2, stderr
    # one error (its first line starts with ERROR:, details may follow), no traceback
    assert stderr.startswith("ERROR:") and stderr.count("ERROR:") == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle.lower() in stderr.lower(), (needle, stderr)
    assert not (out / "plan.json").exists() and not list(out.glob("units/*.csv")), "a refused run wrote a plan"


@pytest.mark.parametrize("case", list(PREFLIGHT_PARAM_CASES))
def test_bad_parameter_is_refused_by_preflight(capsys, tmp_path, test_params, samplesheet, tiny_model_dir, case):
    given, needles = PREFLIGHT_PARAM_CASES[case]
    code, _, stderr, out = preflight_as_the_task_runs_it(capsys, tmp_path, {**test_params, **given}, samplesheet,
                                                         tiny_model_dir)
    _assert_refused(code, stderr, out, needles)


@pytest.mark.parametrize("case", list(BAD_SHEETS))
def test_bad_samplesheet_is_refused_by_preflight(capsys, tmp_path, test_params, samplesheet, tiny_model_dir, case):
    edit, needles = BAD_SHEETS[case]
    sheet = broken_sheet(tmp_path, samplesheet, edit)
    code, _, stderr, out = preflight_as_the_task_runs_it(capsys, tmp_path, test_params, sheet, tiny_model_dir)
    _assert_refused(code, stderr, out, needles)


def test_preflight_names_the_users_samplesheet_not_the_staged_copy(capsys, tmp_path, test_params, samplesheet,
                                                                   tiny_model_dir):
    """The task reads a staged copy (input/samples.csv); its messages name the --input path the user gave."""
    staged = broken_sheet(tmp_path, samplesheet, _duplicate_id)
    origin = "/home/someone/study/my_samples.csv"
    code, _, stderr, out = preflight_as_the_task_runs_it(capsys, tmp_path, test_params, staged, tiny_model_dir,
                                                         extra=["--samplesheet-origin", origin])
    _assert_refused(code, stderr, out, ["duplicate", origin])
    assert str(staged) not in stderr
