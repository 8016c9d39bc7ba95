"""Labels of the probed classes and the fold splits every analysis shares."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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


def groups_from_samplesheet(path) -> dict[str, str]:
    """sample_id -> image group from a samplesheet (its `image_sha256` column, else `image`).

    With groups, no image is in both the training and the test folds: samples that share an image
    would otherwise let a probe of the image view recognise the image instead of decoding gender.
    """
    import csv
    from pathlib import Path

    from ..errors import LayerwiseError

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            key = "image_sha256" if "image_sha256" in cols else "image"
            if "sample_id" not in cols or key not in cols:
                raise LayerwiseError(f"samplesheet {path} needs the columns sample_id and image (or image_sha256) "
                                     f"to group samples by image; it has {cols}")
            return {row["sample_id"]: row[key] for row in reader}
    except OSError as exc:
        raise LayerwiseError(f"cannot read samplesheet {path}: {exc.strerror or exc}") from None
