"""Label a caption corpus by its gendered words and write a samplesheet, a per-row label table and a report.

Input: a caption table with one row per image x caption pair (several rows per image allowed, e.g. the five
captions of a Flickr8K image): CSV, TSV (.tsv) or JSON lines (.jsonl), with an image column and one caption
column per language (--image-column, --column LANGUAGE=NAME). Each row gets a label from its captions
(layerwise.lexicon.label: male, female, ambiguous or none, under --label-from). An image whose labelled rows
disagree (one says male, another female, or one is ambiguous) is `conflicting` and gives no sample.

Which caption the model reads (--caption-for-model):
  same     (default) each male/female row is a sample with its own captions. Those captions contain the
           word that gave the label, so a probe of the caption views can read the word: the sheet says so in
           `label_leaks` (the caption columns holding a gendered term); the image view stays clean.
  neutral  the label comes from the image's gendered captions, and the samples are the image's other rows,
           whose captions have no gendered term in any language: the caption views do not leak the label.

Outputs in --out-dir (each written atomically; all checks run before anything is written):
  samplesheet.csv   sample_id,image,gender,caption_<language>...,label_source,label_scope,label_leaks,
                    image_id,pair_index,source_row: a layerwise samplesheet (image paths relative to it);
  labels.csv        every corpus row: its captions, per-language counts, terms and labels, the row's label,
                    its image's label and whether (or why not) it is in the sheet;
  label_report.json counts per class and language, EN/AR disagreements with examples, the most frequent
  label_report.md   terms, the image-level labels and the selection (--max-per-image, --balance, --seed).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from layerwise.core import schema
from layerwise.core.atomic import atomic_write_json, atomic_write_text
from layerwise.core.errors import LayerwiseError
from layerwise.lexicon import CLASSES, LABELS, LANGUAGES, caption_label, count_terms, load_lexicon
from layerwise.lexicon.label import GENDERED, check_policy, combine

SHEET = "samplesheet.csv"
LABELS_TABLE = "labels.csv"
REPORT_JSON = "label_report.json"
REPORT_MD = "label_report.md"
OUTPUTS = (LABELS_TABLE, REPORT_JSON, REPORT_MD, SHEET)   # in writing order: the sheet last

DEFAULT_COLUMNS = {"english": "en_caption", "arabic": "ar_caption"}
CAPTION_CHOICES = ("same", "neutral")
MAX_LISTED = 20     # problems listed in one error
EXAMPLES = 5        # examples per kind in the report
TOP_TERMS = 20
FIELD_LIMIT = 64 * 1024 * 1024


@dataclass
class Row:
    number: int                 # 1-based data row of the corpus (after the header)
    line: int                   # line of the file the row starts on
    image: str                  # as given in the corpus
    captions: dict[str, str]    # language -> caption
    caption_index: int = 0      # position among the rows of its image (0-based)
    counts: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    label: str = "none"
    source: tuple = ()
    reason: str = ""
    image_label: str = ""
    gender: str = ""            # gender in the sheet ("" when not selected)
    scope: str = ""             # caption | image
    label_source: tuple = ()    # languages whose captions gave the sheet's label
    excluded: str = ""          # why the row is not in the sheet

    @property
    def sample_id(self) -> str:
        return f"{self.image}#{self.caption_index}"

    def gendered_in(self) -> list[str]:
        """Languages whose caption holds a male or female term."""
        return [lang for lang, c in self.counts.items() if c.male or c.female]


def _languages(text: str) -> list[str]:
    out = []
    for lang in re.split(r"[\s,]+", text.strip().lower()):
        if lang and lang not in out:
            if lang not in LANGUAGES:
                raise LayerwiseError(f"--languages {text}: no gender lexicon for {lang!r} "
                                     f"(supported: {', '.join(LANGUAGES)})")
            out.append(lang)
    if not out:
        raise LayerwiseError("--languages is empty; give e.g. english,arabic")
    return out


def _columns(specs: list[str], languages: list[str]) -> dict[str, str]:
    columns = {lang: DEFAULT_COLUMNS[lang] for lang in languages if lang in DEFAULT_COLUMNS}
    for spec in specs:
        lang, sep, name = spec.partition("=")
        lang, name = lang.strip().lower(), name.strip()
        if not sep or not lang or not name:
            raise LayerwiseError(f"--column {spec!r}: expected LANGUAGE=COLUMN, e.g. arabic=ar_caption")
        if lang not in languages:
            raise LayerwiseError(f"--column {spec!r}: {lang} is not in --languages ({', '.join(languages)})")
        columns[lang] = name
    return {lang: columns[lang] for lang in languages}


def _problems(path: Path, problems: list[str]) -> LayerwiseError:
    lines = [f"caption table {path} has {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             "(rows are counted from 1, after the header line):"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return LayerwiseError("\n".join(lines))


def _decode(path: Path) -> str:
    if not path.exists():
        raise LayerwiseError(f"caption table {path} does not exist (--captions)")
    if path.is_dir():
        raise LayerwiseError(f"caption table {path} is a directory; --captions needs a CSV, TSV or JSONL file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LayerwiseError(f"cannot read caption table {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LayerwiseError(f"caption table {path} is not UTF-8 text (line {line}, byte 0x{data[exc.start]:02x}); "
                             "save it as UTF-8") from None
    if not text.strip():
        raise LayerwiseError(f"caption table {path} is empty; it needs a header line such as "
                             f"'image,{','.join(DEFAULT_COLUMNS.values())}'")
    return text


def _records(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line, {column: value})]) of a CSV/TSV/JSONL caption table; structural problems raise."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        header: list[str] = []
        records = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise LayerwiseError(f"caption table {path} line {line}: not a JSON object ({exc})") from None
            if not isinstance(obj, dict):
                raise LayerwiseError(f"caption table {path} line {line}: a JSON line must be an object, "
                                     f"not {type(obj).__name__}")
            for name in obj:
                if name not in header:
                    header.append(name)
            records.append((line, {k: "" if v is None else str(v) for k, v in obj.items()}))
        return header, records
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, FIELD_LIMIT))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        rows = []
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise LayerwiseError(f"caption table {path}: the row starting on line {start} is not valid "
                                     f"{'TSV' if delimiter == chr(9) else 'CSV'} ({exc}); "
                                     "a quote inside a quoted field is written \"\"") from None
            if any(f.strip() for f in fields):
                rows.append((start, fields))
    finally:
        csv.field_size_limit(old_limit)
    header = [h.strip() for h in rows[0][1]]
    records, problems = [], []
    for number, (line, fields) in enumerate(rows[1:], start=1):
        if len(fields) > len(header) and not any(f.strip() for f in fields[len(header):]):
            fields = fields[: len(header)]      # trailing empty fields of spreadsheet exports
        if len(fields) != len(header):
            problems.append(f"row {number} (line {line}): {len(fields)} fields but the header has {len(header)}")
            continue
        records.append((line, dict(zip(header, fields))))
    if problems:
        raise _problems(path, problems)
    return header, records


def read_caption_table(path: Path, image_column: str, columns: dict[str, str]) -> list[Row]:
    """The corpus rows, checked: the columns exist, and no row has an empty image or caption."""
    text = _decode(path)
    header, records = _records(path, text)
    need = {image_column: "--image-column", **{col: f"--column {lang}={col}" for lang, col in columns.items()}}
    missing = [f"'{col}' ({flag})" for col, flag in need.items() if col not in header]
    if missing:
        raise LayerwiseError(f"caption table {path} lacks column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}; its columns are: {', '.join(header) or '(none)'}")
    if not records:
        raise LayerwiseError(f"caption table {path} has no rows (only a header line)")
    rows, problems = [], []
    for number, (line, rec) in enumerate(records, start=1):
        where = f"row {number} (line {line})"
        image = (rec.get(image_column) or "").strip()
        if not image:
            problems.append(f"{where}, column '{image_column}': empty image")
        captions = {}
        for lang, col in columns.items():
            caption = (rec.get(col) or "").strip()
            if not caption:
                problems.append(f"{where}, column '{col}': empty {lang} caption")
            captions[lang] = caption
        rows.append(Row(number=number, line=line, image=image, captions=captions))
    if problems:
        raise _problems(path, problems)
    return rows


def _image_paths(path: Path, rows: list[Row], image_root: Path, out_dir: Path, absolute: bool,
                 check: bool, image_column: str = "image") -> dict[str, str]:
    """Corpus image -> the sheet's image path (relative to --out-dir unless --absolute-paths); missing files raise."""
    paths, missing = {}, []
    first_row = {}
    for row in rows:
        first_row.setdefault(row.image, row)
    for image, row in first_row.items():
        full = (image_root / Path(image).expanduser()).resolve()
        if check and not full.is_file():
            missing.append(f"row {row.number} (line {row.line}), column '{image_column}': {image!r} is not a file "
                           f"({full}; images are read relative to --image-root {image_root})")
        paths[image] = str(full) if absolute else os.path.relpath(full, out_dir.resolve())
    if missing:
        lines = [f"caption table {path}: {len(missing)} image{'s' if len(missing) != 1 else ''} not found:"]
        lines += [f"  - {m}" for m in missing[:MAX_LISTED]]
        if len(missing) > MAX_LISTED:
            lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
        lines.append("  (set --image-root to the images' folder, or --skip-image-check)")
        raise LayerwiseError("\n".join(lines))
    return paths


