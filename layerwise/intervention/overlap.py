"""Overlap of the selected latent sets of two feature languages, made meaningful.

- **Shared dictionary** (one pooled SAE for both languages): the latent indices are the same dictionary, so
  the Jaccard overlap of the two top-k sets is compared directly.
- **Matched by decoder cosine** (one SAE per language): indices of independently trained dictionaries do not
  correspond. The live latents of the two SAEs are first matched one to one by the cosine of their decoder rows
  (`scipy.optimize.linear_sum_assignment` on -cosine); language a's set is mapped through the matching and
  compared with language b's. A selected latent without a partner (the other SAE has fewer live latents) counts
  as not shared.

Null: `n_null` seeded draws of a random set per language, each matched by firing-rate bin to that language's
selected set (`controls.MatchedSampler` over all its live latents, targeted ones included), compared the same
way (mapped through the matching where there is one). p = (1 + #{null >= observed}) / (1 + n_null).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from layerwise.core.errors import LayerwiseError
from layerwise.intervention.controls import MatchedSampler, firing_rate_bins, run_rng

SHARED, MATCHED = "shared dictionary", "matched by decoder cosine"
N_NULL = 1000
OVERLAP_COLUMNS = ("layer", "languages", "language_a", "language_b", "method", "sae_a", "sae_b", "k_a", "k_b",
                   "intersection", "jaccard", "null_mean", "null_std", "p_value", "n_null", "matched_pairs",
                   "matched_cosine")


def jaccard(a, b) -> float:
    a, b = set(int(x) for x in a), set(int(x) for x in b)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _as_matrix(w: Any) -> np.ndarray:
    if hasattr(w, "W_dec"):
        w = w.W_dec
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", torch.float64).numpy()
    return np.asarray(w, dtype=np.float64)


def decoder_matching(w_dec_a: Any, w_dec_b: Any, latents_a: np.ndarray | None = None,
                     latents_b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of the decoder rows (W_dec [d_sae, d_in], or SAEs) of latents_a and latents_b (default:
    all) maximising the summed cosine: (latents of a, their partners in b, cosine), sorted by latent of a."""
    from scipy.optimize import linear_sum_assignment

    wa, wb = _as_matrix(w_dec_a), _as_matrix(w_dec_b)
    if wa.ndim != 2 or wb.ndim != 2 or wa.shape[1] != wb.shape[1]:
        raise LayerwiseError(f"decoder matrices of shapes {list(wa.shape)} and {list(wb.shape)} cannot be matched "
                             "(W_dec is [d_sae, d_in], the same d_in for both)")
    la = np.arange(len(wa)) if latents_a is None else np.asarray(latents_a, dtype=np.int64)
    lb = np.arange(len(wb)) if latents_b is None else np.asarray(latents_b, dtype=np.int64)
    if len(la) == 0 or len(lb) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    ua = wa[la] / np.maximum(np.linalg.norm(wa[la], axis=1, keepdims=True), 1e-12)
    ub = wb[lb] / np.maximum(np.linalg.norm(wb[lb], axis=1, keepdims=True), 1e-12)
    cos = ua @ ub.T
    rows, cols = linear_sum_assignment(-cos)
    order = np.argsort(la[rows], kind="stable")
    rows, cols = rows[order], cols[order]
    return la[rows], lb[cols], cos[rows, cols]


def _side(latents_df: pd.DataFrame, layer: int, language: str, bins: int) -> dict[str, Any]:
    rows = latents_df[(latents_df["layer"] == layer) & (latents_df["feature_language"] == language)]
    if rows.empty:
        raise LayerwiseError(f"no latents of layer {layer} and feature language {language!r} in the table")
    if rows["sae"].nunique() != 1:
        raise LayerwiseError(f"layer {layer}, feature language {language!r}: latents of several SAEs")
    rows = rows.sort_values("latent")
    latent = rows["latent"].to_numpy(dtype=np.int64)
    live = ~rows["dead"].to_numpy(dtype=bool)
    sel = rows["selected"].to_numpy(dtype=bool)
    _, live_bins = firing_rate_bins(rows["firing_rate"].to_numpy(dtype=np.float64)[live], bins)
    bin_of = np.full(len(latent), -1, dtype=np.int64)
    bin_of[live] = live_bins
    where = f"overlap null of layer {layer}, feature language {language}"
    return {"sae": str(rows["sae"].iloc[0]), "latent": latent, "live": latent[live], "selected": latent[sel],
            "d_sae": int(latent.max()) + 1 if len(latent) else 0,
            "sampler": MatchedSampler(latent[live], bin_of[live], bin_of[sel], where=where)}


def _overlap(a: np.ndarray, b: np.ndarray, mapping: np.ndarray | None) -> tuple[int, float]:
    sa = a if mapping is None else mapping[a]
    inter = len(np.intersect1d(sa[sa >= 0], b))
    union = len(a) + len(b) - inter
    return inter, (inter / union if union else 0.0)


