"""PUBLISH_SAE: place a run's SAE folders in <outdir>/sae/ and write metrics.parquet and report.html.

Each folder's files are hard-linked (copied across file systems) into a hidden partial folder that
replaces the published one in one rename, so a reader sees a whole old SAE or a whole new one.
Folders of earlier runs that this run did not train (other layers, pooled vs per-language) move to
<outdir>/superseded/<time>/sae/. metrics.parquet lists exactly this run's SAEs; the record sae/inputs.json,
written last, names the published layer files every SAE was trained on (each folder's `trained_on.json`,
checked against extraction_metadata.json) and the sha256 of every SAE file: the later stages record it, and
PUBLISH_RESULTS moves sae/ aside when a later run publishes other layer files.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import LAYER_DIR, METADATA_JSON, SAE_DIR
from layerwise.core.provenance import sha256_file, write_record
from layerwise.publish.outdir import SUPERSEDED_DIR, place
from layerwise.sae.metrics import write_metrics
from layerwise.sae.outputs import METRICS_TABLE, collect_metrics, partial_folder, publish

TRAINED_ON = "trained_on.json"     # in each SAE folder: {layer file name: sha256} it was trained on (TRAIN_SAE)
REPORT_HTML = "report.html"


def _place_tree(src: Path, dst: Path, mode: str) -> None:
    part = partial_folder(dst)
    for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        place(f, part / f.relative_to(src), mode)
    publish(part, dst)            # the same swap as a training run's folder (outputs.publish)


def publish_saes(sae_dirs: Sequence[str | os.PathLike], outdir: str | os.PathLike, mode: str = "link",
                 report: bool = True) -> dict[str, Any]:
    """Place every SAE folder under <outdir>/sae/, move stale ones aside, write metrics.parquet (+ report)."""
    dirs = [Path(d) for d in sae_dirs]
    names = [d.name for d in dirs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayerwiseError(f"two SAE folders named {', '.join(dupes)}: each layer (and language) is trained once")
    for d in dirs:
        if not (d / "cfg.json").is_file():
            raise LayerwiseError(f"{d}: not an SAE folder (no cfg.json)")
    inputs = trained_on(dirs, Path(outdir))
    root = Path(outdir) / SAE_DIR
    root.mkdir(parents=True, exist_ok=True)
    (root / METRICS_TABLE).unlink(missing_ok=True)       # absent until this run's set is complete
    for d in dirs:
        _place_tree(d, root / d.name, mode)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    moved = []
    for old in sorted(root.glob("layer_*")):
        if old.is_dir() and old.name not in names:
            dest = Path(outdir) / SUPERSEDED_DIR / stamp / SAE_DIR / old.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, dest)
            moved.append(f"{SAE_DIR}/{old.name}")
    if moved:
        print(f"layerwise: moved {len(moved)} SAE folder(s) of an earlier run to {Path(outdir) / SUPERSEDED_DIR / stamp}",
              file=sys.stderr)
    records = collect_metrics(root)
    if report:
        from layerwise.sae.report import write_report

        write_report(records, root / REPORT_HTML)
    write_metrics(records, root / METRICS_TABLE)
    outputs = {f.relative_to(outdir).as_posix(): sha256_file(f)
               for name in sorted(names) for f in sorted((root / name).rglob("*")) if f.is_file()}
    write_record(root, SAE_DIR, inputs, outputs)
    return {"saes": sorted(names), "records": len(records), "superseded": moved,
            "metrics": str(root / METRICS_TABLE)}


def trained_on(dirs: Sequence[Path], outdir: Path) -> dict[str, str]:
    """{outdir path: sha256} of the layer files the SAEs were trained on, each checked against the files
    PUBLISH_RESULTS has verified in this outdir (extraction_metadata.json)."""
    try:
        meta = json.loads((outdir / METADATA_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{outdir / METADATA_JSON}: cannot read the published layer files: {exc}") from None
    published = {r["path"]: r["sha256"] for r in meta.get("published", []) if isinstance(r, dict) and "path" in r}
    inputs: dict[str, str] = {}
    for d in dirs:
        try:
            used = json.loads((d / TRAINED_ON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise LayerwiseError(f"{d}: no {TRAINED_ON}: which layer files this SAE was trained on is unknown") from None
        for name, sha in sorted(used.items()):
            rel = f"{LAYER_DIR}/{name}"
            if published.get(rel) != sha:
                raise LayerwiseError(f"SAE {d.name} was trained on {name} {str(sha)[:12]}, but the outdir holds "
                                     f"{(published.get(rel) or 'no such file')[:12]}: it belongs to another run's data")
            inputs[rel] = sha
    return inputs
