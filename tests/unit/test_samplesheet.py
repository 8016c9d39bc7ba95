"""Samplesheet reading and checks (layerwise/preflight/samplesheet.py) and prompts (layerwise/core/prompts.py)."""
import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from layerwise.core.errors import LayerwiseError
from layerwise.core.prompts import default_prompts_path, load_prompts, prompt_for
from layerwise.core.sheet import Sample, iter_samples, parse_rows
from layerwise.preflight.samplesheet import (
    MAX_LISTED,
    read_samplesheet,
    write_valid_samplesheet,
)

HEADER = ["sample_id", "image", "gender", "caption_english", "caption_arabic"]


def make_image(path: Path, color=(200, 10, 10), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format=fmt)
    return path


def write_csv(path: Path, rows, header=HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def sheet(tmp_path):
    """A valid 3-sample sheet with relative image paths."""
    for name in ("a.png", "b.jpg", "c.png"):
        make_image(tmp_path / "img" / name)
    return write_csv(tmp_path / "samples.csv", [
        ["001", "img/a.png", "Male", "A man smiling.", "رجل يبتسم."],
        ["s2", "img/b.jpg", "female", "NA", "امرأة"],
        ["s3", str(tmp_path / "img" / "c.png"), " UNKNOWN ", "Someone.", "شخص ما."],
    ])


def problems_of(path, languages=("english", "arabic"), **kw) -> str:
    with pytest.raises(LayerwiseError) as e:
        read_samplesheet(path, list(languages), **kw)
    return str(e.value)


# ---------------------------------------------------------------- valid sheets

def test_valid_sheet_is_normalised(sheet, tmp_path):
    df = read_samplesheet(sheet, ["english", "arabic"])
    assert list(df.columns) == ["row", "sample_id", "image", "image_sha256", "gender", "caption_english", "caption_arabic"]
    assert df["row"].tolist() == [0, 1, 2]
    assert df["sample_id"].tolist() == ["001", "s2", "s3"]            # "001" stays text
    assert df["caption_english"].tolist()[1] == "NA"                  # "NA" is not missing
    assert df["gender"].tolist() == ["male", "female", "unknown"]      # lower-cased and stripped
    assert df["caption_arabic"].tolist()[0] == "رجل يبتسم."             # UTF-8 survives
    for p in df["image"]:
        assert Path(p).is_absolute() and Path(p).is_file()
    assert df["image"][0] == str(tmp_path / "img" / "a.png")


def test_only_requested_languages_are_checked_but_all_captions_kept(tmp_path):
    make_image(tmp_path / "a.png")
    path = write_csv(tmp_path / "s.csv", [["x", "a.png", "male", "hello", ""]])
    df = read_samplesheet(path, ["english"])   # the empty Arabic caption does not matter
    assert list(df.columns[-2:]) == ["caption_english", "caption_arabic"]
    # asking for one language more later must not change the normalised samplesheet (-resume)
    both = write_csv(tmp_path / "t.csv", [["x", "a.png", "male", "hello", "مرحبا"]])
    assert list(read_samplesheet(both, ["english"]).columns) == list(read_samplesheet(both, ["arabic", "english"]).columns)
    assert "arabic" in problems_of(path, ["english", "arabic"])


def test_extra_columns_are_kept_and_row_column_is_recomputed(tmp_path):
    make_image(tmp_path / "a.png")
    path = write_csv(tmp_path / "s.csv", [["7", "x", "a.png", "male", "hi", "30"]],
                     header=["row", "sample_id", "image", "gender", "caption_english", "age"])
    df = read_samplesheet(path, "english")
    assert list(df.columns) == ["row", "sample_id", "image", "image_sha256", "gender", "caption_english", "age"]
    assert df["row"].tolist() == [0] and df["age"].tolist() == ["30"]


def test_header_case_bom_blank_lines_and_trailing_commas(tmp_path):
    make_image(tmp_path / "a.png")
    text = "\ufeffSample_ID, Image ,GENDER,Caption_English,\n\nx,a.png,female,hi,\n\n"
    path = tmp_path / "s.csv"
    path.write_text(text, encoding="utf-8")
    df = read_samplesheet(path, ["english"])
    assert df["sample_id"].tolist() == ["x"] and df["gender"].tolist() == ["female"]


def test_tsv(tmp_path):
    make_image(tmp_path / "a.png")
    path = tmp_path / "s.tsv"
    path.write_text("sample_id\timage\tgender\tcaption_english\nx\ta.png\tmale\thi, there\n", encoding="utf-8")
    assert read_samplesheet(path, ["english"])["caption_english"].tolist() == ["hi, there"]


def test_relative_images_follow_a_symlinked_csv(sheet, tmp_path):
    staged = tmp_path / "work" / "ab" / "samples.csv"   # how Nextflow stages an input
    staged.parent.mkdir(parents=True)
    staged.symlink_to(sheet)
    df = read_samplesheet(staged, ["english", "arabic"])
    assert df["image"][0] == str(tmp_path / "img" / "a.png")


def test_check_images_false_skips_file_checks(tmp_path):
    path = write_csv(tmp_path / "s.csv", [["x", "nowhere.png", "male", "hi", "مرحبا"]])
    df = read_samplesheet(path, ["english", "arabic"], check_images=False)
    assert df["image"][0] == str(tmp_path / "nowhere.png")


def test_write_valid_samplesheet_round_trips_atomically(sheet, tmp_path):
    df = read_samplesheet(sheet, ["english", "arabic"])
    out = tmp_path / "out" / "samplesheet.valid.csv"
    write_valid_samplesheet(df, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["samplesheet.valid.csv"]  # no temp left
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert raw["sample_id"].tolist() == ["001", "s2", "s3"] and raw["caption_english"][1] == "NA"
    again = read_samplesheet(out, ["english", "arabic"])
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True))


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    msg = problems_of(tmp_path / "nope.csv")
    assert "nope.csv" in msg and "does not exist" in msg and "--samplesheet" in msg


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_text("", encoding="utf-8")
    assert "is empty" in problems_of(tmp_path / "e.csv")
    write_csv(tmp_path / "h.csv", [])
    assert "no samples" in problems_of(tmp_path / "h.csv")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("sample_id,image,gender,caption_english\nx,a.png,male,caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in problems_of(path, ["english"])


def test_missing_columns_are_named_with_the_columns_present(tmp_path):
    path = write_csv(tmp_path / "s.csv", [["x", "a.png", "hi"]], header=["sample_id", "img", "caption_english"])
    msg = problems_of(path, ["english", "french"])
    assert "s.csv" in msg
    assert "image" in msg and "gender" in msg and "caption_french (for --languages french)" in msg
    assert "columns present: sample_id, img, caption_english" in msg


def test_duplicate_header_column(tmp_path):
    path = write_csv(tmp_path / "s.csv", [["x", "a", "male", "b"]], header=["sample_id", "image", "gender", "Gender"])
    assert "'gender' appears twice" in problems_of(path, ["english"])


def test_wrong_number_of_fields(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("sample_id,image,gender,caption_english\nx,a.png,male\n", encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert "row 1" in msg and "3 fields but the header has 4" in msg


def test_every_row_problem_is_reported_together(tmp_path):
    make_image(tmp_path / "ok.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    path = write_csv(tmp_path / "samples.csv", [
        ["s001", "ok.png", "male", "fine", "جيد"],                     # row 1: fine
        ["", "ok.png", "male", "no id", "x"],                          # row 2: empty id
        ["s001", "ok.png", "female", "dup", "x"],                      # row 3: duplicate of row 1
        ["s004", "ok.png", "mal", "bad gender", "x"],                  # row 4
        ["s005", "ok.png", "", "no gender", "x"],                      # row 5
        ["s006", "ok.png", "male", "   ", "x"],                        # row 6: blank English caption
        ["s007", "ok.png", "male", "ok", ""],                          # row 7: empty Arabic caption
        ["s008", "missing.png", "male", "ok", "x"],                    # row 8
        ["s009", "dir.png", "male", "ok", "x"],                        # row 9
        ["s010", "zero.png", "male", "ok", "x"],                       # row 10
        ["s011", "corrupt.png", "male", "ok", "x"],                    # row 11
        ["s012", "", "male", "ok", "x"],                               # row 12
    ])
    msg = problems_of(path)
    lines = msg.splitlines()
    assert str(path) in lines[0] and "11 problems" in lines[0]
    assert all(line.strip().startswith("- samples.csv row ") for line in lines[1:]), msg
    expected = [
        "row 2, column 'sample_id': empty sample_id",
        "row 3 (sample s001), column 'sample_id': duplicate sample_id 's001' (also in row 1)",
        "row 4 (sample s004), column 'gender': 'mal' is not one of male, female, unknown",
        "row 5 (sample s005), column 'gender': empty gender",
        "row 6 (sample s006), column 'caption_english': empty caption for language english",
        "row 7 (sample s007), column 'caption_arabic': empty caption for language arabic",
        f"row 8 (sample s008), column 'image': image {tmp_path / 'missing.png'}: not found",
        "row 9 (sample s009), column 'image'",
        "row 10 (sample s010), column 'image'",
        "row 11 (sample s011), column 'image'",
        "row 12 (sample s012), column 'image': empty image path",
    ]
    for fragment in expected:
        assert fragment in msg, fragment
    assert "dir.png: a directory" in msg and "zero.png: empty file (0 bytes)" in msg
    assert "corrupt.png: corrupt image" in msg
    assert "relative to the samplesheet folder" in msg
    assert "row 1 " not in msg.replace("also in row 1)", "")   # the good row is not reported


def test_truncated_corrupt_png_is_detected(tmp_path):
    Image.effect_noise((64, 64), 80).convert("RGB").save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) * 2 // 3])   # header intact, pixel data cut
    with Image.open(tmp_path / "cut.png") as img:                      # opening alone does not notice
        assert img.size == (64, 64)
    path = write_csv(tmp_path / "s.csv", [["x", "cut.png", "male", "hi"]], header=HEADER[:4])
    assert "corrupt image" in problems_of(path, ["english"])


def test_url_images_are_rejected(tmp_path):
    path = write_csv(tmp_path / "s.csv", [["x", "https://example.org/a.png", "male", "hi"]], header=HEADER[:4])
    assert "is a URL" in problems_of(path, ["english"], check_images=False)


def test_long_problem_lists_are_truncated(tmp_path):
    make_image(tmp_path / "a.png")
    rows = [[f"s{i}", "a.png", "robot", "hi"] for i in range(MAX_LISTED + 7)]
    msg = problems_of(write_csv(tmp_path / "s.csv", rows, header=HEADER[:4]), ["english"])
    assert f"{MAX_LISTED + 7} problems" in msg
    assert len([ln for ln in msg.splitlines() if ln.strip().startswith("- ")]) == MAX_LISTED
    assert msg.splitlines()[-1].strip() == "... and 7 more"


# ---------------------------------------------------------------- rows and samples

@pytest.mark.parametrize("spec, expected", [
    ("0:10", range(0, 10)), ("3:7", range(3, 7)), (":4", range(0, 4)), ("8:", range(8, 10)),
    (None, range(10)), ("", range(10)), (" 2 : 5 ", range(2, 5)), (range(1, 3), range(1, 3)),
])
def test_parse_rows(spec, expected):
    assert parse_rows(spec, 10) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("5", "expected START:END"), ("a:b", "expected START:END"), ("-1:3", "expected START:END"),
    ("7:3", "START 7 is after END 3"), ("0:11", "END 11 is beyond the 10 samples"), ("4:4", "selects no samples"),
])
def test_parse_rows_errors(spec, fragment):
    with pytest.raises(LayerwiseError) as e:
        parse_rows(spec, 10)
    assert "--rows" in str(e.value) and fragment in str(e.value)