def label_rows(rows: list[Row], languages: list[str], policy: str, lexicons) -> None:
    """Each row's counts, per-language labels, label, source and reason (in place)."""
    for row in rows:
        row.counts = {lang: count_terms(row.captions[lang], lang, lexicons[lang]) for lang in languages}
        row.labels = {lang: caption_label(row.counts[lang]) for lang in languages}
        row.label, row.source, row.reason = combine(row.labels, policy)


def image_label(rows: list[Row]) -> str:
    """male/female when every labelled row of the image says so; conflicting when they differ; else unlabelled."""
    labels = {r.label for r in rows}
    if "ambiguous" in labels or set(GENDERED) <= labels:
        return "conflicting"
    for label in GENDERED:
        if label in labels:
            return label
    return "unlabelled"


def select(rows: list[Row], caption_for_model: str, keep_unlabelled: bool, max_per_image: int,
           balance: bool, seed: int) -> dict[str, int]:
    """Mark each row's sheet gender (or why it is excluded); returns the rows dropped per step."""
    by_image: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_image[row.image].append(row)
    for image_rows in by_image.values():
        label = image_label(image_rows)
        for row in image_rows:
            row.image_label = label
    for row in rows:
        if caption_for_model == "same":
            if row.label in GENDERED and row.image_label == row.label:
                row.gender, row.scope, row.label_source = row.label, "caption", row.source
            elif row.label in GENDERED:
                row.excluded = f"its image is {row.image_label} (its captions give different labels)"
            else:
                row.excluded = f"label {row.label}"
        else:
            if row.image_label not in GENDERED:
                row.excluded = f"its image is {row.image_label}"
            elif row.gendered_in():
                row.excluded = f"its captions have gendered terms ({', '.join(row.gendered_in())}); " \
                               "--caption-for-model neutral feeds only captions without any"
            else:
                givers = [r for r in by_image[row.image] if r.label == row.image_label]
                row.gender, row.scope = row.image_label, "image"
                row.label_source = tuple(lang for lang in row.captions if any(lang in r.source for r in givers))
        # --keep-unlabelled: rows without a usable label become `unknown` samples; in neutral mode only
        # those of unlabelled/conflicting images (a gendered caption of a labelled image is still left out)
        if keep_unlabelled and not row.gender and (caption_for_model == "same" or row.image_label not in GENDERED):
            row.gender, row.scope = "unknown", ""
    dropped = Counter()
    rng = random.Random(seed)
    if max_per_image:
        for image in sorted(by_image):
            chosen = [r for r in by_image[image] if r.gender]
            if len(chosen) > max_per_image:
                keep = set(id(r) for r in rng.sample(chosen, max_per_image))
                for r in chosen:
                    if id(r) not in keep:
                        r.gender, r.excluded = "", f"over --max-per-image {max_per_image}"
                        dropped["max_per_image"] += 1
    if balance:
        per_class = {g: [r for r in rows if r.gender == g] for g in GENDERED}
        target = min(len(v) for v in per_class.values())
        if target == 0:
            empty = [g for g, v in per_class.items() if not v]
            raise LayerwiseError(f"--balance: there are no {' or '.join(empty)} samples to balance against "
                                 f"({', '.join(f'{g} {len(v)}' for g, v in per_class.items())})")
        for gender, chosen in per_class.items():
            images = sorted({r.image for r in chosen})
            rng.shuffle(images)
            kept = 0
            for image in images:
                for r in (r for r in by_image[image] if r.gender == gender):
                    if kept < target:
                        kept += 1
                    else:
                        r.gender, r.excluded = "", f"--balance: {gender} has more samples than the other class"
                        dropped["balance"] += 1
    return dict(dropped)


