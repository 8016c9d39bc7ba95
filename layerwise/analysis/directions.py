"""Difference-of-means gender directions and the effect size of the projections onto them.

For two classes a, b (default a = male, b = female) the direction is mean(X | b) - mean(X | a) in
the raw pooled space. The effect size is Cohen's d of the projections p = X @ u (u the unit
direction): (mean(p | b) - mean(p | a)) / pooled std, the pooled std being
sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2)).
"""
from __future__ import annotations

import numpy as np


def mean_difference(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 [H]: mean of class 1 minus mean of class 0."""
    X = np.asarray(X, dtype=np.float64)
    return X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0)


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else np.full_like(v, np.nan)


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean(b) - mean(a)) / pooled std (ddof 1 variances); NaN when the pooled std is 0."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return float("nan")
    pooled = np.sqrt(((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / (na + nb - 2))
    return float((np.mean(b) - np.mean(a)) / pooled) if pooled > 0 else float("nan")


def projection_effect_size(X: np.ndarray, y: np.ndarray, direction: np.ndarray) -> float:
    """Cohen's d of the projections of X onto the unit direction (class 1 minus class 0)."""
    p = np.asarray(X, dtype=np.float64) @ unit(np.asarray(direction, dtype=np.float64))
    return cohens_d(p[y == 0], p[y == 1])


def heldout_effect_size(X: np.ndarray, y: np.ndarray, splits) -> tuple[float, float]:
    """Direction from the training folds, effect size on the test fold: (mean, std) over folds.

    In-sample d is inflated when H is large against N (the difference of means also fits the
    noise); the held-out d is not.
    """
    ds = [projection_effect_size(X[te], y[te], mean_difference(X[tr], y[tr])) for tr, te in splits]
    ds = np.array([d for d in ds if np.isfinite(d)])
    return (float(ds.mean()), float(ds.std())) if len(ds) else (float("nan"), float("nan"))


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    return float(np.dot(u, v) / (nu * nv)) if nu > 0 and nv > 0 else float("nan")
