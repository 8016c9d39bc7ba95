"""Analysis of extracted layer files: gender probes, directions, CKA, cross-lingual similarity, SAE latents.

Public API::

    from layerwise.analysis import analyze
    result = analyze(layer_files, out_dir, sae_dirs=None, folds=5, permutations=20, seed=0)

Modules (one job each): `views` (which positions a view pools), `reader` (memory-mapped files in
sample chunks), `pooling` (per-sample mean over each view), `labels` (probed classes, folds),
`probes` (logistic-regression probes, controls, transfer), `directions` (difference of means,
effect size), `cka` (linear CKA, Gram store), `crosslingual` (matched vs mismatched cosines),
`stats` (AUROC, SMD, Mann-Whitney, Benjamini-Hochberg), `sae` (SAE latent associations),
`outputs` (tables and their columns), `plots` and `report` (report.html), `run` (`analyze`),
`synthetic` (planted-signal layer files for tests and benchmarks). docs/analysis.md describes
the methods and every output column.
"""
import importlib

# Imported on first use (PEP 562): importing a light module of the package (e.g. `params`, for a command's --help or
# PREFLIGHT's option checks) must not import torch and scikit-learn.
_PUBLIC = {"analyze": "run", "Options": "run", "linear_cka": "cka", "centered_gram": "cka", "cka_from_grams": "cka",
           "VIEWS": "views", "DEFAULT_VIEWS": "views", "plan_views": "views"}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"layerwise.analysis.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'layerwise.analysis' has no attribute {name!r}")