def test_iter_samples(sheet):
    df = read_samplesheet(sheet, ["english", "arabic"])
    samples = list(iter_samples(df, "arabic", "1:3"))
    assert [s.sample_id for s in samples] == ["s2", "s3"]
    assert [s.row for s in samples] == [1, 2]
    s = samples[0]
    assert isinstance(s, Sample) and s.image.is_absolute() and s.image.is_file()
    assert s.gender == "female" and s.caption("arabic") == "امرأة" and s.captions["english"] == "NA"
    assert len(list(iter_samples(df, "english"))) == 3
    with pytest.raises(LayerwiseError, match="--language french.*languages present: english, arabic"):
        list(iter_samples(df, "french"))
    with pytest.raises(LayerwiseError, match="no caption for language 'french'"):
        s.caption("french")


# ---------------------------------------------------------------- prompts

def test_default_prompts_file():
    assert default_prompts_path().is_file()
    prompts = load_prompts()
    assert prompts["english"] == "Describe the person in this image."
    assert set(prompts) >= {"english", "arabic"}
    assert any("\u0600" <= ch <= "\u06ff" for ch in prompts["arabic"])   # Arabic script
    raw = json.loads(default_prompts_path().read_text(encoding="utf-8"))
    assert all({"prompt", "name"} <= set(v) <= {"prompt", "name", "generation", "families"} for v in raw.values())


