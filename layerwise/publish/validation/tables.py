"""The Parquet tables of a validated run (`metadata/*.parquet`) and the samplesheet they are built on.

- `layers_table`:  one row per (layer, language) file
- `norms_table`:   activation-norm statistics per (layer, language, gender)
- `samples_table`: one row per (sample, language)

The token table (`metadata/tokens.parquet`) is built by `validation.tokens`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.core import schema
from layerwise.core.atomic import atomic_path
from layerwise.core.contract import Shard
from layerwise.core.sheet import ROW
from layerwise.layerfile.loader import image_locations
from layerwise.publish.validation.checks import shape_str

LAYER_COLUMNS = ["layer", "language", "file", "bytes", "sha256", "shape", "dtype", "layout", "samples",
                 "positions", "nan_count", "nonfinite_stored", "norm_mean", "norm_std"]
NORM_COLUMNS = ["layer", "language", "gender", "rows", "norm_mean", "norm_std"]


def shard_of_positions(plan: dict[str, Any], n: int) -> list[int | None]:
    """Shard index of each samplesheet position (0-based; plan shard rows are START:END, END exclusive)."""
    out: list[int | None] = [None] * n
    for shard in map(Shard.from_dict, plan.get("shards", [])):
        start, end = shard.bounds
        for i in range(max(start, 0), min(end, n)):
            out[i] = shard.index
    return out


def layers_table(entries: Sequence[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(
        [{**{k: e[k] for k in LAYER_COLUMNS if k != "shape"}, "shape": shape_str(e["shape"]) if e["shape"] else None}
         for e in entries], columns=LAYER_COLUMNS,
    ).astype({"layer": "int64", "bytes": "int64", "samples": "Int64", "positions": "Int64",
              "nan_count": "Int64", "nonfinite_stored": "Int64", "norm_mean": "float64", "norm_std": "float64"})


def norms_table(entries: Sequence[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(
        [{"layer": e["layer"], "language": e["language"], "gender": g, **stats}
         for e in entries for g, stats in e["by_gender"].items()],
        columns=NORM_COLUMNS,
    ).astype({"layer": "int64", "rows": "int64", "norm_mean": "float64", "norm_std": "float64"})


def image_root(sheet) -> str | None:
    """The run's image root (extraction_metadata.json `image_root`): `image_relative` is relative to it."""
    return image_locations(sheet[schema.IMAGE].tolist())[0] if schema.IMAGE in sheet else None


def samples_table(sheet, plan: dict[str, Any], languages: Sequence[str], lengths: dict[str, list[int]]):
    """One row per (sample, language); `lengths[language]` are the positions kept per sample.

    `image_relative` is each image's path below the run's image root (`image_root`: the deepest folder holding
    every image; `layerwise.layerfile.loader.image_locations` says why that root and not the samplesheet's
    folder), so that results and images copied elsewhere are joined again (`open_layers(..., image_root=)`).
    """
    import pandas as pd

    shards = shard_of_positions(plan, len(sheet))
    relative = image_locations(sheet[schema.IMAGE].tolist())[1]
    rows_col = pd.to_numeric(sheet[ROW], errors="coerce").astype("Int64")
    frames = [pd.DataFrame({
        "sample_id": sheet[schema.SAMPLE_ID],
        "language": lang,
        "gender": sheet[schema.GENDER],
        "image": sheet[schema.IMAGE],
        "image_relative": pd.array(relative, dtype="object"),
        "caption": sheet[schema.caption_column(lang)],
        "positions_kept": pd.array(lengths[lang], dtype="int64"),
        "shard": pd.array(shards, dtype="Int64"),
        "row": rows_col,
    }) for lang in languages]
    return pd.concat(frames, ignore_index=True)


def write_parquet(df, path: Path) -> None:
    """Write `df` to `path` atomically and durably (`atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow")
