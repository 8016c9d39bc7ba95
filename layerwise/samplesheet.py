"""Samplesheet: reading, checking and normalising the user's CSV.

Columns (``assets/schema_input.json`` documents them for users):

* ``sample_id`` -- unique, non-empty text (kept as text: ``001`` stays ``001``);
* ``image`` -- path to an image file, absolute or relative to the folder of the samplesheet
  (the *real* folder: a symlinked CSV, as Nextflow stages it, resolves to its target's folder);
* ``gender`` -- one of ``schema.GENDERS`` in any case (normalised to lower case);
* ``caption_<language>`` -- one non-empty caption per requested language.

Header names are matched after stripping whitespace and lower-casing; a UTF-8 BOM is ignored;
``.tsv`` files are tab-separated. Blank lines are skipped. Rows are numbered from 1 (the first
data row after the header) in messages. All problems are collected and reported together.

The normalised frame (and ``samplesheet.valid.csv``) has the columns ``row`` (0-based position),
``sample_id``, ``image`` (absolute path), ``gender``, every ``caption_<language>`` column in
header order (requested or not: so that asking for one more language later leaves this file, and
the cached jobs that read it, unchanged), then any extra user columns unchanged (an input ``row``
column is dropped). Only the requested languages' captions are checked.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import schema
from .errors import LayerwiseError

MAX_LISTED = 20
ROW = "row"
ROWS_PARAM = "--rows"
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Sample:
    row: int                # 0-based position in the samplesheet
    sample_id: str
    image: Path             # absolute
    gender: str             # one of schema.GENDERS
    captions: dict[str, str] = field(default_factory=dict)  # language -> caption

    def caption(self, language: str) -> str:
        try:
            return self.captions[language]
        except KeyError:
            raise LayerwiseError(
                f"sample {self.sample_id} has no caption for language {language!r} "
                f"(has: {', '.join(self.captions) or 'none'})"
            ) from None


def _as_languages(languages: str | Iterable[str]) -> list[str]:
    if isinstance(languages, str):
        languages = re.split(r"[\s,]+", languages)
    out: list[str] = []
    for language in languages:
        language = language.strip().lower()
        if language and language not in out:
            out.append(language)
    return out


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (normalised) and data rows as text; structural problems raise at once."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = [(r, n) for r, n in _records(csv.reader(fh, delimiter=delimiter, strict=True))]
    except UnicodeDecodeError as e:
        raise LayerwiseError(f"samplesheet {path} is not UTF-8 text ({e}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise LayerwiseError(f"samplesheet {path} is not a valid CSV file: {e}") from None
    except OSError as e:
        raise LayerwiseError(f"cannot read samplesheet {path} (--samplesheet): {e.strerror or e}") from None
    if not records:
        raise LayerwiseError(f"samplesheet {path} is empty; it needs a header line such as 'sample_id,image,gender,caption_english'")
    header = [h.strip().lower() for h in records[0][0]]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise LayerwiseError(f"samplesheet {path}: column '{name}' appears twice in the header (columns {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    rows, problems = [], []
    for number, (fields, line) in enumerate(records[1:], start=1):
        if len(fields) != len(header):
            # Trailing empty fields (spreadsheet exports) are harmless.
            if len(fields) > len(header) and not any(f.strip() for f in fields[len(header):]):
                fields = fields[: len(header)]
            else:
                problems.append(f"{path.name} row {number} (line {line}): {len(fields)} fields but the header has {len(header)}")
                continue
        rows.append(fields)
    if problems:
        raise LayerwiseError(_summary(path, problems))
    # Unnamed columns (a trailing comma in the header) are dropped when they hold nothing.
    keep = [i for i, name in enumerate(header) if name or any(r[i].strip() for r in rows)]
    for i in keep:
        if not header[i]:
            raise LayerwiseError(f"samplesheet {path}: column {i + 1} has values but no name in the header")
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def _records(reader) -> Iterator[tuple[list[str], int]]:
    for fields in reader:
        if fields and any(f.strip() for f in fields):
            yield fields, reader.line_num


def _summary(path: Path, problems: list[str]) -> str:
    lines = [f"samplesheet {path} has {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             f"(rows are counted from 1, after the header line):"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _check_image(path: Path) -> str | None:
    """None if the file looks like a readable image, else what is wrong with it."""
    from PIL import Image

    try:
        if not path.exists():
            return "not found"
        if path.is_dir():
            return "a directory, not an image file"
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            img.verify()
    except PermissionError:
        return "cannot be read (permission denied)"
    except Exception as e:  # PIL raises many types for broken files
        return f"corrupt image (PIL cannot decode it: {type(e).__name__}: {e})"
    return None


def read_samplesheet(path: str | Path, languages: str | Iterable[str], *, check_images: bool = True) -> pd.DataFrame:
    """Read, check and normalise a samplesheet; raise LayerwiseError listing every problem."""
    path = Path(path)
    languages = _as_languages(languages)
    if not path.exists():
        raise LayerwiseError(f"samplesheet {path} does not exist (--samplesheet)")
    if path.is_dir():
        raise LayerwiseError(f"samplesheet {path} is a directory; --samplesheet needs a CSV file")
    header, rows = _read_rows(path)
    caption_cols = [schema.caption_column(lang) for lang in languages]
    required = [schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + caption_cols
    missing = [c for c in required if c not in header]
    if missing:
        hints = [f"{c} (for --languages {c.removeprefix(schema.CAPTION_PREFIX)})" if c in caption_cols else c for c in missing]
        raise LayerwiseError(
            f"samplesheet {path} is missing required column{'s' if len(missing) > 1 else ''}: {', '.join(hints)}; "
            f"columns present: {', '.join(h for h in header) or '(none)'}"
        )
    if not rows:
        raise LayerwiseError(f"samplesheet {path} has no samples (only a header line)")
    df = pd.DataFrame(rows, columns=header, dtype=str)
    for col in [schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + caption_cols:
        df[col] = df[col].str.strip()
    base = path.resolve().parent  # follow a symlinked (Nextflow-staged) CSV to its real folder
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    images: list[str] = []
    genders: list[str] = []
    for i, rec in enumerate(df.itertuples(index=False)):
        values = dict(zip(header, rec))
        sid = values[schema.SAMPLE_ID]
        where = f"{path.name} row {i + 1}" + (f" (sample {sid})" if sid else "")

        def problem(column: str, text: str) -> None:
            problems.append(f"{where}, column '{column}': {text}")

        if not sid:
            problem(schema.SAMPLE_ID, "empty sample_id")
        elif sid in first_seen:
            problem(schema.SAMPLE_ID, f"duplicate sample_id '{sid}' (also in row {first_seen[sid] + 1})")
        else:
            first_seen[sid] = i
        gender = values[schema.GENDER].lower()
        genders.append(gender)
        if not gender:
            problem(schema.GENDER, f"empty gender; use one of {', '.join(schema.GENDERS)}")
        elif gender not in schema.GENDERS:
            problem(schema.GENDER, f"'{values[schema.GENDER]}' is not one of {', '.join(schema.GENDERS)}")
        for col in caption_cols:
            if not values[col]:
                problem(col, f"empty caption for language {col.removeprefix(schema.CAPTION_PREFIX)}")
        given = values[schema.IMAGE]
        if not given:
            problem(schema.IMAGE, "empty image path")
            images.append("")
            continue
        if _URL.match(given):
            problem(schema.IMAGE, f"'{given}' is a URL; images must be local files (download them first)")
            images.append(given)
            continue
        image = Path(os.path.normpath(base / Path(given).expanduser()))
        images.append(str(image))
        if check_images and (why := _check_image(image)) is not None:
            rel = "" if Path(given).expanduser().is_absolute() else f" (given as '{given}', relative to the samplesheet folder {base})"
            problem(schema.IMAGE, f"image {image}: {why}{rel}")
    if problems:
        raise LayerwiseError(_summary(path, problems))
    df[schema.IMAGE] = images
    df[schema.GENDER] = genders
    all_captions = [c for c in header if c.startswith(schema.CAPTION_PREFIX)]
    extra = [c for c in header if c not in required and c != ROW and not c.startswith(schema.CAPTION_PREFIX)]
    out = df[[schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + all_captions + extra].copy()
    out.insert(0, ROW, range(len(out)))
    out.attrs["samplesheet"] = str(path)
    return out


def write_valid_samplesheet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the normalised samplesheet atomically (temporary file, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_rows(spec: str | range | None, n: int) -> range:
    """``"START:END"`` (END exclusive; either side may be empty) -> range within [0, n)."""
    if isinstance(spec, range):
        start, end = spec.start, spec.stop
        text = f"{start}:{end}"
    else:
        text = "" if spec is None else str(spec).strip()
        if not text:
            return range(n)
        m = re.fullmatch(r"\s*([0-9]*)\s*:\s*([0-9]*)\s*", text)
        if not m:
            raise LayerwiseError(f"{ROWS_PARAM} '{text}': expected START:END (0-based, END exclusive), e.g. '0:{n}'")
        start = int(m.group(1)) if m.group(1) else 0
        end = int(m.group(2)) if m.group(2) else n
    if start > end:
        raise LayerwiseError(f"{ROWS_PARAM} '{text}': START {start} is after END {end}")
    if end > n:
        raise LayerwiseError(f"{ROWS_PARAM} '{text}': END {end} is beyond the {n} samples of the samplesheet (rows 0:{n})")
    if start == end:
        raise LayerwiseError(f"{ROWS_PARAM} '{text}' selects no samples")
    return range(start, end)


def iter_samples(df: pd.DataFrame, language: str | None, rows: str | range | None = None) -> Iterator[Sample]:
    """Samples of a normalised samplesheet (optionally only ``rows``), in order; language None: any."""
    caption_cols = [c for c in df.columns if c.startswith(schema.CAPTION_PREFIX)]
    if language is not None and schema.caption_column(language) not in df.columns:
        col = schema.caption_column(language)
        have = ", ".join(c.removeprefix(schema.CAPTION_PREFIX) for c in caption_cols) or "none"
        raise LayerwiseError(f"--language {language}: the samplesheet has no column {col} (languages present: {have})")
    selected = parse_rows(rows, len(df))
    part = df.iloc[selected.start:selected.stop]
    for pos, rec in zip(selected, part.to_dict("records")):
        yield Sample(
            row=int(rec[ROW]) if ROW in rec else pos,
            sample_id=str(rec[schema.SAMPLE_ID]),
            image=Path(rec[schema.IMAGE]).absolute(),
            gender=str(rec[schema.GENDER]),
            captions={c.removeprefix(schema.CAPTION_PREFIX): str(rec[c]) for c in caption_cols},
        )