def test_a_family_gets_its_own_prompt_where_the_file_names_one(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"english": {"prompt": "Describe.", "families": {"paligemma": "caption en"}},
                                "arabic": {"prompt": "صف."}}), encoding="utf-8")
    assert load_prompts(path) == {"english": "Describe.", "arabic": "صف."}
    assert load_prompts(path, "paligemma") == {"english": "caption en", "arabic": "صف."}
    assert load_prompts(path, "qwen2_vl") == {"english": "Describe.", "arabic": "صف."}
    from layerwise.core.prompts import generation_prompt

    path.write_text(json.dumps({"english": {"prompt": "Describe.", "generation": "Caption it.",
                                            "families": {"paligemma": "caption en"}}}), encoding="utf-8")
    assert generation_prompt("english", path) == "Caption it."
    assert generation_prompt("english", path, "paligemma") == "caption en"
    path.write_text(json.dumps({"english": {"prompt": "Describe.", "families": {"paligemma": ""}}}), encoding="utf-8")
    with pytest.raises(LayerwiseError, match="families"):
        load_prompts(path)


def test_adding_a_language_is_one_entry(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"english": {"prompt": "Describe.", "name": "English"},
                                "french": {"prompt": "Décrivez la personne.", "name": "French"}}), encoding="utf-8")
    prompts = load_prompts(path)
    assert prompt_for("french", prompts) == "Décrivez la personne."


