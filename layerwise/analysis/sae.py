"""SAE latents most associated with gender, written against the SAE interface `encode(x)`.

Each stored position of a view is encoded by the layer's SAE (`sae_lens.SAE.load_from_disk`, or
any object with `encode(x: Tensor[R, H]) -> Tensor[R, d_sae]`); a sample's latent vector is the
mean of its positions' latent activations over the view, accumulated chunk by chunk in the same
pass over the file as the residual views. Samples are split (stratified, seeded) into a selection
half, where latents are ranked by |AUROC - 0.5|, and a held-out half, where every latent gets its
AUROC, standardized mean difference and two-sided Mann-Whitney p-value; the p-values of all d_sae
latents are corrected with Benjamini-Hochberg.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedShuffleSplit

from layerwise.analysis import stats
from layerwise.analysis.pooling import view_mask
from layerwise.analysis.reader import Chunk
from layerwise.core.errors import LayerwiseError

BATCH_ROWS = 1024


def load_sae(folder: str | Path, device: str = "cpu") -> Any:
    """An SAELens SAE saved with `save_model` (imported lazily: sae_lens is only needed for SAEs)."""
    try:
        from sae_lens import SAE
    except ImportError as exc:  # pragma: no cover - sae_lens is pinned in the environment
        raise LayerwiseError(f"SAEs given but sae_lens cannot be imported: {exc}") from exc
    folder = Path(folder)
    if not folder.is_dir():
        raise LayerwiseError(f"SAE folder {folder} does not exist")
    try:
        return SAE.load_from_disk(folder, device=device)
    except Exception as exc:
        raise LayerwiseError(f"{folder}: cannot be loaded with sae_lens.SAE.load_from_disk: "
                             f"{type(exc).__name__}: {exc}") from exc


def parse_sae_dirs(specs: Iterable[str]) -> dict[int | tuple[int, str], Path]:
    """`LAYER=FOLDER`, `LAYER:LANGUAGE=FOLDER`, or an SAE root whose subfolders are named `layer_{L}`
    (one SAE for all languages) or `layer_{L}_{language}` (as layerwise.sae writes them)."""
    out: dict[int | tuple[int, str], Path] = {}
    for spec in specs:
        m = re.fullmatch(r"(\d+)(?::([^=]+))?=(.+)", spec)
        if m:
            out[(int(m.group(1)), m.group(2)) if m.group(2) else int(m.group(1))] = Path(m.group(3))
            continue
        root = Path(spec)
        if not root.is_dir():
            raise LayerwiseError(f"--sae-dir {spec!r}: neither LAYER[:LANGUAGE]=FOLDER nor an existing folder")
        found: dict[int | tuple[int, str], Path] = {}
        for sub in sorted(root.iterdir()):
            mm = re.fullmatch(r"layer_?(\d+)(?:_(.+))?", sub.name)
            if sub.is_dir() and mm:
                found[(int(mm.group(1)), mm.group(2)) if mm.group(2) else int(mm.group(1))] = sub
        if not found:
            raise LayerwiseError(f"--sae-dir {spec}: no subfolder named layer_<L> or layer_<L>_<language>; "
                                 "give LAYER=FOLDER instead")
        out.update(found)
    return out


def sae_held_out_ids(spec: Any) -> list[str] | None:
    """The samples an SAE was not trained on: `validation` of its folder's split.json (layerwise.sae
    writes it), or an encoder object's `held_out_ids`; None when unknown."""
    if hasattr(spec, "encode"):
        ids = getattr(spec, "held_out_ids", None)
        return None if ids is None else [str(s) for s in ids]
    path = Path(spec) / "split.json"
    if not path.is_file():
        return None
    try:
        return [str(s) for s in json.loads(path.read_text(encoding="utf-8"))["validation"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LayerwiseError(f"{path}: unreadable split file ({type(exc).__name__}: {exc})") from exc


def _encoder_dtype_device(encoder: Any, device: str) -> tuple[torch.dtype, Any]:
    dtype = getattr(encoder, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        params = list(encoder.parameters()) if hasattr(encoder, "parameters") else []
        dtype = params[0].dtype if params else torch.float32
    dev = getattr(encoder, "device", None)
    return dtype, (dev if dev is not None else device)


class SaeLatentPooler:
    """Mean latent activation per sample and view, fed with the same chunks as the view pooler."""

    def __init__(self, encoder: Any, n_samples: int, plan: dict, device: str = "cpu", batch_rows: int = BATCH_ROWS):
        self.encoder, self.plan, self.n = encoder, plan, n_samples
        self.dtype, self.device = _encoder_dtype_device(encoder, device)
        self.batch_rows = batch_rows
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = {v: torch.zeros(n_samples, dtype=torch.int64) for v in plan}
        self.fired = {}                                   # view -> int64 [d_sae]: positions with latent > 0

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.encoder.encode(x.to(device=self.device, dtype=self.dtype))
        z = torch.as_tensor(z).to("cpu", torch.float32)
        if z.dim() != 2 or z.shape[0] != x.shape[0]:
            raise LayerwiseError(f"SAE encode returned shape {list(z.shape)} for input {list(x.shape)}")
        return z

    def add(self, chunk: Chunk) -> None:
        masks = {v: view_mask(chunk, spec)[chunk.valid] for v, spec in self.plan.items()}   # [R] each
        union = torch.zeros(len(chunk.sample), dtype=torch.bool)
        for m in masks.values():
            union |= m
        rows = union.nonzero().flatten()
        for b0 in range(0, len(rows), self.batch_rows):
            sel = rows[b0:b0 + self.batch_rows]
            z = self._encode(chunk.rows[sel])
            for view, m in masks.items():
                keep = m[sel]
                if not bool(keep.any()):
                    continue
                zs = z[keep]
                seg = chunk.sample[sel][keep] + chunk.start
                if view not in self.sums:
                    self.sums[view] = torch.zeros(self.n, z.shape[1], dtype=torch.float32)
                    self.fired[view] = torch.zeros(z.shape[1], dtype=torch.int64)
                self.sums[view].index_add_(0, seg, zs)
                self.counts[view].index_add_(0, seg, torch.ones_like(seg))
                self.fired[view] += (zs > 0).sum(dim=0)

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """view -> (mean latents float32 [N, d_sae], valid bool [N], token firing rate [d_sae])."""
        out = {}
        for view, s in self.sums.items():
            counts = self.counts[view]
            z = s / counts.clamp(min=1).unsqueeze(1).to(torch.float32)
            valid = (counts > 0) & torch.isfinite(z).all(dim=1)
            rate = self.fired[view].to(torch.float64) / max(1, int(counts.sum()))
            out[view] = (z.numpy(), valid.numpy(), rate.numpy())
        return out


def latent_associations(Z: np.ndarray, y: np.ndarray, classes: tuple[str, str], *, heldout_fraction: float = 0.5,
                        seed: int = 0, top_k: int = 20, alpha: float = 0.05,
                        token_firing_rate: np.ndarray | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """Rank latents on a selection split, test all of them on the held-out split; (rows, or None and why)."""
    counts = np.bincount(y, minlength=2)
    n_held = int(round(len(y) * heldout_fraction))
    if counts.min() < 4 or n_held < 4 or len(y) - n_held < 4:
        return None, f"too few samples for a selection / held-out split (class counts {counts.tolist()})"
    split = StratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    sel, held = next(split.split(np.zeros(len(y)), y))
    Zs, ys, Zh, yh = Z[sel], y[sel], Z[held], y[held]
    auroc_sel = stats.auroc(Zs, ys)
    auroc = stats.auroc(Zh, yh)
    smd = stats.standardized_mean_difference(Zh, yh)
    p = stats.mann_whitney_p(Zh, yh)
    q = stats.benjamini_hochberg(p)
    passes = q <= alpha
    order = np.argsort(-np.abs(auroc_sel - 0.5), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    chosen = np.union1d(order[:top_k], np.flatnonzero(passes))
    chosen = chosen[np.argsort(rank[chosen])]
    a, b = Zh[yh == 0][:, chosen], Zh[yh == 1][:, chosen]
    df = pd.DataFrame({
        "latent": chosen.astype(np.int64),
        "rank": rank[chosen],
        "top_k": rank[chosen] <= top_k,
        "auroc_selection": auroc_sel[chosen],
        "auroc": auroc[chosen],
        "smd": smd[chosen],
        "p_value": p[chosen],
        "q_value": q[chosen],
        "passes_bh": passes[chosen],
        "n_passing": int(passes.sum()),
        "d_sae": int(Z.shape[1]),
        "n_selection": len(sel),
        "n_heldout": len(held),
        "class_a": classes[0],
        "class_b": classes[1],
        "mean_a": a.mean(axis=0),
        "mean_b": b.mean(axis=0),
        "firing_rate_a": (a > 0).mean(axis=0),
        "firing_rate_b": (b > 0).mean(axis=0),
        "mean_activation": Zh[:, chosen].mean(axis=0),
        "max_activation": Zh[:, chosen].max(axis=0),
        "token_firing_rate": (token_firing_rate[chosen] if token_firing_rate is not None
                              else np.full(len(chosen), np.nan)),
    })
    return df, None
