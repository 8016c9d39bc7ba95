"""Labels of the probed classes and the fold splits every analysis shares."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

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


GROUPED_FOLDS = ("folds are grouped by image (--samplesheet: its image_sha256, else image) so that no image is "
                 "in both the training and the test folds")


def usable(y: np.ndarray, n_classes: int, folds: int, groups: np.ndarray | None = None) -> str | None:
    """None when a stratified (and, with groups, grouped) k-fold split is possible, else why not.

    With groups, every class needs samples from at least `folds` distinct groups: the folds are
    made of whole groups, so fewer groups than folds leave a fold empty (or a class out of a
    training fold). Grouping is never dropped to make a split possible; the message says what to
    change instead.
    """
    counts = np.bincount(y, minlength=n_classes) if len(y) else np.zeros(n_classes, dtype=int)
    if (counts == 0).any():
        return f"a probed class has no sample (counts {counts.tolist()})"
    if counts.min() < folds:
        return f"the smallest class has {int(counts.min())} sample(s), fewer than the {folds} folds"
    if groups is None:
        return None
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    per_class = [len(np.unique(groups[y == k])) for k in range(n_classes)]
    if n_groups < folds:
        what = f"only {n_groups} distinct image(s) among the {len(y)} samples, fewer than the {folds} folds"
    elif min(per_class) < folds:
        what = (f"the smallest class has only {min(per_class)} distinct image(s) among its "
                f"{int(counts[int(np.argmin(per_class))])} samples, fewer than the {folds} folds")
    else:
        return None
    fit = min(n_groups, min(per_class))
    fix = (f"use at most {fit} folds (--folds; --analysis_folds in the pipeline)" if fit >= 2
           else "fewer folds cannot help (at least 2 are needed)")
    return f"{what}: {GROUPED_FOLDS}; {fix}, or add samples with more distinct images"


def permuted_labels(y: np.ndarray, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """A seeded random permutation of the labels, by group when every group has a single label.

    Without groups (or when a group holds several labels), the labels of the samples are
    permuted. With groups whose samples share their label (e.g. the samples of one image), the
    group labels are permuted instead: the samples of a group are not independent (the image
    view is the same in all of them), so the exchangeable units under the null are the groups,
    and permuting single samples would give a control that is too narrow.
    """
    if groups is None:
        return rng.permutation(y)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inv.max()) + 1 if len(inv) else 0
    label = np.full(n_groups, -1, dtype=np.int64)
    label[inv] = y
    if not (label[inv] == y).all():      # a group with two labels: permute samples
        return rng.permutation(y)
    return rng.permutation(label)[inv].astype(y.dtype, copy=False)


def fold_splits(y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (grouped when groups are given: no group in both train and test), shuffled, seeded."""
    if groups is not None:
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(len(y)), y, groups))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y))


def _read_samplesheet(path) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a samplesheet CSV; an unreadable file is a LayerwiseError."""
    import csv
    from pathlib import Path

    from layerwise.core.errors import LayerwiseError

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except OSError as exc:
        raise LayerwiseError(f"cannot read samplesheet {path}: {exc.strerror or exc}") from None


def groups_from_samplesheet(path) -> dict[str, str]:
    """sample_id -> image group from a samplesheet (its `image_sha256` column, else `image`).

    With groups, no image is in both the training and the test folds: samples that share an image
    would otherwise let a probe of the image view recognise the image instead of decoding gender.
    """
    from layerwise.core.errors import LayerwiseError

    cols, rows = _read_samplesheet(path)
    key = "image_sha256" if "image_sha256" in cols else "image"
    if "sample_id" not in cols or key not in cols:
        raise LayerwiseError(f"samplesheet {path} needs the columns sample_id and image (or image_sha256) "
                             f"to group samples by image; it has {cols}")
    return {row["sample_id"]: row[key] for row in rows}


LEAKS_COLUMN = "label_leaks"


def label_leaks_from_samplesheet(path) -> dict[str, tuple[str, ...]] | None:
    """sample_id -> the caption columns (`caption_<language>`) of its `label_leaks` cell; None without the column.

    `layerwise label` writes `label_leaks`: the caption columns the model reads that hold the gendered
    word the label came from, joined by "+" ("caption_english+caption_arabic"; empty when none does).
    None (no column) means unknown, which is not the same as an empty cell (known not to leak).
    """
    import re

    from layerwise.core.errors import LayerwiseError

    cols, rows = _read_samplesheet(path)
    if LEAKS_COLUMN not in cols:
        return None
    if "sample_id" not in cols:
        raise LayerwiseError(f"samplesheet {path} has a {LEAKS_COLUMN} column but no sample_id column")
    return {row["sample_id"]: tuple(c for c in re.split(r"[+,;\s]+", row[LEAKS_COLUMN] or "") if c)
            for row in rows}


def leaking_samples(label_leaks: Mapping[str, Sequence[str]], sample_ids: Sequence[str], genders: Sequence[str],
                    classes: Sequence[str], language: str) -> int:
    """How many probed samples (gender in `classes`) have `language`'s caption column in their label_leaks.

    Only probed samples count: an `unknown` sample (e.g. an ambiguous row kept by --keep-unlabelled)
    may hold gendered words, but it gives no label for a probe to read.
    """
    from layerwise.core import schema

    column = schema.caption_column(language)
    probed = set(classes)
    return sum(1 for sid, g in zip(sample_ids, genders) if g in probed and column in label_leaks.get(sid, ()))
