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

Importing `layerwise.sae` does not import SAELens; `train_layer_sae` does, when first called.
"""
from __future__ import annotations

from typing import Any

from layerwise.sae.evaluate import evaluate_split
from layerwise.sae.metrics import METRIC_COLUMNS, read_metrics, reconstruction_stats, write_metrics
from layerwise.sae.options import SAEOptions, SAEOptionsError, option_specs
from layerwise.sae.outputs import collect_metrics, held_out_ids, read_options, read_split, sae_folder_name
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource, open_sources
from layerwise.sae.split import is_validation, split_ids, split_mask

__all__ = ["METRIC_COLUMNS", "ActivationProvider", "LayerSource", "SAEOptions", "SAEOptionsError",
           "collect_metrics", "evaluate_split", "held_out_ids", "is_validation", "open_sources", "option_specs", "read_metrics",
           "read_options", "read_split", "reconstruction_stats", "sae_folder_name", "split_ids", "split_mask", "train_layer_sae",
           "write_metrics"]


def train_layer_sae(layer_files, out_dir, options: SAEOptions | None = None, samplesheet=None) -> list[dict[str, Any]]:
    """See `layerwise.sae.train.train_layer_sae` (imported on first use: it imports SAELens)."""
    from layerwise.sae.train import train_layer_sae as _train

    return _train(layer_files, out_dir, options, samplesheet)
