"""Linear CKA (Kornblith et al. 2019) and a disk-backed store of Gram matrices for all layer pairs.

For centered X [n, p] and Y [n, q]: CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
= <Kc, Lc>_F / (||Kc||_F ||Lc||_F) with Kc = H X X^T H, H = I - 11^T/n (the 1/(n-1)^2 of HSIC
cancels). `GramStore` keeps one centered Gram per (language, view, layer) in a float32 memmap
under a scratch folder, so all layer pairs cost one pass over the Grams and no layer file is
read twice.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

READ_BYTES = 16 << 20   # float32 Gram bytes read per step (all layers together) when combining them
# Linear CKA needs at least 3 samples: centred, 2 samples span one direction and any two layers score 1 (1: NaN)
MIN_SAMPLES = 3


def _centered(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X - X.mean(axis=0, keepdims=True)


def centered_gram(X: np.ndarray) -> np.ndarray:
    """H X X^T H, computed as Xc Xc^T (float64 [n, n])."""
    Xc = _centered(X)
    return Xc @ Xc.T


def center_gram(K: np.ndarray) -> np.ndarray:
    """H K H for a symmetric Gram matrix."""
    K = np.asarray(K, dtype=np.float64)
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def cka_from_grams(Kc: np.ndarray, Lc: np.ndarray) -> float:
    """<Kc, Lc> / (||Kc|| ||Lc||) for centered Grams."""
    num = float(np.vdot(Kc, Lc))
    den = float(np.linalg.norm(Kc) * np.linalg.norm(Lc))
    return num / den if den > 0 else float("nan")


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n samples (rows aligned)."""
    if len(X) != len(Y):
        raise ValueError(f"CKA needs the same samples: {len(X)} vs {len(Y)} rows")
    Xc, Yc = _centered(X), _centered(Y)
    n, p, q = len(Xc), Xc.shape[1], Yc.shape[1]
    if n * n <= p * q:  # Gram form is cheaper
        return cka_from_grams(Xc @ Xc.T, Yc @ Yc.T)
    num = np.linalg.norm(Yc.T @ Xc) ** 2
    den = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(num / den) if den > 0 else float("nan")


class GramStore:
    """Centered Grams of one fixed sample subset, per (language, view, layer), on disk."""

    def __init__(self, n: int, scratch_dir: Path | None = None):
        self.n = n
        self._own = scratch_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="layerwise-cka-")) if scratch_dir is None else Path(scratch_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.entries: dict[tuple[str, str], dict[int, tuple[Path, np.ndarray]]] = {}

    def put(self, language: str, view: str, layer: int, X: np.ndarray, valid: np.ndarray) -> None:
        """X [n, H] rows of the subset (rows with valid False are ignored); centered over the valid rows."""
        idx = np.flatnonzero(valid)
        path = self.dir / f"gram_{language}_{view}_{layer}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.n, self.n))  # zeros
        if len(idx) == self.n:
            mm[:] = centered_gram(X)
        elif len(idx):
            mm[np.ix_(idx, idx)] = centered_gram(X[idx])
        mm.flush()
        del mm
        self.entries.setdefault((language, view), {})[layer] = (path, np.asarray(valid, dtype=bool).copy())

    def keys(self) -> list[tuple[str, str]]:
        return list(self.entries)

    def matrix(self, language: str, view: str) -> tuple[list[int], np.ndarray, int]:
        """(layers, CKA [L, L], samples used): over the samples valid in every layer."""
        entry = self.entries[(language, view)]
        layers = sorted(entry)
        common = np.logical_and.reduce([entry[layer][1] for layer in layers])
        idx = np.flatnonzero(common)
        grams = []
        for layer in layers:
            path, valid = entry[layer]
            mm = np.load(path, mmap_mode="r")
            if not np.array_equal(valid, common):   # recentre over the common samples (rare)
                sub = np.zeros((self.n, self.n), dtype=np.float32)
                sub[np.ix_(idx, idx)] = center_gram(mm[np.ix_(idx, idx)])
                np.save(path, sub)
                mm = np.load(path, mmap_mode="r")
            grams.append(mm)
        L = len(layers)
        P = np.zeros((L, L), dtype=np.float64)
        step = max(1, READ_BYTES // max(1, L * self.n * 4))
        for r0 in range(0, self.n, step):
            block = np.stack([np.asarray(g[r0:r0 + step], dtype=np.float64).ravel() for g in grams])
            P += block @ block.T
        d = np.sqrt(np.diag(P))
        with np.errstate(invalid="ignore", divide="ignore"):
            cka = P / np.outer(d, d)
        if len(idx) < MIN_SAMPLES:   # two centred samples span one direction: CKA is 1 whatever the data
            cka = np.full_like(cka, np.nan)
        return layers, cka, int(len(idx))

    def close(self) -> None:
        self.entries.clear()
        if self._own:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for p in self.dir.glob("gram_*.npy"):
                p.unlink(missing_ok=True)
