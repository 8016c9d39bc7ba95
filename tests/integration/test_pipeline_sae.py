"""SAE training as a stage of the pipeline (--sae), on the tiny Gemma 3 fixture, through the real engine.

On the session's shared `finished_run` (tests/integration/conftest.py): an extraction-only run
(--analysis false), as a user's finished run, then the same with -resume --sae: SAEs are trained (and
analysed) without re-extracting. (-resume --sae again re-runs nothing: tests/integration/test_pipeline.py.)
The SAEs are checked from the outputs alone: each folder is loaded with `sae_lens.SAE.load_from_disk`
and its held-out explained variance is recomputed from the published layer files with plain torch
(own reading, own row selection, own formula), not with layerwise.sae's code.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.support.pipeline_helpers import rows_of, status_counts

LAYERS, LANGUAGES = range(6), ("english", "arabic")
PAD, BOS = 0, 1                              # layerwise.core.schema.TOKEN_KINDS (tests/unit/test_layerfile.py pins them)
EV_MARGIN = 0.3     # held-out EV over the mean-reconstruction baseline; the test profile gets ~0.6-0.75


def test_adding_sae_to_a_finished_extraction_trains_without_re_extracting(finished_run):
    rows = finished_run.trained.trace()
    assert {r["status"] for r in rows_of(rows, "EXTRACT_ACTIVATIONS")} == {"CACHED"}, status_counts(rows)
    train = rows_of(rows, "TRAIN_SAE")
    assert len(train) == len(LAYERS) and {r["status"] for r in train} == {"COMPLETED"}
    assert [r["status"] for r in rows_of(rows, "ANALYZE_LAYERS")] == ["COMPLETED"]
    # the tag counts the layer files it reads (never a single file's size)
    assert [r["tag"] for r in rows_of(rows, "ANALYZE_LAYERS")] == [f"{len(LAYERS) * len(LANGUAGES)} layer file(s)"]
    out = finished_run.trained.outdir
    folders = sorted(p.name for p in (out / "sae").iterdir() if p.is_dir())
    assert folders == sorted([f"layer_{i}" for i in LAYERS] + ["figures"])     # one SAE per layer; the report's figures
    assert sorted(p.suffix for p in (out / "sae" / "figures").iterdir()) == [".csv", ".pdf", ".svg"]


def test_metrics_table_has_a_train_and_a_validation_row_per_layer(finished_run):
    m = finished_run.metrics
    for col in ("layer", "language", "architecture", "d_sae", "split", "explained_variance", "mse", "mean_l0",
                "dead_fraction", "tokens_seen"):
        assert col in m.columns, col
    assert sorted(zip(m.layer, m.split)) == sorted((i, s) for i in LAYERS for s in ("train", "validation"))
    assert set(m.language) == {"pooled"} and set(m.languages) == {"arabic,english"}
    assert set(m.architecture) == {"topk"} and set(m.d_sae) == {128} and set(m.mean_l0) == {16.0}


def _layer(out, layer, language):
    return torch.load(out / "layer_checkpoints" / f"layer_{layer}_{language}.pt", mmap=True, weights_only=True)


def _rows(data, ids: set[str]) -> torch.Tensor:
    """Every stored position of the samples `ids` except padding and <bos> (the default drop_kinds)."""
    keep = []
    for i, sid in enumerate(data["sample_ids"]):
        if sid in ids:
            n = int(data["lengths"][i])
            kinds = data["token_kinds"][i, :n]
            keep.append(data["activations"][i, :n][(kinds != PAD) & (kinds != BOS)].double())
    return torch.cat(keep)


@pytest.mark.parametrize("layer", LAYERS)
def test_every_sae_loads_and_its_held_out_explained_variance_is_what_was_reported(finished_run, layer):
    from sae_lens import SAE

    out = finished_run.trained.outdir
    folder = out / "sae" / f"layer_{layer}"
    sae = SAE.load_from_disk(str(folder), device="cpu")
    split = json.loads((folder / "split.json").read_text())
    train_ids, val_ids = set(split["train"]), set(split["validation"])
    assert train_ids and val_ids and not train_ids & val_ids           # by sample: never on both sides
    files = {lang: _layer(out, layer, lang) for lang in LANGUAGES}
    assert train_ids | val_ids == set(files["english"]["sample_ids"])
    x_val = torch.cat([_rows(files[lang], val_ids) for lang in LANGUAGES])
    x_train = torch.cat([_rows(files[lang], train_ids) for lang in LANGUAGES])
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x_val.float())).double()
    total = ((x_val - x_val.mean(0)) ** 2).sum()
    ev = 1 - ((x_val - x_hat) ** 2).sum() / total
    baseline = 1 - ((x_val - x_train.mean(0)) ** 2).sum() / total      # reconstruct every row by the train mean

    m = finished_run.metrics
    rec = m[(m.layer == layer) & (m.split == "validation")].iloc[0]
    assert rec.tokens == x_val.shape[0]
    assert abs(rec.explained_variance - float(ev)) < 1e-4, (rec.explained_variance, float(ev))
    assert float(baseline) <= 0.0
    assert float(ev) - float(baseline) > EV_MARGIN, (float(ev), float(baseline))


def test_sae_report_and_analysis_of_the_sae_latents(finished_run):
    out = finished_run.trained.outdir
    html = (out / "sae" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    for layer in LAYERS:
        assert f"<td>{layer}</td>" in html
    # every layer's SAE was analysed: latents listed, or the reason they are not (12 samples are too few
    # for a selection and a held-out half of the SAE's validation samples) recorded as a note
    meta = json.loads((out / "analysis" / "analysis.json").read_text())
    assert len(meta["sae_dirs"]) == len(LAYERS)
    features = pd.read_parquet(out / "analysis" / "sae_features.parquet")
    skipped = {n["layer"] for n in meta["notes"] if n["stage"] == "sae" and "too few samples" in n["message"]}
    assert set(features.layer) | skipped == set(LAYERS)


def test_every_sae_has_a_dashboard_with_the_runs_token_strings_and_images(finished_run):
    """TRAIN_SAE reads the published token and samples tables: the dashboards show token strings and thumbnails
    (neither "not available" note), and the SAE report links each one."""
    out = finished_run.trained.outdir
    report = (out / "sae" / "report.html").read_text()
    for layer in LAYERS:
        folder = out / "sae" / f"layer_{layer}"
        page = (folder / "dashboard.html").read_text()
        assert "data:image/jpeg;base64," in page and "http://" not in page and "https://" not in page
        training = json.loads((folder / "training.json").read_text())
        assert not [n for n in training["dashboard"]["notes"] if "not available" in n], training["dashboard"]
        table = pd.read_parquet(folder / "dashboard.parquet")
        assert len(table) and set(table.layer) == {layer} and table.max_token.notna().all()
        assert f"layer_{layer}/dashboard.html" in report


def test_every_report_listed_for_seqera_platform_exists(finished_run):
    """tower.yml's Reports-tab patterns each match a file that a --sae run publishes."""
    import yaml

    from tests.support.pipeline_helpers import ROOT

    out = finished_run.trained.outdir
    patterns = yaml.safe_load((ROOT / "tower.yml").read_text())["reports"]
    for pattern in patterns:
        assert list(out.glob(pattern)), f"tower.yml lists {pattern}, which the run did not publish"


def test_every_stage_after_publishing_reads_published_outputs_only(finished_run):
    """The one rule of the outdir protocol: TRAIN_SAE, ANALYZE_LAYERS and the intervention stage every input
    they stage (layer files, samplesheet, SAE folders and their record) from the outdir that the PUBLISH_* tasks wrote, never from
    another task's work folder."""
    from pathlib import Path

    outdir = finished_run.outdir.resolve()
    rows = finished_run.trained.trace()
    checked = 0
    for name in ("TRAIN_SAE", "ANALYZE_LAYERS", "SELECT_LATENTS", "GENERATE_CAPTIONS"):
        for r in rows_of(rows, name):
            work = Path(r["workdir"])
            for folder in ("activations", "sae", "sae_record", "input"):
                for link in (work / folder).iterdir() if (work / folder).is_dir() else ():
                    target = link.resolve()
                    if name == "GENERATE_CAPTIONS" and folder == "input":   # SELECT_LATENTS' evaluation sheet
                        continue
                    assert outdir in target.parents, f"{name} staged {link.name} from {target}"
                    checked += 1
    assert checked > 0
