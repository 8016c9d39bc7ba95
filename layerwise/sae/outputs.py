"""Names and small files of an SAE output folder.

    <sae root>/layer_{L}/                (pooled languages)   or   layer_{L}_{language}/
        cfg.json, sae_weights.safetensors    the inference SAE: sae_lens.SAE.load_from_disk(folder)
        split.json                           the samples of each split (held-out ids for the analysis), and the ones
                                             left out for NaN/Inf values at extraction (excluded_nonfinite)
        metrics.json                         this SAE's metric records (the rows of metrics.parquet, plus steps,
                                             excluded_samples and notes)
        training.json                        options, input files, trainer figures (steps), samples left out, notes,
                                             versions
    <sae root>/metrics.parquet               every SAE's records (`write_metrics`)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from layerwise.core.atomic import atomic_write_json, replace_durably
from layerwise.sae.options import POOLED

SPLIT_FILE, METRICS_FILE, TRAINING_FILE = "split.json", "metrics.json", "training.json"
METRICS_TABLE = "metrics.parquet"


def sae_folder_name(layer: int, language: str) -> str:
    return f"layer_{layer}" if language == POOLED else f"layer_{layer}_{language}"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def partial_folder(final: Path) -> Path:
    """A fresh scratch folder beside `final`; `publish` renames it to `final` when complete."""
    part = final.with_name(f".{final.name}.partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    return part


def publish(part: Path, final: Path) -> None:
    """Swap the complete folder `part` in as `final` (a folder cannot be replaced in one rename: the old one
    is renamed aside first); its files were written through `core.atomic`, and the folder rename is synced."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    replace_durably(part, final)
    shutil.rmtree(old, ignore_errors=True)


def read_split(folder: str | os.PathLike) -> dict[str, Any]:
    """The split.json of an SAE folder: {"train": [ids], "validation": [ids], ...}."""
    return json.loads((Path(folder) / SPLIT_FILE).read_text(encoding="utf-8"))


def held_out_ids(folder: str | os.PathLike) -> list[str]:
    """The validation (held-out) sample ids of an SAE folder."""
    return list(read_split(folder)["validation"])


def collect_metrics(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of every SAE folder under `root` (their metrics.json), sorted by folder name."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(root).glob(f"layer_*/{METRICS_FILE}")):
        records += json.loads(path.read_text(encoding="utf-8"))
    return records


def read_options(folder: str | os.PathLike):
    """The SAEOptions an SAE folder was trained with (from training.json): to select the same rows again."""
    from layerwise.sae.options import SAEOptions

    training = json.loads((Path(folder) / TRAINING_FILE).read_text(encoding="utf-8"))
    return SAEOptions.from_mapping(training["options"])
