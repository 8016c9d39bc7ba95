"""The analysis stage on planted signals, end to end: the pipeline (`-profile test`, the tiny Gemma 3)
runs on data whose answer is known (tests/planted_data.py), and its own ANALYZE_LAYERS output
(`<outdir>/analysis/`) is checked against that answer, not against the code's own output:

* run A, **image signal** (`english` only): the image carries the label, every caption is the same
  neutral sentence. The image view decodes gender far above the shuffled-label control.
* run B, **caption signal** (`english`, `neutral`): every sample shows the same pixels. In `english`
  the caption names the label ("a boy" / "a girl"): the caption view decodes it, the image and
  prompt views cannot (Gemma 3 is causal and they come before the caption; their vectors are the
  same in every sample). In `neutral` ("a child") the labels are independent of everything the
  model sees: every probe stays in the control band.

Plus: a view the stored token selection lacks is skipped with a note, the tables' columns, the
report rendered in headless Chromium (scripts/screenshot-report.sh) and self-contained, and
docs/output.md documenting every column. Two pipeline runs in all, launched side by side and shared by
the tests (about 2-3 minutes on a 2-core machine).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from layerwise.analysis import outputs
from layerwise.core import schema
from tests.support.pipeline_helpers import ROOT, finish, kill_process_group, start_pipeline
from tests.support.planted_data import write_caption_signal, write_image_signal

N_SAMPLES = 40            # 20 per class: 8 held-out samples per fold
FOLDS = 5
PERMUTATIONS = 20         # smallest possible p-value 1/21
# The data seed; LAYERWISE_PLANTED_SEED=1 (2, ...) re-checks the thresholds on other planted data.
DATA_SEED = int(os.environ.get("LAYERWISE_PLANTED_SEED", "0"))
NUM_LAYERS = 6
RUN_TIMEOUT = 1200
CLASSES = f"female:{N_SAMPLES // 2},male:{N_SAMPLES // 2}"
ISSUE_PROBE_COLUMNS = ["layer", "language", "view", "accuracy", "accuracy_std", "control_accuracy", "p_value",
                       "n_samples", "classes"]
VIEWS = ("image", "prompt", "caption", "all")

# -- the control band --------------------------------------------------------------------------
# probes.parquet gives, per (layer, language, view), the shuffled-label control's mean
# (`control_accuracy`) and its std over the permutations (`control_std`). The report draws the
# band control_accuracy +- 2 control_std; under the null an accuracy is one more draw from that
# distribution.
#
# Signal: the accuracy clears the band's upper edge (+2 std) by SIGNAL_MARGIN more, and every
# shuffled-label control is below it (p_value = 1/21). Measured on data seeds 0, 1, 2 (docs/
# analysis.md, "Planted-signal checks"): planted signals at 0.90-1.00 against upper edges of
# 0.59-0.79, so the smallest margin over edge + SIGNAL_MARGIN was 0.11.
#
# Null: |accuracy - control_accuracy| <= NULL_STD control_std + 1/n. Three std rather than the
# report's two because the null checks are joint: ~36 null probes per run at 2 std would put about
# two outside by chance alone (if they were independent; layers of one view move together, which
# makes a joint excursion likelier still), at 3 std ~0.1. Measured on seeds 0-2, the `neutral`
# probes stayed within 2.2 std. The 1/n (one sample's worth of accuracy) covers a band of width
# zero: a view whose vectors are identical in every sample has control_std 0.
BAND_STD = 2
SIGNAL_MARGIN = 0.10
NULL_STD = 3
SIGNIFICANT = 0.05


def band_upper(df: pd.DataFrame) -> pd.Series:
    return df.control_accuracy + BAND_STD * df.control_std


def above_band(df: pd.DataFrame) -> pd.Series:
    return (df.accuracy >= band_upper(df) + SIGNAL_MARGIN) & (df.p_value <= SIGNIFICANT)


def in_null_band(df: pd.DataFrame) -> pd.Series:
    return (df.accuracy - df.control_accuracy).abs() <= NULL_STD * df.control_std + 1 / df.n_samples


def show(df: pd.DataFrame) -> str:
    cols = ["layer", "language", "view", "accuracy", "control_accuracy", "control_std", "p_value"]
    return "\n" + df[cols].round(3).to_string(index=False)


# -- the two pipeline runs ---------------------------------------------------------------------
def _start(base: Path, data, *extra: str):
    return start_pipeline(base, "--input", data.samplesheet, "--prompts", data.prompts,
                          "--languages", ",".join(data.languages), "--layer_groups", "1", "--samples_per_task", "0",
                          "--analysis_folds", FOLDS, "--analysis_permutations", PERMUTATIONS, "--analysis_seed", 0,
                          *extra, profile="test")


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory, tiny_model_dir):
    """Both runs, launched side by side (two engines at once: much of a run is waiting between tasks).
    Run A: image signal, neutral captions; it also asks for the `last` view, which `all` files lack.
    Run B: identical pixels, `english` captions name the label, `neutral` captions do not."""
    image_base, caption_base = tmp_path_factory.mktemp("planted_image"), tmp_path_factory.mktemp("planted_caption")
    runs = {"image": _start(image_base, write_image_signal(image_base / "data", N_SAMPLES, DATA_SEED),
                            "--analysis_views", "image,prompt,caption,all,last"),
            "caption": _start(caption_base, write_caption_signal(caption_base / "data", N_SAMPLES, DATA_SEED))}
    try:
        for run in runs.values():
            finish(run, timeout=RUN_TIMEOUT)
    finally:
        for run in runs.values():
            kill_process_group(run.process)
    for run in runs.values():
        assert not run.timed_out and run.returncode == 0, run.failure_message()
        analysis = run.outdir / "analysis"
        assert (analysis / outputs.PROBES).is_file(), f"no {outputs.PROBES} from the pipeline\n{run.failure_message()}"
    return runs


@pytest.fixture(scope="module")
def image_run(planted_runs):
    return planted_runs["image"]


@pytest.fixture(scope="module")
def caption_run(planted_runs):
    return planted_runs["caption"]


def probes_of(run) -> pd.DataFrame:
    return pd.read_parquet(run.outdir / "analysis" / outputs.PROBES)


# -- the tables --------------------------------------------------------------------------------
def test_probe_table_has_the_issue_columns_and_reports_classes_and_counts(image_run, caption_run):
    for run, languages in ((image_run, ["english"]), (caption_run, ["english", "neutral"])):
        p = probes_of(run)
        # the issue's columns, in its order, then the documented extras (control_std, ...)
        assert [c for c in p.columns if c in ISSUE_PROBE_COLUMNS] == ISSUE_PROBE_COLUMNS
        assert list(p.columns) == outputs.PROBE_COLUMNS
        assert sorted(zip(p.layer, p.language, p.view)) == sorted(
            (layer, lang, view) for layer in range(NUM_LAYERS) for lang in languages for view in VIEWS)
        assert (p.classes == CLASSES).all() and (p.n_samples == N_SAMPLES).all(), p[["classes", "n_samples"]]
        assert (p.n_folds == FOLDS).all() and (p.n_permutations == PERMUTATIONS).all()
        assert p[["accuracy", "accuracy_std", "control_accuracy", "control_std", "p_value"]].notna().all().all()
        assert ((p.p_value >= 1 / (1 + PERMUTATIONS) - 1e-12) & (p.p_value <= 1)).all()
        summary = json.loads((run.outdir / "analysis" / outputs.SUMMARY).read_text())
        assert summary["options"]["folds"] == FOLDS and summary["options"]["permutations"] == PERMUTATIONS
        assert summary["languages"] == languages and summary["layers"] == list(range(NUM_LAYERS))


def test_a_view_the_token_selection_lacks_is_skipped_with_a_note(image_run):
    """`--analysis_views ...,last` on `--token_selection all` files: no `last` rows, one note per file."""
    assert "last" not in set(probes_of(image_run).view)
    summary = json.loads((image_run.outdir / "analysis" / outputs.SUMMARY).read_text())
    notes = [n for n in summary["notes"] if n["stage"] == "views" and "'last' skipped" in n["message"]]
    assert sorted((n["layer"], n["language"]) for n in notes) == [(layer, "english") for layer in range(NUM_LAYERS)]
    assert all("token selection 'all'" in n["message"] for n in notes), notes
    html = (image_run.outdir / "analysis" / outputs.REPORT).read_text(encoding="utf-8")
    assert "&#39;last&#39; skipped" in html or "'last' skipped" in html


# -- planted signals ---------------------------------------------------------------------------
def test_image_signal_is_decoded_from_the_image_view(image_run):
    p = probes_of(image_run)
    image = p[p.view == "image"].sort_values("layer")
    assert above_band(image).sum() >= NUM_LAYERS - 1, "image view not above the control band" + show(image)
    assert (image.accuracy >= 0.9).sum() >= NUM_LAYERS - 1, show(image)


def test_caption_signal_is_decoded_from_the_caption_view(caption_run):
    p = probes_of(caption_run)
    caption = p[(p.language == "english") & (p.view == "caption")].sort_values("layer")
    assert above_band(caption).sum() >= NUM_LAYERS - 1, "caption view not above the control band" + show(caption)
    # layer 0 is where the word itself is: lexical leakage at its plainest
    assert above_band(caption[caption.layer == 0]).all(), show(caption)


def _view_rows(path: Path, kind: str) -> torch.Tensor:
    """[N, positions of `kind`, H] of a padded `all` layer file (every sample has the same count)."""
    d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert d["layout"] == "padded" and d["token_selection"] == "all"
    kinds = d["token_kinds"]
    mask = kinds == schema.TOKEN_KINDS[kind]
    counts = mask.sum(dim=1)
    assert (counts == counts[0]).all() and counts[0] > 0
    return d["activations"][mask].reshape(len(kinds), int(counts[0]), -1)


def test_image_tokens_cannot_see_the_caption(caption_run):
    """The premise of the image-view check: identical pixels and a causal model give image (and
    prompt) positions that are the same in every sample, whatever its caption, in every layer."""
    for layer in range(NUM_LAYERS):
        for lang in ("english", "neutral"):
            path = caption_run.outdir / "layer_checkpoints" / schema.layer_filename(layer, lang)
            for kind in ("image", "prompt"):
                rows = _view_rows(path, kind)
                spread = (rows - rows[:1]).abs().max().item()
                assert spread == 0, f"{path.name}: {kind} positions differ between samples by {spread}"


def test_image_view_stays_at_chance_when_only_the_caption_carries_the_label(caption_run):
    p = probes_of(caption_run)
    before = p[(p.language == "english") & p.view.isin(["image", "prompt"])].sort_values(["view", "layer"])
    assert len(before) == 2 * NUM_LAYERS
    assert in_null_band(before).all(), "image/prompt view outside the control band" + show(before)
    assert (before.accuracy <= before.chance + 1 / N_SAMPLES).all(), show(before)


def test_an_information_free_view_is_not_significant(caption_run):
    """Views whose vectors are identical in every sample (test above) carry no information about
    the label, so no shuffled-label control can do worse than the probe: p must not be small.

    (A control that keeps the folds stratified for the true labels only puts the permuted labels
    off balance in every fold; a constant probe then scores below 0.5 under every permutation and
    its exact 0.5 looks significant. Permutation controls must re-stratify on the permuted labels,
    as sklearn's permutation_test_score does.)"""
    p = probes_of(caption_run)
    constant = p[p.view.isin(["image", "prompt"])].sort_values(["language", "view", "layer"])
    assert (constant.p_value > SIGNIFICANT).all(), "information-free views look significant" + show(constant)


def test_labels_independent_of_the_input_stay_in_the_control_band(caption_run):
    p = probes_of(caption_run)
    neutral = p[p.language == "neutral"].sort_values(["view", "layer"])
    assert len(neutral) == NUM_LAYERS * len(VIEWS)
    assert in_null_band(neutral).all(), "a probe outside the control band" + show(neutral[~in_null_band(neutral)])
    assert not above_band(neutral).any(), show(neutral)


# -- the report --------------------------------------------------------------------------------
SHOT_SIZE = (1400, 2800)     # the whole page of run B at this width (six figures)
# matplotlib colours the report draws with: views image (C0), caption (C2), all (C3); CKA (viridis top)
PLOT_COLOURS = {"image view": (31, 119, 180), "caption view": (44, 160, 44), "all view": (214, 39, 40),
                "CKA heatmap (viridis)": (253, 231, 37)}


def test_report_renders_in_headless_chromium(caption_run, tmp_path):
    report = caption_run.outdir / "analysis" / outputs.REPORT
    png = tmp_path / "report.png"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "screenshot-report.sh"), str(report), str(png),
                           "x".join(map(str, SHOT_SIZE))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"screenshot failed:\n{done.stdout}\n{done.stderr}"
    shot = Image.open(png)
    assert shot.size == SHOT_SIZE
    a = np.asarray(shot.convert("RGB")).astype(np.int16)
    non_white = float((a.min(axis=2) < 240).mean())
    distinct = len(np.unique(a.reshape(-1, 3) // 4, axis=0))
    assert non_white > 0.08, f"mostly blank: {non_white:.3f} of the pixels are not white"
    assert distinct > 500, f"only {distinct} distinct colours: no figures rendered?"
    for name, rgb in PLOT_COLOURS.items():
        near = int((np.abs(a - np.array(rgb)).max(axis=2) <= 12).sum())
        assert near > 100, f"{name}: {near} pixels of {rgb} in the screenshot"   # a line is a few hundred


def test_report_embeds_every_figure_and_is_self_contained(caption_run):
    html = (caption_run.outdir / "analysis" / outputs.REPORT).read_text(encoding="utf-8")
    srcs = re.findall(r"\bsrc\s*=\s*[\"']([^\"']*)[\"']", html, flags=re.I)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    figures = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in srcs]
    # probes, directions, CKA heatmaps, adjacent-layer CKA, cross-lingual (no SAE in this run)
    assert len(figures) >= 5 and all(f.format == "PNG" and min(f.size) >= 200 for f in figures), \
        [f.size for f in figures]
    for alt in ("probe accuracy vs layer", "gender directions", "CKA heatmaps", "adjacent-layer CKA",
                "cross-lingual similarity"):
        assert f'alt="{alt}"' in html, alt
    assert not re.search(r"\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", html, flags=re.I)
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", html, flags=re.I)
    assert not re.search(r"<link\b[^>]*\brel\s*=\s*[\"']?stylesheet", html, flags=re.I)
    assert not re.search(r"@import|url\(\s*[\"']?\s*(?:https?:)?//", html, flags=re.I)


# -- documentation -----------------------------------------------------------------------------
def documented_columns(doc: str) -> dict[str, set[str]]:
    """file name -> the `names` in the first cells of the table under '### `analysis/<file>`'."""
    out = {}
    for m in re.finditer(r"^### `analysis/([a-z_]+\.parquet)`(.*?)(?=^##|\Z)", doc, flags=re.S | re.M):
        cells = re.findall(r"^\| ([^|]+)\|", m.group(2), flags=re.M)
        out[m.group(1)] = {name for cell in cells for name in re.findall(r"`([a-z0-9_]+)`", cell)}
    return out


def test_docs_output_md_documents_every_column(image_run, caption_run):
    documented = documented_columns((ROOT / "docs" / "output.md").read_text(encoding="utf-8"))
    written = 0
    for run in (image_run, caption_run):
        for path in sorted((run.outdir / "analysis").glob("*.parquet")):
            columns = list(pd.read_parquet(path).columns)
            assert path.name in documented, f"docs/output.md has no section ### `analysis/{path.name}`"
            missing = sorted(set(columns) - documented[path.name])
            assert not missing, f"docs/output.md, analysis/{path.name}: undocumented columns {missing}"
            written += 1
    assert written == 2 * 4           # probes, directions, cka, crosslingual per run (no SAE)
    for name, columns in outputs.TABLES.items():      # sae_features.parquet too, written only with SAEs
        assert set(columns) <= documented.get(name, set()), f"docs/output.md, analysis/{name}"
