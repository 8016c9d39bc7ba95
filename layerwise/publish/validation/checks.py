"""Per-file checks of a run's layer files: the set of files, checksums, keys, names, settings,
shapes, samples, lengths across layers, hidden size and stored values (`check_file`).

Every problem is collected (`problems.Problems`), none stops the others.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.layerfile.store import load_layer_file
from layerwise.publish.validation.problems import Problems
from layerwise.publish.validation.stats import stream_stats

HASH_BLOCK = 1 << 20          # sha256 read size
MAX_LISTED = 20               # file names listed in one message
SETTINGS = ("model_id", "model_revision", "num_layers", "token_selection", "layout", "dtype", "nan_policy")


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


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))



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
    i = first_difference(ids, ctx.sample_ids)
    if i is not None and i < min(len(ids), n_sheet):
        problems.add("samples", f"{name}: sample_ids not in samplesheet order: at index {i} the file has "
                                f"{ids[i]!r}, the samplesheet {ctx.sample_ids[i]!r}")
    genders = list(d["genders"])
    j = first_difference(genders, ctx.genders)
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
            k = first_difference(lengths.tolist(), ref_lengths.tolist())
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
    nonfinite, overall, per_gender = stream_stats(name, d, genders, problems)
    entry["nonfinite_stored"] = nonfinite
    entry["norm_mean"], entry["norm_std"] = overall.result()
    entry["by_gender"] = {g: {"rows": s.n, "norm_mean": s.result()[0], "norm_std": s.result()[1]}
                          for g, s in per_gender.items()}
    if nonfinite and d["nan_policy"] != "keep":
        problems.add("finite", f"{name}: {nonfinite} NaN/Inf value(s) stored with nan_policy "
                               f"{d['nan_policy']!r} (only 'keep' may store them)")



def expected_files(layers: Sequence[int], languages: Sequence[str]) -> dict[str, tuple[int, str]]:
    """{file name: (layer, language)} of every layer file of a plan, in (language, layer) order."""
    return {schema.layer_filename(layer, lang): (layer, lang) for lang in languages for layer in layers}


def check_file_set(expected: dict[str, tuple[int, str]], layer_files: Iterable[Path],
                   problems: Problems) -> dict[str, Path]:
    """The given files by name; missing, unexpected, doubled and absent files are problems of "files"."""
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
    return given


def check_checksums(entries: Iterable[dict[str, Any]], expected_sha256: dict[str, str] | None,
                    problems: Problems) -> None:
    """Each file's sha256 against the one its writer recorded (files without a record are not checked)."""
    for e in entries:
        want = (expected_sha256 or {}).get(e["file"])
        if want is not None and e["sha256"] != want:
            problems.add("checksums", f"{e['file']}: checksum {e['sha256'][:12]}... differs from the "
                                      f"{want[:12]}... its writer recorded: the file was changed or damaged")
