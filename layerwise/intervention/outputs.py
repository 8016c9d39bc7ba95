"""The intervention outputs (`<outdir>/intervention/`): file names, the columns of every table and their types,
in one place; atomic writing (layerwise.core.atomic).

docs/output.md (section `## intervention/`) documents every column listed here, and
layerwise/compare/inputs.py reads `summary.parquet` by these names (tests/unit/test_intervention_stats.py
checks both).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from layerwise.core.atomic import atomic_path, atomic_write_text

FOLDER = "intervention"
CAPTIONS = "captions.parquet"
TERMS = "terms.parquet"
LATENTS = "latents.parquet"
CONTROLS = "controls.parquet"
OVERLAP = "overlap.parquet"
SUMMARY = "summary.parquet"
REPORT = "report.html"

BASELINE, TARGETED, RANDOM = "baseline", "targeted", "random"     # options.CONDITIONS, in this order
WITHIN, CROSS = "within", "cross"                                 # summary `condition`: the languages' relation

# The group one summary row describes: layers hooked together, the language the latents were selected on, the
# language of the generation prompt.
GROUP = ["layers", "feature_language", "caption_language"]
RUN = GROUP + ["condition", "run"]

CAPTION_COLUMNS = ["sample_id", "image", *GROUP, "condition", "run", "caption", "male", "female", "neutral", "words"]
TERM_COLUMNS = [*RUN, "term", "class", "count"]
# latents, controls and overlap are written by select.py, controls.py and overlap.py (their COLUMNS,
# CONTROL_COLUMNS and OVERLAP_COLUMNS: tests/unit/test_intervention_stats.py checks they equal these)
LATENT_COLUMNS = ["layer", "feature_language", "sae", "latent", "mean_male", "mean_female", "difference", "cohens_d",
                  "firing_rate", "dead", "selected", "rank", "sign", "n_male", "n_female", "pool_kinds", "ranking"]
CONTROL_COLUMNS = ["layer", "feature_language", "sae", "run", "latent", "firing_rate", "bin", "target_bin", "borrowed"]
OVERLAP_COLUMNS = ["layer", "languages", "language_a", "language_b", "method", "sae_a", "sae_b", "k_a", "k_b",
                   "intersection", "jaccard", "null_mean", "null_std", "p_value", "n_null", "matched_pairs",
                   "matched_cosine"]
SUMMARY_COLUMNS = ["model", "model_id", *GROUP, "condition", "hook", "scale", "positions", "k", "runs", "images",
                   "base_count", "targeted_count", "change_pct", "random_mean", "random_std", "specificity", "ratio",
                   "rate_base", "rate_targeted", "male_base", "female_base", "male_targeted", "female_targeted",
                   "neutral_change_pct", "mean_difference", "ci_low", "ci_high", "wilcoxon_p", "empirical_p", "note"]

TABLES: dict[str, list[str]] = {CAPTIONS: CAPTION_COLUMNS, TERMS: TERM_COLUMNS, LATENTS: LATENT_COLUMNS,
                                CONTROLS: CONTROL_COLUMNS, OVERLAP: OVERLAP_COLUMNS, SUMMARY: SUMMARY_COLUMNS}

# pandas dtype of every column ("Int64"/"boolean": nullable, for rows where the value does not apply)
DTYPES: dict[str, str] = {
    "sample_id": "string", "image": "string", "layers": "string", "feature_language": "string",
    "caption_language": "string", "condition": "string", "run": "int64", "caption": "string",
    "male": "int64", "female": "int64", "neutral": "int64", "words": "int64",
    "term": "string", "class": "string", "count": "int64",
    "layer": "int64", "sae": "string", "latent": "int64", "mean_male": "float64", "mean_female": "float64",
    "difference": "float64", "cohens_d": "float64", "firing_rate": "float64", "dead": "bool", "selected": "bool",
    "rank": "Int64", "sign": "int8", "n_male": "int64", "n_female": "int64", "pool_kinds": "string",
    "ranking": "string", "bin": "int64", "target_bin": "int64", "borrowed": "bool",
    "languages": "string", "language_a": "string", "language_b": "string", "method": "string", "sae_a": "string",
    "sae_b": "string", "k_a": "int64", "k_b": "int64", "intersection": "int64", "jaccard": "float64",
    "null_mean": "float64", "null_std": "float64", "p_value": "float64", "n_null": "int64",
    "matched_pairs": "int64", "matched_cosine": "float64",
    "model": "string", "model_id": "string", "hook": "string", "scale": "float64", "positions": "string",
    "k": "int64", "runs": "int64", "images": "int64", "base_count": "int64", "targeted_count": "int64",
    "change_pct": "float64", "random_mean": "float64", "random_std": "float64", "specificity": "float64",
    "ratio": "float64", "rate_base": "float64", "rate_targeted": "float64", "male_base": "int64",
    "female_base": "int64", "male_targeted": "int64", "female_targeted": "int64", "neutral_change_pct": "float64",
    "mean_difference": "float64", "ci_low": "float64", "ci_high": "float64", "wilcoxon_p": "float64",
    "empirical_p": "float64", "note": "string",
}
assert all(c in DTYPES for cols in TABLES.values() for c in cols)


def layers_label(layers: int | str | Iterable[int]) -> str:
    """The `layers` value of the tables: the decoder layers hooked together, ascending, comma-separated ("12",
    "8,16"). Accepts an int, an iterable of ints, or such a string."""
    if isinstance(layers, str):
        items = [int(x) for x in layers.replace(" ", "").split(",") if x != ""]
    elif isinstance(layers, Iterable):
        items = [int(x) for x in layers]
    else:
        items = [int(layers)]
    if not items:
        raise ValueError("no layer")
    return ",".join(str(x) for x in sorted(set(items)))


def parse_layers(label: str) -> list[int]:
    return [int(x) for x in str(label).split(",") if x.strip() != ""]


def language_relation(feature_language: str | None, caption_language: str) -> str:
    """The summary's `condition`: within (latents selected in the caption language) or cross (in another)."""
    return WITHIN if feature_language in (None, "", caption_language) else CROSS


def frame(rows: Sequence[dict] | pd.DataFrame, table: str) -> pd.DataFrame:
    """A DataFrame of `table` (a file name of TABLES) with exactly its columns, in order, with their dtypes (a
    missing column is added empty; an empty table keeps its columns). Extra columns are dropped."""
    columns = TABLES[table]
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in columns:
        if c not in df.columns:
            df[c] = pd.NA
    df = df[columns].reset_index(drop=True)
    for c in columns:
        dtype = DTYPES[c]
        if dtype in ("int64", "int8", "bool") and df[c].isna().any():
            dtype = {"int64": "Int64", "int8": "Int8", "bool": "boolean"}[dtype]   # a value that does not apply stays empty
        if dtype == "float64":
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        else:
            df[c] = df[c].astype(dtype)
    return df


def write_parquet(df: pd.DataFrame, path: str | Path, table: str | None = None) -> Path:
    """Write `df` atomically (as `frame(df, table)` when `table` names one of TABLES)."""
    path = Path(path)
    if table is not None:
        df = frame(df, table)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_text(path: str | Path, text: str) -> Path:
    atomic_write_text(path, text)
    return Path(path)
