"""Label leakage said out loud: a samplesheet's `label_leaks` marks the caption views in probes.parquet and the report.

`layerwise label` writes `label_leaks` (the caption columns the model reads that hold the gendered word the
label came from). The probes of a (language, view) that reads that language's caption (`caption`, `all`,
`last`; `mean` files give `caption`) are `label_leak` True; the image and prompt views, which come before the
caption in causal order, never are. The expected pairs below are written out by hand per case.
"""
from __future__ import annotations

import csv
import json
import re

import pandas as pd
import pytest

from layerwise.analysis import analyze, outputs
from layerwise.analysis.labels import label_leaks_from_samplesheet
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

FAST = {"folds": 3, "permutations": 2, "seed": 0}
PROBED = ("male", "female")


def write_sheet(path, run, leaks_of=None):
    """A samplesheet for the synthetic run: one image per sample; `leaks_of(gender) -> label_leaks cell`
    adds the label_leaks column (None: no such column)."""
    header = ["sample_id", "image", "gender"] + (["label_leaks"] if leaks_of else [])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for sid, g in zip(run.sample_ids, run.genders):
            w.writerow([sid, f"images/{sid}.png", g] + ([leaks_of(g)] if leaks_of else []))
    return path


def marked(probes: pd.DataFrame) -> set[tuple[str, str]]:
    """(language, view) pairs whose probes are marked, checking that every layer of a pair agrees."""
    per_pair = probes.groupby(["language", "view"]).label_leak.agg(["all", "any"])
    assert (per_pair["all"] == per_pair["any"]).all(), per_pair
    return {pair for pair, row in per_pair.iterrows() if row["all"]}


def leak_paragraph(html: str) -> str:
    m = re.search(r'<p[^>]*id="label-leakage"[^>]*>(.*?)</p>', html, flags=re.S)
    return re.sub(r"\s+", " ", m.group(1)) if m else ""


@pytest.fixture
def titles(monkeypatch):
    """Every panel title the report's figures set (the panels are PNGs: read them where they are drawn)."""
    from matplotlib.axes import Axes

    seen: list[str] = []
    original = Axes.set_title

    def record(self, label, *args, **kwargs):
        seen.append(label)
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", record)
    return seen


def test_the_caption_views_of_the_leaking_language_are_marked_through_the_command(tmp_path, titles):
    """English captions gave the labels, Arabic ones did not: only english caption and all are marked."""
    from layerwise.commands.analyze import main

    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0, 1),
                                                                signal={"caption": 2.0}))
    sheet = write_sheet(tmp_path / "samplesheet.valid.csv", run,
                        lambda g: "caption_english" if g in PROBED else "")
    out = tmp_path / "out"
    assert main(["--out-dir", str(out), "--folds", "3", "--permutations", "2", "--samplesheet", str(sheet),
                 *map(str, run.paths)]) == 0

    probes = pd.read_parquet(out / outputs.PROBES)
    assert probes.label_leak.dtype == bool
    assert set(zip(probes.language, probes.view)) == {(lang, v) for lang in ("english", "arabic")
                                                      for v in ("image", "prompt", "caption", "all")}
    assert marked(probes) == {("english", "caption"), ("english", "all")}

    html = (out / outputs.REPORT).read_text(encoding="utf-8")
    said = leak_paragraph(html)
    n_probed = sum(g in PROBED for g in run.genders)
    assert f"english {n_probed} of {n_probed} probed samples" in said
    assert "(english: caption, all;" in said and "arabic" not in said
    assert "image view is the clean one" in said and "causal order" in said
    # the panels of the marked pairs say so; the others keep their plain title
    assert {"english / caption: label leaks", "english / all: label leaks"} <= set(titles)
    assert "arabic / caption" in titles and "arabic / caption: label leaks" not in titles
    assert "english / image" in titles and not any(t.startswith("english / image:") for t in titles)
    assert "label_leak" in html                                       # the probes table's column
    summary = json.loads((out / outputs.SUMMARY).read_text())
    assert summary["label_leaks"] == {"english": {"leaking": n_probed, "probed": n_probed},
                                      "arabic": {"leaking": 0, "probed": n_probed}}