def _examples(rows: list[Row], n: int = EXAMPLES) -> list[dict]:
    return [{"row": r.number, "image": r.image, "captions": r.captions, "labels": r.labels, "reason": r.reason}
            for r in rows[:n]]


def build_report(rows: list[Row], args, languages: list[str], columns: dict[str, str], lexicons,
                 dropped: dict[str, int]) -> dict:
    chosen = [r for r in rows if r.gender]
    disagree = [r for r in rows if len(set(r.labels.values())) > 1]
    pairs = Counter(", ".join(f"{lang} {r.labels[lang]}" for lang in languages) for r in disagree)
    images = {}
    for r in rows:
        images.setdefault(r.image, r.image_label)
    top_terms = {}
    for lang in languages:
        terms = Counter()
        classes = {e.term: e.cls for e in lexicons[lang].entries}
        for r in rows:
            terms.update(r.counts[lang].by_term)
        top_terms[lang] = [{"term": t, "class": classes[t], "count": n} for t, n in terms.most_common(TOP_TERMS)]
    return {
        "captions": str(args.captions), "rows": len(rows), "images": len(images), "languages": languages,
        "columns": {"image": args.image_column, **{lang: columns[lang] for lang in languages}},
        "label_from": args.label_from, "caption_for_model": args.caption_for_model,
        "keep_unlabelled": args.keep_unlabelled, "max_per_image": args.max_per_image,
        "balance": args.balance, "seed": args.seed,
        "lexicons": {lang: {"path": str(lexicons[lang].path), "sha256": lexicons[lang].sha256,
                            "terms": lexicons[lang].classes()} for lang in languages},
        "rows_by_label": {label: sum(r.label == label for r in rows) for label in LABELS},
        "rows_by_language_label": {lang: {label: sum(r.labels[lang] == label for r in rows) for label in LABELS}
                                   for lang in languages},
        "words": {lang: sum(r.counts[lang].words for r in rows) for lang in languages},
        "terms_by_class": {lang: {c: sum(r.counts[lang].by_class[c] for r in rows) for c in CLASSES}
                           for lang in languages},
        "disagreements": {"rows": len(disagree), "by_labels": dict(pairs.most_common()),
                          "examples": _examples(disagree)},
        "examples": {label: _examples([r for r in rows if r.label == label]) for label in ("ambiguous", "none")},
        "top_terms": top_terms,
        "images_by_label": dict(Counter(images.values()).most_common()),
        "sheet": {"samples": len(chosen), "images": len({r.image for r in chosen}),
                  "by_gender": {g: sum(r.gender == g for r in chosen) for g in schema.GENDERS},
                  "label_scope": dict(Counter(r.scope or "none" for r in chosen)),
                  "label_leaks": sum(bool(r.gendered_in()) for r in chosen),
                  "excluded": dict(Counter(r.excluded.split(" (")[0] for r in rows if not r.gender).most_common()),
                  "dropped_by_selection": dropped},
    }


