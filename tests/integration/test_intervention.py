"""The intervention stage through the real engine, on the session's shared run (`-resume --sae --intervene`
with the test profile's small options: layer 3, k 4, 2 random runs, the held-out images, 4 new tokens,
the within-language design). Its statistics and hooks are tested in-process (tests/unit/test_intervention_*.py);
here: the jobs the pipeline runs, what it publishes, and that it reads the published SAEs only.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.support.pipeline_helpers import process_name, rows_of

LANGUAGES = ("english", "arabic")
IMAGES, RUNS, K, LAYER = 5, 2, 4, 3


def test_the_intervention_runs_its_jobs_and_publishes_every_table(finished_run):
    rows = finished_run.trained.trace()
    counts = {name: len(rows_of(rows, name)) for name in ("SELECT_LATENTS", "GENERATE_CAPTIONS",
                                                            "SUMMARIZE_INTERVENTION")}
    # 2 baselines (one per caption language), 2 targeted (within), one chunk of 2 random runs per language
    assert counts == {"SELECT_LATENTS": 1, "GENERATE_CAPTIONS": 6, "SUMMARIZE_INTERVENTION": 1}, counts
    assert {r["status"] for r in rows if process_name(r) in counts} == {"COMPLETED"}
    out = finished_run.outdir / "intervention"
    for name in ("captions.parquet", "terms.parquet", "latents.parquet", "controls.parquet", "summary.parquet",
                 "overlap.parquet", "report.html"):
        assert (out / name).is_file(), name


def test_captions_of_every_condition_for_held_out_images(finished_run):
    out = finished_run.outdir
    captions = pd.read_parquet(out / "intervention" / "captions.parquet")
    per = captions.groupby(["condition", "caption_language"]).size().to_dict()
    assert per == {(c, lang): IMAGES * (RUNS if c == "random" else 1) for c in ("baseline", "targeted", "random")
                   for lang in LANGUAGES}, per
    split = json.loads((out / "sae" / f"layer_{LAYER}" / "split.json").read_text())
    assert set(captions.sample_id) <= set(split["validation"])          # never the SAE's training samples
    assert captions.groupby("condition").sample_id.nunique().eq(IMAGES).all()


def test_summary_and_latents(finished_run):
    out = finished_run.outdir / "intervention"
    summary = pd.read_parquet(out / "summary.parquet")
    assert sorted(zip(summary.feature_language, summary.caption_language)) == sorted((x, x) for x in LANGUAGES)
    assert set(summary.k) == {K} and set(summary.runs) == {RUNS} and set(summary.layers) == {str(LAYER)}
    latents = pd.read_parquet(out / "latents.parquet")
    chosen = latents[latents.selected]
    assert chosen.groupby("feature_language").size().to_dict() == {lang: K for lang in LANGUAGES}
    assert not chosen.dead.any()
    controls = pd.read_parquet(out / "controls.parquet")
    assert controls.groupby(["feature_language", "run"]).size().eq(K).all()
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_generation_reads_the_published_saes(finished_run):
    """Every SAE folder a GENERATE_CAPTIONS task staged is one PUBLISH_SAE placed in the outdir."""
    rows = rows_of(finished_run.trained.trace(), "GENERATE_CAPTIONS")
    staged = [p for r in rows for p in (Path(r["workdir"]) / "sae").iterdir()]
    assert staged
    for link in staged:
        assert link.resolve().parent == (finished_run.outdir / "sae").resolve(), link
