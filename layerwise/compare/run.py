"""`compare`: read several published outdirs, write comparison.parquet and report.html (atomically)."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.compare.inputs import Result, read_result
from layerwise.compare.report import write_report
from layerwise.compare.table import COMPARISON, REPORT, build_table
from layerwise.core.atomic import atomic_path
from layerwise.core.errors import LayerwiseError


def default_labels(outdirs: Sequence[Path], labels: Sequence[str | None]) -> list[str]:
    """Each outdir's label: the one given, else its folder's name (the path as given where names collide)."""
    names = [lab or p.name or p.resolve().name for p, lab in zip(outdirs, labels)]   # ".": the folder's name
    counts = Counter(names)
    names = [lab if labels[i] or counts[lab] == 1 else str(outdirs[i]) for i, lab in enumerate(names)]
    seen: dict[str, Path] = {}
    for p, lab in zip(outdirs, names):
        if not lab.strip():
            raise LayerwiseError(f"the label of {p} is empty")
        if lab in seen:
            raise LayerwiseError(f"the label {lab!r} names two outdirs ({seen[lab]} and {p}): give each its own --label")
        seen[lab] = p
    return names


def check_outdirs(outdirs: Sequence[Path], out: Path) -> None:
    if not outdirs:
        raise LayerwiseError("no outdir to compare: give the --outdir folders of one or more layerwise runs")
    seen: dict[str, Path] = {}
    for p in outdirs:
        key = os.path.realpath(p)
        if key in seen:
            raise LayerwiseError(f"{p} is given twice (as {seen[key]} and {p})")
        seen[key] = p
    if os.path.realpath(out) in seen:
        raise LayerwiseError(f"--out {out} is one of the outdirs compared: write the comparison to a folder of its own")


def compare(outdirs: Sequence[str | os.PathLike], out: str | os.PathLike,
            labels: Sequence[str | None] | None = None, report: bool = True) -> dict[str, Any]:
    """Compare the outdirs (labels: one per outdir, None for the default) into `out`; returns the table,
    the results read (with their notes) and the files written."""
    outdirs, out = [Path(p) for p in outdirs], Path(out)
    labels = list(labels) if labels is not None else [None] * len(outdirs)
    if len(labels) != len(outdirs):
        raise LayerwiseError(f"{len(labels)} label(s) for {len(outdirs)} outdir(s)")
    check_outdirs(outdirs, out)
    results: list[Result] = [read_result(p, lab) for p, lab in zip(outdirs, default_labels(outdirs, labels))]
    table = build_table(results)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / COMPARISON]
    with atomic_path(out / COMPARISON) as tmp:
        table.to_parquet(tmp, index=False)
    if report:
        written.append(write_report(results, table, out / REPORT))
    return {"table": table, "results": results, "notes": [(r.label, n) for r in results for n in r.notes],
            "written": written}