def report_markdown(report: dict) -> str:
    langs = report["languages"]
    out = [f"# Labels of {report['captions']}", "",
           f"{report['rows']} caption rows over {report['images']} images; languages {', '.join(langs)}; "
           f"--label-from {report['label_from']}, --caption-for-model {report['caption_for_model']}.", "",
           "## Rows by label", "", "| | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|",
           "| row (policy) | " + " | ".join(str(report["rows_by_label"][lab]) for lab in LABELS) + " |"]
    for lang in langs:
        out.append(f"| {lang} caption | " + " | ".join(str(report["rows_by_language_label"][lang][lab])
                                                     for lab in LABELS) + " |")
    out += ["", "## Disagreements between the languages", "",
            f"{report['disagreements']['rows']} rows whose captions give different labels.", ""]
    out += [f"- {k}: {v}" for k, v in report["disagreements"]["by_labels"].items()]
    for ex in report["disagreements"]["examples"]:
        out.append(f"- row {ex['row']} ({ex['image']}): " + " / ".join(ex["captions"].values()))
    out += ["", "## Most frequent terms", ""]
    for lang in langs:
        out.append(f"- {lang}: " + ", ".join(f"{t['term']} ({t['class']}, {t['count']})"
                                              for t in report["top_terms"][lang]))
    sheet = report["sheet"]
    out += ["", "## Images", ""] + [f"- {k}: {v}" for k, v in report["images_by_label"].items()]
    out += ["", "## Samplesheet", "",
            f"{sheet['samples']} samples over {sheet['images']} images: "
            + ", ".join(f"{g} {n}" for g, n in sheet["by_gender"].items()) + ".",
            f"{sheet['label_leaks']} samples have a gendered term in a caption the model reads (column label_leaks): "
            "a probe of those caption views can read the word; the image view does not.", ""]
    out += [f"- excluded: {k}: {v}" for k, v in sheet["excluded"].items()]
    return "\n".join(out) + "\n"


