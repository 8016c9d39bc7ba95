"""The `sae_options`, `analysis_options` and `intervention_options` groups of nextflow_schema.json, derived
from their owners.

`layerwise.sae.options.SAEOptions` owns every SAE option (name, default, allowed values), and
`layerwise.analysis.run.Options` the defaults of the analysis. The pipeline exposes them as params
`sae_<option>` and `analysis_<option>`; `scripts/sync-schema.py` writes these groups into
nextflow_schema.json and `tests/unit/test_conventions.py` checks that the file, nextflow.config and the
owners agree. This module is torch-free (the analysis defaults are read without importing it).
"""
from __future__ import annotations

from typing import Any

from layerwise.analysis.params import ANALYSIS_PARAMS, ANALYSIS_SWITCH, analysis_defaults

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

def sae_group() -> dict[str, Any]:
    from layerwise.sae.options import option_specs

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


INTERVENTION_PREFIX = "intervention_"
INTERVENTION_SWITCH = {"intervene": {
    "type": "boolean", "default": False, "fa_icon": "fas fa-cut",
    "description": "Causal intervention (needs --sae): ablate the SAE latents that carry gender while the model "
                   "writes captions, against random latents matched by firing rate; <outdir>/intervention/ "
                   "(docs/intervention.md).",
}}


def intervention_group() -> dict[str, Any]:
    from layerwise.intervention.options import option_specs

    props = dict(INTERVENTION_SWITCH)
    for name, spec in option_specs().items():
        props[INTERVENTION_PREFIX + name] = {**spec, "fa_icon": "fas fa-sliders-h"}
    return {"title": "Intervention options", "type": "object", "fa_icon": "fas fa-cut",
            "description": "The intervention stage (--intervene): every option of "
                           "layerwise.intervention.options.InterventionOptions as intervention_<option> "
                           "(docs/intervention.md).",
            "properties": props}


GROUPS = {"sae_options": sae_group, "analysis_options": analysis_group, "intervention_options": intervention_group}


def derived_groups() -> dict[str, dict[str, Any]]:
    return {name: make() for name, make in GROUPS.items()}
