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
``sample_id``, ``image`` (absolute path), ``image_sha256`` (sha256 of the image file's bytes, computed
while PREFLIGHT fully decodes every image with ``inputs.load_rgb``; present when ``check_images`` is
true, or when the input has the column: with ``check_images`` a given digest must match the file),
``gender``, every ``caption_<language>`` column in
header order (requested or not: so that asking for one more language later leaves this file, and
the cached jobs that read it, unchanged), then any extra user columns unchanged (an input ``row``
column is dropped). Only the requested languages' captions are checked.

Parse errors name the line of the user's file (1 = the header line): an unclosed quote names the
line where the quoted field opens, a sheet written with another delimiter (``;`` by spreadsheets in
decimal-comma locales, tabs, ``|``) is recognised and named, and text that is not UTF-8 (Latin-1,
Windows-1252, UTF-16, an Excel workbook) names the first offending line and byte.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from layerwise.core import schema
from layerwise.core.atomic import atomic_path
from layerwise.core.errors import LayerwiseError
from layerwise.core.sheet import IMAGE_SHA256, ROW
from layerwise.models.inputs import ImageDecodeError, load_rgb_with_digest

MAX_LISTED = 20
FIELD_LIMIT = 64 * 1024 * 1024   # characters per CSV field (Python's default, 131072, is below a long caption)
OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def _as_languages(languages: str | Iterable[str]) -> list[str]:
    if isinstance(languages, str):
        languages = re.split(r"[\s,]+", languages)
    out: list[str] = []
    for language in languages:
        language = language.strip().lower()
        if language and language not in out:
            out.append(language)
    return out


