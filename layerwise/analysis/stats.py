"""Column-wise two-class statistics for many features at once, and Benjamini-Hochberg."""
from __future__ import annotations

import numpy as np
from scipy import stats as _st


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column: P(score of a class-1 sample > score of a class-0 sample) + 0.5 P(tie)."""
    scores = np.asarray(scores, dtype=np.float64)
    n1 = int((y == 1).sum())
    n0 = len(y) - n1
    ranks = _st.rankdata(scores, axis=0)                      # average ranks for ties
    u = ranks[y == 1].sum(axis=0) - n1 * (n1 + 1) / 2.0
    return u / (n0 * n1)


def mann_whitney_p(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-value per column (asymptotic, tie-corrected); 1 for constant columns."""
    scores = np.asarray(scores, dtype=np.float64)
    a, b = scores[y == 0], scores[y == 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = _st.mannwhitneyu(b, a, axis=0, alternative="two-sided", method="asymptotic").pvalue
    p = np.asarray(p, dtype=np.float64)
    return np.where(np.isfinite(p), p, 1.0)


def standardized_mean_difference(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column: (mean_1 - mean_0) / pooled std (ddof 1); NaN where the pooled std is 0."""
    scores = np.asarray(scores, dtype=np.float64)
    a, b = scores[y == 0], scores[y == 1]
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(axis=0, ddof=1) + (nb - 1) * b.var(axis=0, ddof=1)) / (na + nb - 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (b.mean(axis=0) - a.mean(axis=0)) / pooled
    return np.where(pooled > 0, d, np.nan)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values, scipy's `false_discovery_control`): reject at FDR alpha where q <= alpha."""
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return p.copy()
    return _st.false_discovery_control(p, method="bh")
