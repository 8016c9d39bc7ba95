"""The extraction units' ``summary.json`` files: read, split into extraction and image encoding, totalled.

What is totalled, and how, is declared on the records in `contract` (`UnitSummary`,
`ImageFeaturesSummary`): summed keys are added up, peak keys maxed, rates (`contract.RATES`)
recomputed from the totals. Any other key (settings, lists, ids) has no total.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.core.contract import RATES, ImageFeaturesSummary, UnitSummary, peak_keys, summed_keys
from layerwise.publish.validation.problems import Problems

EXTRACTION_SUMMED = summed_keys(UnitSummary)
EXTRACTION_PEAKS = peak_keys(UnitSummary)
IMAGE_FEATURES_SUMMED = summed_keys(ImageFeaturesSummary)
IMAGE_FEATURES_KEY = "image_features"   # a unit summary's ImageFeaturesSummary, when it used the shared cache


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_summaries(units: Sequence[dict[str, Any]], summed: Sequence[str],
                    peaks: Sequence[str] = ()) -> dict[str, Any]:
    """{"units": n, **totals}: the `summed` keys added up and the `peaks` maxed over the units that
    report them as numbers, then each rate of `contract.RATES` whose parts are there recomputed."""
    totals: dict[str, float] = {}
    for key in summed:
        values = [u[key] for u in units if _number(u.get(key))]
        if values:
            totals[key] = sum(values)
    for key in peaks:
        values = [u[key] for u in units if _number(u.get(key))]
        if values:
            totals[key] = max(values)
    for rate, (numerator, seconds) in RATES.items():
        if totals.get(seconds) and totals.get(numerator) is not None:
            totals[rate] = totals[numerator] / totals[seconds]
    return {"units": len(units), **totals}


def extraction_totals(units: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return merge_summaries(units, EXTRACTION_SUMMED, EXTRACTION_PEAKS)


def image_features_totals(encodings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return merge_summaries(encodings, IMAGE_FEATURES_SUMMED)


def read_summaries(paths: Sequence[Path], problems: Problems,
                   unit_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each readable summary as a dict, with "summary_file" (its name) and "unit" (the id of the plan
    unit whose output folder holds it, or None); unreadable ones are problems of "summaries"."""
    known = set(unit_ids)
    units = []
    for path in paths:
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except Exception as exc:
            problems.add("summaries", f"{path.name}: cannot read extraction summary: {exc}")
            continue
        if not isinstance(obj, dict):
            problems.add("summaries", f"{path.name}: extraction summary is not a JSON object")
            continue
        unit = path.parent.name if path.parent.name in known else None
        units.append({"summary_file": path.name, "unit": unit, **obj})
    return units


def split_summaries(units: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(extraction records without their image features and file lists, the image-feature records)."""
    encodings = [{"unit": u.get("unit"), **u[IMAGE_FEATURES_KEY]} for u in units
                 if isinstance(u.get(IMAGE_FEATURES_KEY), dict)]
    extraction = [{k: v for k, v in u.items() if k not in (IMAGE_FEATURES_KEY, "files")} for u in units]
    return extraction, encodings
