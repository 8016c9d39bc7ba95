"""The records layerwise's steps hand each other, as dataclasses (torch-free).

- `Plan`, `PlanModel`, `Shard`, `PlanUnit`: what PREFLIGHT writes to ``plan.json`` (`plan.make_plan`)
  and PUBLISH_RESULTS / validation read back.
- `UnitSummary`, `ImageFeaturesSummary`: what one extraction unit writes to its ``summary.json``
  (`extract.run_unit`, `images.shared_features`) and validation totals over the units.
- `FORMAT_VERSION`: the version of the layer-file and summary format, recorded in every
  ``summary.json`` and in ``extraction_metadata.json`` (the layer files keep the keys of
  `schema.LAYER_FILE_KEYS`, unchanged).

How a summary field is totalled over units is part of its declaration (`summed`, `peak`), so the
totals in ``extraction_metadata.json`` name their keys explicitly (`summed_keys`, `peak_keys`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from layerwise.core.errors import LayerwiseError

# Version of the layer-file / summary format. Raise it when a key changes meaning or appears.
FORMAT_VERSION = 1

_TOTAL = "total"  # dataclass field metadata: how the field is totalled over units ("sum" or "max")


def summed(**kwargs: Any) -> Any:
    return field(metadata={_TOTAL: "sum"}, **kwargs)


def peak(**kwargs: Any) -> Any:
    return field(metadata={_TOTAL: "max"}, **kwargs)


def summed_keys(record: type) -> tuple[str, ...]:
    """Fields of `record` that add up over units (samples, seconds, bytes, ...)."""
    return tuple(f.name for f in fields(record) if f.metadata.get(_TOTAL) == "sum")


def peak_keys(record: type) -> tuple[str, ...]:
    """Fields of `record` whose total over units is their maximum (peak memory)."""
    return tuple(f.name for f in fields(record) if f.metadata.get(_TOTAL) == "max")


def row_bounds(spec: str) -> tuple[int, int]:
    """``"START:END"`` of a plan shard or unit (0-based, END exclusive) -> (START, END)."""
    start, sep, end = str(spec).partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise LayerwiseError(f"plan rows {spec!r}: expected START:END (two whole numbers)") from None


def _from_dict(record: type, obj: Any, what: str) -> dict[str, Any]:
    names = [f.name for f in fields(record)]
    if not isinstance(obj, dict):
        raise LayerwiseError(f"{what}: expected an object with {names}, got {type(obj).__name__}")
    missing = [n for n in names if n not in obj]
    if missing:
        raise LayerwiseError(f"{what}: lacks {missing} (has {sorted(obj)})")
    return {n: obj[n] for n in names}


# -- plan.json ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanModel:
    id: str
    revision: str | None
    num_layers: int
    hidden_size: int
    model_type: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Shard:
    index: int
    rows: str          # "START:END" of the validated samplesheet

    @property
    def bounds(self) -> tuple[int, int]:
        return row_bounds(self.rows)

    @classmethod
    def from_dict(cls, obj: Any) -> Shard:
        d = _from_dict(cls, obj, "plan.json shard")
        return cls(index=int(d["index"]), rows=str(d["rows"]))


@dataclass(frozen=True)
class PlanUnit:
    """One extraction work unit: (layer group, language, sample shard)."""

    id: str            # names the unit everywhere: task tag, input sheet, output folder
    layers: list[int]
    layers_str: str    # compact form of `layers` ("0-8,12")
    language: str
    shard: int
    rows: str          # "START:END" of the shard
    sheet: str         # units/<sheet>: the unit's input rows

    @classmethod
    def from_dict(cls, obj: Any) -> PlanUnit:
        d = _from_dict(cls, obj, "plan.json unit")
        return cls(id=str(d["id"]), layers=[int(x) for x in d["layers"]], layers_str=str(d["layers_str"]),
                   language=str(d["language"]), shard=int(d["shard"]), rows=str(d["rows"]), sheet=str(d["sheet"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    model: PlanModel
    layers: list[int]
    languages: list[str]
    shards: list[Shard]
    layer_groups: list[list[int]]
    units: list[PlanUnit]

    @classmethod
    def from_dict(cls, obj: Any) -> Plan:
        d = _from_dict(cls, obj, "plan.json")
        return cls(model=PlanModel(**_from_dict(PlanModel, d["model"], "plan.json model")),
                   layers=[int(x) for x in d["layers"]], languages=[str(x) for x in d["languages"]],
                   shards=[Shard.from_dict(s) for s in d["shards"]],
                   layer_groups=[[int(x) for x in g] for g in d["layer_groups"]],
                   units=[PlanUnit.from_dict(u) for u in d["units"]])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PLAN_MODEL_KEYS = tuple(f.name for f in fields(PlanModel))


# -- summary.json ---------------------------------------------------------------------------
@dataclass
class ImageFeaturesSummary:
    """A unit's image features (`images.shared_features`): computed into the cache, or read from it."""

    cache_file: str
    images: int = summed()               # images of the unit's samples
    vision_tower_images: int = summed()  # images this unit ran through the vision tower (0 on a cache hit)
    bytes_written: int = summed()        # bytes of the cache entry this unit wrote (0 on a hit)
    cache_hit: bool                      # True: another unit (or an earlier run) had computed them
    seconds: float = summed()            # time spent computing them (0.0 on a hit)
    kind: str = "image_features"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}


@dataclass
class UnitSummary:
    """What one extraction unit did (`<unit id>/summary.json`)."""

    language: str
    layers: list[int]
    rows: str | None                     # --rows given to the unit (None: all rows of its sheet)
    samples: int = summed()              # samples (rows) in each of the unit's layer files
    samples_this_run: int = summed()     # of them, written by the final attempt
    resumed_from_sample: int             # the checkpoint the final attempt continued from
    positions_kept: int = summed()       # token positions stored per layer file
    seconds: float = summed()            # time in the extraction loop
    samples_per_s: float | None          # samples_this_run / seconds (recomputed for totals)
    bytes_written: int = summed()
    files: list[dict[str, Any]]          # {file, layer, bytes, sha256}
    nan_counts: dict[str, int]           # layer -> NaN/Inf values seen
    peak_host_memory_bytes: int | None = peak()
    peak_gpu_memory_bytes: int | None = peak()
    vision_tower_images: int = summed()  # images through the vision tower in this job (cache fill included)
    device: str
    dtype: str
    batch_size: int
    token_selection: str
    layout: str
    model_id: str
    unit_fingerprint: str
    image_features: dict[str, Any] | None = None   # ImageFeaturesSummary.to_dict(); absent without a cache
    kind: str = "extract"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        head = {"kind": d.pop("kind"), "format_version": d.pop("format_version")}
        if d["image_features"] is None:
            del d["image_features"]
        return {**head, **d}


# Totals over units that are recomputed from other totals, never summed: rate -> (numerator, seconds).
RATES = {"samples_per_s": ("samples_this_run", "seconds"), "tokens_per_s": ("positions_kept", "seconds")}
