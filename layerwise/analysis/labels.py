"""Labels of the probed classes and the fold splits every analysis shares."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

DEFAULT_CLASSES = ("male", "female")


def encode_labels(genders: Sequence[str], classes: Sequence[str], valid: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the samples whose label is a probed class [and valid], their class index in `classes`)."""
    lookup = {c: k for k, c in enumerate(classes)}
    keep = np.array([g in lookup for g in genders], dtype=bool)
    if valid is not None:
        keep &= valid
    idx = np.flatnonzero(keep)
    y = np.array([lookup[genders[i]] for i in idx], dtype=np.int64)
    return idx, y


def class_counts(y: np.ndarray, classes: Sequence[str]) -> str:
    """'female:40,male:40': the probed classes (sorted by name) and their sample counts."""
    counts = Counter(int(v) for v in y)
    return ",".join(f"{c}:{counts.get(k, 0)}" for k, c in sorted(enumerate(classes), key=lambda kc: kc[1]))


def usable(y: np.ndarray, n_classes: int, folds: int) -> str | None:
    """None when a stratified k-fold split is possible, else why not."""
    counts = np.bincount(y, minlength=n_classes) if len(y) else np.zeros(n_classes, dtype=int)
    if (counts == 0).any():
        return f"a probed class has no sample (counts {counts.tolist()})"
    if counts.min() < folds:
        return f"the smallest class has {int(counts.min())} sample(s), fewer than the {folds} folds"
    return None


def fold_splits(y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (grouped when groups are given: no group in both train and test), shuffled, seeded."""
    if groups is not None:
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(len(y)), y, groups))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y))
