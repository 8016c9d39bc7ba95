"""Test support: the verified samplesheet PREFLIGHT writes, from a user's samplesheet.

An extraction unit reads only PREFLIGHT's verified sheet (`layerwise.core.sheet`): tests that run units directly
verify their samplesheet first, exactly as PREFLIGHT does (every image decoded and hashed, paths made absolute).
"""
from __future__ import annotations

from pathlib import Path

from layerwise.preflight.samplesheet import read_samplesheet, write_valid_samplesheet


def verified_sheet(user_sheet: str | Path, out_dir: str | Path, languages=("english", "arabic")) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_valid_samplesheet(read_samplesheet(user_sheet, list(languages)), out / "samplesheet.valid.csv")
