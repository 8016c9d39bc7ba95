"""Train/validation split BY SAMPLE: a deterministic function of (sample_id, split_seed, fraction).

A sample's rows are never on both sides, and the split does not depend on the layer, the
language, the sample order or which other samples exist: every layer and language of a run
holds out the same samples, which the analysis stage reuses.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
_SALT = b"layerwise-sae-split-v1"


def split_key(sample_id: str, split_seed: int) -> float:
    """A uniform number in [0, 1) fixed by (sample_id, split_seed)."""
    digest = hashlib.sha256(_SALT + b"\0" + str(split_seed).encode() + b"\0" + sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def is_validation(sample_id: str, validation_fraction: float, split_seed: int) -> bool:
    return split_key(sample_id, split_seed) < validation_fraction


def split_mask(sample_ids: Sequence[str], split: str, validation_fraction: float, split_seed: int) -> torch.Tensor:
    """bool [N]: True for the samples of `split` ("train" or "validation")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    val = torch.tensor([is_validation(s, validation_fraction, split_seed) for s in sample_ids], dtype=torch.bool)
    return val if split == VALIDATION else ~val


def split_ids(sample_ids: Iterable[str], validation_fraction: float, split_seed: int) -> dict[str, list[str]]:
    """{"train": [...], "validation": [...]}, each in the given order, duplicates removed."""
    out: dict[str, list[str]] = {TRAIN: [], VALIDATION: []}
    seen: set[str] = set()
    for s in sample_ids:
        if s not in seen:
            seen.add(s)
            out[VALIDATION if is_validation(s, validation_fraction, split_seed) else TRAIN].append(s)
    return out
