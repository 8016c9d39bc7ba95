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


def resized_sheet(fixture_dir: str | Path, folder: str | Path, sizes) -> Path:
    """The first len(sizes) samples of the fixture data, each image resized to its size (families whose number of
    image tokens depends on the image get one count per sample), as a user's samplesheet in `folder`."""
    import csv

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(Path(fixture_dir) / "data" / "samples.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:len(sizes)]
    for r, size in zip(rows, sizes):
        with Image.open(Path(fixture_dir) / "data" / r["image"]) as img:
            img.convert("RGB").resize(size).save(folder / f"{r['sample_id']}.png")
        r["image"] = f"{r['sample_id']}.png"
    return write_sheet(rows, folder / "samples.csv")


def write_sheet(rows: list[dict[str, str]], path: str | Path) -> Path:
    """A user's samplesheet (CSV, the columns of the first row) at `path`."""
    import csv

    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
