"""extraction_metadata.json: the run-level facts of a validated run."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from layerwise import __version__
from layerwise.core import schema
from layerwise.core.contract import FORMAT_VERSION
from layerwise.publish.validation.problems import Problems
from layerwise.publish.validation.summaries import extraction_totals, image_features_totals

OUTPUTS = (schema.METADATA_JSON, schema.SAMPLES_PARQUET, schema.LAYERS_PARQUET, schema.NORMS_PARQUET,
           schema.REPORT_HTML)
# written when the extraction units wrote their token tables (validation.tokens)
OPTIONAL_OUTPUTS = (schema.TOKENS_PARQUET,)
FILE_KEYS = ("file", "layer", "language", "bytes", "sha256", "shape", "samples", "positions", "nan_count",
             "nonfinite_stored")
RUN_SETTINGS = ("token_selection", "layout", "dtype", "nan_policy")


def build_metadata(*, model: dict[str, Any], layers: list[int], languages: list[str], sheet, hidden_size: int,
                   settings: dict[str, Any], entries: Sequence[dict[str, Any]], expected_files: int,
                   problems: Problems, extraction: Sequence[dict[str, Any]],
                   encodings: Sequence[dict[str, Any]], image_root: str | None = None,
                   tokens: bool = False) -> dict[str, Any]:
    """The metadata dict; `settings` are the layer-file settings of the first file checked ({} if none).

    `image_root`: the folder `metadata/samples.parquet`'s `image_relative` paths are relative to; `tokens`:
    whether `metadata/tokens.parquet` is written."""
    extraction, encodings = list(extraction), list(encodings)
    return {
        "status": "passed" if not problems else "FAILED",
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "layerwise_version": __version__,
        "format_version": FORMAT_VERSION,
        "model": {
            "id": settings.get("model_id", model.get("id")),
            "revision": settings.get("model_revision", model.get("revision")),
            "num_layers": settings.get("num_layers", model.get("num_layers")),
            "hidden_size": hidden_size,
            "model_type": model.get("model_type"),
        },
        "layers": layers,
        "languages": languages,
        "samples": len(sheet),
        "image_root": image_root,
        **{k: settings.get(k) for k in RUN_SETTINGS},
        "files": [{k: e[k] for k in FILE_KEYS} for e in entries],
        "totals": {
            "files": len(entries),
            "expected_files": expected_files,
            "bytes": sum(e["bytes"] for e in entries),
            "positions": sum(e["positions"] or 0 for e in entries),
            "nan_count": sum(e["nan_count"] or 0 for e in entries),
            "nonfinite_stored": sum(e["nonfinite_stored"] or 0 for e in entries),
        },
        "checks": problems.by_check(),
        "extraction": {"totals": extraction_totals(extraction), "units": extraction},
        "image_encoding": {"totals": image_features_totals(encodings), "units": encodings},
        "vision_tower": {"images_encoded": sum(int(u.get("vision_tower_images") or 0) for u in extraction),
                         "distinct_images": int(sheet[schema.IMAGE].nunique()) if schema.IMAGE in sheet else None},
        "outputs": list(OUTPUTS) + (list(OPTIONAL_OUTPUTS) if tokens else []),
    }
