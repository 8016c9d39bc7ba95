"""The whole Nextflow pipeline, run as a user runs it (`./nextflow run . -profile test`), offline on the
tiny Gemma 3 fixture: stub graph, published outputs checked against an independent forward pass,
-resume after success (and after damage to published files), after a kill of the head that leaves its
task running, after editing one caption and the batch size, after adding a language, after changing
an image's content; stale results moved aside, a concurrent run refused, an unpublishable outdir
reported as FAILED; early failure on bad input (one bad parameter and one bad samplesheet through the
engine; every other case is checked in-process by tests/unit/test_early_failures.py).

The finished run is the session's shared `finished_run` (tests/integration/conftest.py).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from layerwise.core import schema
from tests.integration.conftest import assert_ok, quiet_offline_trainer
from tests.support.pipeline_helpers import (
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
from tests.support.sheets import write_sheet

LANGUAGES = ("english", "arabic")
NUM_LAYERS, HIDDEN, N_SAMPLES = 6, 64, 12
PROCESSES = ("PREFLIGHT", "EXTRACT_ACTIVATIONS", "PUBLISH_RESULTS", "TRAIN_SAE", "PUBLISH_SAE", "ANALYZE_LAYERS",
             "SELECT_LATENTS", "GENERATE_CAPTIONS", "SUMMARIZE_INTERVENTION")
# -profile test --analysis false: layer_groups 2 (0-2, 3-5) x 2 languages x 2 shards of 6 samples
EXPECTED_TASKS = {"PREFLIGHT": 1, "EXTRACT_ACTIVATIONS": 8, "PUBLISH_RESULTS": 1}
# ... with --sae (one SAE per layer, languages pooled) and the analysis
EXPECTED_SAE_TASKS = {**EXPECTED_TASKS, "TRAIN_SAE": NUM_LAYERS, "PUBLISH_SAE": 1, "ANALYZE_LAYERS": 1}
# ... and --intervene with the test profile's options: 2 baselines, 2 targeted (within), 1 chunk of random runs x 2
EXPECTED_ALL_TASKS = {**EXPECTED_SAE_TASKS, "SELECT_LATENTS": 1, "GENERATE_CAPTIONS": 6, "SUMMARIZE_INTERVENTION": 1}
# PREFLIGHT and the PUBLISH_* tasks always run (they check inputs and outdir as they are now)
ALWAYS_RUN = ("PREFLIGHT", "PUBLISH_RESULTS", "PUBLISH_SAE")
RUN_TIMEOUT = 900          # seconds for one full run (about 1-2 minutes on an idle 2-core machine)
ERROR_TIMEOUT = 300        # seconds for a run that must fail early

LAYER_FILES = [f"layer_checkpoints/{schema.layer_filename(layer, lang)}"
               for layer in range(NUM_LAYERS) for lang in LANGUAGES]
TOP_FILES = ["extraction_metadata.json", "validation_report.html", "metadata/samples.parquet",
             "metadata/layers.parquet"]
PIPELINE_INFO = ["plan.json", "samplesheet.valid.csv", "software_versions.yml"]
PIPELINE_INFO_GLOBS = ["execution_trace_*.txt", "execution_timeline_*.html", "execution_report_*.html",
                       "pipeline_dag_*.html", "params_*.json"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def sheet_rows(samplesheet: Path) -> list[dict[str, str]]:
    with open(samplesheet, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def counts_by_process(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[process_name(r)] = out.get(process_name(r), 0) + 1
    return out


# -- 1. stub run -----------------------------------------------------------------------------------
def test_stub_run_walks_the_whole_graph(tmp_path, fixture_dir):
    """Every stage (with one SAE per layer and language), with the real planner."""
    run = run_pipeline(tmp_path, "--sae", "--sae_per_language", "--intervene", stub=True, timeout=RUN_TIMEOUT)
    assert_ok(run)
    out = run.outdir
    for name in LAYER_FILES + ["extraction_metadata.json", "pipeline_info/software_versions.yml"]:
        assert (out / name).is_file(), f"stub run did not publish {name}\n{run.failure_message()}"
    # the stub plans with the real planner: the same units as a real run
    plan = json.loads(next(run.workdir.rglob("plan.json")).read_text())
    assert [u["id"] for u in plan["units"]] == [
        f"L{g}_{lang}_s{s}" for g in ("0-2", "3-5") for lang in LANGUAGES for s in (0, 1)]
    assert sorted(p.name for p in (out / "layer_checkpoints").iterdir()) == sorted(Path(n).name for n in LAYER_FILES)
    rows = run.trace()
    per_language = {**EXPECTED_ALL_TASKS, "TRAIN_SAE": NUM_LAYERS * len(LANGUAGES)}
    assert counts_by_process(rows) == per_language, rows
    assert status_counts(rows) == {"COMPLETED": sum(per_language.values())}
    tags = sorted(r["tag"] for r in rows_of(rows, "TRAIN_SAE"))
    assert tags == sorted(f"layer {i} {lang}" for i in range(NUM_LAYERS) for lang in LANGUAGES), tags
    # the analysis reads the SAE folders PUBLISH_SAE placed in the outdir
    assert sorted(p.name for p in (out / "sae").iterdir()) == sorted(
        [f"layer_{i}_{lang}" for i in range(NUM_LAYERS) for lang in LANGUAGES] + ["inputs.json"])
    assert "(stub run)" in run.output


# -- 2. test profile end to end --------------------------------------------------------------------
def test_published_files(finished_run):
    out = finished_run.outdir
    for name in LAYER_FILES + TOP_FILES + [f"pipeline_info/{n}" for n in PIPELINE_INFO]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"missing or empty: {name}"
    for pattern in PIPELINE_INFO_GLOBS:
        assert list((out / "pipeline_info").glob(pattern)), f"no pipeline_info/{pattern}"
    # nothing else in layer_checkpoints; no combined files unless asked for (--combined_files)
    assert sorted(p.name for p in (out / "layer_checkpoints").iterdir()) == sorted(Path(n).name for n in LAYER_FILES)
    assert sorted(p.name for p in out.glob("*.pt")) == []
    for name in LAYER_FILES:   # complete files, not links into work/
        assert (out / name).is_file() and not (out / name).is_symlink()

    rows = finished_run.extraction.trace()
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


def test_metadata_json(finished_run):
    meta = json.loads((finished_run.outdir / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed", [c for c in meta["checks"] if not c["passed"]]
    assert all(c["passed"] for c in meta["checks"])
    assert meta["layers"] == list(range(NUM_LAYERS)) and meta["languages"] == list(LANGUAGES)
    assert meta["samples"] == N_SAMPLES
    assert meta["totals"]["files"] == meta["totals"]["expected_files"] == NUM_LAYERS * len(LANGUAGES)
    # the compute diet: the vision tower ran once per image, not once per unit
    assert meta["vision_tower"]["images_encoded"] == meta["vision_tower"]["distinct_images"] == N_SAMPLES
    for entry in meta["files"]:
        assert entry["sha256"] == sha256_file(finished_run.outdir / "layer_checkpoints" / entry["file"])
    # every published file is listed, with its checksum, and nothing else
    published = {r["path"]: r for r in meta["published"]}
    present = {p.relative_to(finished_run.outdir).as_posix() for p in finished_run.outdir.rglob("*") if p.is_file()}
    managed = {p for p in present if not p.startswith(("pipeline_info/", "analysis/", "sae/", "intervention/")) or p.rsplit("/", 1)[-1] in
               ("plan.json", "samplesheet.valid.csv")} - {"extraction_metadata.json"}   # analysis/, sae/: later stages
    assert set(published) == managed, set(published) ^ managed
    for rel, rec in published.items():
        assert rec["sha256"] == sha256_file(finished_run.outdir / rel), rel


@pytest.mark.parametrize("language", LANGUAGES)
def test_layer_files_keys_shapes_and_order(finished_run, samplesheet, language):
    table = sheet_rows(samplesheet)
    ids = [r["sample_id"] for r in table]
    genders = [r["gender"] for r in table]
    first = None
    for layer in range(NUM_LAYERS):
        d = load(finished_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
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


def test_parquet_metadata(finished_run, samplesheet):
    import pandas as pd

    out = finished_run.outdir
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
        # portable: each image relative to the recorded root; the token strings of every stored position
        root = Path(json.loads((out / "extraction_metadata.json").read_text())["image_root"])
        assert [str(root / rel) for rel in part["image_relative"]] == list(part["image"])
        tokens = pd.read_parquet(out / "metadata/tokens.parquet").query("language == @language")
        assert len(tokens) == int(d["lengths"].sum())
        first = tokens[tokens.sample_id == d["sample_ids"][0]].sort_values("position")
        assert first.token_id.tolist() == d["token_ids"][0, :int(d["lengths"][0])].tolist()

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
def test_layers_equal_an_independent_forward_pass(finished_run, reference, language, layer):
    d = load(finished_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language))
    for i, sample_id in enumerate(d["sample_ids"]):
        ids, hidden_states = reference[language, sample_id]
        n = int(d["lengths"][i])
        assert n == len(ids), f"{sample_id}: {n} positions kept, the sequence has {len(ids)}"
        assert torch.equal(d["token_ids"][i, :n], ids), sample_id
        # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
        where = f"{language} layer {layer} {sample_id}"
        torch.testing.assert_close(d["activations"][i, :n], hidden_states[layer + 1], atol=1e-5, rtol=1e-5,
                                   msg=lambda m, where=where: f"{where}: {m}")


# -- 3. -resume after success, and after damage to the published files ------------------------------
def test_resume_after_success_reruns_nothing_and_repairs_published_files(finished_run):
    """-resume --intervene without --sae: the SAEs the full run published on these layer files are read from the
    outdir (nothing trained), every task is reused, the damaged files are repaired, and the results republished
    unchanged leave no superseded copies behind."""
    out = finished_run.outdir
    truncated = out / LAYER_FILES[1]
    deleted = out / LAYER_FILES[2]
    with open(truncated, "r+b") as fh:   # damage in place, as a crashed copy or a full disk would
        fh.truncate(truncated.stat().st_size // 2)
    deleted.unlink()
    with quiet_offline_trainer():
        again = run_pipeline(finished_run.launchdir, "--intervene", workdir=finished_run.workdir, outdir=out,
                             resume=True, timeout=RUN_TIMEOUT)
    assert_ok(again)
    assert again.trace_file is not None and again.trace_file != finished_run.trained.trace_file
    rows = again.trace()
    assert counts_by_process(rows) == {k: v for k, v in EXPECTED_ALL_TASKS.items()
                                       if k not in ("TRAIN_SAE", "PUBLISH_SAE")}
    assert not list(out.glob("superseded/*/analysis")) and not list(out.glob("superseded/*/intervention"))
    for r in rows:   # every job is reused: extraction, the analysis and the intervention on the published SAEs
        want = "COMPLETED" if process_name(r) in ALWAYS_RUN else "CACHED"
        assert r["status"] == want, (process_name(r), r["status"], status_counts(rows))
    # the shards' files are merged into place again: both repaired, identical to the first run
    assert output_digest(out) == finished_run.digest
    meta = json.loads((out / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed"
    # the SAE result is the same (not republished: this run did not train)
    import pandas as pd
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sae" / "metrics.parquet"), finished_run.metrics)


def test_execution_only_settings_and_one_caption_rerun_only_what_reads_them(tmp_path, finished_run, samplesheet):
    """Same work dir and cache as the full run, a samplesheet with one English caption of shard 1
    edited, and a different batch size and checkpoint interval: only the English units of shard 1 run.
    Into a copy of the full run's outdir, without --sae and with --analysis false: its SAEs, analysis and
    intervention were computed from the old English files, so they are moved aside, not left beside the new ones."""
    rows = sheet_rows(samplesheet)
    for r in rows:
        r["image"] = str((samplesheet.parent / r["image"]).resolve())
    edited = rows[8]["sample_id"]                  # shard 1 holds rows 6-11
    rows[8]["caption_english"] = rows[8]["caption_english"].rstrip(".") + ", smiling."
    sheet = write_sheet(rows, tmp_path / "edited.csv")
    results = tmp_path / "results"
    shutil.copytree(finished_run.outdir, results)
    stages = ("sae", "analysis", "intervention")
    assert all((results / s / "inputs.json").is_file() for s in stages)
    run = run_pipeline(finished_run.launchdir, "--input", sheet, "--batch_size", "3", "--checkpoint_interval", "5",
                       "--analysis", "false", workdir=finished_run.workdir, outdir=results, resume=True, timeout=RUN_TIMEOUT)
    assert_ok(run)
    meta = json.loads((results / "extraction_metadata.json").read_text())
    assert {f"{s}/" for s in stages} <= set(meta["superseded"]), meta["superseded"]
    for s in stages:   # moved whole, not lost; nothing of them left beside the new layer files
        assert not (results / s).exists(), s
        assert len(list(results.glob(f"superseded/*/{s}/inputs.json"))) == 1, s
    extract = {r["tag"]: r["status"] for r in rows_of(run.trace(), "EXTRACT_ACTIVATIONS")}
    rerun = sorted(tag for tag, status in extract.items() if status != "CACHED")
    assert rerun == ["L0-2_english_s1", "L3-5_english_s1"], extract
    digest = output_digest(run.outdir)
    changed = sorted(k for k in digest if digest[k] != finished_run.digest.get(k))
    # every English layer file holds the edited sample; no Arabic file changed
    assert [k for k in changed if k.startswith("layer_checkpoints/")] == sorted(
        f"layer_checkpoints/{schema.layer_filename(layer, 'english')}" for layer in range(NUM_LAYERS)), changed
    d = load(run.outdir / LAYER_FILES[0])
    assert edited in d["sample_ids"]


# -- 4. the head killed while a task runs: the orphaned task and the resumed run ---------------------
def test_head_killed_mid_run_resume_gives_identical_outputs(tmp_path, request):
    n_extract = EXPECTED_TASKS["EXTRACT_ACTIVATIONS"]
    run = start_pipeline(tmp_path, "--analysis", "false")

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

    # a second run into the same outdir while this one works is refused before it submits anything, and writes
    # nothing there (not even its params_<time>.json into the other run's pipeline_info/)
    params_files = sorted((run.outdir / "pipeline_info").glob("params_*.json"))
    rival = run_pipeline(tmp_path / "rival", "--analysis", "false", outdir=run.outdir, timeout=ERROR_TIMEOUT)
    assert rival.returncode != 0 and "is in use by another layerwise run" in rival.output, rival.failure_message()
    assert "Submitted process" not in rival.output
    assert sorted((run.outdir / "pipeline_info").glob("params_*.json")) == params_files

    # SIGKILL to the Nextflow head only: its running tasks carry on as orphans (as SLURM jobs do)
    os.kill(run.process.pid, signal.SIGKILL)
    killed = finish(run)
    assert killed.returncode != 0
    meta = json.loads((killed.outdir / "extraction_metadata.json").read_text())
    assert meta["status"] == "incomplete", "an interrupted run must not look complete"

    # resume at once, while the orphans may still be writing
    resumed = run_pipeline(tmp_path, "--analysis", "false", resume=True, timeout=RUN_TIMEOUT)
    assert_ok(resumed)
    rows = resumed.trace()
    assert counts_by_process(rows) == EXPECTED_TASKS, counts_by_process(rows)
    assert rows_of(rows, "EXTRACT_ACTIVATIONS", "CACHED"), "finished units must be reused"
    assert len(rows_of(rows, "EXTRACT_ACTIVATIONS", "CACHED")) < n_extract
    assert set(status_counts(rows)) <= set(DONE_STATUSES)
    digest = output_digest(resumed.outdir)
    # the shared run's extraction results, asked for only now: this test runs beside the one that makes them
    finished_digest = request.getfixturevalue("finished_run").digest
    assert set(digest) == set(finished_digest)
    assert [k for k in digest if digest[k] != finished_digest[k]] == []


# -- 5. languages, layers, image content; stale results; damage to a hard-linked file; rm -rf work ---
def _own_sheet(tmp_path: Path, samplesheet: Path) -> Path:
    """The fixture samplesheet with its images copied next to it (so that a test may change one)."""
    images = tmp_path / "images"
    images.mkdir()
    rows = sheet_rows(samplesheet)
    for r in rows:
        src = samplesheet.parent / r["image"]
        shutil.copy(src, images / src.name)
        r["image"] = f"images/{src.name}"
    return write_sheet(rows, tmp_path / "samples.csv")


def _extract_status(run) -> dict[str, str]:
    return {r["tag"]: r["status"] for r in rows_of(run.trace(), "EXTRACT_ACTIVATIONS")}


def test_languages_layers_images_stale_files_and_linked_damage(tmp_path, samplesheet, fixture_dir):
    """On the tiny Qwen2-VL (a second model family through the engine: image tokens that depend on the image's
    size, no BOS, its own chat template); every family is checked exactly in-process by tests/unit/test_families.py."""
    sheet = _own_sheet(tmp_path, samplesheet)
    model = tmp_path / "model"                        # a copy, so that its weights can change
    shutil.copytree(fixture_dir / "families" / "qwen2_vl", model)
    common = ("--input", sheet, "--model", model, "--layer_groups", "auto", "--samples_per_task", "0",
              "--analysis", "false")       # (the analysis stage is tested in test_pipeline_sae / test_analysis_planted)

    def go(*args):
        run = run_pipeline(tmp_path, *common, *args, resume=True, timeout=RUN_TIMEOUT)
        assert_ok(run)
        return run

    first = go("--layers", "0-1", "--languages", "english")
    assert _extract_status(first) == {"L0-1_english_s0": "COMPLETED"}
    out = first.outdir
    linked = out / "layer_checkpoints" / schema.layer_filename(0, "english")
    assert linked.stat().st_nlink == 2, "a single-shard file is a hard link to its unit's output (no copy)"

    # adding a language runs only that language
    second = go("--layers", "0-1", "--languages", "english,arabic")
    assert _extract_status(second) == {"L0-1_english_s0": "CACHED", "L0-1_arabic_s0": "COMPLETED"}
    before = {lang: load(out / "layer_checkpoints" / schema.layer_filename(1, lang)) for lang in LANGUAGES}

    # new content behind the same image path re-runs the units that read it, and changes that sample only
    from PIL import Image
    target = tmp_path / "images" / Path(sheet_rows(sheet)[3]["image"]).name
    with Image.open(target) as img:
        Image.new("RGB", img.size, (250, 10, 200)).save(target)
    third = go("--layers", "0-1", "--languages", "english,arabic")
    assert _extract_status(third) == {"L0-1_english_s0": "COMPLETED", "L0-1_arabic_s0": "COMPLETED"}
    for lang in LANGUAGES:
        after = load(out / "layer_checkpoints" / schema.layer_filename(1, lang))
        differs = [i for i in range(N_SAMPLES) if not torch.equal(after["activations"][i], before[lang]["activations"][i])]
        assert differs == [3], (lang, differs)

    # fewer layers and languages: the earlier files are moved aside, never mixed with this result
    go("--layers", "0", "--languages", "english")
    assert sorted(p.name for p in (out / "layer_checkpoints").iterdir()) == [schema.layer_filename(0, "english")]
    meta = json.loads((out / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed" and meta["layers"] == [0] and meta["languages"] == ["english"]
    assert {r["path"] for r in meta["published"] if r["path"].startswith("layer_checkpoints/")} == {
        "layer_checkpoints/layer_0_english.pt"}
    moved = sorted(p.name for p in (out / "superseded").rglob("layer_*.pt"))
    assert moved == sorted(schema.layer_filename(layer, lang) for layer in (0, 1) for lang in LANGUAGES
                           if (layer, lang) != (0, "english"))

    # a hard-linked published file damaged in place (its work copy is the same bytes): -resume re-extracts it
    good = sha256_file(linked)
    with open(linked, "r+b") as fh:
        fh.truncate(linked.stat().st_size - 100)
    fifth = go("--layers", "0", "--languages", "english")
    assert _extract_status(fifth) == {"L0_english_s0": "COMPLETED"}
    assert sha256_file(linked) == good
    assert "was changed since it was published" in fifth.output

    # new weights behind the same model path (here: the weights file rewritten) re-run the unit
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())
    sixth = go("--layers", "0", "--languages", "english")
    assert _extract_status(sixth) == {"L0_english_s0": "COMPLETED"}
    assert sha256_file(linked) == good                # same weights, same values

    # results survive removing work/ and load with plain torch
    shutil.rmtree(sixth.workdir)
    for f in (out / "layer_checkpoints").iterdir():
        assert f.is_file() and not f.is_symlink()
        d = torch.load(f, weights_only=True, mmap=True)
        assert d["activations"].shape[0] == N_SAMPLES


def test_unpublishable_outdir_fails_and_is_not_reported_as_passed(tmp_path, finished_run):
    out = tmp_path / "results"
    out.mkdir()
    (out / "layer_checkpoints").write_text("not a folder")
    run = run_pipeline(finished_run.launchdir, workdir=finished_run.workdir, outdir=out, resume=True, timeout=RUN_TIMEOUT)
    assert run.returncode != 0, run.failure_message()
    assert [r["status"] for r in rows_of(run.trace(), "PUBLISH_RESULTS")] == ["FAILED"]
    meta = json.loads((out / "extraction_metadata.json").read_text())
    assert meta["status"] in ("FAILED", "incomplete"), meta
    assert "completed successfully" not in run.output


# -- 6. bad input fails before any extraction: one of each kind through the engine ---------------------
# (every case is checked in-process by tests/unit/test_early_failures.py; these two prove the checks stop
# a real run: the head's parameter check before anything is submitted, PREFLIGHT's before any GPU job)
def _truncated_image_sheet(tmp_path: Path, samplesheet: Path) -> Path:
    rows = sheet_rows(samplesheet)
    for r in rows:
        r["image"] = str((samplesheet.parent / r["image"]).resolve())
    src = Path(rows[4]["image"])
    cut = tmp_path / f"cut{src.suffix}"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    rows[4]["image"] = str(cut)
    return write_sheet(rows, tmp_path / "broken.csv")


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
        # the summary names the error itself, not a traceback or a progress bar
        summary = [ln for ln in text.splitlines() if ln.strip().startswith("error      :")]
        assert summary and needles[0].lower() in summary[-1].lower(), (summary, needles)
    elif in_preflight is False:  # caught by the parameter check: nothing submitted at all
        assert rows == [] and "Submitted process" not in text, [r["name"] for r in rows]
    layer_dir = run.outdir / "layer_checkpoints"
    assert not layer_dir.exists() or not list(layer_dir.iterdir())
    if run.workdir.exists():
        assert not list(run.workdir.rglob("layer_*_*.pt")), "layer files were written in work/"


def test_bad_parameter_fails_before_anything_is_submitted(tmp_path, fixture_dir):
    run = run_pipeline(tmp_path, "--langauges", "english", timeout=ERROR_TIMEOUT)
    _assert_failed_early(run, ["--langauges", "--languages"], False)


def test_bad_samplesheet_fails_in_preflight(tmp_path, samplesheet):
    sheet = _truncated_image_sheet(tmp_path, samplesheet)
    run = run_pipeline(tmp_path, "--input", sheet, timeout=ERROR_TIMEOUT)
    _assert_failed_early(run, ["row 5", "cut.", str(sheet)], True)    # the user's file, not the staged copy


# -- 7. all layers of a language at once, memory-mapped (no combined file needed) -------------------
def _mapped_file(ptr: int) -> str | None:
    """The file whose mapping holds address `ptr` in this process (/proc/self/maps), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(None, 5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5].strip() if len(parts) == 6 else None
    return None


@pytest.mark.parametrize("language", LANGUAGES)
def test_open_layers_maps_every_layer_without_copying(finished_run, language):
    from layerwise.layerfile.loader import open_layers

    run = open_layers(finished_run.outdir, language)
    assert run["layers"] == list(range(NUM_LAYERS))
    for layer in range(NUM_LAYERS):
        path = finished_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, language)
        d = load(path)
        acts = run["activations"][layer]
        assert torch.equal(acts, d["activations"]) and torch.equal(run["nan_counts"][layer], d["nan_counts"])
        # the tensor's bytes are the file's pages (an mmap of the published file), not a copy in RAM
        assert _mapped_file(acts.untyped_storage().data_ptr()) == str(path.resolve()), layer
    first = load(finished_run.outdir / "layer_checkpoints" / schema.layer_filename(0, language))
    for key in ("sample_ids", "genders", "lengths", "token_ids", "token_kinds"):
        assert (torch.equal(run[key], first[key]) if isinstance(first[key], torch.Tensor) else run[key] == first[key])