def pair_overlap(latents_df: pd.DataFrame, layer: int, language_a: str, language_b: str, *,
                 decoders: tuple[Any, Any] | None = None, n_null: int = N_NULL, bins: int = 10,
                 seed: int = 42) -> dict[str, Any]:
    """One row of `OVERLAP_COLUMNS`. `decoders`: (W_dec of a's SAE, W_dec of b's SAE) when the two languages'
    latents come from different SAEs (then matched by decoder cosine); None when they share one SAE."""
    a, b = _side(latents_df, layer, language_a, bins), _side(latents_df, layer, language_b, bins)
    mapping, pairs, cos_sel = None, 0, float("nan")
    if a["sae"] == b["sae"]:
        method = SHARED
    else:
        if decoders is None:
            raise LayerwiseError(f"layer {layer}: {language_a} latents come from SAE {a['sae']} and {language_b} "
                                 f"latents from SAE {b['sae']}: their indices do not correspond; give both SAEs' "
                                 "decoders to match the latents by decoder cosine first")
        method = MATCHED
        ia, ib, cos = decoder_matching(decoders[0], decoders[1], a["live"], b["live"])
        mapping = np.full(max(a["d_sae"], int(ia.max()) + 1 if len(ia) else 0), -1, dtype=np.int64)
        mapping[ia] = ib
        pairs = len(ia)
        cos_of = dict(zip(ia.tolist(), cos.tolist()))
        matched_sel = [cos_of[x] for x in a["selected"].tolist() if x in cos_of]
        cos_sel = float(np.mean(matched_sel)) if matched_sel else float("nan")
    inter, observed = _overlap(a["selected"], b["selected"], mapping)
    null = np.empty(n_null)
    tag = f"{language_a}|{language_b}"
    for i in range(n_null):
        rng = run_rng(seed, layer, tag, i, purpose="overlap-null")
        ra = np.array(sorted(x[0] for x in a["sampler"].draw(rng)), dtype=np.int64)
        rb = np.array(sorted(x[0] for x in b["sampler"].draw(rng)), dtype=np.int64)
        null[i] = _overlap(ra, rb, mapping)[1]
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + n_null)
    return {"layer": int(layer), "languages": f"{language_a},{language_b}", "language_a": language_a,
            "language_b": language_b, "method": method, "sae_a": a["sae"], "sae_b": b["sae"],
            "k_a": len(a["selected"]), "k_b": len(b["selected"]), "intersection": inter, "jaccard": observed,
            "null_mean": float(null.mean()) if n_null else float("nan"),
            "null_std": float(null.std(ddof=1)) if n_null > 1 else float("nan"), "p_value": p, "n_null": n_null,
            "matched_pairs": pairs, "matched_cosine": cos_sel}


def _decoder(sae_dirs: Any, name: str) -> Any:
    """W_dec of the SAE named `name` (a folder name): from {name: folder | SAE | W_dec}, from a mapping whose
    values are folders (any keys; the folder named `name`), or from the SAE root holding the folder."""
    spec = None
    if isinstance(sae_dirs, Mapping):
        if name in sae_dirs:
            spec = sae_dirs[name]
        else:
            found = [v for v in sae_dirs.values() if isinstance(v, (str, os.PathLike)) and Path(v).name == name]
            if not found:
                raise LayerwiseError(f"no SAE folder named {name} among the SAE folders given")
            spec = found[0]
    else:
        spec = Path(sae_dirs) / name
    if isinstance(spec, (str, os.PathLike)):
        from layerwise.intervention.select import _load_sae

        return _load_sae(Path(spec), "cpu").W_dec
    return spec


def language_overlap(latents_df: pd.DataFrame, sae_dirs: Any = None, options: Any = None, *, n_null: int = N_NULL,
                     bins: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """Every layer and pair of feature languages of a latents table (`select.COLUMNS`): one row each
    (`OVERLAP_COLUMNS`). `sae_dirs` (needed for per-language SAEs only): the SAE root holding the folders named
    in the table's `sae` column, {sae name: folder | SAE | W_dec}, or any mapping whose values are the folders.
    `options` (InterventionOptions): `firing_bins` and `seed` of the null, unless `bins` / `seed` are given
    (defaults 10 and 42)."""
    if bins is None:
        bins = int(getattr(options, "firing_bins", 10))
    if seed is None:
        seed = int(getattr(options, "seed", 42))
    recs = []
    for layer in sorted(latents_df["layer"].unique()):
        rows = latents_df[latents_df["layer"] == layer]
        langs = sorted(rows["feature_language"].unique())
        for la, lb in combinations(langs, 2):
            sa = rows.loc[rows["feature_language"] == la, "sae"].iloc[0]
            sb = rows.loc[rows["feature_language"] == lb, "sae"].iloc[0]
            decoders = None
            if sa != sb:
                if sae_dirs is None:
                    raise LayerwiseError(f"layer {layer}: per-language SAEs ({sa}, {sb}) need `sae_dirs` to match "
                                         "their latents by decoder cosine")
                decoders = (_decoder(sae_dirs, sa), _decoder(sae_dirs, sb))
            recs.append(pair_overlap(latents_df, int(layer), la, lb, decoders=decoders, n_null=n_null, bins=bins,
                                     seed=seed))
    return pd.DataFrame.from_records(recs, columns=list(OVERLAP_COLUMNS))
