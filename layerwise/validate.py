"""Validation of the merged layer files, Parquet metadata and the HTML report.

`validate()` checks every (layer, language) file of a run against the plan and the validated
samplesheet, collecting all problems before failing. Files are read memory-mapped and walked in
chunks of samples, so host memory stays flat whatever their size. On success it writes (each
atomically) into `out_dir`:

- `extraction_metadata.json`   run-level facts, per-file checksums, merged extraction summaries
- `metadata/samples.parquet`   one row per (sample, language)
- `metadata/layers.parquet`    one row per (layer, language) file
- `metadata/norms_by_gender.parquet`  activation-norm statistics per (layer, language, gender)
- `validation_report.html`     self-contained report (also written, status FAILED, on failure)
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__, schema
from .errors import LayerwiseError
from .store import atomic_write_json, load_layer_file

METADATA_JSON = "extraction_metadata.json"
SAMPLES_PARQUET = "metadata/samples.parquet"
LAYERS_PARQUET = "metadata/layers.parquet"
NORMS_PARQUET = "metadata/norms_by_gender.parquet"
REPORT_HTML = "validation_report.html"

HASH_BLOCK = 1 << 20          # sha256 read size
CHUNK_BYTES = 64 << 20        # float32 working set per chunk of samples
MAX_LISTED = 20               # file names listed in one message

# (key, description) of every check, in report order.
CHECKS: tuple[tuple[str, str], ...] = (
    ("files", "every expected (layer, language) file is present and none is unexpected"),
    ("checksums", "every file's sha256 equals the one its writer recorded (nothing changed it since)"),
    ("load", "every file loads with torch.load(weights_only=True) and has all layer-file keys"),
    ("names", "the layer and language keys of every file match its name"),
    ("shapes", "shapes agree with the layout; offsets == cumsum(lengths); padding is zero / -1"),
    ("samples", "every file holds the samplesheet's samples, in samplesheet order, with its genders"),
    ("lengths", "lengths and token ids are identical across the layers of each language"),
    ("hidden_size", "hidden_size == plan hidden size == last dimension of the activations"),
    ("settings", "model, revision, num_layers, token selection, layout, dtype, NaN policy agree"),
    ("finite", "no NaN/Inf stored in the activations (unless nan_policy is 'keep')"),
    ("summaries", "extraction summaries are readable JSON objects"),
)
SETTINGS = ("model_id", "model_revision", "num_layers", "token_selection", "layout", "dtype", "nan_policy")


# -- small helpers --------------------------------------------------------------------------
def sha256_file(path: Path, block: int = HASH_BLOCK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def shape_str(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def parse_rows(spec: str) -> tuple[int, int]:
    start, _, end = str(spec).partition(":")
    return int(start), int(end)


def _atomic_parquet(df, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class RunningStats:
    """Count, mean and M2 of a stream of values (Chan et al. parallel merge; float64)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        k = int(values.numel())
        if k == 0:
            return
        values = values.to(torch.float64)
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + k
        delta = mean_b - self.mean
        self.mean += delta * k / n
        self.m2 += m2_b + delta * delta * self.n * k / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")

    def result(self) -> tuple[float | None, float | None]:
        return (self.mean, self.std) if self.n else (None, None)


