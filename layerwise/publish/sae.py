"""PUBLISH_SAE: place a run's SAE folders in <outdir>/sae/ and write metrics.parquet and report.html.

Each folder's files are hard-linked (copied across file systems) into a hidden partial folder that
replaces the published one in one rename, so a reader sees a whole old SAE or a whole new one.
Folders of earlier runs that this run did not train (other layers, pooled vs per-language) move to
<outdir>/superseded/<time>/sae/. metrics.parquet, written last, lists exactly this run's SAEs: its
presence says the sae/ folder is complete.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.core.errors import LayerwiseError
from layerwise.publish.outdir import SUPERSEDED_DIR, place
from layerwise.sae.metrics import write_metrics
from layerwise.sae.outputs import METRICS_TABLE, collect_metrics, partial_folder, publish

SAE_DIR = "sae"
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
    return {"saes": sorted(names), "records": len(records), "superseded": moved,
            "metrics": str(root / METRICS_TABLE)}
