"""Evaluate any SAELens SAE (one trained here, or a published one such as Gemma Scope 2) on a split
of layer files, with the same rows as training (same token-kind filters, same split by sample)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from layerwise.sae.metrics import reconstruction_stats
from layerwise.sae.options import SAEOptions
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource, open_sources, select_sources
from layerwise.sae.split import VALIDATION


def evaluate_split(sae: Any, layer_files: Sequence[str | os.PathLike | LayerSource], options: SAEOptions | None = None,
                   split: str = VALIDATION, device: str = "cpu") -> dict[str, Any]:
    """explained_variance, fvu, mse, mean_l0, dead_fraction, tokens and samples of `sae` on `split`, and
    excluded_samples ({language: samples of the split left out for NaN/Inf values at extraction}).

    `options` chooses the rows exactly as for training: `language`, `keep_kinds`/`drop_kinds`,
    `validation_fraction`/`split_seed`, `batch_size` (rows per forward) and `dtype`; samples with
    `nan_counts > 0` are never used."""
    options = options or SAEOptions()
    if all(isinstance(s, LayerSource) for s in layer_files):
        sources = list(layer_files)
    else:
        sources = open_sources([s.path if isinstance(s, LayerSource) else s for s in layer_files])
    sources = select_sources(sources, options.language)
    data = ActivationProvider.for_split(sources, options, split, shuffle=False, epochs=1, drop_last=False)
    return {**reconstruction_stats(sae, data, device), "samples": data.num_samples,
            "excluded_samples": dict(data.excluded)}
