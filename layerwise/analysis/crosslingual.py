"""Cross-lingual similarity of the pooled vectors of the same samples in two languages.

Matched: the cosine of sample i's vector in language A with its own vector in language B.
Mismatched baseline: the cosine with another sample's vector in B, pairing i with d(i) for a
seeded random derangement d (a permutation without fixed points). Both also after removing each
language's mean vector ("centered"), because residual streams share a large common component
that makes every raw cosine high.
"""
from __future__ import annotations

import numpy as np

from .cka import linear_cka


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def row_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosine of A[i] with B[i] for every row (float64 [n])."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    den = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->i", A, B) / den


def similarity(A: np.ndarray, B: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Matched vs mismatched cosines (raw and centered) and linear CKA of aligned rows A[i] ~ B[i]."""
    n = len(A)
    d = derangement(n, rng)
    out: dict[str, float] = {"n_samples": n}
    for prefix, (a, b) in (("", (A, B)), ("centered_", (A - A.mean(0), B - B.mean(0)))):
        matched = row_cosines(a, b)
        mismatched = row_cosines(a, b[d])
        out[f"{prefix}matched_cosine"] = float(np.nanmean(matched))
        out[f"{prefix}matched_cosine_std"] = float(np.nanstd(matched))
        out[f"{prefix}mismatched_cosine"] = float(np.nanmean(mismatched))
        out[f"{prefix}mismatched_cosine_std"] = float(np.nanstd(mismatched))
        out[f"{prefix}cosine_gap"] = out[f"{prefix}matched_cosine"] - out[f"{prefix}mismatched_cosine"]
    out["cka"] = linear_cka(A, B)
    return out
