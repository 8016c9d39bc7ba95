"""Cross-lingual similarity of the pooled vectors of the same samples in two languages.

Matched: the cosine of sample i's vector in language A with its own vector in language B.
Mismatched baseline: the cosine with another sample's vector in B, pairing i with d(i) for a
seeded random derangement d (a permutation without fixed points). Both also after removing each
language's mean vector ("centered"), because residual streams share a large common component
that makes every raw cosine high.

A cosine is undefined (NaN) for a row that is zero and, after centering, for a row that is zero
up to floating-point leftovers: its centered norm is at most CENTERED_RTOL times its norm before
centering (a view whose vectors are the same in every sample leaves only rounding errors, whose
cosines are meaningless, e.g. exactly 1 for the same leftovers in both languages). The means
leave undefined rows out; when every row is undefined they are NaN.
"""
from __future__ import annotations

import numpy as np

from layerwise.analysis.cka import linear_cka

CENTERED_RTOL = 1e-6
UNDEFINED = {"": "the pooled vectors are zero in every sample",
             "centered_": (f"the vectors are the same in every sample (after subtracting the language's mean "
                           f"vector, at most {CENTERED_RTOL:g} of their norm is left)")}


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def row_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosine of A[i] with B[i] for every row (float64 [n]); NaN where a row is zero."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    den = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.einsum("ij,ij->i", A, B) / den, np.nan)


def centered(A: np.ndarray) -> np.ndarray:
    """float64 A minus its mean row; rows left with at most CENTERED_RTOL of their norm are NaN."""
    A = np.asarray(A, dtype=np.float64)
    C = A - A.mean(axis=0)
    gone = np.linalg.norm(C, axis=1) <= CENTERED_RTOL * np.linalg.norm(A, axis=1)
    C[gone] = np.nan
    return C


def _nan_stats(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) over the defined values; NaN when there are none."""
    x = x[np.isfinite(x)]
    return (float(x.mean()), float(x.std())) if len(x) else (float("nan"), float("nan"))


def similarity(A: np.ndarray, B: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Matched vs mismatched cosines (raw and centered) and linear CKA of aligned rows A[i] ~ B[i]."""
    n = len(A)
    d = derangement(n, rng)
    out: dict[str, float] = {"n_samples": n}
    for prefix, (a, b) in (("", (A, B)), ("centered_", (centered(A), centered(B)))):
        matched = row_cosines(a, b)
        mismatched = row_cosines(a, b[d])
        out[f"{prefix}matched_cosine"], out[f"{prefix}matched_cosine_std"] = _nan_stats(matched)
        out[f"{prefix}mismatched_cosine"], out[f"{prefix}mismatched_cosine_std"] = _nan_stats(mismatched)
        out[f"{prefix}cosine_gap"] = out[f"{prefix}matched_cosine"] - out[f"{prefix}mismatched_cosine"]
    out["cka"] = linear_cka(A, B)
    return out