def test_both_languages_leak_when_both_captions_hold_the_word(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0,)))
    sheet = write_sheet(tmp_path / "s.csv", run,
                        lambda g: "caption_english+caption_arabic" if g in PROBED else "")
    result = analyze(run.paths, tmp_path / "out", label_leaks=label_leaks_from_samplesheet(sheet), **FAST)
    assert marked(result["probes"]) == {("english", "caption"), ("english", "all"),
                                        ("arabic", "caption"), ("arabic", "all")}
    said = leak_paragraph((tmp_path / "out" / outputs.REPORT).read_text(encoding="utf-8"))
    assert "(english: caption, all; arabic: caption, all;" in said


@pytest.mark.parametrize("leaks_of", [None, lambda g: ""], ids=["no label_leaks column", "empty label_leaks"])
def test_nothing_is_marked_without_leaking_captions(tmp_path, leaks_of):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0,)))
    sheet = write_sheet(tmp_path / "s.csv", run, leaks_of)
    result = analyze(run.paths, tmp_path / "out", label_leaks=label_leaks_from_samplesheet(sheet), **FAST)
    probes = result["probes"]
    assert len(probes) == 2 * 4 and not probes.label_leak.any()
    said = leak_paragraph((tmp_path / "out" / outputs.REPORT).read_text(encoding="utf-8"))
    if leaks_of is None:      # unknown: no claim either way
        assert said == ""
    else:                     # known: the sheet says no caption holds the word
        assert "no view leaks the label" in said


def test_an_unknown_samples_gendered_caption_does_not_mark_the_probes(tmp_path):
    """Only probed samples count: an `unknown` row (e.g. an ambiguous caption kept by --keep-unlabelled)
    holds gendered words but gives the probe no label to read."""
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0,)))
    assert "unknown" in run.genders
    sheet = write_sheet(tmp_path / "s.csv", run, lambda g: "caption_arabic" if g == "unknown" else "")
    result = analyze(run.paths, tmp_path / "out", label_leaks=label_leaks_from_samplesheet(sheet), **FAST)
    assert not result["probes"].label_leak.any()


def test_no_samplesheet_means_no_mark(tmp_path):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0,),
                                                                languages=("english",)))
    result = analyze(run.paths, tmp_path / "out", **FAST)
    assert list(result["probes"].columns) == outputs.PROBE_COLUMNS and not result["probes"].label_leak.any()


@pytest.mark.parametrize("selection,expected", [
    ("text", {("english", "caption")}),          # prompt (before the caption) stays clean
    ("caption", {("english", "caption")}),
    ("mean", {("english", "caption")}),          # the stored mean over the model turn
    ("last", {("english", "last")}),             # the last position follows the caption and attends to it
])
def test_one_row_and_text_selections(tmp_path, selection, expected):
    run = write_synthetic_run(tmp_path / "files", SyntheticSpec(n_samples=30, hidden=8, layers=(0,),
                                                                languages=("english",), token_selection=selection))
    sheet = write_sheet(tmp_path / "s.csv", run, lambda g: "caption_english" if g in PROBED else "")
    views = ("last",) if selection == "last" else ("image", "prompt", "caption", "all")
    result = analyze(run.paths, tmp_path / "out", label_leaks=label_leaks_from_samplesheet(sheet), views=views,
                     report=False, **FAST)
    assert marked(result["probes"]) == expected
    if selection == "text":
        assert set(result["probes"].view) == {"prompt", "caption"}


def test_label_leaks_cells_are_read_as_caption_columns(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("sample_id,image,gender,label_leaks\n"
                     "a,x.png,male,caption_english+caption_arabic\n"
                     "b,y.png,female,caption_arabic\n"
                     "c,z.png,female,\n", encoding="utf-8")
    assert label_leaks_from_samplesheet(sheet) == {"a": ("caption_english", "caption_arabic"),
                                                   "b": ("caption_arabic",), "c": ()}
    plain = tmp_path / "plain.csv"
    plain.write_text("sample_id,image,gender\na,x.png,male\n", encoding="utf-8")
    assert label_leaks_from_samplesheet(plain) is None
