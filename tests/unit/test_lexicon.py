"""The gender lexicon, its matcher, the caption-pair label and `layerwise label`.

The expected values of the word tables are written from English and Arabic grammar (what a reader counts
in the text), not from the matcher's output.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from layerwise.commands import label as label_command
from layerwise.core.errors import LayerwiseError
from layerwise.lexicon import CLASSES, LANGUAGES, count_all, count_terms, label_caption, lexicon_dir, load_lexicon

# (text, male, female, neutral, the terms counted)
ENGLISH = [
    # substring traps: none of these words holds a gendered word
    ("the other theater there", 0, 0, 0, {}),
    ("this history of his", 1, 0, 0, {"his": 1}),
    ("a person", 0, 0, 1, {"person": 1}),
    ("a female", 0, 1, 0, {"female": 1}),
    ("a woman", 0, 1, 0, {"woman": 1}),
    ("many humans", 0, 0, 1, {"humans": 1}),
    ("a German mannequin near the manhole", 0, 0, 0, {}),
    ("Herman the shepherd, a hero, and Heather", 0, 0, 0, {}),
    ("Sonny and the season", 0, 0, 0, {}),
    # case
    ("HE and His friend", 2, 0, 0, {"he": 1, "his": 1}),
    ("She SHEDS her Hat", 0, 2, 0, {"she": 1, "her": 1}),
    # apostrophes, straight and curly; possessives and contractions
    ("a man's hat and the men’s shoes", 2, 0, 0, {"man's": 1, "men's": 1}),
    ("the girls' bikes", 0, 1, 0, {"girls'": 1}),
    ("his father's car", 2, 0, 0, {"his": 1, "father": 1}),
    ("he's running, she’ll follow", 1, 1, 0, {"he": 1, "she": 1}),
    ("a person's bag", 0, 0, 1, {"person's": 1}),
    # hyphens
    ("a police-man and a police\u2010woman", 1, 1, 0, {"policeman": 1, "policewoman": 1}),
    ("an x-ray of a hand", 0, 0, 0, {}),
    ("her mother-in-law", 0, 2, 0, {"her": 1, "mother-in-law": 1}),
    ("a step-mother", 0, 1, 0, {"stepmother": 1}),
    ("a mother-to-be", 0, 1, 0, {"mother": 1}),
    ("a three-year-old boy", 1, 0, 0, {"boy": 1}),
    # punctuation between words
    ("Man, woman; boy! girl? (child)", 2, 2, 1, {"man": 1, "woman": 1, "boy": 1, "girl": 1, "child": 1}),
    ("Mr. Smith and Mrs. Smith", 1, 1, 0, {"mr": 1, "mrs": 1}),
    ("a female skier and two firemen", 1, 1, 1, {"female": 1, "skier": 1, "firemen": 1}),
    ("they hug themselves", 0, 0, 2, {"they": 1, "themselves": 1}),
    ("hers", 0, 1, 0, {"hers": 1}),
]

ARABIC = [
    # clitics: conjunction, preposition, article (ل + ال is written لل)
    ("والرجل", 1, 0, 0, {"رجل": 1}),          # and the man
    ("بالمرأة", 0, 1, 0, {"مرأة": 1}),         # with the woman
    ("للبنات", 0, 1, 0, {"بنات": 1}),          # for the girls
    ("كالولد", 1, 0, 0, {"ولد": 1}),           # like the boy
    ("وهي", 0, 1, 0, {"هي": 1}),               # and she
    ("فهو", 1, 0, 0, {"هو": 1}),               # so he
    ("وللرجل", 1, 0, 0, {"رجل": 1}),           # and for the man
    ("الرجال والسيدات", 1, 1, 0, {"رجال": 1, "سيدات": 1}),
    ("للأطفال", 0, 0, 1, {"أطفال": 1}),
    ("بالأولاد", 1, 0, 0, {"أولاد": 1}),
    ("فالفتاة", 0, 1, 0, {"فتاة": 1}),
    ("الناس", 0, 0, 1, {"ناس": 1}),
    ("الأم", 0, 1, 0, {"أم": 1}),
    # enclitics (possessive pronouns); taa marbuta is written ت before them
    ("ولده", 1, 0, 0, {"ولد": 1}),             # his boy
    ("وأمه", 0, 1, 0, {"أم": 1}),              # and his mother
    ("وابنتها", 0, 1, 0, {"ابنة": 1}),         # and her daughter
    ("زوجته", 0, 1, 0, {"زوجة": 1}),           # his wife
    ("رجل وابنه", 2, 0, 0, {"رجل": 1, "ابن": 1}),   # a man and his son: ابن + ه, not a misspelt ابنة
    ("يحمل طفلا", 0, 0, 1, {"طفل": 1}),        # carries a child (accusative alef)
    ("رأى رجلا", 1, 0, 0, {"رجل": 1}),
    # spelling variants: hamza/alef forms, taa marbuta as ه, alef maqsura, diacritics, tatweel
    ("امرأة امراة إمرأة", 0, 3, 0, {"امرأة": 3}),
    ("امراه", 0, 1, 0, {"امرأة": 1}),
    ("المراه", 0, 1, 0, {"مرأة": 1}),
    ("فتى فتي", 2, 0, 0, {"فتى": 2}),
    ("أنثى انثي", 0, 2, 0, {"أنثى": 2}),
    ("رَجُلٌ", 1, 0, 0, {"رجل": 1}),
    ("امْرَأَةٌ", 0, 1, 0, {"امرأة": 1}),
    ("رجـــل", 1, 0, 0, {"رجل": 1}),
    ("هى", 0, 1, 0, {"هي": 1}),
    # duals and plurals
    ("رجلان", 1, 0, 0, {"رجلان": 1}),
    ("امرأتين", 0, 1, 0, {"امرأتين": 1}),
    # words that begin with و ب ل ك but are lexicon words themselves: never stripped
    ("ولد", 1, 0, 0, {"ولد": 1}),
    ("بنت", 0, 1, 0, {"بنت": 1}),
    ("والد", 1, 0, 0, {"والد": 1}),
    ("والدة", 0, 1, 0, {"والدة": 1}),
    ("لاعبة", 0, 1, 0, {"لاعبة": 1}),
    # words that must not match
    ("باب", 0, 0, 0, {}),       # a door, not ب + أب
    ("لام", 0, 0, 0, {}),       # not ل + أم
    ("أما", 0, 0, 0, {}),       # "as for", not أم + tanween
    ("كلب", 0, 0, 0, {}),       # a dog, not ك + لب
    ("لهو", 0, 0, 0, {}),       # fun: a pronoun takes no preposition
    ("هيا", 0, 0, 0, {}),       # "come on"
    ("رجله", 0, 0, 0, {}),      # his leg
    ("شباك وجهه أمام آخر", 0, 0, 0, {}),
    ("الآلام", 0, 0, 0, {}),
    # the generic masculine of a role is neutral, its feminine female
    ("لاعب ولاعبة", 0, 1, 1, {"لاعب": 1, "لاعبة": 1}),
    ("طفل وطفلة", 0, 1, 1, {"طفل": 1, "طفلة": 1}),
    ("رجل وامرأة، ولد وبنت.", 2, 2, 0, {"رجل": 1, "امرأة": 1, "ولد": 1, "بنت": 1}),
]


@pytest.mark.parametrize(("text", "male", "female", "neutral", "terms"), ENGLISH, ids=[c[0] for c in ENGLISH])
def test_english_words_are_counted_whole(text, male, female, neutral, terms):
    counts = count_terms(text, "english")
    assert (counts.male, counts.female, counts.neutral) == (male, female, neutral)
    assert counts.by_term == terms


@pytest.mark.parametrize(("text", "male", "female", "neutral", "terms"), ARABIC, ids=[c[0] for c in ARABIC])
def test_arabic_words_are_normalised_and_stripped_of_clitics(text, male, female, neutral, terms):
    counts = count_terms(text, "arabic")
    assert (counts.male, counts.female, counts.neutral) == (male, female, neutral)
    assert counts.by_term == terms


@pytest.mark.parametrize(("text", "language", "words"), [
    ("A man, riding a horse.", "english", 5),
    ("a police-man's x-ray", "english", 3),
    ("", "english", 0),
    ("  ...  ", "english", 0),
    ("رجل يركب حصانا.", "arabic", 3),
    ("امرأة، وطفلها؛ على الشاطئ؟", "arabic", 4),
    ("رَجُـــلٌ", "arabic", 1),
])
def test_word_counts(text, language, words):
    assert count_terms(text, language).words == words


def test_matches_are_in_text_order_with_their_class_and_kind():
    counts = count_terms("She and her brother", "english")
    assert [(m.term, m.cls, m.kind) for m in counts.matches] == [
        ("she", "female", "pronoun"), ("her", "female", "pronoun"), ("brother", "male", "kinship")]
    assert counts.terms_of("female") == ["she", "her"]


def test_counts_add_up_over_several_captions():
    total = count_all(["A man", "a man and a girl", "a dog"], "english")
    assert (total.male, total.female, total.neutral, total.words) == (2, 1, 0, 9)
    assert total.by_term == {"man": 2, "girl": 1}
    assert (count_terms("A man", "english") + count_terms("a girl", "english")).by_class == {
        "male": 1, "female": 1, "neutral": 0}


def test_an_unknown_language_names_the_supported_ones():
    with pytest.raises(LayerwiseError, match="english, arabic"):
        count_terms("un homme", "french")
    with pytest.raises(LayerwiseError, match="french"):
        load_lexicon("french")


# --- the lexicon files ---------------------------------------------------------------------------------

def _term_lines(language: str) -> list[list[str]]:
    lines = (lexicon_dir() / f"{language}.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]
    assert rows[0] == ["term", "class", "kind"]
    return rows[1:]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_lexicon_row_loads_once_with_its_class(language):
    rows = _term_lines(language)
    lexicon = load_lexicon(language)
    assert [(e.term, e.cls, e.kind) for e in lexicon.entries] == [tuple(r) for r in rows]
    assert len(lexicon.keys) == len(lexicon.loose_keys) == len(rows)   # unique after normalisation
    assert all(lexicon.classes()[c] > 0 for c in CLASSES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_lexicon_term_is_found_as_itself(language):
    lexicon = load_lexicon(language)
    for entry in lexicon.entries:
        assert count_terms(entry.term, language).by_term == {entry.term: 1}, entry


def test_every_arabic_term_is_found_after_a_conjunction_and_every_noun_after_the_article():
    for entry in load_lexicon("arabic").entries:
        assert count_terms("و" + entry.term, "arabic").by_term == {entry.term: 1}, entry
        if entry.kind != "pronoun":
            assert count_terms("وال" + entry.term, "arabic").by_term == {entry.term: 1}, entry


def test_english_terms_are_written_in_lower_case():
    assert all(row[0] == row[0].lower() for row in _term_lines("english"))


@pytest.mark.parametrize(("language", "body", "message"), [
    ("arabic", "term\tclass\tkind\nامرأة\tfemale\tnoun\nامراة\tfemale\tnoun\n", "line 3: term 'امراة' is the same word as 'امرأة' \\(line 2\\)"),
    ("english", "term\tclass\tkind\nman\tmale\tnoun\nMan\tmale\tnoun\n", "same word"),
    ("english", "term\tclass\tkind\nman\tmasculine\tnoun\n", "line 2: class 'masculine'"),
    ("english", "term\tclass\tkind\npolice man\tmale\trole\n", "line 2: term 'police man' is not one English word"),
    ("english", "word,class,kind\nman,male,noun\n", "header"),
    ("english", "term\tclass\tkind\nman\tmale\n", "line 2: 2 tab-separated fields"),
    ("english", "term\tclass\tkind\n", "no terms"),
])
def test_a_broken_lexicon_file_is_refused_naming_the_line(tmp_path, language, body, message):
    path = tmp_path / f"{language}.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(LayerwiseError, match=message):
        load_lexicon(language, path)


def test_another_lexicon_file_can_be_used(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("term\tclass\tkind\n# comment lines are skipped\nwizard\tmale\trole\n", encoding="utf-8")
    lexicon = load_lexicon("english", path)
    assert count_terms("A wizard and a man", "english", lexicon).by_term == {"wizard": 1}


# --- the label of a caption pair -------------------------------------------------------------------------

@pytest.mark.parametrize(("captions", "policy", "label", "source"), [
    ({"english": "A man rides a horse", "arabic": "رجل يركب حصانا"}, "both", "male", ("english", "arabic")),
    ({"english": "A girl plays", "arabic": "فتاة تلعب"}, "both", "female", ("english", "arabic")),
    ({"english": "A man and a woman", "arabic": "رجل وامرأة"}, "both", "ambiguous", ()),
    ({"english": "A woman and her son", "arabic": "امرأة وابنها"}, "both", "ambiguous", ()),
    ({"english": "A man", "arabic": "امرأة"}, "both", "ambiguous", ()),
    ({"english": "A dog runs", "arabic": "كلب يجري"}, "both", "none", ()),
    ({"english": "A man rides", "arabic": "شخص يركب"}, "both", "none", ()),
    ({"english": "A man rides", "arabic": "شخص يركب"}, "either", "male", ("english",)),
    ({"english": "A man rides", "arabic": "شخص يركب"}, "english", "male", ("english",)),
    ({"english": "A man rides", "arabic": "شخص يركب"}, "arabic", "none", ()),
    ({"english": "A man", "arabic": "امرأة"}, "either", "ambiguous", ()),
    ({"english": "A dog", "arabic": "كلب"}, "either", "none", ()),
    ({"english": "She runs"}, "both", "female", ("english",)),
    ({"arabic": "والرجل يجري"}, "arabic", "male", ("arabic",)),
])
def test_label_caption_rules(captions, policy, label, source):
    got, evidence = label_caption(captions, policy)
    assert got == label
    assert evidence.source == source
    assert set(evidence.counts) == set(captions)


def test_label_evidence_says_why_and_whether_the_languages_agree():
    label, evidence = label_caption({"english": "A man rides", "arabic": "شخص يركب"})
    assert label == "none"
    assert evidence.labels == {"english": "male", "arabic": "none"}
    assert not evidence.agree
    assert "disagree" in evidence.reason
    assert evidence.counts["arabic"].by_term == {"شخص": 1}


@pytest.mark.parametrize(("captions", "policy", "message"), [
    ({"english": "A man"}, "arabic", "label policy 'arabic'"),
    ({"english": "A man"}, "majority", "both, either"),
    ({"french": "un homme"}, "both", "english, arabic"),
    ({}, "both", "at least one caption"),
])
def test_label_caption_errors(captions, policy, message):
    with pytest.raises(LayerwiseError, match=message):
        label_caption(captions, policy)


# --- layerwise label ------------------------------------------------------------------------------------

# image, en_caption, ar_caption; the expected row labels (policy both) are in the comments
CORPUS = [
    ("img/a.jpg", "A man rides a bike.", "رجل يركب دراجة."),             # male
    ("img/a.jpg", "A person on a bicycle.", "شخص على دراجة."),          # none (neutral caption)
    ("img/a.jpg", "The boy and his dog.", "الولد وكلبه."),               # male
    ("img/b.jpg", "A girl in a pink dress.", "فتاة في فستان وردي."),     # female
    ("img/b.jpg", "Someone is running.", "شخص يركض."),                  # none (neutral caption)
    ("img/b.jpg", "A young lady runs.", "شابة تجري."),                  # female
    ("img/c.jpg", "A man and a woman.", "رجل وامرأة."),                 # ambiguous: image conflicting
    ("img/c.jpg", "Two people talk.", "شخصان يتحدثان."),                # none
    ("img/d.jpg", "A woman plays.", "امرأة تلعب."),                     # female
    ("img/d.jpg", "A boy plays.", "ولد يلعب."),                         # male: image conflicting
    ("img/e.jpg", "A man surfs.", "شخص يركب الأمواج."),                 # none under both (AR has no term)
    ("img/f.jpg", "Her father smiles.", "والدها يبتسم."),               # ambiguous (her + father) / male
]


def write_corpus(folder: Path, rows=CORPUS, name="captions.csv", header=("image", "en_caption", "ar_caption"),
                 images=True) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if images:
        for i, image in enumerate(sorted({r[0] for r in rows if r[0]})):
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (200, 30, 8 * i % 256)).save(folder / image)   # distinct images
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run_label(captions: Path, out: Path, *extra: str) -> int:
    return label_command.main(["--captions", str(captions), "--out-dir", str(out), *extra])


def test_label_writes_a_samplesheet_of_the_male_and_female_rows(tmp_path, capsys):
    captions = write_corpus(tmp_path / "corpus")
    out = tmp_path / "labelled"
    assert run_label(captions, out) == 0
    sheet = read_csv(out / "samplesheet.csv")
    assert [(r["sample_id"], r["gender"]) for r in sheet] == [
        ("img/a.jpg#0", "male"), ("img/a.jpg#2", "male"), ("img/b.jpg#0", "female"), ("img/b.jpg#2", "female")]
    first = sheet[0]
    assert first["caption_english"] == "A man rides a bike." and first["caption_arabic"] == "رجل يركب دراجة."
    assert first["label_source"] == "caption_english+caption_arabic"
    assert first["label_scope"] == "caption"
    assert first["label_leaks"] == "caption_english+caption_arabic"
    assert (first["image_id"], first["pair_index"], first["source_row"]) == ("img/a.jpg", "0", "1")
    assert (out / first["image"]).resolve() == (tmp_path / "corpus" / "img" / "a.jpg").resolve()
    assert not Path(first["image"]).is_absolute()
    assert "4 samples" in capsys.readouterr().out

    labels = read_csv(out / "labels.csv")
    assert len(labels) == len(CORPUS)
    assert [r["label"] for r in labels] == ["male", "none", "male", "female", "none", "female",
                                            "ambiguous", "none", "female", "male", "none", "ambiguous"]
    assert [r["image_label"] for r in labels][6:10] == ["conflicting"] * 4
    assert labels[10]["label_english"] == "male" and labels[10]["label_arabic"] == "none"
    assert labels[0]["terms_arabic"] == "رجل:1"

    report = json.loads((out / "label_report.json").read_text(encoding="utf-8"))
    assert report["rows"] == len(CORPUS) and report["images"] == 6
    assert report["rows_by_label"] == {"male": 3, "female": 3, "ambiguous": 2, "none": 4}
    assert report["disagreements"]["rows"] == 2     # e.jpg (man / شخص) and f.jpg (her father / والدها)
    assert {ex["row"] for ex in report["disagreements"]["examples"]} == {11, 12}
    assert report["images_by_label"] == {"male": 1, "female": 1, "conflicting": 3, "unlabelled": 1}
    assert report["sheet"]["by_gender"] == {"male": 2, "female": 2, "unknown": 0}
    assert report["sheet"]["label_leaks"] == 4
    top = {t["term"]: t["count"] for t in report["top_terms"]["english"]}
    assert top["man"] == 3 and top["woman"] == 2
    assert "Disagreements" in (out / "label_report.md").read_text(encoding="utf-8")


def test_the_sheet_passes_the_samplesheet_checks_of_preflight(tmp_path):
    from layerwise.preflight.samplesheet import read_samplesheet

    out = tmp_path / "labelled"
    run_label(write_corpus(tmp_path / "corpus"), out)
    sheet = read_samplesheet(out / "samplesheet.csv", ["english", "arabic"], check_images=True)
    assert list(sheet["gender"]) == ["male", "male", "female", "female"]
    assert sheet["image_sha256"].nunique() == 2        # two images, two captions each
    assert "label_leaks" in sheet.columns               # kept as metadata


def test_neutral_captions_feed_the_model_and_the_other_captions_give_the_label(tmp_path):
    out = tmp_path / "labelled"
    run_label(write_corpus(tmp_path / "corpus"), out, "--caption-for-model", "neutral")
    sheet = read_csv(out / "samplesheet.csv")
    assert [(r["sample_id"], r["gender"]) for r in sheet] == [("img/a.jpg#1", "male"), ("img/b.jpg#1", "female")]
    assert all(r["label_scope"] == "image" and r["label_leaks"] == "" for r in sheet)
    assert sheet[0]["label_source"] == "caption_english+caption_arabic"
    for row in sheet:
        for language in ("english", "arabic"):
            counts = count_terms(row[f"caption_{language}"], language)
            assert counts.male == counts.female == 0


def test_label_from_one_language_or_either(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run_label(corpus, tmp_path / "either", "--label-from", "either")
    either = {r["sample_id"]: r for r in read_csv(tmp_path / "either" / "samplesheet.csv")}
    assert either["img/e.jpg#0"]["gender"] == "male"
    assert either["img/e.jpg#0"]["label_source"] == "caption_english"
    run_label(corpus, tmp_path / "arabic", "--label-from", "arabic")
    arabic = {r["sample_id"]: r["gender"] for r in read_csv(tmp_path / "arabic" / "samplesheet.csv")}
    assert "img/e.jpg#0" not in arabic and arabic["img/f.jpg#0"] == "male"   # والدها: her father


def test_keep_unlabelled_writes_the_other_rows_as_unknown(tmp_path):
    out = tmp_path / "labelled"
    run_label(write_corpus(tmp_path / "corpus"), out, "--keep-unlabelled")
    genders = [r["gender"] for r in read_csv(out / "samplesheet.csv")]
    assert len(genders) == len(CORPUS)
    assert genders.count("unknown") == len(CORPUS) - 4


def many_images(n_male: int, n_female: int, per_image: int = 3) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n_male + n_female):
        en, ar = ("A man walks.", "رجل يمشي.") if i < n_male else ("A woman walks.", "امرأة تمشي.")
        rows += [(f"img/{i:02d}.jpg", en, ar)] * per_image
    return rows


def test_max_per_image_and_balance_give_a_seeded_balanced_subset(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", many_images(n_male=6, n_female=3))
    picks = []
    for name in ("one", "two"):
        run_label(corpus, tmp_path / name, "--max-per-image", "2", "--balance", "--seed", "7")
        picks.append([r["sample_id"] for r in read_csv(tmp_path / name / "samplesheet.csv")])
    sheet = read_csv(tmp_path / "one" / "samplesheet.csv")
    genders = [r["gender"] for r in sheet]
    assert genders.count("male") == genders.count("female") == 6     # 3 female images x 2
    per_image = {}
    for r in sheet:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) == 2
    assert picks[0] == picks[1]                                       # same seed, same subset
    run_label(corpus, tmp_path / "other", "--max-per-image", "2", "--balance", "--seed", "8")
    assert [r["sample_id"] for r in read_csv(tmp_path / "other" / "samplesheet.csv")] != picks[0]
    report = json.loads((tmp_path / "one" / "label_report.json").read_text(encoding="utf-8"))
    assert report["sheet"]["dropped_by_selection"] == {"max_per_image": 9, "balance": 6}


def test_column_names_one_language_and_jsonl(tmp_path):
    rows = [("x.jpg", "A man", "رجل"), ("y.jpg", "A girl", "فتاة")]
    corpus = write_corpus(tmp_path / "corpus", rows, header=("file", "en", "ar"))
    out = tmp_path / "english_only"
    run_label(corpus, out, "--languages", "english", "--image-column", "file", "--column", "english=en")
    sheet = read_csv(out / "samplesheet.csv")
    assert [r["gender"] for r in sheet] == ["male", "female"]
    assert "caption_arabic" not in sheet[0] and sheet[0]["caption_english"] == "A man"

    jsonl = tmp_path / "corpus" / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": i, "en_caption": e, "ar_caption": a}, ensure_ascii=False) + "\n"
                             for i, e, a in rows), encoding="utf-8")
    run_label(jsonl, tmp_path / "from_jsonl")
    assert [r["gender"] for r in read_csv(tmp_path / "from_jsonl" / "samplesheet.csv")] == ["male", "female"]


GOOD = "image,en_caption,ar_caption\nimg/a.jpg,A man,رجل\n"


@pytest.mark.parametrize(("content", "extra", "message"), [
    ("", (), "is empty"),
    ("image,en_caption,ar_caption\n", (), "has no rows"),
    ("image,en_caption\nimg/a.jpg,A man\n", (), "lacks column 'ar_caption' \\(--column arabic=ar_caption\\)"),
    ("img,en_caption,ar_caption\nimg/a.jpg,A man,رجل\n", (), "lacks column 'image' \\(--image-column\\)"),
    ("image,en_caption,ar_caption\nimg/a.jpg,A man,رجل\nimg/a.jpg,,رجل\n", (),
     "row 2 \\(line 3\\), column 'en_caption': empty english caption"),
    ("image,en_caption,ar_caption\nimg/a.jpg,A man,رجل,extra\n", (), "row 1 \\(line 2\\): 4 fields"),
    ('image,en_caption,ar_caption\nimg/a.jpg,"A man,رجل\n', (), "line 2 is not valid CSV"),
    ("image,en_caption,ar_caption\nimg/zzz.jpg,A man,رجل\n", (), "row 1 \\(line 2\\), column 'image': 'img/zzz.jpg'"),
    ("image,en_caption,ar_caption\nimg/a.jpg,A dog,كلب\n", (), "no row gives a male or female sample"),
    ("image,en_caption,ar_caption\nimg/a.jpg,A man,رجل\n", ("--image-root", "/nonexistent"), "not found"),
])
def test_bad_input_names_the_file_row_and_column_and_writes_nothing(tmp_path, content, extra, message):
    write_corpus(tmp_path, [("img/a.jpg", "x", "y")])     # the image the good rows name
    captions = tmp_path / "bad.csv"
    captions.write_text(content, encoding="utf-8")
    out = tmp_path / "labelled"
    with pytest.raises(LayerwiseError, match=message) as raised:
        run_label(captions, out, *extra)
    assert str(captions) in str(raised.value)
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (("--balance",), "--balance: there are no female samples"),
    (("--languages", "english,french"), "no gender lexicon for 'french'"),
    (("--column", "english"), "LANGUAGE=COLUMN"),
    (("--column", "german=de"), "german is not in --languages"),
    (("--languages", "english", "--label-from", "arabic"), "label policy 'arabic'"),
    (("--max-per-image", "-1"), "--max-per-image -1"),
])
def test_bad_options_are_refused_and_write_nothing(tmp_path, extra, message):
    write_corpus(tmp_path, [("img/a.jpg", "x", "y")])
    captions = tmp_path / "good.csv"
    captions.write_text(GOOD, encoding="utf-8")
    out = tmp_path / "labelled"
    with pytest.raises(LayerwiseError, match=message):
        run_label(captions, out, *extra)
    assert not out.exists()


def test_the_command_reports_bad_input_as_one_error_line(tmp_path, capsys):
    from layerwise import commands

    captions = tmp_path / "bad.csv"
    captions.write_text("image,en_caption\nimg/a.jpg,A man\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        commands.main(["label", "--captions", str(captions), "--out-dir", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"ERROR: caption table {captions} lacks column 'ar_caption'")
