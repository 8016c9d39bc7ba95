"""Publication figures: every figure of the analysis, SAE, intervention and compare reports is also written under
its stage's figures/ as SVG (text as text), PDF (TrueType fonts) and the table behind it (CSV), with text of at
least 7 pt, the same bytes on every write, and the rc params changed only while a figure is drawn
(layerwise/core/html.py). Also the analysis report's SAE section: one summary of the latent tests that ran, passed
or were skipped (grouped reasons), not one note per skipped test."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch

from layerwise.analysis import analyze, outputs
from layerwise.analysis.report import write_report as write_analysis_report
from layerwise.core import html as shell
from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run
from tests.unit.test_analysis_sae import PlantedEncoder

FIGURE = re.compile(r'<img [^>]*data-figure="([^"]+)"[^>]*src="data:image/png;base64,')
FONT_PX = re.compile(r"font(?:-size)?:\s*(?:[a-z]+\s+)*([0-9.]+)px")


def figure_stems(report: Path) -> list[str]:
    """The figures of a report page, by stem; every embedded PNG figure is one of them."""
    text = report.read_text(encoding="utf-8")
    stems = FIGURE.findall(text)
    assert len(stems) == text.count("data:image/png;base64,"), "a figure without its files"
    assert len(stems) == len(set(stems))
    return stems


def check_figures(report: Path, expected: set[str]) -> dict[str, bytes]:
    """Every figure of `report` has figures/<stem>.svg, .pdf and .csv and nothing else is there; returns the bytes."""
    stems = figure_stems(report)
    assert set(stems) == expected
    folder = report.parent / shell.FIGURES_DIR
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert sorted(files) == sorted(f"{s}{ext}" for s in stems for ext in (".svg", ".pdf", ".csv"))
    for stem in stems:
        svg = files[f"{stem}.svg"].decode("utf-8")
        assert "<text" in svg and "<dc:date>" not in svg and "matplotlib.org" not in svg, stem   # editable, no date
        sizes = [float(x) for x in FONT_PX.findall(svg)]
        assert sizes and min(sizes) >= shell.MIN_FONT_PT, (stem, sorted(set(sizes)))          # pt = px in the SVG
        pdf = files[f"{stem}.pdf"]
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf and b"/Type3" not in pdf, stem   # TrueType
        assert b"/CreationDate" not in pdf, stem
        table = pd.read_csv(report.parent / shell.FIGURES_DIR / f"{stem}.csv")
        assert len(table) > 0 and len(table.columns) >= 2, stem
    assert 'href="figures/' in report.read_text(encoding="utf-8")
    return files


# ------------------------------------------------------------------------------------------------ the shell

def test_figure_style_is_local_and_panels_are_one_column_wide():
    before = dict(matplotlib.rcParams)
    with shell.figure_style():
        assert matplotlib.rcParams["svg.fonttype"] == "none" and matplotlib.rcParams["pdf.fonttype"] == 42
        fig, axes = shell.panel_figure(2, 3)
        fig.suptitle("x")
    assert dict(matplotlib.rcParams) == before                  # restored: never changed globally
    assert tuple(fig.get_size_inches()) == pytest.approx((3 * shell.COLUMN_IN, 2 * 2.4 + 0.3 + 0.5))
    one, _ = shell.panel_figure(1, 1)
    assert one.get_size_inches()[0] == pytest.approx(shell.COLUMN_IN)
    handles = axes[0][0].plot([0, 1], [0, 1], label="a long label for a legend entry")
    shell.figure_legend(fig, handles, ["a long label for a legend entry"])
    assert fig.get_size_inches()[1] > 2 * 2.4 + 0.8            # the legend's room is added, the panels keep theirs


def test_a_drawing_with_no_data_removes_its_old_files(tmp_path):
    @shell.report_figure("demo")
    def demo(draw: bool):
        if not draw:
            return None
        fig, axes = shell.panel_figure(1, 1)
        axes[0][0].plot([0, 1], [1, 0])
        return fig, pd.DataFrame({"x": [0, 1], "y": [1, 0]})

    writer = shell.FigureWriter(tmp_path / "figures")
    saved = demo(True, figures=writer)
    assert saved.written and str(saved) == saved.png and 'data-figure="demo"' in saved.html("demo")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["demo.csv", "demo.pdf", "demo.svg"]
    assert demo(False, figures=writer) is None and not list((tmp_path / "figures").iterdir())
    assert demo(True).written is False                        # without a writer: the page's PNG only


# ------------------------------------------------------------------------------------------------ analysis

@pytest.fixture(scope="module")
def analysis_run(tmp_path_factory):
    """A small analysis with SAEs: layer 1's SAE tests run (every sample), layer 0's are skipped (its 'held-out'
    samples are too few), so every figure and both kinds of SAE test are there."""
    root = tmp_path_factory.mktemp("analysis")
    run = write_synthetic_run(root / "files", SyntheticSpec(
        n_samples=30, hidden=8, layers=(0, 1), signal={"image": 3.0}, layout="ragged", dtype=torch.bfloat16))
    few = PlantedEncoder(run.direction)
    few.held_out_ids = run.sample_ids[:5]
    res = analyze(run.paths, root / "analysis", sae_dirs={0: few, 1: PlantedEncoder(run.direction)},
                  views=("image", "caption"), permutations=2, folds=3, sae_top_k=3)
    return root / "analysis", res


def test_analysis_figures_are_written_as_svg_pdf_and_table(analysis_run, tmp_path):
    out, res = analysis_run
    stems = {"probes", "directions", "cka", "cka_adjacent", "crosslingual", "sae_latents"}
    first = check_figures(out / outputs.REPORT, stems)
    probes = pd.read_csv(out / outputs.FIGURES / "probes.csv")
    assert len(probes) == len(res["probes"]) and {"accuracy", "control_accuracy", "layer"} <= set(probes.columns)
    tables = {name: pd.read_parquet(out / name) for name in outputs.TABLES if (out / name).exists()}
    again = tmp_path / "again" / outputs.REPORT
    write_analysis_report(tables, res["notes"], {"layers": [0, 1], "languages": ["english", "arabic"],
                                                  "classes": ["male", "female"], "folds": 3, "permutations": 2,
                                                  "seed": 0}, again)
    assert check_figures(again, stems) == first                       # the same bytes on every write


def test_the_sae_section_says_once_what_ran_passed_and_was_skipped(analysis_run):
    out, res = analysis_run
    text = (out / outputs.REPORT).read_text(encoding="utf-8")
    section = text[text.index('<h2 id="sae">'):text.index("<h2>Notes")]
    skipped = [n for n in res["notes"] if n["message"].startswith("SAE associations skipped: ")]
    assert len(skipped) == 2 * 2                                  # layer 0: 2 languages x 2 views
    assert "8 in all: 4 ran" in " ".join(section.split())          # layer 1: 2 languages x 2 views
    assert "4 skipped: too few samples for a selection / held-out split" in section
    assert "layer 0; languages english, arabic; views image, caption" in section
    notes = text[text.index("<h2>Notes"):]
    assert "SAE associations skipped" not in notes and "summarised in" in notes


def sae_rows(layer, language, view, n_passing):
    return {"layer": layer, "language": language, "view": view, "latent": 1, "rank": 1, "top_k": True,
            "auroc": 0.9, "smd": 1.0, "p_value": 0.001, "q_value": 0.01 if n_passing else 0.5,
            "passes_bh": bool(n_passing), "n_passing": n_passing, "d_sae": 16, "n_selection": 10, "n_heldout": 10,
            "mean_a": 0.1, "mean_b": 0.5, "firing_rate_a": 0.1, "firing_rate_b": 0.9}


def skip(layer, language, view, counts):
    return {"layer": layer, "language": language, "view": view, "stage": "sae",
            "message": f"SAE associations skipped: too few samples for a selection / held-out split "
                       f"(class counts {counts})"}


FACTS = {"layers": list(range(6)), "languages": ["english", "arabic"], "classes": ["male", "female"], "folds": 3,
         "permutations": 5, "seed": 0}
VIEWS = ("image", "prompt", "caption", "all")


def test_every_test_skipped_is_one_summary_not_48_notes(tmp_path):
    notes = [skip(layer, lang, view, "[2, 3]" if lang == "english" else "[3, 2]")
             for layer in range(6) for lang in ("english", "arabic") for view in VIEWS]
    notes.append({"layer": None, "language": None, "view": None, "stage": "crosslingual", "message": "kept"})
    tables = {outputs.SAE_FEATURES: outputs.frame([], outputs.SAE_COLUMNS)}
    page = write_analysis_report(tables, notes, FACTS, tmp_path / "report.html").read_text(encoding="utf-8")
    flat = " ".join(page.split())
    assert "48 in all: 0 ran, 48 skipped" in flat
    assert ("48 skipped: too few samples for a selection / held-out split (class counts [2, 3]: 24; "
            "class counts [3, 2]: 24) — layers 0–5; languages english, arabic; views image, prompt, caption, all"
            in flat)
    assert page.count("too few samples") == 1 and "No latent passes" not in page
    assert "No latent test ran" in page
    assert "Notes (1)" in page and "48 note(s) of the SAE latent tests are summarised" in flat
    assert not list((tmp_path / "figures").glob("sae_latents.*"))      # nothing to draw


def test_tests_that_ran_are_counted_with_their_passing_latents(tmp_path):
    rows = [sae_rows(layer, "english", view, 2 if (layer, view) == (3, "image") else 0)
            for layer in (2, 3) for view in ("image", "caption")]
    notes = [skip(1, "english", "image", "[2, 2]"),
             {"layer": 1, "language": "english", "view": None, "stage": "sae",
              "message": "the SAE's training samples are unknown (no split.json): its associations use every sample"}]
    tables = {outputs.SAE_FEATURES: outputs.frame(rows, outputs.SAE_COLUMNS)}
    page = write_analysis_report(tables, notes, {**FACTS, "sae_alpha": 0.05}, tmp_path / "report.html")
    flat = " ".join(page.read_text(encoding="utf-8").split())
    assert "at q ≤ 0.05" in flat and "5 in all: 4 ran (1 with latents passing, 2 latent(s) in all), 1 skipped" in flat
    assert "1 skipped: too few samples for a selection / held-out split (class counts [2, 2])" in flat
    assert "training samples are unknown" in flat and "Latents passing Benjamini-Hochberg" in flat
    check_figures(page, {"sae_latents"})


# ------------------------------------------------------------------------------------------------ SAE

def test_sae_report_figure(tmp_path):
    from layerwise.publish.sae import publish_saes
    from tests.unit.test_sae_publish import fake_sae, published_outdir

    out = published_outdir(tmp_path / "results")
    saes = [fake_sae(tmp_path / "w", f"layer_{i}", i, 0.5 + 0.1 * i) for i in (0, 1, 2)]
    publish_saes(saes, out, "copy", report=True)
    first = check_figures(out / "sae" / "report.html", {"metrics"})
    publish_saes(saes, out, "copy", report=True)
    assert check_figures(out / "sae" / "report.html", {"metrics"}) == first
    assert list(pd.read_csv(out / "sae" / "figures" / "metrics.csv").layer) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ intervention

def test_intervention_report_figures(tmp_path):
    from layerwise.intervention import outputs as iout
    from layerwise.intervention.report import write_report
    from tests.unit.test_intervention_stats import OPTIONS, count_captions, summarize, table

    df = pd.concat([table(shared=True), table(feature="arabic").query("condition != 'baseline'")], ignore_index=True)
    counted, terms = count_captions(df)
    summary = summarize(counted, model="tiny", model_id="org/tiny", options=OPTIONS, seed=1)
    pages = [write_report(summary, counted, terms, None, tmp_path / name / iout.REPORT) for name in ("a", "b")]
    first = check_figures(pages[0], {"random_runs", "language_grid"})
    assert check_figures(pages[1], {"random_runs", "language_grid"}) == first
    runs = pd.read_csv(pages[0].parent / "figures" / "random_runs.csv")
    assert set(runs.condition) == {"targeted", "random"} and len(runs) == 2 * (1 + 4)


# ------------------------------------------------------------------------------------------------ compare

def test_compare_report_figures_and_stale_ones_removed(tmp_path):
    from tests.unit.test_compare import make_outdir, run_compare

    a = make_outdir(tmp_path, "a", model_id="m", model_type="gemma3", num_layers=4, layers=[0, 3])
    b = make_outdir(tmp_path, "b", model_id="m2", model_type="qwen2_vl", num_layers=6, layers=[0, 5],
                    sae="per_language")
    (a / "intervention").mkdir()
    pd.DataFrame({"layers": ["3"], "caption_language": ["english"], "change_pct": [-20.0],
                  "ratio": [4.0]}).to_parquet(a / "intervention" / "summary.parquet", index=False)
    out = tmp_path / "cmp"
    run_compare(out, a, b)
    first = check_figures(out / "report.html", {"probes", "sae", "intervention"})
    (a / "intervention" / "summary.parquet").unlink()
    run_compare(out, a, b)
    second = check_figures(out / "report.html", {"probes", "sae"})      # the intervention's files are gone
    assert second == {name: data for name, data in first.items() if not name.startswith("intervention")}
    assert not list(out.rglob(".*"))                                    # atomic writes leave nothing behind
