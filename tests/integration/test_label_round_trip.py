"""A caption corpus → `layerwise label` → one `-profile test` run on the written sheet (issue 19, item 5).

The corpus has several caption pairs per image, as Flickr8K with Arabic translations has: per image, two
English captions that name the person's gender, with Arabic captions that say only "person" (شخص), and
one caption pair without any gendered word; plus an image whose captions disagree (a man, then a woman)
and one whose only caption names nobody. Labelled from English (`--label-from english`), the sheet holds
the two gendered rows of each of the eight labelled images, and only the English captions leak the label.
One engine launch (one layer, one shard, analysis on) checks that the sheet runs as written, that the
published samplesheet.valid.csv keeps its rows, labels and `label_leaks`, and that the analysis marks the
English caption views, and only them, as label-leaking.
"""
from __future__ import annotations

import csv
import re
import shutil

import pandas as pd

from layerwise.commands import label as label_command
from tests.integration.conftest import assert_ok
from tests.support.pipeline_helpers import process_name, run_pipeline, status_counts

RUN_TIMEOUT = 900

# (fixture image, gender, English object, Arabic object): the object keeps the captions of different images apart
LABELLED = [
    ("s000.png", "male", "red circle", "دائرة حمراء"),
    ("s001.png", "female", "blue square", "مربع أزرق"),
    ("s002.png", "male", "green triangle", "مثلث أخضر"),
    ("s003.png", "female", "yellow rectangle", "مستطيل أصفر"),
    ("s004.png", "male", "black star", "نجمة سوداء"),
    ("s005.png", "female", "white circle", "دائرة بيضاء"),
    ("s006.png", "male", "orange square", "مربع برتقالي"),
    ("s007.png", "female", "purple triangle", "مثلث بنفسجي"),
]
NOUN = {"male": "man", "female": "woman"}
PRONOUN = {"male": "him", "female": "her"}


def corpus_rows() -> list[tuple[str, str, str]]:
    """(image, en_caption, ar_caption) rows; several per image, in the order a corpus lists them."""
    rows = []
    for image, gender, en, ar in LABELLED:
        rows += [(f"images/{image}", f"A {NOUN[gender]} stands next to a {en}.", f"شخص يقف بجانب {ar}."),
                 (f"images/{image}", f"Next to {PRONOUN[gender]} is a {en}.", f"بجانب الشخص {ar}."),
                 (f"images/{image}", f"A {en} on a grey background.", f"{ar} على خلفية رمادية.")]
    rows += [("images/s008.png", "A man holds a sign.", "شخص يحمل لافتة."),           # conflicting image
             ("images/s008.png", "A woman holds a sign.", "شخص يحمل لافتة."),
             ("images/s009.png", "A dog on the grass.", "كلب على العشب.")]               # unlabelled image
    return rows


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_labelled_caption_corpus_runs_through_the_pipeline(tmp_path, fixture_dir):
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    for image in sorted({r[0] for r in corpus_rows()}):
        shutil.copy(fixture_dir / "data" / image, corpus / image)
    captions = corpus / "captions.csv"
    with open(captions, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("image", "en_caption", "ar_caption"), *corpus_rows()])

    labelled = tmp_path / "labelled"
    assert label_command.main(["--captions", str(captions), "--out-dir", str(labelled),
                               "--label-from", "english"]) == 0
    sheet = read_rows(labelled / "samplesheet.csv")
    # the first two caption pairs of each labelled image, with its gender; nothing of s008/s009
    expected = [(f"images/{image}#{k}", gender) for image, gender, _, _ in LABELLED for k in (0, 1)]
    assert [(r["sample_id"], r["gender"]) for r in sheet] == expected
    assert {r["label_source"] for r in sheet} == {"caption_english"}
    assert {r["label_leaks"] for r in sheet} == {"caption_english"}     # the Arabic captions name no gender
    assert all(r["image"] == f"../corpus/{r['image_id']}" for r in sheet)    # relative to the sheet

    run = assert_ok(run_pipeline(tmp_path / "run", "--input", str(labelled / "samplesheet.csv"), "--layers", "0",
                                 "--layer_groups", "1", "--samples_per_task", "0", "--analysis", "true",
                                 timeout=RUN_TIMEOUT))
    rows = run.trace()
    assert status_counts(rows) == {"COMPLETED": len(rows)}
    assert sorted(process_name(r) for r in rows) == sorted(    # one layer group x two languages, one shard
        ["PREFLIGHT", "EXTRACT_ACTIVATIONS", "EXTRACT_ACTIVATIONS", "PUBLISH_RESULTS", "ANALYZE_LAYERS"])
    valid = pd.read_csv(run.outdir / "pipeline_info" / "samplesheet.valid.csv", dtype=str, keep_default_na=False)
    assert list(zip(valid.sample_id, valid.gender)) == expected
    assert list(valid.label_leaks) == [r["label_leaks"] for r in sheet]
    assert list(valid.caption_arabic) == [r["caption_arabic"] for r in sheet]
    assert valid.image_sha256.nunique() == len(LABELLED)                 # grouped folds: eight images

    probes = pd.read_parquet(run.outdir / "analysis" / "probes.parquet")
    assert set(zip(probes.language, probes.view)) == {(lang, view) for lang in ("english", "arabic")
                                                      for view in ("image", "prompt", "caption", "all")}
    assert (probes.n_samples == len(expected)).all()
    leaking = set(zip(probes.language[probes.label_leak], probes.view[probes.label_leak]))
    assert leaking == {("english", "caption"), ("english", "all")}
    html = (run.outdir / "analysis" / "report.html").read_text(encoding="utf-8")
    said = re.sub(r"\s+", " ", re.search(r'id="label-leakage"[^>]*>(.*?)</p>', html, flags=re.S).group(1))
    assert f"english {len(expected)} of {len(expected)} probed samples" in said and "arabic" not in said
