"""comparison.parquet: one row per (model, layer, language, view), on a relative-depth axis.

Rows are the probes of each outdir (analysis/probes.parquet), plus one row with an empty `view` for every
(layer, language) the outdir extracted or trained an SAE on but has no probe for (no analysis, or a layer
not analysed), so that every model and its SAE quality appear even without an analysis. Joined per row:

* SAE quality (sae/metrics.parquet, validation split) of the row's layer: the SAE of the row's language
  (`--sae_per_language`) or else the layer's pooled SAE (every language together, `sae_language` "pooled");
* the intervention summary (intervention/summary.parquet, when present) of the row's layer and language:
  rows that hook that one layer, with `caption_language` (else `feature_language`) equal to the row's
  language, or without a language column; a cross-language row (features of one language, captions in the
  other) and a row that hooks several layers together are not on a layer and appear in the report only.
  Several rows for one (layer, language) (several hooks, k or conditions) are ambiguous: none is joined,
  and a note says so. The intervention columns repeat on every view of the layer.

relative_depth = layer / (num_layers - 1): 0 is the first decoder layer and 1 the last, whatever the
model's depth (0 for a one-layer model). docs/output.md ("comparison.parquet") documents every column.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from layerwise.compare.inputs import POOLED, Result, single_layer

COMPARISON = "comparison.parquet"
REPORT = "report.html"

VIEW_ORDER = ("image", "prompt", "caption", "all", "last")

# Every column of comparison.parquet, in order, with its dtype (nullable where a part can be absent).
COLUMNS: dict[str, str] = {
    "model": "string",                      # the outdir's label (--label, default the folder's name)
    "model_id": "string",                   # extraction_metadata.json model.id
    "model_type": "string",                 # model.model_type
    "num_layers": "int64",                  # model.num_layers: decoder layers of the model
    "layer": "int64",                       # decoder layer (0-based)
    "relative_depth": "float64",            # layer / (num_layers - 1)
    "language": "string",
    "view": "string",                       # empty on rows without a probe
    "probe_accuracy": "float64",            # probes.parquet accuracy
    "probe_accuracy_std": "float64",        # accuracy_std
    "control_accuracy": "float64",          # shuffled-label control, mean over permutations
    "control_std": "float64",
    "p_value": "float64",
    "chance": "float64",
    "n_samples": "Int64",
    "label_leak": "boolean",
    "sae_language": "string",               # "pooled" or the language of the SAE joined
    "sae_architecture": "string",
    "sae_d_sae": "Int64",
    "sae_explained_variance": "float64",    # validation split
    "sae_mean_l0": "float64",               # validation split
    "sae_dead_fraction": "float64",         # validation split
    "intervention_condition": "string",
    "intervention_hook": "string",
    "intervention_k": "Int64",
    "intervention_change_pct": "float64",
    "intervention_random_mean": "float64",
    "intervention_random_std": "float64",
    "intervention_specificity": "float64",
    "intervention_ratio": "float64",
    "intervention_empirical_p": "float64",
    "intervention_wilcoxon_p": "float64",
}

PROBE_RENAME = {"accuracy": "probe_accuracy", "accuracy_std": "probe_accuracy_std"}
PROBE_KEEP = ("layer", "language", "view", "probe_accuracy", "probe_accuracy_std", "control_accuracy", "control_std",
              "p_value", "chance", "n_samples", "label_leak")
SAE_FIELDS = {"language": "sae_language", "architecture": "sae_architecture", "d_sae": "sae_d_sae",
              "explained_variance": "sae_explained_variance", "mean_l0": "sae_mean_l0",
              "dead_fraction": "sae_dead_fraction"}
INTERVENTION_FIELDS = {c.removeprefix("intervention_"): c for c in COLUMNS if c.startswith("intervention_")}


def relative_depth(layer: int, num_layers: int) -> float:
    return layer / (num_layers - 1) if num_layers > 1 else 0.0


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def languages(result: Result) -> list[str]:
    """The outdir's languages: extraction order, then any other found in its tables."""
    found = list(result.languages)
    extra = []
    if result.probes is not None:
        extra += [str(x) for x in result.probes["language"]]
    if result.sae is not None:
        extra += [str(x) for x in result.sae["language"] if x != POOLED]
    for lang in extra:
        if lang not in found:
            found.append(lang)
    return found or [POOLED]


def _base_rows(result: Result, langs: Sequence[str]) -> pd.DataFrame:
    if result.probes is not None:
        probes = result.probes.rename(columns=PROBE_RENAME)[list(PROBE_KEEP)]
    else:
        probes = pd.DataFrame(columns=list(PROBE_KEEP))
    covered = {(int(r.layer), str(r.language)) for r in probes.itertuples()}
    keys = {(layer, lang) for layer in result.layers for lang in langs}
    if result.sae is not None:
        for r in result.sae.itertuples():
            keys |= {(int(r.layer), lang) for lang in langs} if r.language == POOLED else {(int(r.layer), r.language)}
    extra = pd.DataFrame(sorted(keys - covered), columns=["layer", "language"])
    parts = [df for df in (probes, extra) if len(df)]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(PROBE_KEEP))
    for c in PROBE_KEEP:
        if c not in rows.columns:
            rows[c] = pd.NA
    rows["layer"] = rows["layer"].astype("int64")
    return rows


