"""The intervention's counting, statistics and report (layerwise/intervention/counts.py, stats.py, report.py,
outputs.py) on synthetic captions whose counts are known: every statistic recomputed here by hand or by an
independent implementation (scipy for Wilcoxon, a one-shot bootstrap), the edge cases, the report's
self-containment, and the documentation of every column."""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from layerwise.compare import inputs as compare_inputs
from layerwise.intervention import outputs
from layerwise.intervention.counts import count_captions
from layerwise.intervention.options import InterventionOptions
from layerwise.intervention.report import highlight, write_report
from layerwise.intervention.stats import N_RESAMPLES, bootstrap_ci, summarize
from layerwise.lexicon import count_terms

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = InterventionOptions(k=10, runs=4, images=6, seed=7)


def english(g: int, neutral: int = 1) -> str:
    """A caption with g gendered words (ceil(g/2) male, floor(g/2) female), `neutral` neutral words, and "outside";
    it also holds words that contain lexicon terms as substrings ("the", "there") and count nothing."""
    male, female = g - g // 2, g // 2
    return " ".join(["The"] + ["man"] * male + ["woman"] * female + ["person"] * neutral + ["there", "outside."])


def rows(layers, feature, caption, condition, run, counts, make=english, sample_prefix="s"):
    return [{"sample_id": f"{sample_prefix}{i}", "image": f"/images/{sample_prefix}{i}.jpg", "layers": layers,
             "feature_language": feature, "caption_language": caption, "condition": condition, "run": run,
             "caption": make(g)} for i, g in enumerate(counts)]


# per image: gendered words in the baseline, targeted and 4 random runs' captions
BASE = [2, 1, 0, 3, 1, 1]                     # 8
TARG = [1, 0, 0, 1, 1, 0]                     # 3
RAND = [[2, 1, 0, 2, 1, 1],                   # 7
        [2, 0, 0, 3, 1, 1],                   # 7
        [1, 1, 0, 3, 1, 1],                   # 7
        [2, 1, 1, 3, 1, 1]]                   # 9


def table(base=BASE, targ=TARG, rand=RAND, layers="12", feature="english", caption="english", shared=False):
    out = rows(None if shared else layers, None if shared else feature, caption, "baseline", 0, base)
    out += rows(layers, feature, caption, "targeted", 0, targ)
    for r, counts in enumerate(rand):
        out += rows(layers, feature, caption, "random", r, counts)
    return pd.DataFrame(out)


def summary_of(df, **kw):
    counted, _ = count_captions(df)
    return summarize(counted, model="tiny", model_id="org/tiny", options=kw.pop("options", OPTIONS),
                     seed=kw.pop("seed", 7), **kw)


# ------------------------------------------------------------------------------------------------ counts

def test_counts_are_whole_words_per_class_and_per_term():
    df = pd.DataFrame([
        {"sample_id": "a", "image": "a.jpg", "layers": "12", "feature_language": "english", "caption_language":
         "english", "condition": "baseline", "run": 0, "caption": "The man and his son; the female horse there."},
        {"sample_id": "a", "image": "a.jpg", "layers": "12", "feature_language": "arabic", "caption_language":
         "arabic", "condition": "targeted", "run": 0, "caption": "رجل وابنه مع امرأة"},
        {"sample_id": "b", "image": "b.jpg", "layers": "12", "feature_language": "english", "caption_language":
         "english", "condition": "random", "run": 3, "caption": None},
    ])
    counted, terms = count_captions(df)
    assert list(counted.columns) == outputs.CAPTION_COLUMNS and list(terms.columns) == outputs.TERM_COLUMNS
    assert counted[["male", "female", "neutral", "words"]].values.tolist() == [[3, 1, 0, 9], [2, 1, 0, 4], [0, 0, 0, 0]]
    en = terms[terms.caption_language == "english"].set_index("term")
    assert en["count"].to_dict() == {"female": 1, "his": 1, "man": 1, "son": 1}     # not "he" in "the"/"there"
    assert en["class"].to_dict() == {"female": "female", "his": "male", "man": "male", "son": "male"}
    ar = terms[terms.caption_language == "arabic"]
    assert set(ar.term) == {"رجل", "ابن", "امرأة"} and set(ar.condition) == {"targeted"}
    assert counted.dtypes["words"] == "int64" and str(counted.dtypes["layers"]) == "string"