def _decode_text(path: Path) -> str:
    """The samplesheet as text; anything but UTF-8 is refused naming the line and byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LayerwiseError(f"cannot read samplesheet {path} (--samplesheet): {e.strerror or e}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LayerwiseError(f"samplesheet {path} is UTF-16 text (it starts with a UTF-16 byte order mark); "
                             "save it as UTF-8 CSV ('CSV UTF-8' in spreadsheet programs)")
    if data.startswith(b"PK\x03\x04"):
        raise LayerwiseError(f"samplesheet {path} is a zip archive, probably an Excel/LibreOffice workbook (.xlsx/.ods), "
                             "not a CSV text file; export it as 'CSV UTF-8 (comma delimited)'")
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        column = len(body[body.rfind(b"\n", 0, e.start) + 1:e.start].decode("utf-8")) + 1
        bad = body[e.start:e.end]
        shown = " ".join(f"0x{b:02x}" for b in bad)
        guess = bad.decode("cp1252", errors="replace")
        bad_lines = sum(1 for raw in body.split(b"\n") if not _is_utf8(raw))
        more = f" ({bad_lines} lines have such bytes)" if bad_lines > 1 else ""
        raise LayerwiseError(
            f"samplesheet {path} is not UTF-8 text: line {line}, column {column} has the byte {shown} "
            f"(in Latin-1/Windows-1252 that would be {guess!r}){more}. Save it as UTF-8: 'CSV UTF-8' in the spreadsheet's "
            f"Save As dialog, or `iconv -f WINDOWS-1252 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise LayerwiseError(f"samplesheet {path}: line {line} contains a NUL character; this is not a plain-text CSV "
                             "(a binary or UTF-16 file?); save it as UTF-8 CSV")
    return text


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line_offsets(text: str) -> list[int]:
    """Character offset of the start of every line (1-based line n starts at offsets[n - 1])."""
    offsets = [0]
    for line in io.StringIO(text, newline=""):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _unclosed_quote_line(text: str, start_line: int, delimiter: str) -> int:
    """Line of the quote that opens the field left unclosed, scanning the record that starts on start_line."""
    offsets = _line_offsets(text)
    pos = offsets[min(start_line, len(offsets)) - 1]
    at_field_start, quoted, opened = True, False, pos
    while pos < len(text):
        ch = text[pos]
        if quoted:
            if ch == '"':
                if text.startswith('""', pos):
                    pos += 2
                    continue
                quoted = False
        elif at_field_start and ch == '"':
            quoted, opened = True, pos
        at_field_start = not quoted and ch in (delimiter, "\n", "\r")
        pos += 1
    return text.count("\n", 0, opened) + text.count("\r", 0, opened) - text.count("\r\n", 0, opened) + 1


def _csv_error(path: Path, error: csv.Error, text: str, start_line: int, line: int, delimiter: str) -> LayerwiseError:
    what = str(error)
    if "unexpected end of data" in what or "field larger than field limit" in what:
        opened = _unclosed_quote_line(text, start_line, delimiter)
        return LayerwiseError(
            f"samplesheet {path}: line {opened} opens a quoted field (\") that is never closed, so the rest of the "
            f"file was read as part of one field; close the quote (a literal quote inside a quoted field is written \"\")")
    if "expected after" in what:
        return LayerwiseError(
            f"samplesheet {path}: line {line}: a quoted field has more text after its closing quote ({what}); "
            f"quote the whole field and write a literal quote inside it as \"\"")
    return LayerwiseError(f"samplesheet {path}: line {line}: not valid CSV ({what})")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header (normalised), data rows as text and the file line each row starts on; structural problems raise at once."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    text = _decode_text(path)
    _check_delimiter(path, text, delimiter)
    records: list[tuple[list[str], int]] = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, FIELD_LIMIT))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise _csv_error(path, e, text, start, reader.line_num, delimiter) from None
            if fields and any(f.strip() for f in fields):
                records.append((fields, start))
    finally:
        csv.field_size_limit(old_limit)
    if not records:
        raise LayerwiseError(f"samplesheet {path} is empty; it needs a header line such as 'sample_id,image,gender,caption_english'")
    header = [h.strip().lower() for h in records[0][0]]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise LayerwiseError(f"samplesheet {path}: column '{name}' appears twice in the header (columns {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    rows, lines, problems = [], [], []
    for number, (fields, line) in enumerate(records[1:], start=1):
        if len(fields) != len(header):
            # Trailing empty fields (spreadsheet exports) are harmless.
            if len(fields) > len(header) and not any(f.strip() for f in fields[len(header):]):
                fields = fields[: len(header)]
            else:
                problems.append(f"{path.name} row {number} (line {line}): {len(fields)} fields but the header has {len(header)}")
                continue
        rows.append(fields)
        lines.append(line)
    if problems:
        raise LayerwiseError(_summary(path, problems))
    # Unnamed columns (a trailing comma in the header) are dropped when they hold nothing.
    keep = [i for i, name in enumerate(header) if name or any(r[i].strip() for r in rows)]
    for i in keep:
        if not header[i]:
            raise LayerwiseError(f"samplesheet {path}: column {i + 1} has values but no name in the header")
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows], lines


def _check_delimiter(path: Path, text: str, delimiter: str) -> None:
    """Refuse, naming it, a sheet whose header line is split by another delimiter than the one read.

    Runs before parsing, on the first non-blank line, so that a quoted ``"sample_id";"image"`` header
    gets this hint rather than a quoting error.
    """
    for number, first in enumerate(io.StringIO(text, newline=""), start=1):  # noqa: B007 (used after the loop)
        if first.strip():
            break
    else:
        return

    def names(sep: str) -> list[str]:
        try:
            return [f.strip().lower() for f in next(csv.reader([first.rstrip("\r\n")], delimiter=sep))]
        except (csv.Error, StopIteration):
            return []

    own = names(delimiter)
    if schema.SAMPLE_ID in own and schema.IMAGE in own:
        return
    for other, name in OTHER_DELIMITERS.items():
        found = names(other) if other != delimiter else []
        if len(found) >= 3 and (schema.SAMPLE_ID in found or schema.IMAGE in found):
            expected = "tab-separated (.tsv)" if delimiter == "\t" else "comma-separated"
            fix = "rename it to .tsv if it is tab-separated, or " if other == "\t" else ""
            raise LayerwiseError(
                f"samplesheet {path} looks {name}-separated (line {number}: {first.strip()[:120]!r}), but a "
                f"{path.suffix or 'CSV'} file is read as {expected}; {fix}save it as comma-separated CSV "
                f"(spreadsheets in decimal-comma locales write ';': choose 'CSV UTF-8 (comma delimited)' or set the "
                f"field delimiter to ',')")


def _summary(path: Path, problems: list[str]) -> str:
    lines = [f"samplesheet {path} has {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             f"(rows are counted from 1, after the header line):"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _image_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _check_one_image(path: Path) -> tuple[str, str | None]:
    """(sha256 of the file's bytes, None) if it decodes fully through inputs.load_rgb, else ("", what is wrong)."""
    if path.is_dir():
        return "", "a directory, not an image file"
    try:
        _, digest = load_rgb_with_digest(path)
    except ImageDecodeError as e:
        return "", e.reason
    return digest, None


def check_image_files(paths: Iterable[str | Path], workers: int | None = None) -> list[tuple[str, str | None]]:
    """Fully decode every image (through ``inputs.load_rgb``, as extraction does) and hash its bytes.

    Returns one ``(sha256, problem)`` per path, in order: problem is None for a good image, else
    what is wrong (digest ""). Each distinct file is read once; files are decoded on
    ``workers`` threads (default: the CPUs this process may use, at most 8).
    """
    paths = [Path(p) for p in paths]
    unique = list(dict.fromkeys(paths))
    workers = workers or _image_workers()
    if workers == 1 or len(unique) < 2:
        results = [_check_one_image(p) for p in unique]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_check_one_image, unique, chunksize=8))
    by_path = dict(zip(unique, results))
    return [by_path[p] for p in paths]


