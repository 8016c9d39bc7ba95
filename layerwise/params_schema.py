"""The `sae_options` and `analysis_options` groups of nextflow_schema.json, derived from their owners.

`layerwise.sae.options.SAEOptions` owns every SAE option (name, default, allowed values), and
`layerwise.analysis.run.Options` the defaults of the analysis. The pipeline exposes them as params
`sae_<option>` and `analysis_<option>`; `scripts/sync-schema.py` writes these groups into
nextflow_schema.json and `tests/test_conventions.py` checks that the file, nextflow.config and the
owners agree. This module is torch-free (the analysis defaults are read without importing it).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SAE_PREFIX, ANALYSIS_PREFIX = "sae_", "analysis_"
# SAE options the workflow sets per job instead of the user: the language of a job (pooled or one)
SAE_SET_BY_WORKFLOW = ("language",)

SAE_SWITCHES: dict[str, dict[str, Any]] = {
    "sae": {"type": "boolean", "default": False, "fa_icon": "fas fa-project-diagram",
            "description": "Train one sparse autoencoder per layer (TRAIN_SAE, SAELens) on the published layer files.",
            "help_text": "Adding --sae to a finished extraction run (with -resume) trains the SAEs without "
                         "re-extracting. The SAEs are written to <outdir>/sae/ (docs/sae.md)."},
    "sae_per_language": {"type": "boolean", "default": False, "fa_icon": "fas fa-language",
                         "description": "One SAE per layer and language (sae/layer_<L>_<language>/) instead of one per "
                                        "layer over every language pooled (sae/layer_<L>/)."},
}

# Analysis options exposed as params: name -> (JSON type, description, extra schema keys)
ANALYSIS_PARAMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "folds": ("integer", "Stratified k-fold splits of every probe.", {"minimum": 2}),
    "permutations": ("integer", "Shuffled-label controls per probe (the control band and the permutation p-value).",
                     {"minimum": 0}),
    "seed": ("integer", "Seed of the folds, the permutations and the CKA subsample.", {"minimum": 0}),
    "classes": ("string", "Comma-separated gender labels to probe; samples with other labels are left out.",
                {"pattern": r"^\s*[^,\s]+(\s*,\s*[^,\s]+)+\s*$"}),
    "views": ("string", "Comma-separated views to pool (image, prompt, caption, all; 'last' for last-token files).",
              {"pattern": r"^\s*(image|prompt|caption|all|last)(\s*,\s*(image|prompt|caption|all|last))*\s*$"}),
    "C": ("number", "Inverse L2 strength of the logistic-regression probes.", {"exclusiveMinimum": 0}),
    "cka_max_samples": ("integer", "CKA on at most this many samples (a seeded subset).", {"minimum": 3}),
    "sae_top_k": ("integer", "SAE latents most associated with gender listed per layer.", {"minimum": 1}),
    "sae_alpha": ("number", "Benjamini-Hochberg false-discovery rate of the SAE latent tests.",
                  {"exclusiveMinimum": 0, "exclusiveMaximum": 1}),
}

ANALYSIS_SWITCH = {"analysis": {
    "type": "boolean", "default": True, "fa_icon": "fas fa-chart-line",
    "description": "Analyse the layers (ANALYZE_LAYERS): gender probes with shuffled-label controls, directions, "
                   "CKA, cross-lingual similarity, SAE gender latents; <outdir>/analysis/ (docs/analysis.md).",
}}


def analysis_defaults() -> dict[str, Any]:
    """Defaults of `layerwise.analysis.run.Options`, read from its source (no numpy/sklearn import)."""
    root = Path(__file__).resolve().parent
    tree = ast.parse((root / "analysis" / "run.py").read_text(encoding="utf-8"))
    consts = {}
    for mod, names in (("labels", ("DEFAULT_CLASSES",)), ("views", ("DEFAULT_VIEWS",))):
        mtree = ast.parse((root / "analysis" / f"{mod}.py").read_text(encoding="utf-8"))
        for node in mtree.body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in names:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Options":
            out = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    v = stmt.value
                    out[stmt.target.id] = consts[v.id] if isinstance(v, ast.Name) and v.id in consts else (
                        ast.literal_eval(v) if not isinstance(v, ast.Name) else None)
            return out
    raise AssertionError("layerwise/analysis/run.py: no class Options")


def sae_group() -> dict[str, Any]:
    from .sae.options import option_specs

    props = dict(SAE_SWITCHES)
    for name, spec in option_specs().items():
        if name in SAE_SET_BY_WORKFLOW:
            continue
        prop = {k: v for k, v in spec.items()}
        prop["fa_icon"] = "fas fa-sliders-h"
        props[SAE_PREFIX + name] = prop
    return {"title": "SAE training options", "type": "object", "fa_icon": "fas fa-project-diagram",
            "description": "Sparse autoencoders per layer (--sae): every option of layerwise.sae.options.SAEOptions "
                           "as sae_<option> (docs/sae.md).",
            "properties": props}


def analysis_group() -> dict[str, Any]:
    defaults = analysis_defaults()
    props = dict(ANALYSIS_SWITCH)
    for name, (typ, desc, extra) in ANALYSIS_PARAMS.items():
        default = defaults[name]
        if isinstance(default, tuple):
            default = ",".join(default)
        props[ANALYSIS_PREFIX + name] = {"type": typ, "default": default, "description": desc, **extra,
                                         "fa_icon": "fas fa-sliders-h"}
    return {"title": "Analysis options", "type": "object", "fa_icon": "fas fa-chart-line",
            "description": "The analysis stage (--analysis, on by default): layerwise.analysis options as "
                           "analysis_<option> (docs/analysis.md).",
            "properties": props}


GROUPS = {"sae_options": sae_group, "analysis_options": analysis_group}


def derived_groups() -> dict[str, dict[str, Any]]:
    return {name: make() for name, make in GROUPS.items()}
