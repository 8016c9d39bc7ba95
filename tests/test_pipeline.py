"""The whole Nextflow pipeline, run as a user runs it (`./nextflow run . -profile test`), offline on the
tiny Gemma 3 fixture: stub graph, published outputs checked against an independent forward pass,
-resume after success, after a kill and after adding layers, and early failure on bad input.

Slow (each `nextflow run` starts a JVM and Python tasks): about 4-5 minutes on an idle 2-core machine,
most of it in the two full runs (`full_run` and the interrupted one); select with -m pipeline.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from layerwise import schema
from pipeline_helpers import (
    DONE_STATUSES,
    ROOT,
    finish,
    output_digest,
    process_name,
    rows_of,
    run_pipeline,
    sha256_file,
    start_pipeline,
    status_counts,
    stop_pipeline,
    trace_rows,
    wait_for,
)

pytestmark = pytest.mark.pipeline

LANGUAGES = ("english", "arabic")
NUM_LAYERS, HIDDEN, N_SAMPLES = 6, 64, 12
PROCESSES = ("PREFLIGHT", "ENCODE_IMAGES", "EXTRACT_ACTIVATIONS", "MERGE_ACTIVATIONS", "COMBINE_LAYERS",
             "VALIDATE_ACTIVATIONS")
# -profile test: layer_groups 2 (0-2, 3-5) x 2 languages x 2 shards of 6 samples
EXPECTED_TASKS = {"PREFLIGHT": 1, "ENCODE_IMAGES": 2, "EXTRACT_ACTIVATIONS": 8, "MERGE_ACTIVATIONS": 12,
                  "COMBINE_LAYERS": 2, "VALIDATE_ACTIVATIONS": 1}
RUN_TIMEOUT = 600          # seconds for one full run (about 1 minute on an idle 2-core machine)
ERROR_TIMEOUT = 300        # seconds for a run that must fail early

LAYER_FILES = [f"layer_checkpoints/{schema.layer_filename(layer, lang)}"
               for layer in range(NUM_LAYERS) for lang in LANGUAGES]
COMBINED_FILES = [schema.combined_filename(lang) for lang in LANGUAGES]
TOP_FILES = COMBINED_FILES + ["extraction_metadata.json", "validation_report.html", "metadata/samples.parquet",
                              "metadata/layers.parquet"]
PIPELINE_INFO = ["plan.json", "samplesheet.valid.csv", "software_versions.yml"]
PIPELINE_INFO_GLOBS = ["execution_trace_*.txt", "execution_timeline_*.html", "execution_report_*.html",
                       "pipeline_dag_*.html", "params_*.json"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def sheet_rows(samplesheet: Path) -> list[dict[str, str]]:
    with open(samplesheet, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_ok(run) -> None:
    assert not run.timed_out, f"nextflow timed out\n{run.failure_message()}"
    assert run.returncode == 0, f"nextflow failed\n{run.failure_message()}"


def counts_by_process(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[process_name(r)] = out.get(process_name(r), 0) + 1
    return out


# -- one full run of -profile test, shared by the output checks ----------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory, fixture_dir):
    run = run_pipeline(tmp_path_factory.mktemp("full"), timeout=RUN_TIMEOUT)
    assert_ok(run)
    # fingerprint now: the -resume test republishes into the same outdir
    run.digest = output_digest(run.outdir)
    return run


# -- 1. stub run -----------------------------------------------------------------------------------
def test_stub_run_walks_the_whole_graph(tmp_path, fixture_dir):
    run = run_pipeline(tmp_path, stub=True, timeout=RUN_TIMEOUT)
    assert_ok(run)
    out = run.outdir
    for name in LAYER_FILES + TOP_FILES + [f"pipeline_info/{n}" for n in PIPELINE_INFO]:
        assert (out / name).is_file(), f"stub run did not publish {name}\n{run.failure_message()}"
    assert sorted(p.name for p in (out / "layer_checkpoints").iterdir()) == sorted(Path(n).name for n in LAYER_FILES)
    rows = run.trace()
    assert counts_by_process(rows) == EXPECTED_TASKS, rows
    assert status_counts(rows) == {"COMPLETED": sum(EXPECTED_TASKS.values())}
    assert "(stub run)" in run.output


# -- 2. test profile end to end --------------------------------------------------------------------
def test_published_files(full_run):
    out = full_run.outdir
    for name in LAYER_FILES + TOP_FILES + [f"pipeline_info/{n}" for n in PIPELINE_INFO]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"missing or empty: {name}"
    for pattern in PIPELINE_INFO_GLOBS:
        assert list((out / "pipeline_info").glob(pattern)), f"no pipeline_info/{pattern}"
    # nothing else in layer_checkpoints, no stray .pt at the top (shard files stay in work/)
    assert sorted(p.name for p in (out / "layer_checkpoints").iterdir()) == sorted(Path(n).name for n in LAYER_FILES)
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(COMBINED_FILES)

    rows = full_run.trace()
    assert counts_by_process(rows) == EXPECTED_TASKS
    assert status_counts(rows) == {"COMPLETED": sum(EXPECTED_TASKS.values())}

    import yaml
    versions = yaml.safe_load((out / "pipeline_info/software_versions.yml").read_text())
    assert set(PROCESSES) | {"Workflow"} == set(versions), versions
    assert versions["EXTRACT_ACTIVATIONS"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])

    plan = json.loads((out / "pipeline_info/plan.json").read_text())
    assert plan["layers"] == list(range(NUM_LAYERS)) and plan["languages"] == list(LANGUAGES)
    assert plan["model"]["num_layers"] == NUM_LAYERS and plan["model"]["hidden_size"] == HIDDEN
    assert len(plan["units"]) == EXPECTED_TASKS["EXTRACT_ACTIVATIONS"]


def test_metadata_json(full_run):
    meta = json.loads((full_run.outdir / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed", [c for c in meta["checks"] if not c["passed"]]
    assert all(c["passed"] for c in meta["checks"])
    assert meta["layers"] == list(range(NUM_LAYERS)) and meta["languages"] == list(LANGUAGES)
    assert meta["samples"] == N_SAMPLES
    assert meta["totals"]["files"] == meta["totals"]["expected_files"] == NUM_LAYERS * len(LANGUAGES)
    # the compute diet: the vision tower ran once per image, not once per unit
    assert meta["vision_tower"]["images_encoded"] == meta["vision_tower"]["distinct_images"] == N_SAMPLES
    for entry in meta["files"]:
        assert entry["sha256"] == sha256_file(full_run.outdir / "layer_checkpoints" / entry["file"])


@pytest.mark.parametrize("language", LANGUAGES)
def test_layer_files_keys_shapes_and_order(full_run, samplesheet, language):
    table = sheet_rows(samplesheet)
    ids = [r["sample_id"] for r in table]
    genders = [r["gender"] for r in table]
    first = None
    for layer in range(NUM_LAYERS):
        d = load(full_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
        assert set(d) == set(schema.LAYER_FILE_KEYS), set(d) ^ set(schema.LAYER_FILE_KEYS)
        assert d["layer"] == layer and d["language"] == language
        assert d["hidden_size"] == HIDDEN and d["num_layers"] == NUM_LAYERS
        assert d["layout"] == "padded" and d["token_selection"] == "all" and d["dtype"] == "float32"
        assert d["sample_ids"] == ids, "samples are not in samplesheet order"
        assert d["genders"] == genders
        lengths = d["lengths"]
        t_max = int(lengths.max())
        assert tuple(d["activations"].shape) == (N_SAMPLES, t_max, HIDDEN)
        assert d["activations"].dtype == torch.float32
        assert tuple(d["token_ids"].shape) == (N_SAMPLES, t_max)
        assert torch.equal(d["offsets"], torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))
        assert int(lengths.min()) > 0 and len(set(lengths.tolist())) > 1, "captions differ in length"
        for i, n in enumerate(lengths.tolist()):
            assert bool((d["activations"][i, n:] == 0).all()) and bool((d["token_ids"][i, n:] == -1).all())
            assert bool((d["token_ids"][i, :n] >= 0).all())
        assert bool(torch.isfinite(d["activations"]).all())
        if first is None:
            first = d
        else:  # the same tokens in every layer, different values
            assert torch.equal(d["lengths"], first["lengths"]) and torch.equal(d["token_ids"], first["token_ids"])
            assert not torch.equal(d["activations"], first["activations"])


def test_parquet_metadata(full_run, samplesheet):
    import pandas as pd

    out = full_run.outdir
    table = sheet_rows(samplesheet)
    samples = pd.read_parquet(out / "metadata/samples.parquet")
    assert len(samples) == N_SAMPLES * len(LANGUAGES)
    assert not samples.duplicated(["sample_id", "language"]).any()
    for language in LANGUAGES:
        part = samples[samples["language"] == language]
        assert list(part["sample_id"]) == [r["sample_id"] for r in table]
        assert list(part["gender"]) == [r["gender"] for r in table]
        assert list(part["caption"]) == [r[f"caption_{language}"] for r in table]
        d = load(out / "layer_checkpoints" / schema.layer_filename(0, language))
        assert [int(x) for x in part["positions_kept"]] == d["lengths"].tolist()

    layers = pd.read_parquet(out / "metadata/layers.parquet")
    assert len(layers) == NUM_LAYERS * len(LANGUAGES)
    assert sorted(zip(layers["layer"], layers["language"])) == sorted(
        (layer, lang) for layer in range(NUM_LAYERS) for lang in LANGUAGES)
    for _, row in layers.iterrows():
        path = out / "layer_checkpoints" / row["file"]
        assert row["file"] == schema.layer_filename(int(row["layer"]), row["language"])
        assert row["sha256"] == sha256_file(path), row["file"]
        assert int(row["bytes"]) == path.stat().st_size
        assert int(row["samples"]) == N_SAMPLES


@pytest.mark.parametrize("language", LANGUAGES)
def test_combined_file_equals_the_layer_files(full_run, language):
    combined = load(full_run.outdir / schema.combined_filename(language))
    assert combined["language"] == language
    assert sorted(combined["layers"]) == list(range(NUM_LAYERS))
    assert sorted(combined["activations"]) == list(range(NUM_LAYERS))
    for layer in range(NUM_LAYERS):
        d = load(full_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
        assert torch.equal(combined["activations"][layer], d["activations"]), f"layer {layer}"
        assert torch.equal(combined["nan_counts"][layer], d["nan_counts"])
        assert combined["sample_ids"] == d["sample_ids"] and combined["genders"] == d["genders"]
        assert torch.equal(combined["lengths"], d["lengths"]) and torch.equal(combined["token_ids"], d["token_ids"])


@pytest.fixture(scope="module")
def reference(tiny_model_dir, samplesheet):
    """(language, sample_id) -> (input_ids, hidden_states) of a plain forward pass built with the processor
    (not with layerwise's input code), prompts read straight from assets/prompts.json."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True,
                                                        dtype=torch.float32).eval()
    prompts = json.loads((ROOT / "assets" / "prompts.json").read_text(encoding="utf-8"))
    out = {}
    for language in LANGUAGES:
        for row in sheet_rows(samplesheet):
            messages = [
                {"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": prompts[language]["prompt"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": row[f"caption_{language}"]}]},
            ]
            text = processor.apply_chat_template(messages, tokenize=False)
            with Image.open(samplesheet.parent / row["image"]) as img:
                image = img.convert("RGB")
            enc = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                res = model(**enc, output_hidden_states=True)
            out[language, row["sample_id"]] = (enc["input_ids"][0], [h[0] for h in res.hidden_states])
    return out


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("layer", [0, 2, 4])
def test_layers_equal_an_independent_forward_pass(full_run, reference, language, layer):
    d = load(full_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
    for i, sample_id in enumerate(d["sample_ids"]):
        ids, hidden_states = reference[language, sample_id]
        n = int(d["lengths"][i])
        assert n == len(ids), f"{sample_id}: {n} positions kept, the sequence has {len(ids)}"
        assert torch.equal(d["token_ids"][i, :n], ids), sample_id
        # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
        torch.testing.assert_close(d["activations"][i, :n], hidden_states[layer + 1], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{language} layer {layer} {sample_id}: {m}")


# -- 3. -resume after success ----------------------------------------------------------------------
def test_resume_after_success_reruns_nothing(full_run):
    again = run_pipeline(full_run.launchdir, workdir=full_run.workdir, outdir=full_run.outdir, resume=True,
                         timeout=RUN_TIMEOUT)
    assert_ok(again)
    assert again.trace_file is not None and again.trace_file != full_run.trace_file
    rows = again.trace()
    assert counts_by_process(rows) == EXPECTED_TASKS
    assert status_counts(rows) == {"CACHED": sum(EXPECTED_TASKS.values())}, status_counts(rows)
    # the console agrees: every process line says cached, nothing was submitted
    assert "Submitted process" not in again.stdout
    assert again.stdout.count("Cached process") == sum(EXPECTED_TASKS.values()), again.stdout[-3000:]
    assert output_digest(again.outdir) == full_run.digest


# -- 4. -resume after a kill -----------------------------------------------------------------------
def test_resume_after_kill_reuses_finished_tasks(tmp_path, full_run):
    total = sum(EXPECTED_TASKS.values())
    n_extract = EXPECTED_TASKS["EXTRACT_ACTIVATIONS"]
    run = start_pipeline(tmp_path)

    def some_extraction_done():
        if run.process.poll() is not None:
            raise AssertionError("the run ended before it could be interrupted\n" + finish(run).failure_message())
        rows = run.trace()
        return rows if rows_of(rows, "EXTRACT_ACTIVATIONS", "COMPLETED") else None

    try:
        wait_for(some_extraction_done, timeout=RUN_TIMEOUT, interval=0.2, what="a finished EXTRACT_ACTIVATIONS task")
    except TimeoutError as e:
        stop_pipeline(run)
        pytest.fail(f"{e}\n{finish(run).failure_message()}")
    t0 = time.time()
    stop_pipeline(run, grace=60)
    killed = finish(run)
    print(f"interrupted after {t0 - killed.started:.0f} s; stopped in {time.time() - t0:.1f} s; "
          f"trace of the interrupted run: {status_counts(killed.trace())}")
    assert killed.returncode != 0, f"the interrupted run reports success\n{killed.failure_message()}"

    before = killed.trace()
    done_before = {r["hash"]: r for r in before if r["status"] == "COMPLETED"}
    extract_done = rows_of(before, "EXTRACT_ACTIVATIONS", "COMPLETED")
    assert 1 <= len(extract_done) < n_extract, (
        f"interrupt came too late to test anything: {len(extract_done)} of {n_extract} extractions had finished")
    assert not (killed.outdir / "extraction_metadata.json").exists()

    resumed = run_pipeline(tmp_path, resume=True, timeout=RUN_TIMEOUT)
    assert_ok(resumed)
    rows = resumed.trace()
    assert counts_by_process(rows) == EXPECTED_TASKS, counts_by_process(rows)
    status = {r["hash"]: r["status"] for r in rows}
    rerun = {h: done_before[h]["name"] for h in done_before if status.get(h) != "CACHED"}
    assert not rerun, f"tasks that had finished before the kill ran again: {sorted(rerun.values())}"
    counts = status_counts(rows)
    print(f"resumed run: {counts}")
    assert counts.get("CACHED", 0) >= len(done_before)
    assert 0 < counts.get("COMPLETED", 0) < total, counts
    assert set(counts) <= set(DONE_STATUSES), counts
    # the extractions that had not finished ran now (an interrupted one had no result to keep)
    assert 1 <= len(rows_of(rows, "EXTRACT_ACTIVATIONS", "COMPLETED")) <= n_extract - len(extract_done)
    # identical results to the uninterrupted run
    digest = output_digest(resumed.outdir)
    assert set(digest) == set(full_run.digest)
    assert [k for k in digest if digest[k] != full_run.digest[k]] == []


# -- 5. adding layers runs only the new work -------------------------------------------------------
def test_adding_layers_reruns_only_the_new_units(tmp_path, fixture_dir):
    common = ("--layer_groups", "auto", "--samples_per_task", "0", "--languages", "english")
    first = run_pipeline(tmp_path, "--layers", "0-1", *common, timeout=RUN_TIMEOUT)
    assert_ok(first)
    r1 = first.trace()
    assert [r["tag"] for r in rows_of(r1, "EXTRACT_ACTIVATIONS")] == ["layers 0-1 | english | shard 0"]

    second = run_pipeline(tmp_path, "--layers", "0-1 4", *common, resume=True, timeout=RUN_TIMEOUT)
    assert_ok(second)
    r2 = second.trace()
    extract = {r["tag"]: r["status"] for r in rows_of(r2, "EXTRACT_ACTIVATIONS")}
    assert extract == {"layers 0-1 | english | shard 0": "CACHED", "layers 4 | english | shard 0": "COMPLETED"}, extract
    assert [r["status"] for r in rows_of(r2, "ENCODE_IMAGES")] == ["CACHED"]
    merge = {r["tag"]: r["status"] for r in rows_of(r2, "MERGE_ACTIVATIONS")}
    assert merge == {"layer 0 | english": "CACHED", "layer 1 | english": "CACHED",
                     "layer 4 | english": "COMPLETED"}, merge
    names = sorted(p.name for p in (second.outdir / "layer_checkpoints").iterdir())
    assert names == sorted(schema.layer_filename(layer, "english") for layer in (0, 1, 4))
    meta = json.loads((second.outdir / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed" and meta["layers"] == [0, 1, 4]


# -- 6. bad parameters and samplesheets fail before any extraction ---------------------------------
def _sheet(tmp_path: Path, samplesheet: Path, edit) -> Path:
    """A copy of the fixture samplesheet with absolute image paths, broken by `edit(rows, fieldnames)`."""
    rows = sheet_rows(samplesheet)
    for r in rows:
        r["image"] = str((samplesheet.parent / r["image"]).resolve())
    fields = list(rows[0])
    rows, fields = edit(rows, fields)
    path = tmp_path / "broken.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _no_arabic_caption(rows, fields):
    return rows, [f for f in fields if f != "caption_arabic"]


def _duplicate_id(rows, fields):
    rows[3]["sample_id"] = rows[1]["sample_id"]
    return rows, fields


def _missing_image(rows, fields):
    rows[5]["image"] = str(Path(rows[5]["image"]).with_name("no_such_image.png"))
    return rows, fields


BAD_SHEETS = {"no_arabic_caption": (_no_arabic_caption, ["caption_arabic"]),
              "duplicate_id": (_duplicate_id, ["s001", "duplicate"]),
              "missing_image": (_missing_image, ["no_such_image.png"])}

BAD_PARAMS = {
    "layer_out_of_range": (["--layers", "0-99"], ["--layers", "99", "0-5"], True),
    "unknown_language": (["--languages", "english,klingon"], ["--languages", "klingon"], True),
    "missing_input": (["--input", "/nonexistent.csv"], ["--input", "/nonexistent.csv"], False),
    "bad_enum": (["--layout", "zigzag"], ["--layout", "zigzag", "padded"], False),
    "unknown_parameter": (["--langauges", "english"], ["--langauges", "--languages"], False),
}


def _assert_failed_early(run, needles, in_preflight):
    assert not run.timed_out, run.failure_message()
    assert run.returncode != 0, f"the run succeeded\n{run.failure_message()}"
    text = run.output
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in the error output\n{run.failure_message()}"
    rows = trace_rows(run.outdir)
    assert not [r for r in rows if process_name(r) not in ("PREFLIGHT",)], \
        f"tasks beyond PREFLIGHT ran: {[r['name'] for r in rows]}"
    if in_preflight is True:
        assert [r["status"] for r in rows_of(rows, "PREFLIGHT")] == ["FAILED"], rows
    elif in_preflight is False:  # caught by the parameter check: nothing submitted at all
        assert rows == [] and "Submitted process" not in text, [r["name"] for r in rows]
    layer_dir = run.outdir / "layer_checkpoints"
    assert not layer_dir.exists() or not list(layer_dir.iterdir())
    if run.workdir.exists():
        assert not list(run.workdir.rglob("layer_*_*.pt")), "layer files were written in work/"


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_bad_parameter_fails_early(tmp_path, fixture_dir, case):
    args, needles, in_preflight = BAD_PARAMS[case]
    run = run_pipeline(tmp_path, *args, timeout=ERROR_TIMEOUT)
    _assert_failed_early(run, needles, in_preflight)


@pytest.mark.parametrize("case", list(BAD_SHEETS))
def test_bad_samplesheet_fails_in_preflight(tmp_path, samplesheet, case):
    edit, needles = BAD_SHEETS[case]
    sheet = _sheet(tmp_path, samplesheet, edit)
    run = run_pipeline(tmp_path, "--input", sheet, timeout=ERROR_TIMEOUT)
    _assert_failed_early(run, needles, True)
