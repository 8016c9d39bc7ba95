"""The analysis outputs: file names, the columns of every table, atomic writing.

docs/analysis.md documents every column listed here (a test checks that it does).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from layerwise.core.atomic import atomic_path, atomic_write_text
from layerwise.core.html import FIGURES_DIR

PROBES = "probes.parquet"
DIRECTIONS = "directions.parquet"
CKA = "cka.parquet"
CROSSLINGUAL = "crosslingual.parquet"
SAE_FEATURES = "sae_features.parquet"
REPORT = "report.html"
FIGURES = FIGURES_DIR        # beside report.html: every figure as <stem>.svg, .pdf and its table <stem>.csv
SUMMARY = "analysis.json"

KEY = ["layer", "language", "view"]
PROBE_COLUMNS = KEY + ["accuracy", "accuracy_std", "control_accuracy", "control_std", "control_q95", "p_value",
                       "chance", "n_samples", "classes", "n_folds", "n_permutations", "not_converged",
                       "label_leak"]
DIRECTION_COLUMNS = KEY + ["n_samples", "classes", "class_a", "class_b", "direction_norm", "effect_size",
                           "heldout_effect_size", "heldout_effect_size_std", "other_language",
                           "direction_cosine", "direction_cosine_control", "direction_cosine_control_std",
                           "direction_cosine_p", "n_aligned", "within_accuracy", "transfer_accuracy",
                           "transfer_std", "centered_transfer_accuracy", "centered_transfer_std"]
CKA_COLUMNS = ["layer_a", "layer_b", "language", "view", "cka", "adjacent", "n_samples"]
CROSSLINGUAL_COLUMNS = ["layer", "view", "language_a", "language_b", "n_samples", "matched_cosine",
                        "matched_cosine_std", "mismatched_cosine", "mismatched_cosine_std", "cosine_gap",
                        "centered_matched_cosine", "centered_matched_cosine_std", "centered_mismatched_cosine",
                        "centered_mismatched_cosine_std", "centered_cosine_gap", "cka"]
SAE_COLUMNS = KEY + ["latent", "rank", "top_k", "auroc_selection", "auroc", "smd", "p_value", "q_value",
                     "passes_bh", "n_passing", "d_sae", "n_selection", "n_heldout", "classes", "class_a",
                     "class_b", "mean_a", "mean_b", "firing_rate_a", "firing_rate_b", "mean_activation",
                     "max_activation", "token_firing_rate", "sample_pool"]
TABLES = {PROBES: PROBE_COLUMNS, DIRECTIONS: DIRECTION_COLUMNS, CKA: CKA_COLUMNS,
          CROSSLINGUAL: CROSSLINGUAL_COLUMNS, SAE_FEATURES: SAE_COLUMNS}


def frame(rows: Sequence[dict] | pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame with exactly `columns`, in that order (an empty table keeps its columns)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in columns:
        if c not in df.columns:
            df[c] = pd.Series(dtype="float64")
    df = df[list(columns)].reset_index(drop=True)
    for c in ("layer", "layer_a", "layer_b", "n_samples", "n_folds", "n_permutations", "not_converged"):
        if c in df.columns and len(df) and df[c].notna().all():
            df[c] = df[c].astype("int64")
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
