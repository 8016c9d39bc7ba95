"""Sparse autoencoders (SAEs) on layerwise's layer files, trained with SAELens (docs/sae.md).

Modules (one job each):

* `options`   -- `SAEOptions`: every option, its default, allowed values and checks; `option_specs()`
* `split`     -- the train/validation split by sample_id (same for every layer and language)
* `source`    -- `LayerSource`: one layer file, memory-mapped, read as runs of consecutive samples
* `provider`  -- `ActivationProvider`: chunked reads, shuffle buffer, token-kind filters, batches
* `metrics`   -- explained variance / MSE / L0 / dead latents of an SAE; `write_metrics` (Parquet)
* `evaluate`  -- `evaluate_split`: any SAELens SAE (ours, Gemma Scope) on a split of layer files
* `outputs`   -- names and small files of the SAE folders (split.json, metrics.json, training.json)
* `train`     -- `train_layer_sae`: SAELens `SAETrainer` on the provider; save, evaluate (imports SAELens)
* `synthetic` -- synthetic layer files with planted structure (tests, benchmarks)

Importing `layerwise.sae` imports nothing heavy (each name on first use); `train_layer_sae` imports SAELens when first called.
"""
from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562): a light module of the package (e.g. `options`, for a command's --help or PREFLIGHT's
# option checks) does not import torch.
_PUBLIC = {"evaluate_split": "evaluate", "METRIC_COLUMNS": "metrics", "read_metrics": "metrics",
           "reconstruction_stats": "metrics", "write_metrics": "metrics", "SAEOptions": "options",
           "SAEOptionsError": "options", "option_specs": "options", "collect_metrics": "outputs",
           "held_out_ids": "outputs", "read_options": "outputs", "read_split": "outputs", "sae_folder_name": "outputs",
           "ActivationProvider": "provider", "LayerSource": "source", "open_sources": "source",
           "is_validation": "split", "split_ids": "split", "split_mask": "split"}

__all__ = sorted([*_PUBLIC, "train_layer_sae"])


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"layerwise.sae.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'layerwise.sae' has no attribute {name!r}")


def train_layer_sae(layer_files, out_dir, options=None, samplesheet=None, **kwargs) -> list[dict[str, Any]]:
    """See `layerwise.sae.train.train_layer_sae` (imported on first use: it imports SAELens)."""
    from layerwise.sae.train import train_layer_sae as _train

    return _train(layer_files, out_dir, options, samplesheet, **kwargs)