def read_samplesheet(path: str | Path, languages: str | Iterable[str], *, check_images: bool = True,
                     image_workers: int | None = None) -> pd.DataFrame:
    """Read, check and normalise a samplesheet; raise LayerwiseError listing every problem.

    ``check_images``: fully decode every image through ``inputs.load_rgb`` (the function extraction
    uses) and add its file's sha256 as column ``image_sha256`` (a digest already in the input must
    match). Without it, image paths are only resolved, and an input ``image_sha256`` is kept as given.
    """
    path = Path(path)
    languages = _as_languages(languages)
    if not path.exists():
        raise LayerwiseError(f"samplesheet {path} does not exist (--samplesheet)")
    if path.is_dir():
        raise LayerwiseError(f"samplesheet {path} is a directory; --samplesheet needs a CSV file")
    header, rows, _lines = _read_rows(path)
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
    given_sha = df[IMAGE_SHA256].str.strip().str.lower().tolist() if IMAGE_SHA256 in header else None
    base = path.resolve().parent  # follow a symlinked (Nextflow-staged) CSV to its real folder
    problems: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    images: list[str] = []
    genders: list[str] = []
    wheres: list[str] = []
    to_check: list[tuple[int, Path, str]] = []   # (row index, absolute path, as given)
    for i, rec in enumerate(df.itertuples(index=False)):
        values = dict(zip(header, rec))
        sid = values[schema.SAMPLE_ID]
        where = f"{path.name} row {i + 1}" + (f" (sample {sid})" if sid else "")
        wheres.append(where)

        def problem(column: str, text: str, i: int = i, where: str = where) -> None:   # bound now: called in this iteration
            problems.append((i, f"{where}, column '{column}': {text}"))

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
        if check_images:
            to_check.append((i, image, given))
    digests = [""] * len(df) if check_images else (given_sha or [])
    if check_images and to_check:
        results = check_image_files([image for _, image, _ in to_check], workers=image_workers)
        for (i, image, given), (digest, why) in zip(to_check, results):
            if why is None and given_sha is not None and given_sha[i] and given_sha[i] != digest:
                why = (f"content changed: the samplesheet's {IMAGE_SHA256} is {given_sha[i]}, the file's is {digest} "
                       "(the image was replaced after this samplesheet was validated)")
            if why is not None:
                rel = "" if Path(given).expanduser().is_absolute() else f" (given as '{given}', relative to the samplesheet folder {base})"
                problems.append((i, f"{wheres[i]}, column '{schema.IMAGE}': image {image}: {why}{rel}"))
            digests[i] = digest
    if problems:
        problems.sort(key=lambda p: p[0])   # stable: row order, then the order of the checks
        raise LayerwiseError(_summary(path, [text for _, text in problems]))
    df[schema.IMAGE] = images
    df[schema.GENDER] = genders
    with_sha = check_images or given_sha is not None
    if with_sha:
        df[IMAGE_SHA256] = digests
    all_captions = [c for c in header if c.startswith(schema.CAPTION_PREFIX)]
    extra = [c for c in header if c not in required and c not in (ROW, IMAGE_SHA256) and not c.startswith(schema.CAPTION_PREFIX)]
    front = [schema.SAMPLE_ID, schema.IMAGE] + ([IMAGE_SHA256] if with_sha else []) + [schema.GENDER]
    out = df[front + all_captions + extra].copy()
    out.insert(0, ROW, range(len(out)))
    out.attrs["samplesheet"] = str(path)
    return out


def write_valid_samplesheet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the normalised samplesheet atomically and durably (`atomic.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    return path
