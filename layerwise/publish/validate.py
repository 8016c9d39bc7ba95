"""Validation of the merged layer files, Parquet metadata and the HTML report.

`validate()` checks every (layer, language) file of a run against the plan and the validated
samplesheet, collecting all problems before failing. Files are read memory-mapped and walked in
chunks of samples, so host memory stays flat whatever their size. On success it writes (each
atomically) into `out_dir`:

- `extraction_metadata.json`   run-level facts, per-file checksums, totals of the extraction summaries
- `metadata/samples.parquet`   one row per (sample, language)
- `metadata/layers.parquet`    one row per (layer, language) file
- `metadata/norms_by_gender.parquet`  activation-norm statistics per (layer, language, gender)
- `validation_report.html`     self-contained report (also written, status FAILED, on failure)

The work is done by the parts of `layerwise.publish.validation`; this module is its entry point.
"""
from __future__ import annotations

from layerwise.core.schema import LAYERS_PARQUET, METADATA_JSON, NORMS_PARQUET, REPORT_HTML, SAMPLES_PARQUET
from layerwise.publish.validation.problems import CHECKS
from layerwise.publish.validation.run import validate

__all__ = ["CHECKS", "LAYERS_PARQUET", "METADATA_JSON", "NORMS_PARQUET", "REPORT_HTML", "SAMPLES_PARQUET",
           "validate"]
