"""PREFLIGHT's verified samplesheets (`samplesheet.valid.csv`, `units/<unit id>.csv`): their columns and
their one reader.

PREFLIGHT checks a user's samplesheet once (`layerwise.preflight.samplesheet`: columns, ids, every image
decoded and hashed) and writes the normalised sheet these functions read back. Later stages trust it:
they read it as strings, check only that the columns they need are there, and never re-validate or
decode images (a unit decodes an image only to feed the vision tower, and checks its sha256 then).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError

ROW = "row"                     # 0-based position in the user's samplesheet
IMAGE_SHA256 = "image_sha256"   # sha256 of the image file's bytes, recorded by PREFLIGHT
ROWS_PARAM = "--rows"


@dataclass(frozen=True)
class Sample:
    row: int                # 0-based position in the samplesheet
    sample_id: str
    image: Path             # absolute
    gender: str             # one of schema.GENDERS
    captions: dict[str, str] = field(default_factory=dict)  # language -> caption
    image_sha256: str = ""  # sha256 of the image file's bytes ("" when the samplesheet has none)

    def caption(self, language: str) -> str:
        try:
            return self.captions[language]
        except KeyError:
            raise LayerwiseError(
                f"sample {self.sample_id} has no caption for language {language!r} "
                f"(has: {', '.join(self.captions) or 'none'})"
            ) from None


def read_valid_samplesheet(path: str | Path, languages: Sequence[str] = ()):
    """A sheet PREFLIGHT wrote, as strings (no NaN), checked to have the columns that are read."""
    import pandas as pd

    path = Path(path)
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except Exception as exc:
        raise LayerwiseError(f"{path}: cannot read the samplesheet: {exc}") from exc
    need = [ROW, schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + [schema.caption_column(lang) for lang in languages]
    missing = [c for c in need if c not in sheet.columns]
    if missing:
        raise LayerwiseError(f"{path}: samplesheet lacks columns {missing} (has {list(sheet.columns)})")
    sheet.attrs["samplesheet"] = str(path)
    return sheet


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


def iter_samples(df, language: str | None, rows: str | range | None = None) -> Iterator[Sample]:
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
            image_sha256=str(rec.get(IMAGE_SHA256, "") or ""),
        )