def _csv_text(header: list[str], records: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    return buf.getvalue()


def sheet_text(rows: list[Row], languages: list[str], paths: dict[str, str]) -> str:
    header = [schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + [schema.caption_column(lang) for lang in languages]
    header += ["label_source", "label_scope", "label_leaks", "image_id", "pair_index", "source_row"]
    records = [[r.sample_id, paths[r.image], r.gender] + [r.captions[lang] for lang in languages]
               + ["+".join(schema.caption_column(lang) for lang in r.label_source), r.scope,
                  "+".join(schema.caption_column(lang) for lang in r.gendered_in()),
                  r.image, r.caption_index, r.number]
               for r in rows if r.gender]
    return _csv_text(header, records)


def labels_text(rows: list[Row], languages: list[str]) -> str:
    header = ["source_row", "image", "pair_index", "sample_id"]
    for lang in languages:
        header += [schema.caption_column(lang), f"label_{lang}", f"words_{lang}"]
        header += [f"{c}_{lang}" for c in CLASSES] + [f"terms_{lang}"]
    header += ["label", "label_source", "reason", "image_label", "gender", "excluded"]
    records = []
    for r in rows:
        rec = [r.number, r.image, r.caption_index, r.sample_id]
        for lang in languages:
            c = r.counts[lang]
            rec += [r.captions[lang], r.labels[lang], c.words] + [c.by_class[k] for k in CLASSES]
            rec += [";".join(f"{t}:{n}" for t, n in c.by_term.items())]
        rec += [r.label, "+".join(r.source), r.reason, r.image_label, r.gender, r.excluded]
        records.append(rec)
    return _csv_text(header, records)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="layerwise-label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=Path, required=True,
                   help="caption table: CSV, TSV (.tsv) or JSON lines (.jsonl), one row per image x caption pair")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", type=Path, required=True)
    p.add_argument("--languages", default="english,arabic", help="caption languages to read (default english,arabic)")
    p.add_argument("--image-column", "--image_column", dest="image_column", default="image")
    p.add_argument("--column", action="append", default=[], metavar="LANGUAGE=COLUMN",
                   help="caption column of a language (defaults: english=en_caption, arabic=ar_caption)")
    p.add_argument("--label-from", "--label_from", dest="label_from", default="both",
                   help="both (default: the languages must agree), either, or one language")
    p.add_argument("--caption-for-model", "--caption_for_model", dest="caption_for_model", default="same",
                   choices=CAPTION_CHOICES, help="same: a row's own captions; neutral: captions without gendered "
                   "terms of images labelled by their other captions (no label leakage)")
    p.add_argument("--keep-unlabelled", "--keep_unlabelled", dest="keep_unlabelled", action="store_true",
                   help="also write the rows without a male/female label, as gender unknown")
    p.add_argument("--max-per-image", "--max_per_image", dest="max_per_image", type=int, default=0,
                   help="at most this many samples per image (seeded pick; 0: no limit)")
    p.add_argument("--balance", action="store_true", help="as many male as female samples (seeded, whole images first)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--image-root", "--image_root", dest="image_root", type=Path, default=None,
                   help="folder the image column is relative to (default: the caption table's folder)")
    p.add_argument("--absolute-paths", "--absolute_paths", dest="absolute_paths", action="store_true",
                   help="write absolute image paths (default: relative to --out-dir)")
    p.add_argument("--skip-image-check", "--skip_image_check", dest="skip_image_check", action="store_true",
                   help="do not check that the image files exist")
    p.add_argument("--lexicon", action="append", default=[], metavar="LANGUAGE=FILE",
                   help="another lexicon TSV for a language (default: assets/lexicon/<language>.tsv)")
    args = p.parse_args(argv)

    languages = _languages(args.languages)
    columns = _columns(args.column, languages)
    check_policy(args.label_from, languages)
    if args.max_per_image < 0:
        raise LayerwiseError(f"--max-per-image {args.max_per_image}: use 0 (no limit) or a positive number")
    lexicon_files = {}
    for spec in args.lexicon:
        lang, sep, file = spec.partition("=")
        if not sep or lang.strip() not in languages:
            raise LayerwiseError(f"--lexicon {spec!r}: expected LANGUAGE=FILE with LANGUAGE one of {', '.join(languages)}")
        lexicon_files[lang.strip()] = file.strip()
    lexicons = {lang: load_lexicon(lang, lexicon_files.get(lang)) for lang in languages}
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise LayerwiseError(f"--out-dir {args.out_dir} exists and is not a folder")

    rows = read_caption_table(args.captions, args.image_column, columns)
    seen = Counter()
    for row in rows:
        row.caption_index = seen[row.image]
        seen[row.image] += 1
    image_root = args.image_root if args.image_root is not None else args.captions.resolve().parent
    paths = _image_paths(args.captions, rows, image_root, args.out_dir, args.absolute_paths, not args.skip_image_check,
                         args.image_column)
    label_rows(rows, languages, args.label_from, lexicons)
    dropped = select(rows, args.caption_for_model, args.keep_unlabelled, args.max_per_image, args.balance, args.seed)
    report = build_report(rows, args, languages, columns, lexicons, dropped)
    if not any(r.gender in GENDERED for r in rows):
        why = "; ".join(f"{k}: {v} rows" for k, v in report["sheet"]["excluded"].items())
        raise LayerwiseError(f"caption table {args.captions}: no row gives a male or female sample "
                             f"(rows by label: {', '.join(f'{k} {v}' for k, v in report['rows_by_label'].items())}; "
                             f"excluded: {why}); nothing written to {args.out_dir}")

    texts = {LABELS_TABLE: labels_text(rows, languages), REPORT_MD: report_markdown(report),
             SHEET: sheet_text(rows, languages, paths)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:       # the sheet last: a sheet is never there without its labels and report
        if name == REPORT_JSON:
            atomic_write_json(args.out_dir / name, report)
        else:
            atomic_write_text(args.out_dir / name, texts[name])
    sheet = report["sheet"]
    print(f"labelled {len(rows)} caption rows over {report['images']} images: "
          + ", ".join(f"{k} {v}" for k, v in report["rows_by_label"].items())
          + f"; samplesheet {args.out_dir / SHEET}: {sheet['samples']} samples ("
          + ", ".join(f"{g} {n}" for g, n in sheet["by_gender"].items() if n) + f") over {sheet['images']} images")
    return 0