def _join_sae(rows: pd.DataFrame, sae: pd.DataFrame | None) -> None:
    own: dict[tuple[int, str], Any] = {}
    pooled: dict[int, Any] = {}
    for r in (sae.to_dict("records") if sae is not None else []):
        if r["language"] == POOLED:
            pooled[int(r["layer"])] = r
        else:
            own[(int(r["layer"]), str(r["language"]))] = r
    found = [own.get((int(layer), str(lang))) or pooled.get(int(layer))
             for layer, lang in zip(rows["layer"], rows["language"])]
    for src, col in SAE_FIELDS.items():
        rows[col] = [r[src] if r is not None else pd.NA for r in found]


def _intervention_lookup(result: Result) -> dict[tuple[int, str | None], dict[str, Any]]:
    """(layer, language or None: every language) -> the one intervention row of that layer and language."""
    df = result.intervention
    if df is None or len(df) == 0:
        return {}
    several, cross = 0, 0
    groups: dict[tuple[int, str | None], list[dict[str, Any]]] = {}
    for r in df.to_dict("records"):
        layer = single_layer(r["layers"])
        if layer is None:
            several += 1
            continue
        feature, caption = (None if pd.isna(r[c]) else str(r[c]) for c in ("feature_language", "caption_language"))
        if feature is not None and caption is not None and feature != caption:
            cross += 1
            continue
        groups.setdefault((layer, caption or feature), []).append(r)
    if several:
        result.note(f"{several} intervention row(s) hook several layers together: they are on no single layer, "
                    "so they are in the report, not in comparison.parquet")
    if cross:
        result.note(f"{cross} cross-language intervention row(s) (latents of one language, captions in another): "
                    "in the report, not in comparison.parquet")
    lookup = {}
    for (layer, lang), found in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if len(found) > 1:
            conditions = ", ".join(sorted({str(r["condition"]) for r in found}))
            result.note(f"{len(found)} intervention rows for layer {layer}{f' {lang}' if lang else ''} "
                        f"(conditions: {conditions}): ambiguous, none joined (the report lists them)")
            continue
        lookup[(layer, lang)] = found[0]
    return lookup


def _join_intervention(rows: pd.DataFrame, result: Result) -> None:
    lookup = _intervention_lookup(result)
    found = [lookup.get((int(layer), str(lang))) or lookup.get((int(layer), None))
             for layer, lang in zip(rows["layer"], rows["language"])]
    for src, col in INTERVENTION_FIELDS.items():
        rows[col] = [r[src] if r is not None else pd.NA for r in found]


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[list(COLUMNS)].copy()
    for c, t in COLUMNS.items():
        if t in ("float64", "Int64"):
            df[c] = pd.to_numeric(df[c].astype("object").where(df[c].notna(), None), errors="coerce")
        elif t == "boolean":
            df[c] = df[c].astype("object").where(df[c].notna(), None)
        df[c] = df[c].astype(t)
    return df


def result_rows(result: Result) -> pd.DataFrame:
    """The comparison rows of one outdir (notes about what could not be joined go to result.notes)."""
    langs = languages(result)
    rows = _base_rows(result, langs)
    if len(rows) == 0:
        result.note("nothing to compare: no layer, probe or SAE found")
        return empty_table()
    _join_sae(rows, result.sae)
    _join_intervention(rows, result)
    rows["model"] = result.label
    rows["model_id"] = result.model_id
    rows["model_type"] = result.model_type
    rows["num_layers"] = result.num_layers
    rows["relative_depth"] = [relative_depth(int(x), result.num_layers) for x in rows["layer"]]
    lang_rank = {lang: i for i, lang in enumerate(langs)}
    views = [v for v in rows["view"].dropna().unique() if v not in VIEW_ORDER]
    view_rank = {v: i for i, v in enumerate(list(VIEW_ORDER) + sorted(map(str, views)))}
    rows["_lang"] = [lang_rank.get(str(x), len(lang_rank)) for x in rows["language"]]
    rows["_view"] = [len(view_rank) if pd.isna(v) else view_rank[v] for v in rows["view"]]
    rows = rows.sort_values(["_lang", "layer", "_view"], kind="stable")
    return _typed(rows)


def build_table(results: Sequence[Result]) -> pd.DataFrame:
    """comparison.parquet's rows: models in the order given, then language, layer, view."""
    parts = [df for df in (result_rows(r) for r in results) if len(df)]
    table = pd.concat(parts, ignore_index=True) if parts else empty_table()
    return _typed(table).reset_index(drop=True)
