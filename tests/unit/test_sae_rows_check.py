"""An SAE batch larger than the training rows, and token-kind filters the stored token selection keeps no row
of, are refused before any GPU job (PREFLIGHT) and again by TRAIN_SAE; the optimizer steps are recorded.

PREFLIGHT runs in-process on the tiny fixture as the PREFLIGHT task runs it (`--token-selection`,
`--sae-per-language`). Expected row counts come from the documented split rule and from the extraction's own
layout planner (`extract.unit.plan_layout`, what the layer files will hold), not from the projection under test.
"""
from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.sae.options import MIN_STEPS, SAEOptions, SAEOptionsError
from tests.support import layer_file_factory as F
from tests.support.command_runner import run_in_process
from tests.support.engine import ROOT

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")

VAL = 0.4
LANGS = ("english", "arabic")
KIND = schema.TOKEN_KINDS


def documented_validation(sample_id: str, fraction: float = VAL, seed: int = 0) -> bool:
    digest = hashlib.sha256(b"layerwise-sae-split-v1\0" + str(seed).encode() + b"\0" + sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def fixture_ids(samplesheet) -> list[str]:
    with open(samplesheet, newline="", encoding="utf-8") as fh:
        return [r["sample_id"] for r in csv.DictReader(fh)]


def preflight(capsys, tmp_path, samplesheet, model, selection: str, *, stub: bool = True, per_language: bool = False,
              **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    opts = tmp_path / "sae_options.json"
    opts.write_text(json.dumps({"validation_fraction": VAL, "expansion_factor": 2, "k": 16, **options}))
    out = tmp_path / "out"
    args = ["--samplesheet", samplesheet, "--model", model, "--layers", "all", "--languages", ",".join(LANGS),
            "--prompts", ROOT / "assets" / "prompts.json", "--out-dir", out, "--sae-options", opts,
            "--token-selection", selection] + (["--sae-per-language"] if per_language else []) + (["--stub"] if stub else [])
    code, stdout, stderr = run_in_process("preflight", args, capsys)
    return code, stdout, stderr, out


def assert_refused(code, stderr, out, needles):
    assert code == 2, stderr
    assert stderr.startswith("ERROR:") and stderr.count("ERROR:") == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)
    assert not (out / "plan.json").exists(), "a refused run wrote a plan"


# -- PREFLIGHT: the batch against the projected training rows ------------------------------------------------
@pytest.mark.parametrize("selection", ["mean", "last"])
def test_one_row_selections_are_checked_exactly(capsys, tmp_path, samplesheet, tiny_model_dir, selection):
    """`mean`/`last` store one row per sample and language: a batch above (training samples x languages) is
    refused, pooled and per language (which the stub run checks as well: it needs no tokenizer)."""
    n_train = sum(not documented_validation(s) for s in fixture_ids(samplesheet))
    pooled = n_train * len(LANGS)
    code, stdout, stderr, out = preflight(capsys, tmp_path / "a", samplesheet, tiny_model_dir, selection,
                                          batch_size=pooled)
    assert code == 0, stderr
    assert f"training rows <= {pooled} " in stdout
    code, _, stderr, out = preflight(capsys, tmp_path / "b", samplesheet, tiny_model_dir, selection,
                                     batch_size=pooled + 1)
    assert_refused(code, stderr, out, ["--sae_batch_size", f"({pooled}:", f"'{selection}'", "--token_selection",
                                       f"'batch_size' ({pooled + 1})"])
    code, _, stderr, out = preflight(capsys, tmp_path / "c", samplesheet, tiny_model_dir, selection,
                                     batch_size=n_train + 1, per_language=True)
    assert_refused(code, stderr, out, ["--sae_batch_size", "--sae_per_language", f"({n_train}:"])


def planned_rows(samplesheet, model, selection: str) -> int:
    """Training rows of every language pooled, from the extraction's layout planner (what the files will hold)."""
    from layerwise.core.prompts import load_prompts
    from layerwise.core.sheet import iter_samples
    from layerwise.extract.unit import plan_layout
    from layerwise.models.families import family_of
    from layerwise.models.inputs import InputBuilder
    from layerwise.models.loading import load_config
    from layerwise.models.token_kinds import TokenKinds
    from layerwise.preflight.model_check import load_processor
    from layerwise.preflight.samplesheet import read_samplesheet

    processor = load_processor(str(model))
    model_type = load_config(str(model), None).model_type
    builder, kinds = InputBuilder(processor, family_of(model_type)), TokenKinds(processor)
    prompts = load_prompts(None, model_type)
    df = read_samplesheet(samplesheet, LANGS, check_images=False)
    total = 0
    for lang in LANGS:
        samples = list(iter_samples(df, lang))
        layout = plan_layout(builder, kinds, samples, prompts[lang], lang, selection)
        total += sum(n for s, n in zip(samples, layout.lengths) if not documented_validation(s.sample_id))
    return total


@pytest.mark.parametrize("selection", ["all", "caption"])
def test_per_token_selections_are_projected_from_the_planned_positions(capsys, tmp_path, samplesheet, tiny_model_dir,
                                                                       selection):
    rows = planned_rows(samplesheet, tiny_model_dir, selection)
    code, stdout, stderr, _ = preflight(capsys, tmp_path / "a", samplesheet, tiny_model_dir, selection,
                                        batch_size=rows, stub=False)
    assert code == 0, stderr
    assert f"training rows <= {rows} " in stdout
    code, _, stderr, out = preflight(capsys, tmp_path / "b", samplesheet, tiny_model_dir, selection,
                                     batch_size=rows + 1, stub=False)
    assert_refused(code, stderr, out, ["--sae_batch_size", f"at most {rows}", f"'{selection}'", "--token_selection"])


# -- PREFLIGHT: token-kind filters against the stored token selection ----------------------------------------
KIND_CASES = {   # case -> (selection, options, parameters the error names)
    "image_of_text": ("text", {"keep_kinds": "image"}, ["--sae_keep_kinds"]),
    "prompt_of_caption": ("caption", {"keep_kinds": "prompt"}, ["--sae_keep_kinds"]),
    "image_of_mean": ("mean", {"keep_kinds": "image"}, ["--sae_keep_kinds"]),
    "image_of_last": ("last", {"keep_kinds": "image,prompt"}, ["--sae_keep_kinds"]),
    "all_dropped_of_last": ("last", {"drop_kinds": "caption,template"}, ["--sae_drop_kinds"]),
}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_kinds_the_selection_does_not_store_are_refused(capsys, tmp_path, samplesheet, tiny_model_dir, case):
    selection, options, params = KIND_CASES[case]
    code, _, stderr, out = preflight(capsys, tmp_path, samplesheet, tiny_model_dir, selection, batch_size=4, **options)
    assert_refused(code, stderr, out, params + ["--token_selection", f"'{selection}'",
                                                ", ".join(schema.SELECTION_KINDS[selection])])


@pytest.mark.parametrize("selection, options", [("mean", {"keep_kinds": "caption"}), ("last", {"keep_kinds": "template"}),
                                                ("text", {"keep_kinds": "caption,prompt"})])
def test_kinds_the_selection_stores_pass(capsys, tmp_path, samplesheet, tiny_model_dir, selection, options):
    code, _, stderr, _ = preflight(capsys, tmp_path, samplesheet, tiny_model_dir, selection, batch_size=4, **options)
    assert code == 0, stderr


def test_the_kinds_table_is_what_extraction_stores(samplesheet, tiny_model_dir, monkeypatch):
    """Extraction checks every planned position against schema.SELECTION_KINDS (so the table PREFLIGHT uses
    cannot drift): the fixture's positions of each selection are within it, and a narrower table is caught."""
    for selection in schema.TOKEN_SELECTIONS:
        planned_rows(samplesheet, tiny_model_dir, selection)          # raises on a kind outside the table
    monkeypatch.setitem(schema.SELECTION_KINDS, "last", ("caption",))  # the fixture's last position is template
    with pytest.raises(LayerwiseError, match=r"--token-selection last stores token kind\(s\) template"):
        planned_rows(samplesheet, tiny_model_dir, "last")


# -- TRAIN_SAE -----------------------------------------------------------------------------------------------
def write_files(folder, n: int = 40, selection: str = "all") -> dict[str, tuple]:
    ids = F.sample_ids(n)
    out = {}
    for lang in LANGS:
        samples = F.make_samples(1, lang, ids, token_selection=selection)
        path = F.write_layer_file(folder / schema.layer_filename(1, lang), 1, lang, samples, token_selection=selection)
        out[lang] = (path, samples)
    return out


def train_rows(files) -> int:
    """Rows of the training split, without bos (the default drop_kinds)."""
    return sum(int((s.token_kinds != KIND["bos"]).sum()) for _, samples in files.values() for s in samples
               if not documented_validation(s.sample_id))


OPTS = dict(d_sae=32, k=4, lr=3e-3, device="cpu", validation_fraction=VAL, norm_estimate_batches=2,
            prefetch_batches=0, chunk_tokens=64, buffer_tokens=256)


def test_train_sae_refuses_fewer_rows_than_one_batch(tmp_path):
    from layerwise.sae.train import train_layer_sae

    files = write_files(tmp_path / "data")
    rows = train_rows(files)
    with pytest.raises(SAEOptionsError) as exc:
        train_layer_sae([p for p, _ in files.values()], tmp_path / "sae", SAEOptions(**OPTS, batch_size=rows + 1))
    msg = str(exc.value)
    assert f"'batch_size' ({rows + 1})" in msg and f"training rows of layer 1 ({rows}:" in msg and "'all'" in msg
    assert not (tmp_path / "sae").exists()


def test_train_sae_refuses_kinds_its_files_do_not_store(tmp_path):
    from layerwise.sae.train import train_layer_sae

    files = write_files(tmp_path / "data", selection="mean")
    with pytest.raises(SAEOptionsError, match=r"'keep_kinds' \('image'\).*token selection 'mean' \(--token_selection\) "
                                              r"of layer_1_english.pt stores only caption"):
        train_layer_sae([p for p, _ in files.values()], tmp_path / "sae", SAEOptions(**OPTS, keep_kinds="image"))


@pytest.fixture(scope="module")
def few_and_enough(tmp_path_factory):
    """Two trainings on the same files: few optimizer steps (a warning), and enough (none)."""
    from layerwise.sae.train import train_layer_sae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("steps")
    files = write_files(root / "data")
    rows = train_rows(files)
    runs = {}
    try:
        for name, epochs in (("few", 2.0), ("enough", float(-(-MIN_STEPS * 32 // rows)))):
            opts = SAEOptions(**OPTS, batch_size=32, epochs=epochs)
            records = train_layer_sae([p for p, _ in files.values()], root / name, opts)
            runs[name] = {"records": records, "folder": root / name / records[0]["sae_dir"], "options": opts}
    finally:
        torch.set_num_threads(threads)
    return {"rows": rows, "runs": runs}


def test_steps_are_recorded_and_few_steps_are_noted(few_and_enough, tmp_path):
    from layerwise.sae.report import write_report

    rows = few_and_enough["rows"]
    for name, run in few_and_enough["runs"].items():
        expected = int(round(run["options"].epochs * rows)) // 32
        training = json.loads((run["folder"] / "training.json").read_text())
        assert training["steps"] == training["planned_steps"] == expected, name
        assert training["train_rows"] == rows and training["min_steps"] == MIN_STEPS
        assert all(r["steps"] == expected for r in run["records"])
        few = [n for n in training["notes"] if "optimizer steps" in n]
        if name == "few":
            assert expected < MIN_STEPS and len(few) == 1 and f"only {expected} optimizer steps" in few[0]
            html = write_report(run["records"], tmp_path / "report.html").read_text()
            assert f"only {expected} optimizer steps" in html
        else:
            assert expected >= MIN_STEPS and few == [] and training["notes"] == []


def test_few_steps_warn_in_the_task_log(tmp_path, capsys):
    from layerwise.sae.train import train_layer_sae

    files = write_files(tmp_path / "data", n=24)
    train_layer_sae([p for p, _ in files.values()], tmp_path / "sae", SAEOptions(**OPTS, batch_size=32, epochs=1.0))
    err = capsys.readouterr().err
    assert "WARNING: layer 1: only " in err and f"fewer than {MIN_STEPS}" in err