# ------------------------------------------------------------------------------------------------ statistics

def test_summary_statistics_by_hand():
    s = summary_of(table())
    assert list(s.columns) == outputs.SUMMARY_COLUMNS and len(s) == 1
    r = s.iloc[0]
    base, targeted = sum(BASE), sum(TARG)
    random_counts = [sum(x) for x in RAND]
    random_change = [100 * (c - base) / base for c in random_counts]
    assert (r.base_count, r.targeted_count, r.images, r.runs, r.k) == (8, 3, 6, 4, 10)
    assert r.change_pct == pytest.approx(100 * (targeted - base) / base) == -62.5
    assert r.random_mean == pytest.approx(statistics.mean(random_change)) == pytest.approx(-6.25)
    assert r.random_std == pytest.approx(statistics.stdev(random_change)) == pytest.approx(12.5)
    assert r.specificity == pytest.approx(62.5 - 6.25)
    assert r.ratio == pytest.approx(62.5 / 6.25)
    # no random run moves the count by >= |targeted - base| = 5
    assert r.empirical_p == pytest.approx((1 + 0) / (1 + 4))
    # male/female: ceil/floor halves per caption; rate = gendered / words (each caption: "the", "there",
    # "outside" and one "person")
    assert (r.male_base, r.female_base) == (sum(g - g // 2 for g in BASE), sum(g // 2 for g in BASE))
    assert (r.male_targeted, r.female_targeted) == (sum(g - g // 2 for g in TARG), sum(g // 2 for g in TARG))
    assert r.rate_base == pytest.approx(base / (base + 4 * 6))
    assert r.rate_targeted == pytest.approx(targeted / (targeted + 4 * 6))
    assert r.neutral_change_pct == 0.0
    assert (r.model, r.model_id, r.hook, r.scale, r.positions) == ("tiny", "org/tiny", "residual", 0.0, "all")
    assert (r.layers, r.feature_language, r.caption_language, r.condition) == ("12", "english", "english", "within")
    assert r.note == ""


def test_empirical_p_counts_ties_as_extreme():
    rand = [[1, 0, 0, 1, 1, 0], [2, 1, 0, 3, 1, 1], [0, 0, 0, 0, 0, 0], [2, 1, 1, 3, 2, 4]]   # 3, 8, 0, 13
    r = summary_of(table(rand=rand)).iloc[0]
    # |targeted - base| = 5; random |count - base| = 5, 0, 8, 5 -> three runs as extreme or more
    assert r.empirical_p == pytest.approx((1 + 3) / (1 + 4))


def test_wilcoxon_p_equals_scipy_on_the_paired_differences():
    r = summary_of(table()).iloc[0]
    d = np.array(TARG, float) - np.mean(np.array(RAND, float), axis=0)
    assert r.mean_difference == pytest.approx(d.mean())
    assert r.wilcoxon_p == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
    assert r.wilcoxon_p == pytest.approx(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def test_bootstrap_ci_is_the_seeded_percentile_bootstrap():
    r = summary_of(table(), seed=123).iloc[0]
    d = np.array(TARG, float) - np.mean(np.array(RAND, float), axis=0)
    rng = np.random.default_rng(123)                 # the same resamples, drawn in one piece
    idx = rng.integers(0, len(d), size=(N_RESAMPLES, len(d)))
    means = d[idx].mean(axis=1)
    assert (r.ci_low, r.ci_high) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)))
    again = summary_of(table(), seed=123).iloc[0]
    assert (again.ci_low, again.ci_high) == (r.ci_low, r.ci_high)          # reproducible
    assert r.ci_low <= r.mean_difference <= r.ci_high


def test_bootstrap_ci_large_sample_matches_the_normal_interval():
    rng = np.random.default_rng(0)
    n, mean, sd = 1500, -0.4, 1.3
    d = rng.normal(mean, sd, n)
    low, high = bootstrap_ci(d, seed=5)
    se = d.std(ddof=1) / math.sqrt(n)
    assert low < d.mean() < high and low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.1 * se)
    assert bootstrap_ci(np.array([]), seed=1) == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_base_count_zero_gives_nan_change_with_a_note():
    base = [0] * 6
    targ = [1, 0, 0, 0, 0, 0]
    rand = [[0] * 6, [0, 1, 0, 0, 0, 0], [0] * 6, [0, 2, 0, 0, 0, 0]]
    r = summary_of(table(base=base, targ=targ, rand=rand)).iloc[0]
    assert r.base_count == 0 and r.targeted_count == 1
    for col in ("change_pct", "random_mean", "random_std", "specificity", "ratio", "rate_base"):
        assert math.isnan(r[col]) if col != "rate_base" else r[col] == 0.0, col
    assert "no gendered word" in r.note and "change % " in r.note
    # the empirical p is on counts: |0-0|, |1-0|, |0-0|, |2-0| against |1-0|
    assert r.empirical_p == pytest.approx((1 + 2) / 5)


def test_all_zero_differences_give_nan_wilcoxon_and_a_point_ci():
    r = summary_of(table(targ=BASE, rand=[BASE] * 4)).iloc[0]
    assert math.isnan(r.wilcoxon_p) and "every per-image difference is 0" in r.note
    assert (r.ci_low, r.ci_high, r.mean_difference) == (0.0, 0.0, 0.0)
    assert r.change_pct == 0.0 and r.random_mean == 0.0 and r.random_std == 0.0
    assert math.isnan(r.ratio) and "ratio undefined" in r.note
    assert r.specificity == 0.0 and r.empirical_p == 1.0


def test_one_random_run_and_missing_images():
    df = table(rand=RAND[:1])
    df = df[~((df.condition == "targeted") & (df.sample_id == "s5"))]        # s5 lacks its targeted caption
    r = summary_of(df).iloc[0]
    assert r.images == 5 and r.runs == 1
    assert r.base_count == sum(BASE[:5]) and r.targeted_count == sum(TARG[:5])
    assert math.isnan(r.random_std)
    assert "1 image(s) lack a caption" in r.note and "1 random run(s) found, 4 asked for" in r.note


def test_groups_share_a_baseline_and_name_cross_conditions():
    en = table(shared=True)
    cross = table(feature="arabic", shared=False).query("condition != 'baseline'")
    two = table(layers=" 16, 8").query("condition != 'baseline'")
    s = summary_of(pd.concat([en, cross, two], ignore_index=True))
    assert list(zip(s.layers, s.feature_language, s.caption_language, s.condition)) == [
        ("8,16", "english", "english", "within"), ("12", "arabic", "english", "cross"),
        ("12", "english", "english", "within")]
    assert (s.base_count == 8).all() and (s.targeted_count == 3).all()       # one baseline for every group
    # as the pipeline writes a baseline: the run's layers, no feature language
    arabic = pd.DataFrame(rows("12", "", "arabic", "baseline", 0, [1, 1], make=lambda g: "رجل يمشي")
                          + rows("12", "english", "arabic", "targeted", 0, [0, 0], make=lambda g: "شخص يمشي")
                          + rows("12", "english", "arabic", "random", 0, [1, 0], make=lambda g: "ولد" if g else "كلب"))
    a = summary_of(arabic, options=InterventionOptions(runs=1)).iloc[0]
    assert (a.condition, a.base_count, a.targeted_count, a.change_pct, a.random_mean) == ("cross", 2, 0, -100.0, -50.0)


def test_summary_columns_are_what_compare_reads(tmp_path):
    required, optional = compare_inputs.INTERVENTION_COLUMNS
    assert set(required) | set(optional) <= set(outputs.SUMMARY_COLUMNS)
    s = summary_of(table())
    path = outputs.write_parquet(s, tmp_path / "intervention" / outputs.SUMMARY, outputs.SUMMARY)
    back = compare_inputs._read_table(path, compare_inputs.INTERVENTION_COLUMNS, "an intervention summary")
    assert back.loc[0, "change_pct"] == -62.5 and compare_inputs.single_layer(back.loc[0, "layers"]) == 12
    assert list(pd.read_parquet(path).columns) == outputs.SUMMARY_COLUMNS


def test_column_lists_are_those_the_writers_write():
    from layerwise.intervention import controls

    assert outputs.CONTROL_COLUMNS == list(controls.CONTROL_COLUMNS)
    pytest.importorskip("torch")
    from layerwise.intervention import overlap, select

    assert outputs.LATENT_COLUMNS == list(select.COLUMNS)
    assert outputs.OVERLAP_COLUMNS == list(overlap.OVERLAP_COLUMNS)


def test_frame_gives_every_table_its_columns_and_types():
    for name, columns in outputs.TABLES.items():
        empty = outputs.frame([], name)
        assert list(empty.columns) == columns and len(empty) == 0
    assert outputs.layers_label(" 16,8 ") == outputs.layers_label([16, 8]) == "8,16" and outputs.layers_label(3) == "3"


# ------------------------------------------------------------------------------------------------ report

def test_highlight_marks_exactly_the_counted_words():
    text = "The man, his daughter and the female horse there; (a person)."
    marked = str(highlight(text, "english"))
    assert marked.count("<mark") == len(count_terms(text, "english").matches) == 5
    assert '(a <mark class="neutral" title="person (neutral)">person</mark>).' in marked
    assert '<mark class="male" title="man (male)">man</mark>,' in marked
    assert '<mark class="female" title="female (female)">female</mark>' in marked
    assert "the" not in re.findall(r"<mark[^>]*>([^<]*)</mark>", marked)
    assert "<mark" not in str(highlight("A <b>dog</b> & a cat", "english")) and "&lt;b&gt;" in str(
        highlight("A <b>dog</b>", "english"))
    assert '<mark class="male"' in str(highlight("رجل وابنه.", "arabic"))


def test_report_is_self_contained_with_figures_thumbnails_and_highlights(tmp_path):
    from PIL import Image

    picture = tmp_path / "s0.png"
    Image.new("RGB", (400, 300), (200, 120, 40)).save(picture)
    df = pd.concat([table(shared=True), table(feature="arabic").query("condition != 'baseline'")], ignore_index=True)
    counted, terms = count_captions(df)
    summary = summarize(counted, model="tiny", model_id="org/tiny", options=OPTIONS, seed=1)
    latents = outputs.frame([{"layer": 12, "feature_language": lang, "sae": "layer_12", "latent": j,
                              "mean_male": 0.5, "mean_female": 0.1 * j, "difference": 0.5 - 0.1 * j, "cohens_d": 1.0,
                              "firing_rate": 0.0 if j == 3 else 0.2, "dead": j == 3, "selected": j < 2,
                              "rank": j + 1 if j != 3 else None, "sign": 1}
                             for lang in ("english", "arabic") for j in range(4)], outputs.LATENTS)
    out = write_report(summary, counted, terms, latents, tmp_path / "intervention" / outputs.REPORT,
                       images={"s0": str(picture), "s1": str(tmp_path / "missing.jpg")})
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text) and "<script" not in text and "<link" not in text
    assert all(src.startswith("data:image/") for src in re.findall(r'src="([^"]*)"', text))
    assert text.count("data:image/png;base64,") >= 2                # random distribution, 2 x 2 grid
    assert "data:image/jpeg;base64," in text                        # the thumbnail of s0
    assert "(no image)" in text                                     # s1's file is missing
    assert '<mark class="male" title="man (male)">man</mark>' in text
    assert '<mark class="female" title="woman (female)">woman</mark>' in text
    for heading in ("Summary", "Targeted against random", "Feature language × caption language", "Terms",
                    "Selected latents", "Examples"):
        assert f"<h2>{heading}</h2>" in text, heading
    assert "−62.5" in text or "-62.5" in text
    assert not list(out.parent.glob(".*tmp*"))                      # written atomically


# ------------------------------------------------------------------------------------------------ docs

def test_docs_describe_every_column_of_every_intervention_output():
    doc = (ROOT / "docs" / "output.md").read_text(encoding="utf-8")
    m = re.search(r"^## `intervention/`.*?(?=^## |\Z)", doc, flags=re.S | re.M)
    assert m, "docs/output.md has no section '## `intervention/`'"
    section = m.group(0)
    for name, columns in outputs.TABLES.items():
        sub = re.search(rf"^### `intervention/{re.escape(name)}`.*?(?=^##|\Z)", section, flags=re.S | re.M)
        assert sub, f"no subsection for {name}"
        first_cells = re.findall(r"^\| ([^|]+)\|", sub.group(0), flags=re.M)
        documented = {c for cell in first_cells for c in re.findall(r"`([a-z0-9_]+)`", cell)}
        assert set(columns) <= documented, f"{name}: undocumented columns {sorted(set(columns) - documented)}"
    assert f"`intervention/{outputs.REPORT}`" in section
