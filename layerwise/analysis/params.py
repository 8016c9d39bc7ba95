"""The analysis options the pipeline exposes as `analysis_<option>` params (names, JSON types, help), and
the defaults of `layerwise.analysis.run.Options` read without importing numpy/scikit-learn.

`layerwise.params_schema` turns them into nextflow_schema.json's `analysis_options` group; the
`layerwise-analyze` command turns them into its flags.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

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
    root = Path(__file__).resolve().parent.parent
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


def split_csv(text: str) -> tuple[str, ...]:
    """'male, female' -> ('male', 'female'): a comma-separated param as the analysis takes it."""
    return tuple(x.strip() for x in str(text).split(",") if x.strip())


def converter(name: str):
    """How a param's value (a string on the command line) becomes the option's value."""
    return {"integer": int, "number": float}.get(ANALYSIS_PARAMS[name][0], split_csv)


def options_from_params(values: dict[str, Any]) -> dict[str, Any]:
    """{option: value} from the pipeline's analysis params ({option: param value}), converted as
    `layerwise-analyze` converts its flags; unknown names are left for the options check to report."""
    return {k: (converter(k)(v) if k in ANALYSIS_PARAMS else v) for k, v in values.items()}


def check_params(values: dict[str, Any]) -> None:
    """Every analysis option valid (layerwise.analysis.run.Options.check), with the pipeline's parameter named
    (--analysis_<option>): PREFLIGHT runs it before any GPU job."""
    from layerwise.analysis.run import make_options
    from layerwise.core.errors import LayerwiseError

    try:
        make_options(options_from_params(values))
    except (LayerwiseError, ValueError, TypeError) as exc:
        text = str(exc)
        named = [n for n in ANALYSIS_PARAMS if text.startswith(n) or f"'{n}'" in text or f" {n} " in f" {text} "]
        params = ", ".join(f"--analysis_{n}" for n in named) or "--analysis_<option>"
        raise LayerwiseError(f"analysis options: {text} (pipeline parameter{'s' if len(named) > 1 else ''}: {params})") \
            from None
