"""`validate()`: one run's layer files against its plan and samplesheet, then its metadata and report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from layerwise.core import schema
from layerwise.core.atomic import atomic_write_json
from layerwise.core.errors import LayerwiseError
from layerwise.core.sheet import read_valid_samplesheet
from layerwise.publish.validation.checks import Context, check_checksums, check_file, check_file_set, expected_files
from layerwise.publish.validation.metadata import build_metadata
from layerwise.publish.validation.problems import Problems
from layerwise.publish.validation.summaries import read_summaries, split_summaries
from layerwise.publish.validation.tables import image_root, layers_table, norms_table, samples_table, write_parquet
from layerwise.publish.validation.tokens import tokens_table, write_tokens_parquet


def validate(
    plan: dict[str, Any],
    samplesheet: Path,
    layer_files: list[Path],
    summaries: list[Path],
    out_dir: Path,
    expected_sha256: dict[str, str] | None = None,
    write_json: bool = True,
    tokens: dict[tuple[str, int], Path | None] | None = None,
) -> dict[str, Any]:
    """Check a run's layer files; write metadata, Parquet tables and the report (see `layerwise.publish.validate`).

    `tokens`: the extraction units' token tables by (language, shard) (`validation.tokens.unit_tokens_tables`),
    checked against the layer files and concatenated into `metadata/tokens.parquet`; None: no token table.

    Returns the metadata written to extraction_metadata.json. Raises LayerwiseError listing every
    problem found (after writing validation_report.html with status FAILED).
    """
    from layerwise.publish.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = Problems()
    try:
        model = plan["model"]
        layers = [int(x) for x in plan["layers"]]
        languages = [str(x) for x in plan["languages"]]
        plan_hidden = int(model["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LayerwiseError(f"plan lacks model.hidden_size, layers or languages: {exc!r}") from exc
    sheet = read_valid_samplesheet(samplesheet, languages)
    ctx = Context(
        sample_ids=sheet[schema.SAMPLE_ID].tolist(),
        genders=sheet[schema.GENDER].tolist(),
        hidden_size=plan_hidden,
        num_layers=int(model["num_layers"]) if model.get("num_layers") is not None else None,
    )

    expected = expected_files(layers, languages)
    given = check_file_set(expected, layer_files, problems)
    entries = [check_file(given[n], *expected[n], ctx, problems) for n in expected if n in given]
    check_checksums(entries, expected_sha256, problems)
    units = read_summaries(summaries, problems, [u.get("id") for u in plan.get("units", [])])
    extraction, encodings = split_summaries(units)
    tokens_df = tokens_table(tokens, languages, ctx, problems) if tokens is not None else None

    layers_df, norms_df = layers_table(entries), norms_table(entries)
    metadata = build_metadata(
        model=model, layers=layers, languages=languages, sheet=sheet, hidden_size=plan_hidden,
        settings=ctx.settings_ref[1] if ctx.settings_ref else {}, entries=entries, expected_files=len(expected),
        problems=problems, extraction=extraction, encodings=encodings, image_root=image_root(sheet),
        tokens=tokens_df is not None)

    report_path = out_dir / schema.REPORT_HTML
    write_report(metadata, layers_df, norms_df, report_path)
    if problems:
        lines = [f"validation failed with {len(problems)} problem(s):"]
        lines += [f"  - [{check}] {msg}" for check, msg in problems.items]
        lines.append(f"report: {report_path}")
        raise LayerwiseError("\n".join(lines))

    lengths = {lang: ctx.lengths_ref[lang][1].tolist() for lang in languages}
    write_parquet(samples_table(sheet, plan, languages, lengths), out_dir / schema.SAMPLES_PARQUET)
    write_parquet(layers_df, out_dir / schema.LAYERS_PARQUET)
    write_parquet(norms_df, out_dir / schema.NORMS_PARQUET)
    if tokens_df is not None:
        write_tokens_parquet(tokens_df, out_dir / schema.TOKENS_PARQUET)
    if write_json:
        atomic_write_json(out_dir / schema.METADATA_JSON, metadata)
    return metadata
