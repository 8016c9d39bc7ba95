"""What a stage's outputs were computed from: the record `<stage>/inputs.json` in every stage folder of an
outdir (sae/, analysis/, intervention/).

The record maps each outdir file the stage read (relative path) to its sha256: the published layer files,
the verified samplesheet and, for a stage that read SAEs, the SAE stage's own record. PUBLISH_RESULTS checks
every stage folder against the files it has just published (`foreign_stage_folders`) and moves aside any
folder whose record does not match or that has none, so that whatever stages a later run enables, what the
outdir holds belongs to its layer files.

The record holds no time and no run name: re-running a stage on the same inputs writes the same bytes (the
stages after it are cached by path and size).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layerwise.core.atomic import atomic_write_json
from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import LAYER_DIR, PIPELINE_INFO, STAGE_DIRS, STAGE_RECORD

SAMPLESHEET_PATH = f"{PIPELINE_INFO}/samplesheet.valid.csv"
# The key the workflow's checksum maps use for the verified samplesheet (beside layer-file paths)
SAMPLESHEET_KEY = "samplesheet"
_BLOCK = 8 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()


def inputs_from_checksums(checksums: Mapping[str, str]) -> dict[str, str]:
    """The workflow's checksum map ({layer-file path in the outdir: sha256, "samplesheet": sha256}) as record
    inputs (outdir paths only)."""
    out = {}
    for key, sha in checksums.items():
        if not sha:
            continue
        out[SAMPLESHEET_PATH if key == SAMPLESHEET_KEY else str(key)] = str(sha)
    return dict(sorted(out.items()))


def write_record(folder: str | Path, stage: str, inputs: Mapping[str, str],
                 outputs: Mapping[str, str] | None = None) -> Path:
    """Write `<folder>/inputs.json` (atomically; sorted, no time: the same inputs give the same bytes)."""
    if stage not in STAGE_DIRS:
        raise LayerwiseError(f"unknown stage folder {stage!r}; one of {', '.join(STAGE_DIRS)}")
    if not any(k.startswith(f"{LAYER_DIR}/") for k in inputs):
        raise LayerwiseError(f"the {stage} record names no layer file: cannot tell which run it belongs to")
    record: dict[str, Any] = {"stage": stage, "inputs": dict(sorted(inputs.items()))}
    if outputs is not None:
        record["outputs"] = dict(sorted(outputs.items()))
    path = Path(folder) / STAGE_RECORD
    atomic_write_json(path, record)
    return path


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The folder's record, or None when it has none (an interrupted stage, or one of an older layerwise)."""
    try:
        record = json.loads((Path(folder) / STAGE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        return None
    return record


def foreign_stage_folders(outdir: str | Path, published: Mapping[str, str],
                          skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """[(stage folder, why)] of the stage folders in `outdir` that do not belong to `published` ({outdir path:
    sha256} of the files this run published). A folder belongs when it has a record whose layer files are
    exactly the published ones and every other input (samplesheet, an earlier stage's record) is unchanged.
    Folders in `skip` (stages this run writes again) are not checked."""
    outdir = Path(outdir)
    current = dict(published)
    layers_now = {k: v for k, v in current.items() if k.startswith(f"{LAYER_DIR}/")}
    foreign = []
    for stage in STAGE_DIRS:
        folder = outdir / stage
        if stage in skip or not folder.is_dir():
            continue
        record = read_record(folder)
        why = None
        if record is None:
            why = f"it has no {STAGE_RECORD} (a run stopped before finishing it, or an older layerwise wrote it)"
        else:
            inputs = record["inputs"]
            layers_then = {k: v for k, v in inputs.items() if k.startswith(f"{LAYER_DIR}/")}
            if layers_then != layers_now:
                changed = sorted(set(layers_then) ^ set(layers_now)) or sorted(
                    k for k in layers_then if layers_then[k] != layers_now.get(k))
                why = f"it was computed from other layer files ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})"
            else:
                for rel, sha in inputs.items():
                    if rel in layers_then:
                        continue
                    have = current.get(rel)
                    # another stage's record counts only once that stage is known to belong
                    if have is None and rel.split("/", 1)[0] not in STAGE_DIRS and (outdir / rel).is_file():
                        have = sha256_file(outdir / rel)
                    if have != sha:
                        why = f"its input {rel} {'changed' if have else 'is gone'}"
                        break
        if why:
            foreign.append((stage, why))
        else:
            current[f"{stage}/{STAGE_RECORD}"] = sha256_file(folder / STAGE_RECORD)
    return foreign
