"""Validation of a run's layer files, in parts with one job each (entry point: `layerwise.publish.validate`).

- `checks`     per-file checks (set of files, checksums, keys, names, settings, shapes, samples, lengths)
- `stats`      activation statistics, streamed in chunks of samples (NaN/Inf, L2 norms per gender)
- `problems`   the checks and the problems they found
- `summaries`  the units' summary.json files, totalled by the keys `contract` declares
- `tables`     the validated samplesheet and the Parquet tables
- `tokens`     metadata/tokens.parquet: the extraction units' token tables, checked and concatenated
- `metadata`   extraction_metadata.json
- `run`        `validate()`, which runs all of them (the report: `layerwise.publish.report`)
"""