@dataclass
class Problems:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, check: str, message: str) -> None:
        self.items.append((check, message))

    def __len__(self) -> int:
        return len(self.items)

    def by_check(self) -> list[dict[str, Any]]:
        return [
            {"name": key, "description": desc, "passed": not (msgs := [m for c, m in self.items if c == key]),
             "problems": msgs}
            for key, desc in CHECKS
        ]


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# -- samplesheet ----------------------------------------------------------------------------
def read_samplesheet(path: Path, languages: Sequence[str]):
    import pandas as pd

    path = Path(path)
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LayerwiseError(f"{path}: cannot read the samplesheet: {exc}") from exc
    need = ["row", schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + [schema.caption_column(lang) for lang in languages]
    missing = [c for c in need if c not in sheet.columns]
    if missing:
        raise LayerwiseError(f"{path}: samplesheet lacks columns {missing} (has {list(sheet.columns)})")
    return sheet


def shard_of_positions(plan: dict[str, Any], n: int) -> list[int | None]:
    """Shard index of each samplesheet position (0-based; plan shard rows are START:END, END exclusive)."""
    out: list[int | None] = [None] * n
    for shard in plan.get("shards", []):
        start, end = parse_rows(shard["rows"])
        for i in range(max(start, 0), min(end, n)):
            out[i] = int(shard["index"])
    return out


# -- extraction summaries -------------------------------------------------------------------
def _is_rate(key: str) -> bool:
    k = key.lower()
    return "per_s" in k or "per_second" in k or k.endswith("/s") or "rate" in k or "throughput" in k


def _is_peak(key: str) -> bool:
    k = key.lower()
    return "peak" in k or k.startswith("max") or "_max" in k


def _is_additive(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in ("second", "samples", "tokens", "positions", "bytes", "images", "count")) or k.endswith("_s")


def merge_summaries(units: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over per-unit summaries: durations/samples/tokens/bytes summed, peaks maxed, rates recomputed."""
    totals: dict[str, float] = {}
    for unit in units:
        for key, value in unit.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or _is_rate(key):
                continue
            if _is_peak(key):
                totals[key] = max(totals.get(key, value), value)
            elif _is_additive(key):
                totals[key] = totals.get(key, 0) + value
    # keys of extract.py's summary.json
    seconds, samples, tokens = (totals.get(k) for k in ("seconds", "samples_this_run", "positions_kept"))
    if seconds:
        if samples is not None:
            totals["samples_per_s"] = samples / seconds
        if tokens is not None:
            totals["tokens_per_s"] = tokens / seconds
    return {"units": len(units), **totals}


def read_summaries(paths: Sequence[Path], problems: Problems) -> list[dict[str, Any]]:
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
        units.append({"summary_file": path.name, **obj})
    return units


# -- one file -------------------------------------------------------------------------------
@dataclass
class Context:
    """What a file is checked against; updated as files are checked."""

    sample_ids: list[str]
    genders: list[str]
    hidden_size: int
    num_layers: int | None
    settings_ref: tuple[str, dict[str, Any]] | None = None
    lengths_ref: dict[str, tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _check_shapes(name: str, d: dict[str, Any], problems: Problems) -> bool:
    """Shape/offset checks; False if the file is too inconsistent to stream through."""
    n = len(d["sample_ids"])
    bad: list[str] = []
    lengths, offsets, acts, tids = d["lengths"], d["offsets"], d["activations"], d["token_ids"]
    kinds = d["token_kinds"]
    tensors = {"lengths": lengths, "offsets": offsets, "activations": acts, "token_ids": tids,
               "token_kinds": kinds, "nan_counts": d["nan_counts"]}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            problems.add("shapes", f"{name}: {key} is a {type(t).__name__}, not a tensor")
            return False
    if tuple(lengths.shape) != (n,):
        bad.append(f"lengths has shape {tuple(lengths.shape)}, expected ({n},) for {n} sample_ids")
    if tuple(d["nan_counts"].shape) != (n,):
        bad.append(f"nan_counts has shape {tuple(d['nan_counts'].shape)}, expected ({n},)")
    if len(d["genders"]) != n:
        bad.append(f"{len(d['genders'])} genders for {n} sample_ids")
    if bad:
        problems.add("shapes", f"{name}: " + "; ".join(bad))
        return False
    if n and int(lengths.min()) < 0:
        bad.append("negative lengths")
    cumsum = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(lengths.to(torch.int64), 0, out=cumsum[1:])
    if offsets.shape != cumsum.shape or not torch.equal(offsets.to(torch.int64), cumsum):
        bad.append("offsets != [0] + cumsum(lengths)")
    total = int(cumsum[-1])
    t_max = int(lengths.max()) if n else 0
    layout = d["layout"]
    if layout == "padded":
        if acts.dim() != 3 or tuple(acts.shape[:2]) != (n, t_max):
            bad.append(f"padded activations have shape {shape_str(acts.shape)}, expected {n}x{t_max}xH "
                       f"(N x max(lengths) x hidden)")
        if tuple(tids.shape) != (n, t_max):
            bad.append(f"padded token_ids have shape {shape_str(tids.shape)}, expected {n}x{t_max}")
    elif layout == "ragged":
        if acts.dim() != 2 or acts.shape[0] != total:
            bad.append(f"ragged activations have shape {shape_str(acts.shape)}, expected {total}xH (sum(lengths) x hidden)")
        if tuple(tids.shape) != (total,):
            bad.append(f"ragged token_ids have shape {shape_str(tids.shape)}, expected ({total},)")
    else:
        bad.append(f"unknown layout {layout!r} (expected one of {schema.LAYOUTS})")
    if kinds.dtype != torch.int8 or kinds.shape != tids.shape:
        bad.append(f"token_kinds is {schema.dtype_name(kinds.dtype)} {shape_str(kinds.shape)}, expected int8 "
                   f"of the shape of token_ids {shape_str(tids.shape)}")
    elif kinds.numel():
        codes = set(schema.TOKEN_KINDS.values())
        unknown = sorted(set(int(c) for c in torch.unique(kinds).tolist()) - codes)
        if unknown:
            bad.append(f"token_kinds holds codes {unknown} that are not in schema.TOKEN_KINDS")
        if layout == "padded" and n:
            beyond = torch.arange(kinds.shape[1])[None, :] >= lengths[:, None]
            if bool((kinds[beyond] != schema.TOKEN_KINDS["pad"]).any()):
                bad.append("token_kinds beyond lengths are not 'pad'")
            if bool((kinds[~beyond] == schema.TOKEN_KINDS["pad"]).any()):
                bad.append("token_kinds within lengths are 'pad'")
    if bad:
        problems.add("shapes", f"{name}: " + "; ".join(bad))
        return False
    return True


def _row_norms(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(L2 norm per row (float64), mask of rows without NaN/Inf, number of NaN/Inf values).

    Norms are taken in float32 (fast); a row whose float32 norm is not finite holds a NaN/Inf
    or overflowed, and only those rows are looked at value by value (in float64).
    """
    flat = rows.reshape(-1, rows.shape[-1]) if rows.dim() else rows
    if flat.numel() == 0:
        return torch.zeros(flat.shape[0], dtype=torch.float64), torch.ones(flat.shape[0], dtype=torch.bool), 0
    x = flat if flat.dtype == torch.float32 else flat.to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1).to(torch.float64)
    suspect = ~torch.isfinite(norms)
    ok = torch.ones_like(suspect)
    nonfinite = 0
    if bool(suspect.any()):
        idx = suspect.nonzero().squeeze(1)
        exact = flat[idx].to(torch.float64)
        finite = torch.isfinite(exact)
        nonfinite = int((~finite).sum())
        ok[idx] = finite.all(dim=1)
        norms[idx] = torch.linalg.vector_norm(torch.where(finite, exact, 0.0), dim=1)
    return norms, ok, nonfinite


def _stream_stats(name: str, d: dict[str, Any], genders: Sequence[str], problems: Problems):
    """Walk the stored rows in chunks of samples: non-finite count, L2-norm stats overall and per gender."""
    acts, lengths, layout = d["activations"], d["lengths"].to(torch.int64), d["layout"]
    n = len(lengths)
    hidden = int(acts.shape[-1]) if acts.dim() else 0
    gender_names = sorted(set(genders))
    code = torch.tensor([gender_names.index(g) for g in genders], dtype=torch.int64)
    overall = RunningStats()
    per_gender = {g: RunningStats() for g in gender_names}
    nonfinite = 0
    pad_nonzero = pad_bad_ids = 0
    t_max = int(acts.shape[1]) if layout == "padded" else 0
    positions_per_sample = t_max if layout == "padded" else (int(lengths.max()) if n else 1)
    step = max(1, CHUNK_BYTES // max(1, positions_per_sample * hidden * 4))
    offsets = d["offsets"].to(torch.int64)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        lens = lengths[i0:i1]
        if layout == "padded":
            block = acts[i0:i1]
            mask = torch.arange(t_max).unsqueeze(0) < lens.unsqueeze(1)
            pad_nonzero += int(torch.count_nonzero(block[~mask]))
            pad_bad_ids += int((d["token_ids"][i0:i1][~mask] != schema.PAD_TOKEN_ID).sum())
            rows = block[mask]
            del block
        else:
            rows = acts[int(offsets[i0]):int(offsets[i1])]
        norms, ok, bad = _row_norms(rows)
        del rows
        nonfinite += bad
        row_gender = torch.repeat_interleave(code[i0:i1], lens)[ok]
        norms = norms[ok]
        overall.add(norms)
        for k, g in enumerate(gender_names):
            per_gender[g].add(norms[row_gender == k])
    if pad_nonzero:
        problems.add("shapes", f"{name}: {pad_nonzero} non-zero value(s) in the padding beyond lengths")
    if pad_bad_ids:
        problems.add("shapes", f"{name}: {pad_bad_ids} padding token id(s) are not {schema.PAD_TOKEN_ID}")
    return nonfinite, overall, per_gender


def check_file(path: Path, layer: int, language: str, ctx: Context, problems: Problems) -> dict[str, Any]:
    """All per-file checks; returns the file's entry (some fields None when checks could not run)."""
    name = path.name
    entry: dict[str, Any] = {
        "file": name, "layer": layer, "language": language, "bytes": path.stat().st_size,
        "sha256": sha256_file(path), "shape": None, "dtype": None, "layout": None, "samples": None,
        "positions": None, "nan_count": None, "nonfinite_stored": None, "norm_mean": None,
        "norm_std": None, "by_gender": {},
    }
    try:
        d = load_layer_file(path, mmap=True)
    except Exception as exc:
        problems.add("load", f"{name}: cannot be loaded with torch.load(weights_only=True) "
                             f"(truncated or corrupt?): {type(exc).__name__}: {exc}")
        return entry
    if not isinstance(d, dict):
        problems.add("load", f"{name}: holds a {type(d).__name__}, not a layer-file dict")
        return entry
    missing = [k for k in schema.LAYER_FILE_KEYS if k not in d]
    if missing:
        problems.add("load", f"{name}: lacks keys {missing}")
        return entry
    try:
        _check_loaded(name, d, layer, language, ctx, problems, entry)
    except Exception as exc:  # a file too malformed for the checks themselves
        problems.add("load", f"{name}: cannot be checked: {type(exc).__name__}: {exc}")
    return entry


def _check_loaded(name, d, layer, language, ctx: Context, problems: Problems, entry: dict[str, Any]) -> None:
    acts = d["activations"]
    if isinstance(acts, torch.Tensor):
        entry.update(shape=list(acts.shape), dtype=schema.dtype_name(acts.dtype))
    entry["layout"] = d["layout"]
    # names
    if d["layer"] != layer or d["language"] != language:
        problems.add("names", f"{name}: holds layer {d['layer']!r}, language {d['language']!r}; "
                              f"its name says layer {layer}, language {language!r}")
    # settings (against the first file, and the allowed values)
    settings = {k: d[k] for k in SETTINGS}
    if ctx.settings_ref is None:
        ctx.settings_ref = (name, settings)
    else:
        ref_name, ref = ctx.settings_ref
        diff = [f"{k} {settings[k]!r} (vs {ref[k]!r})" for k in SETTINGS if settings[k] != ref[k]]
        if diff:
            problems.add("settings", f"{name}: differs from {ref_name}: " + ", ".join(diff))
    allowed = {"token_selection": schema.TOKEN_SELECTIONS, "nan_policy": schema.NAN_POLICIES}
    for key, values in allowed.items():
        if d[key] not in values:
            problems.add("settings", f"{name}: {key} {d[key]!r} is not one of {values}")
    if isinstance(acts, torch.Tensor) and d["dtype"] != schema.dtype_name(acts.dtype):
        problems.add("settings", f"{name}: dtype key {d['dtype']!r} but activations are "
                                 f"{schema.dtype_name(acts.dtype)}")
    if ctx.num_layers is not None and d["num_layers"] != ctx.num_layers:
        problems.add("settings", f"{name}: num_layers {d['num_layers']!r}, plan says {ctx.num_layers}")
    # hidden size
    last = int(acts.shape[-1]) if isinstance(acts, torch.Tensor) and acts.dim() else None
    if d["hidden_size"] != ctx.hidden_size or last != ctx.hidden_size:
        problems.add("hidden_size", f"{name}: hidden_size key {d['hidden_size']!r}, activations' last "
                                    f"dimension {last}, plan hidden size {ctx.hidden_size}")
    # samples
    ids, n_sheet = list(d["sample_ids"]), len(ctx.sample_ids)
    entry["samples"] = len(ids)
    if len(ids) != n_sheet:
        problems.add("samples", f"{name}: holds {len(ids)} samples, the samplesheet has {n_sheet}")
    i = _first_difference(ids, ctx.sample_ids)
    if i is not None and i < min(len(ids), n_sheet):
        problems.add("samples", f"{name}: sample_ids not in samplesheet order: at index {i} the file has "
                                f"{ids[i]!r}, the samplesheet {ctx.sample_ids[i]!r}")
    genders = list(d["genders"])
    j = _first_difference(genders, ctx.genders)
    if j is not None and j < min(len(genders), n_sheet) and i is None:
        problems.add("samples", f"{name}: gender of sample {ids[j]!r} is {genders[j]!r}, "
                                f"the samplesheet says {ctx.genders[j]!r}")
    # shapes
    if not _check_shapes(name, d, problems):
        return
    lengths = d["lengths"].to(torch.int64)
    entry["positions"] = int(lengths.sum())
    entry["nan_count"] = int(d["nan_counts"].sum())
    # lengths and token ids across layers of this language
    ref = ctx.lengths_ref.get(language)
    if ref is None:
        ctx.lengths_ref[language] = (name, lengths, d["token_ids"], d["token_kinds"])
    else:
        ref_name, ref_lengths, ref_tids, ref_kinds = ref
        if lengths.shape != ref_lengths.shape or not torch.equal(lengths, ref_lengths):
            k = _first_difference(lengths.tolist(), ref_lengths.tolist())
            where = (f" (first at sample {ids[k]!r}: {int(lengths[k])} vs {int(ref_lengths[k])})"
                     if k is not None and k < min(len(lengths), len(ref_lengths)) else "")
            problems.add("lengths", f"{name}: lengths differ from {ref_name}{where}")
        elif d["token_ids"].shape != ref_tids.shape or not torch.equal(d["token_ids"], ref_tids):
            problems.add("lengths", f"{name}: token_ids differ from {ref_name}")
        elif d["token_kinds"].shape != ref_kinds.shape or not torch.equal(d["token_kinds"], ref_kinds):
            problems.add("lengths", f"{name}: token_kinds differ from {ref_name}")
    # stored values
    if last is None:
        return
    nonfinite, overall, per_gender = _stream_stats(name, d, genders, problems)
    entry["nonfinite_stored"] = nonfinite
    entry["norm_mean"], entry["norm_std"] = overall.result()
    entry["by_gender"] = {g: {"rows": s.n, "norm_mean": s.result()[0], "norm_std": s.result()[1]}
                          for g, s in per_gender.items()}
    if nonfinite and d["nan_policy"] != "keep":
        problems.add("finite", f"{name}: {nonfinite} NaN/Inf value(s) stored with nan_policy "
                               f"{d['nan_policy']!r} (only 'keep' may store them)")


# -- the run --------------------------------------------------------------------------------
def validate(
    plan: dict[str, Any],
    samplesheet: Path,
    layer_files: list[Path],
    summaries: list[Path],
    out_dir: Path,
    expected_sha256: dict[str, str] | None = None,
    write_json: bool = True,
) -> dict[str, Any]:
    """Check a run's layer files; write metadata, Parquet tables and the report. See module docstring.

    Returns the metadata written to extraction_metadata.json. Raises LayerwiseError listing every
    problem found (after writing validation_report.html with status FAILED).
    """
    import pandas as pd

    from .report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = Problems()
    try:
        model = plan["model"]
        layers = [int(x) for x in plan["layers"]]
        languages = [str(x) for x in plan["languages"]]
        plan_hidden = int(model["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LayerwiseError(f"plan lacks model.hidden_size, layers or languages: {exc!r}") from exc
    sheet = read_samplesheet(samplesheet, languages)
    ctx = Context(
        sample_ids=sheet[schema.SAMPLE_ID].tolist(),
        genders=sheet[schema.GENDER].tolist(),
        hidden_size=plan_hidden,
        num_layers=int(model["num_layers"]) if model.get("num_layers") is not None else None,
    )

    # which files
    expected = {schema.layer_filename(layer, lang): (layer, lang) for lang in languages for layer in layers}
    given: dict[str, Path] = {}
    for p in map(Path, layer_files):
        if p.name in given:
            problems.add("files", f"{p.name}: given twice ({given[p.name]} and {p})")
        elif not p.is_file():
            problems.add("files", f"{p.name}: not found at {p}")
        else:
            given[p.name] = p
    if not expected:
        problems.add("files", "the plan lists no layers or no languages: nothing to validate")
    missing = [n for n in expected if n not in given]
    extra = sorted(n for n in given if n not in expected)
    if missing:
        problems.add("files", f"missing {len(missing)} of {len(expected)} layer files: {_listing(missing)}")
    if extra:
        problems.add("files", f"{len(extra)} unexpected layer file(s) (not in the plan's layers x languages): "
                              f"{_listing(extra)}")

    # per-file checks, in (language, layer) order
    entries = [check_file(given[n], *expected[n], ctx, problems) for n in expected if n in given]
    for e in entries:
        want = (expected_sha256 or {}).get(e["file"])
        if want is not None and e["sha256"] != want:
            problems.add("checksums", f"{e['file']}: checksum {e['sha256'][:12]}... differs from the "
                                      f"{want[:12]}... its writer recorded: the file was changed or damaged")
    units = read_summaries(summaries, problems)
    # image features: computed by the first unit of each shard, memory-mapped by the others
    encodings = [u["image_features"] for u in units if isinstance(u.get("image_features"), dict)]
    extraction = [{k: v for k, v in u.items() if k not in ("image_features", "files")} for u in units]

    # tables
    layer_cols = ["layer", "language", "file", "bytes", "sha256", "shape", "dtype", "layout", "samples",
                  "positions", "nan_count", "nonfinite_stored", "norm_mean", "norm_std"]
    layers_df = pd.DataFrame(
        [{**{k: e[k] for k in layer_cols if k != "shape"}, "shape": shape_str(e["shape"]) if e["shape"] else None}
         for e in entries], columns=layer_cols,
    ).astype({"layer": "int64", "bytes": "int64", "samples": "Int64", "positions": "Int64",
              "nan_count": "Int64", "nonfinite_stored": "Int64", "norm_mean": "float64", "norm_std": "float64"})
    norms_df = pd.DataFrame(
        [{"layer": e["layer"], "language": e["language"], "gender": g, **stats}
         for e in entries for g, stats in e["by_gender"].items()],
        columns=["layer", "language", "gender", "rows", "norm_mean", "norm_std"],
    ).astype({"layer": "int64", "rows": "int64", "norm_mean": "float64", "norm_std": "float64"})

    ref = ctx.settings_ref[1] if ctx.settings_ref else {}
    metadata: dict[str, Any] = {
        "status": "passed" if not problems else "FAILED",
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "layerwise_version": __version__,
        "model": {
            "id": ref.get("model_id", model.get("id")),
            "revision": ref.get("model_revision", model.get("revision")),
            "num_layers": ref.get("num_layers", model.get("num_layers")),
            "hidden_size": plan_hidden,
            "model_type": model.get("model_type"),
        },
        "layers": layers,
        "languages": languages,
        "samples": len(ctx.sample_ids),
        **{k: ref.get(k) for k in ("token_selection", "layout", "dtype", "nan_policy")},
        "files": [{k: e[k] for k in ("file", "layer", "language", "bytes", "sha256", "shape", "samples",
                                     "positions", "nan_count", "nonfinite_stored")} for e in entries],
        "totals": {
            "files": len(entries),
            "expected_files": len(expected),
            "bytes": sum(e["bytes"] for e in entries),
            "positions": sum(e["positions"] or 0 for e in entries),
            "nan_count": sum(e["nan_count"] or 0 for e in entries),
            "nonfinite_stored": sum(e["nonfinite_stored"] or 0 for e in entries),
        },
        "checks": problems.by_check(),
        "extraction": {"totals": merge_summaries(extraction), "units": extraction},
        "image_encoding": {"totals": merge_summaries(encodings), "units": encodings},
        "vision_tower": {"images_encoded": sum(int(u.get("vision_tower_images") or 0) for u in units),
                         "distinct_images": int(sheet["image"].nunique()) if "image" in sheet else None},
        "outputs": [METADATA_JSON, SAMPLES_PARQUET, LAYERS_PARQUET, NORMS_PARQUET, REPORT_HTML],
    }

    report_path = out_dir / REPORT_HTML
    write_report(metadata, layers_df, norms_df, report_path)
    if problems:
        lines = [f"validation failed with {len(problems)} problem(s):"]
        lines += [f"  - [{check}] {msg}" for check, msg in problems.items]
        lines.append(f"report: {report_path}")
        raise LayerwiseError("\n".join(lines))

    # samples table: one row per (sample, language)
    shards = shard_of_positions(plan, len(sheet))
    rows_col = pd.to_numeric(sheet["row"], errors="coerce").astype("Int64")
    frames = []
    for lang in languages:
        lengths = ctx.lengths_ref[lang][1].tolist()
        frames.append(pd.DataFrame({
            "sample_id": sheet[schema.SAMPLE_ID],
            "language": lang,
            "gender": sheet[schema.GENDER],
            "image": sheet[schema.IMAGE],
            "caption": sheet[schema.caption_column(lang)],
            "positions_kept": pd.array(lengths, dtype="int64"),
            "shard": pd.array(shards, dtype="Int64"),
            "row": rows_col,
        }))
    samples_df = pd.concat(frames, ignore_index=True)
    _atomic_parquet(samples_df, out_dir / SAMPLES_PARQUET)
    _atomic_parquet(layers_df, out_dir / LAYERS_PARQUET)
    _atomic_parquet(norms_df, out_dir / NORMS_PARQUET)
    if write_json:
        atomic_write_json(out_dir / METADATA_JSON, metadata)
    return metadata
