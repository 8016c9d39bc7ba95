"""Work-unit planning: model facts, languages, layer groups and sample shards -> plan.json.

A work unit is one (layer group, language, sample shard): one GPU task that runs the shard's
samples once through the model and writes ``layer_{L}_{language}.pt`` for every layer of the
group. Units are ordered by group, then language, then shard.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from layerwise.core import schema
from layerwise.core.atomic import atomic_write_text
from layerwise.core.errors import LayerwiseError
from layerwise.core.layers import format_layers, parse_layer_spec, split_layer_groups
from layerwise.core.prompts import LANGUAGE_RE

LANGUAGES_PARAM = "--languages"
SAMPLES_PARAM = "--samples_per_task"


def parse_languages(
    spec: str | Iterable[str],
    prompts: dict[str, str] | None = None,
    columns: Iterable[str] | None = None,
) -> list[str]:
    """Comma/space separated languages -> lower-cased, de-duplicated list in the given order.

    With ``prompts`` each language must have a prompt; with ``columns`` (the samplesheet's)
    each must have a ``caption_<language>`` column.
    """
    parts = re.split(r"[\s,]+", spec) if isinstance(spec, str) else list(spec)
    languages: list[str] = []
    for part in parts:
        language = str(part).strip().lower()
        if not language:
            continue
        if not LANGUAGE_RE.fullmatch(language):
            raise LayerwiseError(f"{LANGUAGES_PARAM}: '{part}' is not a language key (lower case letters and '_', e.g. 'english')")
        if language not in languages:
            languages.append(language)
    if not languages:
        have = f"; languages with a prompt: {', '.join(prompts)}" if prompts else ""
        raise LayerwiseError(f"{LANGUAGES_PARAM} is empty; give e.g. 'english,arabic'{have}")
    if prompts is not None:
        unknown = [lang for lang in languages if lang not in prompts]
        if unknown:
            raise LayerwiseError(
                f"{LANGUAGES_PARAM}: no prompt for {', '.join(unknown)}; languages with a prompt: "
                f"{', '.join(prompts) or '(none)'} (add an entry to assets/prompts.json or pass --prompts FILE)"
            )
    if columns is not None:
        columns = list(columns)
        missing = [lang for lang in languages if schema.caption_column(lang) not in columns]
        if missing:
            have = [c.removeprefix(schema.CAPTION_PREFIX) for c in columns if c.startswith(schema.CAPTION_PREFIX)]
            raise LayerwiseError(
                f"{LANGUAGES_PARAM}: the samplesheet has no caption column for "
                f"{', '.join(schema.caption_column(m) for m in missing)}; caption columns present: "
                f"{', '.join(schema.caption_column(h) for h in have) or '(none)'}"
            )
    return languages


def make_shards(n: int, samples_per_task: int | str | None) -> list[dict]:
    """``[{"index", "rows": "START:END"}]``; 0 (or >= n) gives one shard of all n samples."""
    try:
        size = int(samples_per_task or 0)
    except (TypeError, ValueError):
        raise LayerwiseError(f"{SAMPLES_PARAM} must be a whole number (0 = all samples in one task), got {samples_per_task!r}") from None
    if size < 0:
        raise LayerwiseError(f"{SAMPLES_PARAM} {size}: must be 0 (all samples in one task) or positive")
    if n < 1:
        raise LayerwiseError("the samplesheet has no samples")
    if size == 0 or size >= n:
        size = n
    return [{"index": i, "rows": f"{start}:{min(start + size, n)}"} for i, start in enumerate(range(0, n, size))]


def make_plan(
    df: pd.DataFrame,
    model_info: dict,
    layer_spec: str,
    languages: str | Iterable[str],
    layer_groups: str | int | None = "auto",
    samples_per_task: int | str | None = 0,
    *,
    prompts: dict[str, str] | None = None,
) -> dict:
    """The plan.json structure of docs/architecture.md."""
    langs = parse_languages(languages, prompts, df.columns)
    layers = parse_layer_spec(layer_spec, int(model_info["num_layers"]))
    groups = split_layer_groups(layers, layer_groups)
    shards = make_shards(len(df), samples_per_task)
    units = [make_unit(group, lang, shard) for group in groups for lang in langs for shard in shards]
    return {
        "model": {k: model_info.get(k) for k in MODEL_KEYS},
        "layers": layers,
        "languages": langs,
        "shards": shards,
        "layer_groups": groups,
        "units": units,
    }


PLAN_FILE = "plan.json"
VALID_SAMPLESHEET_FILE = "samplesheet.valid.csv"
UNIT_SHEETS_DIR = "units"
MODEL_KEYS = ("id", "revision", "num_layers", "hidden_size", "model_type", "fingerprint")


def make_unit(layers: list[int], language: str, shard: dict) -> dict:
    """One work unit; `id` names it everywhere (task tag, its input sheet, summaries)."""
    layers_str = format_layers(layers)
    unit_id = f"L{layers_str.replace(',', '.')}_{language}_s{shard['index']}"
    return {"id": unit_id, "layers": list(layers), "layers_str": layers_str, "language": language,
            "shard": shard["index"], "rows": shard["rows"], "sheet": f"{unit_id}.csv"}


def unit_sheet(df: pd.DataFrame, unit: dict) -> pd.DataFrame:
    """The rows and columns one unit reads (its shard, its language's caption): its task's only input
    data, so that -resume re-runs a unit exactly when something it reads has changed."""
    start, end = (int(x) for x in unit["rows"].split(":"))
    cols = [c for c in ("row", schema.SAMPLE_ID, schema.IMAGE, "image_sha256", schema.GENDER) if c in df.columns]
    return df.iloc[start:end][cols + [schema.caption_column(unit["language"])]]


def write_unit_sheets(df: pd.DataFrame, plan: dict, out_dir: str | Path) -> list[Path]:
    """`<out_dir>/units/<unit id>.csv` for every unit of the plan."""
    from layerwise.preflight.samplesheet import write_valid_samplesheet

    folder = Path(out_dir) / UNIT_SHEETS_DIR
    return [write_valid_samplesheet(unit_sheet(df, u), folder / u["sheet"]) for u in plan["units"]]


def plan_to_json(plan: dict) -> str:
    """plan.json text: indented, with lists of layer numbers kept on one line."""
    text = json.dumps(plan, indent=2, ensure_ascii=False)
    return re.sub(r"\[\s*([0-9]+(?:,\s*[0-9]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_plan(plan: dict, path: str | Path) -> Path:
    """Write plan.json atomically and durably (`core.atomic`)."""
    path = Path(path)
    atomic_write_text(path, plan_to_json(plan))
    return path
