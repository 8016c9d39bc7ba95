"""One published outdir, as the comparison reads it.

Required: `extraction_metadata.json` (written by PUBLISH_RESULTS; without it the folder is not a layerwise
result, a LayerwiseError naming it). Optional, each reported by a note when absent: `analysis/probes.parquet`
(ANALYZE_LAYERS), `sae/metrics.parquet` (PUBLISH_SAE; its validation rows) and
`intervention/summary.parquet` (the intervention stage, read when present; see INTERVENTION_COLUMNS).
This module names only the columns it reads; their owners are layerwise/analysis/outputs.py and
layerwise/sae/metrics.py (tests/unit/test_compare.py checks the names against them).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import METADATA_JSON

PROBES = "analysis/probes.parquet"
SAE_METRICS = "sae/metrics.parquet"
INTERVENTION = "intervention/summary.parquet"

POOLED = "pooled"              # sae/metrics.parquet `language` of an SAE trained on every language together
VALIDATION = "validation"      # sae/metrics.parquet `split` of the held-out samples
STATUS_PASSED = "passed"

# Columns read, (required, optional): a required one missing is an error (the file is not what its stage
# writes); an optional one missing is left empty in the comparison.
PROBE_COLUMNS = (("layer", "language", "view", "accuracy", "accuracy_std", "control_accuracy", "control_std",
                  "p_value"), ("chance", "n_samples", "label_leak"))
SAE_COLUMNS = (("layer", "language", "split", "explained_variance", "mean_l0", "dead_fraction"),
               ("architecture", "d_sae"))
# intervention/summary.parquet does not exist yet (the intervention stage, issue 20): the columns expected,
# one row per condition. `layers`: the decoder layer(s) hooked together (an int, a list of ints, or a string
# such as "10" or "10,17"); only single-layer rows can be put on a layer. `feature_language` (the samples the
# latents were selected on) and `caption_language` (the prompt's language) pick the rows of a language.
INTERVENTION_COLUMNS = (("layers", "change_pct", "ratio"),
                        ("condition", "hook", "k", "feature_language", "caption_language", "random_mean",
                         "random_std", "specificity", "empirical_p", "wilcoxon_p"))


@dataclass
class Result:
    """One outdir: its model and the tables found (None: absent), with a note for each part it lacks."""

    label: str
    path: Path
    model_id: str
    model_type: str
    num_layers: int
    status: str
    layers: list[int]
    languages: list[str]
    probes: pd.DataFrame | None = None
    sae: pd.DataFrame | None = None               # the validation rows of sae/metrics.parquet
    intervention: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.notes.append(message)


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise LayerwiseError(f"{path}: no such folder (compare takes the --outdir folders of layerwise runs)")
    meta_file = path / METADATA_JSON
    if not meta_file.is_file():
        raise LayerwiseError(f"{path} is not a layerwise result: it has no {METADATA_JSON} "
                             "(give the --outdir of a pipeline run that published its layer files)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayerwiseError(f"{meta_file} cannot be read as JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise LayerwiseError(f"{meta_file} is not a layerwise extraction_metadata.json: it has no `model` object")
    return meta


def _num_layers(meta: dict[str, Any], meta_file: Path) -> int:
    value = meta["model"].get("num_layers")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayerwiseError(f"{meta_file}: model.num_layers is {value!r}, not a positive number of layers "
                             "(the relative depth needs it)")
    return value


def _read_table(path: Path, columns: tuple[Sequence[str], Sequence[str]], what: str) -> pd.DataFrame:
    """The file's required and optional columns (the optional ones added empty when absent)."""
    required, optional = columns
    try:
        df = pd.read_parquet(path)
    except Exception as exc:    # pyarrow raises several types for a damaged file
        raise LayerwiseError(f"{path} cannot be read as Parquet ({what}): {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LayerwiseError(f"{path} lacks the column(s) {', '.join(missing)} of {what}")
    for c in optional:
        if c not in df.columns:
            df[c] = pd.NA
    return df[list(required) + list(optional)].reset_index(drop=True)


def single_layer(value: Any) -> int | None:
    """The layer of an intervention row that hooks exactly one layer (10, [10], "10"); None for several."""
    if isinstance(value, str):
        found = re.findall(r"-?\d+", value)
        return int(found[0]) if len(found) == 1 else None
    if isinstance(value, Iterable):
        items = list(value)
        return single_layer(items[0]) if len(items) == 1 else None
    try:
        if pd.isna(value):
            return None
        as_int = int(value)
    except (TypeError, ValueError):
        return None
    return as_int if as_int == value else None


def _check_layers(result: Result, df: pd.DataFrame, file: str) -> None:
    """Every row's layer is a layer of the model (else relative depths would be wrong): an error naming them."""
    layers = pd.to_numeric(df["layer"], errors="coerce")
    if layers.isna().any():
        raise LayerwiseError(f"{result.path / file}: {int(layers.isna().sum())} row(s) have no layer")
    bad = sorted({int(v) for v in layers if not 0 <= v < result.num_layers})
    if bad:
        raise LayerwiseError(f"{result.path / file}: layer(s) {', '.join(map(str, bad))} are not layers of the "
                             f"model ({result.model_id}: {result.num_layers} layers, 0-{result.num_layers - 1})")


def read_result(path: str | Path, label: str) -> Result:
    """Read one outdir; a LayerwiseError when it is not a layerwise result (or a table it has is damaged)."""
    path = Path(path)
    meta = _read_metadata(path)
    model = meta["model"]
    result = Result(label=label, path=path, model_id=str(model.get("id") or ""),
                    model_type=str(model.get("model_type") or ""), num_layers=_num_layers(meta, path / METADATA_JSON),
                    status=str(meta.get("status") or ""),
                    layers=sorted({int(x) for x in meta.get("layers") or []}),
                    languages=[str(x) for x in meta.get("languages") or []])
    if result.status != STATUS_PASSED:
        result.note(f"{METADATA_JSON} says status {result.status or 'unknown'!r}, not {STATUS_PASSED!r}: "
                    "the extraction was not verified and its results may be partial")

    probes = path / PROBES
    if probes.is_file():
        result.probes = _read_table(probes, PROBE_COLUMNS, "the analysis probes")
        _check_layers(result, result.probes, PROBES)
        if len(result.probes) == 0:
            result.note(f"no probe results: {PROBES} has no rows")
    else:
        result.note(f"no analysis: {PROBES} not found (a run with --analysis false, or an analysis not finished)")

    metrics = path / SAE_METRICS
    if metrics.is_file():
        sae = _read_table(metrics, SAE_COLUMNS, "the SAE metrics")
        _check_layers(result, sae, SAE_METRICS)
        result.sae = sae[sae["split"] == VALIDATION].reset_index(drop=True)
        if len(result.sae) == 0:
            result.note(f"no SAE quality: {SAE_METRICS} has no {VALIDATION!r} rows")
        duplicated = result.sae.duplicated(["layer", "language"], keep="first")
        if duplicated.any():
            keys = ", ".join(f"layer {r.layer} {r.language}" for r in result.sae[duplicated].itertuples())
            result.note(f"{SAE_METRICS} has several validation rows for {keys}: the first of each is compared")
            result.sae = result.sae[~duplicated].reset_index(drop=True)
    else:
        result.note(f"no SAEs: {SAE_METRICS} not found (a run without --sae, or SAEs not published)")

    summary = path / INTERVENTION
    if summary.is_file():
        try:
            result.intervention = _read_table(summary, INTERVENTION_COLUMNS, "an intervention summary")
        except LayerwiseError as exc:   # a format still settling: say so, compare the rest
            result.note(f"intervention results not compared: {exc}")
    return result