def test_prompt_for_unknown_language_lists_available():
    with pytest.raises(LayerwiseError) as e:
        prompt_for("klingon", {"english": "x", "arabic": "y"})
    assert "'klingon'" in str(e.value) and "arabic, english" in str(e.value)


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("[]", "non-empty JSON object"),
    ('{"English": {"prompt": "x"}}', "lower case"),
    ('{"english": {"name": "English"}}', 'non-empty "prompt"'),
])
def test_bad_prompts_file_is_named(tmp_path, content, fragment):
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(LayerwiseError) as e:
        load_prompts(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


# ---------------------------------------------------------------- parse errors name the user's file lines

def test_unbalanced_quote_names_the_line_where_it_opens(tmp_path):
    make_image(tmp_path / "a.png")
    path = tmp_path / "s.csv"
    path.write_text("sample_id,image,gender,caption_english\n"
                    "s1,a.png,male,fine\n"
                    "s2,a.png,male,\"A caption, with a comma\n"          # line 3: never closed
                    "s3,a.png,female,ok\n"
                    "s4,a.png,female,ok\n", encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert str(path) in msg and "line 3" in msg and "never closed" in msg


def test_unbalanced_quote_after_a_multiline_caption_names_its_own_line(tmp_path):
    make_image(tmp_path / "a.png")
    path = tmp_path / "s.csv"
    path.write_text("sample_id,image,gender,caption_english\n"
                    "s1,a.png,male,\"two\nlines\"\n"                       # lines 2-3: fine
                    "\n"                                                    # line 4: blank
                    "s2,a.png,male,ok\n"                                    # line 5
                    "s3,a.png,male,\"open\n", encoding="utf-8")            # line 6
    msg = problems_of(path, ["english"])
    assert "line 6" in msg and "never closed" in msg


def test_text_after_a_closing_quote_names_the_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("sample_id,image,gender,caption_english\ns1,a.png,male,ok\ns2,a.png,male,\"quoted\" tail\n",
                    encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert "line 3" in msg and '""' in msg


def test_wrong_field_count_names_the_line_the_record_starts_on(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("sample_id,image,gender,caption_english\n\ns1,a.png,male,\"multi\nline\"\ns2,a.png\n",
                    encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert "row 2 (line 5): 2 fields but the header has 4" in msg


@pytest.mark.parametrize("delimiter, name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_other_delimiters_are_recognised(tmp_path, delimiter, name):
    path = tmp_path / "s.csv"
    path.write_text(delimiter.join(["sample_id", "image", "gender", "caption_english"]) + "\n"
                    + delimiter.join(["s1", "a.png", "male", "hi, there"]) + "\n", encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert f"looks {name}-separated" in msg and "line 1" in msg and "comma-separated" in msg


def test_comma_separated_tsv_is_recognised(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("sample_id,image,gender,caption_english\ns1,a.png,male,hi\n", encoding="utf-8")
    assert "looks comma-separated" in problems_of(path, ["english"])


def test_latin1_names_the_line_and_says_save_as_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("sample_id,image,gender,caption_english\nx,a.png,male,ok\ny,a.png,male,caf\xe9\nz,a.png,male,na\xefve\n"
                     .encode("latin-1"))
    msg = problems_of(path, ["english"])
    assert "not UTF-8" in msg and "line 3" in msg and "0xe9" in msg and "'é'" in msg
    assert "2 lines" in msg and "Save it as UTF-8" in msg
    assert "position" not in msg                          # no bare byte offset


@pytest.mark.parametrize("data, fragment", [
    ("sample_id,image\n".encode("utf-16"), "UTF-16"),
    (b"PK\x03\x04\x14\x00rest of a zip", "workbook"),
    (b"sample_id,image,gender,caption_english\nx,a.png,male,o\x00k\n", "line 2 contains a NUL"),
])
def test_binary_or_utf16_sheets_are_named(tmp_path, data, fragment):
    path = tmp_path / "s.csv"
    path.write_bytes(data)
    assert fragment in problems_of(path, ["english"])


def test_utf8_with_bom_and_crlf_still_pass(tmp_path):
    make_image(tmp_path / "a.png")
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffsample_id,image,gender,caption_english\r\nx,a.png,male,\"café\r\nau lait\"\r\n".encode("utf-8"))
    assert read_samplesheet(path, ["english"])["caption_english"].tolist() == ["café\r\nau lait"]


def test_captions_longer_than_the_csv_default_field_limit_are_read(tmp_path):
    make_image(tmp_path / "a.png")
    long = "word " * 40_000                              # 200,000 characters > csv's default 131,072
    path = write_csv(tmp_path / "s.csv", [["x", "a.png", "male", long.strip()]], header=HEADER[:4])
    assert len(read_samplesheet(path, ["english"])["caption_english"][0]) == len(long.strip())
    assert csv.field_size_limit() == 131072               # the process-wide limit is restored


def test_quoted_semicolon_header_gets_the_delimiter_hint(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('\n"sample_id";"image";"gender";"caption_english"\n"s1";"a.png";"male";"hi"\n', encoding="utf-8")
    msg = problems_of(path, ["english"])
    assert "looks semicolon-separated (line 2" in msg
