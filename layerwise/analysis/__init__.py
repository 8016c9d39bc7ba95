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
from layerwise.analysis.cka import centered_gram, cka_from_grams, linear_cka
from layerwise.analysis.run import Options, analyze
from layerwise.analysis.views import DEFAULT_VIEWS, VIEWS, plan_views

__all__ = ["analyze", "Options", "linear_cka", "centered_gram", "cka_from_grams", "VIEWS", "DEFAULT_VIEWS",
           "plan_views"]
