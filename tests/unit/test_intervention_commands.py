"""The intervention stage's three commands end to end, in-process, on the tiny Gemma 3: published layer files and
SAEs -> layerwise-select-latents -> layerwise-intervene (every job) -> layerwise-summarize-intervention.

Checks what the commands add to their parts (tested in test_intervention_select/hooks/stats): the jobs of the
design, the evaluation images are held out, chunks of random runs do not depend on the number of runs, an empty
latent set (k latents ablated with scale 1) gives the baseline's captions, reruns are identical, and the outputs
the summary and report read are all there.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from layerwise.core import schema
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.preflight.samplesheet import read_samplesheet, write_valid_samplesheet
from tests.support.command_runner import run_in_process

pytestmark = pytest.mark.usefixtures("quiet_offline_trainer")
LANGUAGES = ("english", "arabic")
LAYER = 3


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir, samplesheet):
    """Layer files of layer 3 in both languages and one pooled SAE on them, as the pipeline publishes them."""
    from layerwise.sae.options import SAEOptions
    from layerwise.sae.train import train_layer_sae

    root = tmp_path_factory.mktemp("intervention")
    sheet = write_valid_samplesheet(read_samplesheet(samplesheet, list(LANGUAGES)), root / "samplesheet.valid.csv")
    files = []
    for lang in LANGUAGES:
        cfg = UnitConfig(samplesheet=str(sheet), model=str(tiny_model_dir), language=lang, layers=str(LAYER),
                         out_dir=str(root / "units" / lang), dtype="float32", device="cpu", batch_size=4)
        run_unit(cfg)
        files.append(root / "units" / lang / schema.layer_filename(LAYER, lang))
    options = SAEOptions(architecture="topk", k=4, d_sae=32, epochs=2, batch_size=64, chunk_tokens=64,
                         buffer_tokens=256, validation_fraction=0.4, device="cpu", norm_estimate_batches=2)
    records = train_layer_sae(files, root / "sae", options)
    return {"root": root, "sheet": sheet, "files": files, "sae": root / "sae" / records[0]["sae_dir"]}


def select(capsys, published, out: Path, **options) -> list[Path]:
    opts = out.parent / f"{out.name}.options.json"
    opts.write_text(json.dumps({"layers": str(LAYER), "k": 4, "runs": 4, "chunk_runs": 2, "images": 4,
                                "max_new_tokens": 4, "batch_size": 2, **options}))
    code, stdout, err = run_in_process("select-latents", ["--samplesheet", published["sheet"], "--options-json", opts,
                                                          "--num-layers", 6, "--sae-dir", published["sae"],
                                                          "--out-dir", out, *published["files"]], capsys)
    assert code == 0, err
    return sorted((out / "jobs").glob("*.json"))


def test_select_latents_plans_the_design_and_holds_out_the_evaluation_images(capsys, tmp_path, published):
    jobs = select(capsys, published, tmp_path / "sel")
    names = [p.stem for p in jobs]
    # baseline per caption language; targeted per pair of the 2 x 2 design; random runs in chunks of 2 (0-1, 2-3)
    assert sum(n.startswith("baseline") for n in names) == 2
    assert sum(n.startswith("targeted") for n in names) == 4
    assert sum(n.startswith("random") for n in names) == 8
    split = json.loads((published["sae"] / "split.json").read_text())
    evaluation = pd.read_csv(tmp_path / "sel" / "evaluation.csv", dtype=str, keep_default_na=False)
    assert set(evaluation.sample_id) <= set(split["validation"]) and len(evaluation) <= 4
    latents = pd.read_parquet(tmp_path / "sel" / "latents.parquet")
    assert set(latents.feature_language) == set(LANGUAGES) and int(latents.selected.sum()) == 2 * 4
    # raising the runs keeps the earlier chunks' files byte for byte
    more = {p.name: p for p in select(capsys, published, tmp_path / "more", runs=6)}
    assert len(more) == len(jobs) + 4              # the new chunk (runs 4-5) for each pair ...
    for p in jobs:                                 # ... and every earlier job file byte for byte
        assert more[p.name].read_bytes() == p.read_bytes(), p.name


def test_intervene_and_summarize(capsys, tmp_path, published, tiny_model_dir):
    jobs = select(capsys, published, tmp_path / "sel", design="within", runs=2)
    opts = tmp_path / "sel.options.json"
    captions = []
    for job in jobs:
        out = tmp_path / "captions" / f"{job.stem}.parquet"
        code, _, err = run_in_process("intervene", ["--job", job, "--evaluation", tmp_path / "sel" / "evaluation.csv",
                                                    "--model", tiny_model_dir, "--options-json", opts,
                                                    "--sae-dir", published["sae"], "--dtype", "float32",
                                                    "--device", "cpu", "--out", out], capsys)
        assert code == 0, err
        captions.append(out)
    table = pd.concat([pd.read_parquet(p) for p in captions])
    assert set(table.condition) == {"baseline", "targeted", "random"}
    assert (table.caption.str.len() > 0).all()
    # a rerun of a job gives identical captions
    again = tmp_path / "again.parquet"
    code, _, err = run_in_process("intervene", ["--job", jobs[-1], "--evaluation", tmp_path / "sel" / "evaluation.csv",
                                                "--model", tiny_model_dir, "--options-json", opts, "--sae-dir",
                                                published["sae"], "--dtype", "float32", "--device", "cpu",
                                                "--out", again], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(again), pd.read_parquet(captions[-1]))
    code, _, err = run_in_process("summarize-intervention", ["--options-json", opts, "--model-id", tiny_model_dir,
                                                             "--model-type", "gemma3", "--selection", tmp_path / "sel",
                                                             "--out-dir", tmp_path / "intervention", *captions], capsys)
    assert code == 0, err
    out = tmp_path / "intervention"
    for name in ("captions.parquet", "terms.parquet", "summary.parquet", "latents.parquet", "controls.parquet",
                 "report.html"):
        assert (out / name).is_file(), name
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == len(LANGUAGES)          # within: one row per language
    assert set(summary.k) == {4} and set(summary.runs) == {2}
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_an_ablation_with_scale_one_is_the_baseline(capsys, tmp_path, published, tiny_model_dir):
    """scale 1 keeps every selected latent's contribution: the residual hook is then the identity."""
    jobs = select(capsys, published, tmp_path / "sel", design="within", runs=1, scale=1.0)
    opts = tmp_path / "sel.options.json"
    out = {}
    for job in [j for j in jobs if j.stem.startswith(("baseline", "targeted")) and j.stem.endswith("english")]:
        path = tmp_path / f"{job.stem}.parquet"
        code, _, err = run_in_process("intervene", ["--job", job, "--evaluation", tmp_path / "sel" / "evaluation.csv",
                                                    "--model", tiny_model_dir, "--options-json", opts,
                                                    "--sae-dir", published["sae"], "--dtype", "float32",
                                                    "--device", "cpu", "--out", path], capsys)
        assert code == 0, err
        out[job.stem.split("_")[0]] = pd.read_parquet(path).caption.tolist()
    assert out["targeted"] == out["baseline"]
