"""Reconstruction metrics of an SAE over a stream of batches, and the metrics table.

Definitions (over all rows x of a split, x_hat = sae.decode(sae.encode(x)), d = d_in):

* explained_variance = 1 - sum((x - x_hat)^2) / sum((x - mean(x))^2), mean per dimension over the
  split's rows (so reconstructing every row by the mean scores 0); fvu = 1 - explained_variance;
* mse = sum((x - x_hat)^2) / (rows * d)  (per element);
* mean_l0 = mean number of non-zero latents per row;
* dead_fraction = fraction of latents that are never non-zero on the split.

Sums are accumulated in float64.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core.atomic import atomic_path

# Columns of metrics.parquet, in order (one row per SAE and split).
METRIC_COLUMNS = (
    "layer",               # int: decoder layer L
    "language",            # str: "pooled" or the language
    "languages",           # str: the languages of the files used, comma-separated
    "architecture",        # str: topk / jumprelu / standard
    "d_in",                # int: hidden size
    "d_sae",               # int: SAE width (latents)
    "k",                   # int: topk's k (0 for other architectures)
    "split",               # str: train / validation
    "samples",             # int: samples of the split
    "tokens",              # int: rows of the split (kept token kinds, no padding)
    "explained_variance",  # float
    "fvu",                 # float: 1 - explained_variance
    "mse",                 # float: per element
    "mean_l0",             # float
    "dead_fraction",       # float
    "tokens_seen",         # int: training rows the trainer consumed (both splits: the same training)
    "epochs_seen",         # float: tokens_seen / training-split tokens
    "sae_dir",             # str: the SAE folder, relative to the metrics file's folder
)


@torch.no_grad()
def reconstruction_stats(sae: Any, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu") -> dict[str, Any]:
    """explained_variance, fvu, mse, mean_l0, dead_fraction and tokens of `sae` over `batches`."""
    sae.eval()
    n, err = 0, 0.0
    s1 = s2 = fired = None
    l0_total = 0
    for x in batches:
        x = x.to(device)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        xd, diff = x.double(), (x.double() - x_hat.double())
        if s1 is None:
            s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            s2 = torch.zeros_like(s1)
            fired = torch.zeros(acts.shape[1], dtype=torch.bool, device=x.device)
        s1 += xd.sum(0)
        s2 += (xd * xd).sum(0)
        err += float((diff * diff).sum())
        nonzero = acts != 0
        l0_total += int(nonzero.sum())
        fired |= nonzero.any(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no rows to evaluate")
    total_var = float((s2 - s1 * s1 / n).sum())
    ev = 1.0 - err / total_var if total_var > 0 else float("nan")
    return {"tokens": n, "explained_variance": ev, "fvu": 1.0 - ev, "mse": err / (n * s1.numel()),
            "mean_l0": l0_total / n, "dead_fraction": float((~fired).sum()) / fired.numel()}


def write_metrics(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write metric records (dicts with METRIC_COLUMNS) to Parquet, atomically; returns the path."""
    import pandas as pd

    path = Path(path)
    missing = sorted({c for r in records for c in METRIC_COLUMNS if c not in r})
    if missing:
        raise ValueError(f"metric records lack columns: {', '.join(missing)}")
    frame = pd.DataFrame([{c: r[c] for c in METRIC_COLUMNS} for r in records], columns=list(METRIC_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_metrics(path: str | os.PathLike):
    import pandas as pd

    return pd.read_parquet(path)
