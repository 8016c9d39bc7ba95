"""Shard merge (`merge_shards`) and the seed's combined all-layers file (`combine_layers`).

Both read their inputs memory-mapped (`store.load_layer_file(mmap=True)`), so host memory
does not grow with the size of the files, and write their output once, streamed into its final
format (`layerfile.LayerFileStream`, `ptfile.PtFileWriter`). Outputs appear under their final name
only when complete.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.layerfile.ptfile import PtFileWriter, TensorSlot
from layerwise.layerfile.store import load_layer_file, sample_rows
from layerwise.layerfile.stream import LayerFileStream, UnitLayout

# Settings every shard of one (layer, language) and every layer of one combined file must share.
SHARED_SETTINGS = (
    "hidden_size", "dtype", "layout", "token_selection", "nan_policy",
    "model_id", "model_revision", "num_layers",
)
# Keys LayerFileStream fills itself.
_WRITER_KEYS = ("activations", "lengths", "offsets", "token_ids", "token_kinds", "nan_counts", "hidden_size", "layout",
                "dtype")


# -- helpers --------------------------------------------------------------------------------
def open_layer_file(path: Path) -> dict[str, Any]:
    """load_layer_file(mmap=True) with user-facing errors: unreadable file or missing keys."""
    path = Path(path)
    if not path.is_file():
        raise LayerwiseError(f"{path}: layer file not found")
    try:
        data = load_layer_file(path, mmap=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle ...
        raise LayerwiseError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) "
            f"(truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise LayerwiseError(f"{path}: holds a {type(data).__name__}, not a layer-file dict")
    missing = [k for k in schema.LAYER_FILE_KEYS if k not in data]
    if missing:
        raise LayerwiseError(f"{path}: not a complete layer file, lacks keys {missing}")
    return data


def torch_dtype(name: str, path: Path) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise LayerwiseError(f"{path}: unknown dtype {name!r}")
    return dtype


def _differences(ref: dict[str, Any], data: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{k} {data[k]!r} (vs {ref[k]!r})" for k in keys if data[k] != ref[k]]


# -- merge ----------------------------------------------------------------------------------
def merge_shards(inputs: list[Path], out: Path, layer: int, language: str) -> dict[str, Any]:
    """Concatenate shard files (in shard order) into one `layer_{layer}_{language}.pt`.

    Returns {"file", "layer", "language", "inputs", "samples", "positions", "bytes"}.
    """
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if not inputs:
        raise LayerwiseError(f"merge of {out.name}: no input files given")

    shards: list[dict[str, Any]] = []
    seen_ids: dict[str, Path] = {}
    for path in inputs:
        data = open_layer_file(path)
        if int(data["layer"]) != int(layer):
            raise LayerwiseError(f"{path}: holds layer {data['layer']}, expected layer {layer}")
        if data["language"] != language:
            raise LayerwiseError(f"{path}: holds language {data['language']!r}, expected {language!r}")
        if data["dtype"] != schema.dtype_name(data["activations"].dtype):
            raise LayerwiseError(
                f"{path}: dtype key {data['dtype']!r} disagrees with the stored activations "
                f"({schema.dtype_name(data['activations'].dtype)})"
            )
        if data["activations"].shape[-1] != int(data["hidden_size"]):
            raise LayerwiseError(
                f"{path}: hidden_size {data['hidden_size']} disagrees with the stored activations "
                f"{tuple(data['activations'].shape)}"
            )
        if shards:
            diff = _differences(shards[0], data, SHARED_SETTINGS)
            if diff:
                raise LayerwiseError(
                    f"{path}: cannot be merged with {inputs[0]}: different " + ", ".join(diff)
                )
        n = len(data["sample_ids"])
        if len(data["genders"]) != n or len(data["lengths"]) != n or len(data["nan_counts"]) != n:
            raise LayerwiseError(f"{path}: sample_ids, genders, lengths and nan_counts disagree in length")
        for sid in data["sample_ids"]:
            if sid in seen_ids:
                where = "twice in this file" if seen_ids[sid] == path else f"also in {seen_ids[sid]}"
                raise LayerwiseError(f"{path}: duplicate sample_id {sid!r} ({where})")
            seen_ids[sid] = path
        shards.append(data)

    ref = shards[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    lengths, ids, kinds = [], [], []
    for data in shards:
        for i in range(len(data["sample_ids"])):
            _, tids = sample_rows(data, i)
            tkinds, _ = sample_rows({**data, "activations": data["token_kinds"]}, i)
            lengths.append(int(tids.shape[0]))
            ids.append(tids.clone())
            kinds.append(tkinds.clone())
    meta = {k: ref[k] for k in schema.LAYER_FILE_KEYS if k not in _WRITER_KEYS}
    meta.update(
        layer=int(layer),
        language=language,
        genders=[g for d in shards for g in d["genders"]],
        sample_ids=[s for d in shards for s in d["sample_ids"]],
    )
    writer = LayerFileStream(out, UnitLayout(lengths, ids, kinds), ref["layout"], int(ref["hidden_size"]),
                             torch_dtype(ref["dtype"], inputs[0]), meta)
    try:
        for data in shards:
            nan_counts = data["nan_counts"].tolist()
            for i in range(len(data["sample_ids"])):
                rows, _ = sample_rows(data, i)
                writer.append(rows, nan_counts[i])
        info = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {
        "file": str(out),
        "layer": int(layer),
        "language": language,
        "inputs": len(inputs),
        "samples": writer.num_samples,
        "positions": int(sum(lengths)),
        "bytes": info["bytes"],
        "sha256": info["sha256"],
    }


# -- combine --------------------------------------------------------------------------------
COMBINED_KEYS = (
    "language", "layers", "activations", "hidden_size", "genders", "sample_ids", "lengths",
    "offsets", "token_ids", "token_kinds", "token_selection", "layout", "dtype", "model_id", "model_revision",
    "num_layers", "nan_counts",
)


def combine_layers(inputs: list[Path], out: Path, language: str) -> dict[str, Any]:
    """Write the seed's `activations_{language}_all_layers.pt` from one file per layer.

    Format (loadable with torch.load(weights_only=True)): see COMBINED_KEYS; "activations" and
    "nan_counts" are {layer: tensor}, "layers" the sorted layer numbers; the per-sample keys
    (sample_ids, genders, lengths, offsets, token_ids) are shared by all layers.
    Returns {"file", "language", "layers", "samples", "bytes"}.
    """
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    if not inputs:
        raise LayerwiseError(f"combine into {out.name}: no input files given")

    by_layer: dict[int, tuple[Path, dict[str, Any]]] = {}
    ref_path: Path | None = None
    ref: dict[str, Any] | None = None
    for path in inputs:
        data = open_layer_file(path)
        if data["language"] != language:
            raise LayerwiseError(f"{path}: holds language {data['language']!r}, expected {language!r}")
        layer = int(data["layer"])
        if layer in by_layer:
            raise LayerwiseError(f"{path}: layer {layer} given twice (also {by_layer[layer][0]})")
        if ref is None:
            ref_path, ref = path, data
        else:
            diff = _differences(ref, data, SHARED_SETTINGS)
            if data["sample_ids"] != ref["sample_ids"]:
                diff.append("sample_ids")
            if data["genders"] != ref["genders"]:
                diff.append("genders")
            for key in ("lengths", "offsets", "token_ids", "token_kinds"):
                a, b = data[key], ref[key]
                if a.shape != b.shape or not torch.equal(a, b):
                    diff.append(key)
            if diff:
                raise LayerwiseError(
                    f"{path}: disagrees with {ref_path} on " + ", ".join(diff)
                    + "; all layers of a combined file must hold the same samples and positions"
                )
        by_layer[layer] = (path, data)

    assert ref is not None
    layers = sorted(by_layer)
    acts = {layer: by_layer[layer][1]["activations"] for layer in layers}
    obj = {
        "language": language,
        "layers": layers,
        "activations": {layer: TensorSlot(list(a.shape), a.dtype) for layer, a in acts.items()},
        "hidden_size": int(ref["hidden_size"]),
        "genders": list(ref["genders"]),
        "sample_ids": list(ref["sample_ids"]),
        **{k: TensorSlot(list(ref[k].shape), ref[k].dtype) for k in ("lengths", "offsets", "token_ids", "token_kinds")},
        "token_selection": ref["token_selection"],
        "layout": ref["layout"],
        "dtype": ref["dtype"],
        "model_id": ref["model_id"],
        "model_revision": ref["model_revision"],
        "num_layers": int(ref["num_layers"]),
        "nan_counts": {layer: TensorSlot(list(by_layer[layer][1]["nan_counts"].shape), torch.int64) for layer in layers},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = PtFileWriter(out, obj, [("activations", layer) for layer in layers])
    try:
        for layer in layers:  # page by page from the mmap'd layer files: one copy, no RAM growth
            flat = acts[layer].reshape(-1)
            step = max(1, (64 << 20) // max(flat.element_size(), 1))
            for start in range(0, flat.numel(), step):
                writer.write(flat[start:start + step].contiguous())
        values = {k: ref[k].contiguous() for k in ("lengths", "offsets", "token_ids", "token_kinds")}
        values.update({("nan_counts", layer): by_layer[layer][1]["nan_counts"].to(torch.int64).contiguous()
                       for layer in layers})
        info = writer.finish(values)
    except BaseException:
        writer.abort()
        raise
    return {
        "file": str(out),
        "language": language,
        "layers": layers,
        "samples": len(ref["sample_ids"]),
        "bytes": info["bytes"],
        "sha256": info["sha256"],
    }
