"""Open a published result without copying it: every layer of a language at once, memory-mapped.

    from layerwise.layerfile.loader import open_layers
    run = open_layers("results", "english")          # nothing is read until a tensor is touched
    x = run["activations"][12]                         # [N, T_max, H] (padded) of layer 12, an mmap view
    ids, kinds = run["token_ids"], run["token_kinds"]  # shared by every layer of the language

The returned dict has the keys of the seed's combined file `activations_{language}_all_layers.pt`
(`merge.COMBINED_KEYS`), so code written for that file works on it; the combined file itself
(`--combined_files`) costs one more copy of every byte and is off by default.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.core.outdir import LAYER_DIR, METADATA_JSON
from layerwise.layerfile.reader import layer_file_from_dict
from layerwise.layerfile.store import load_layer_file

# Per-sample keys every layer file of one language shares
SHARED_KEYS = ("sample_ids", "genders", "lengths", "offsets", "token_ids", "token_kinds")
SETTINGS = ("hidden_size", "token_selection", "layout", "dtype", "model_id", "model_revision", "num_layers",
            "nan_policy")


def available_layers(outdir: str | Path, language: str) -> list[int]:
    """Layers of `language` present under `<outdir>/layer_checkpoints`."""
    prefix, suffix = "layer_", f"_{language}.pt"
    found = []
    for f in (Path(outdir) / LAYER_DIR).glob(f"layer_*_{language}.pt"):
        middle = f.name[len(prefix):-len(suffix)]
        if middle.isdigit():
            found.append(int(middle))
    return sorted(found)


def open_layers(outdir: str | Path, language: str, layers: Iterable[int] | None = None,
                check_status: bool = True) -> dict[str, Any]:
    """All (or the given) layers of one language of a results folder, memory-mapped, in one dict."""
    outdir = Path(outdir)
    if check_status:
        try:
            status = json.loads((outdir / METADATA_JSON).read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError):
            status = None
        if status != "passed":
            warnings.warn(f"{outdir / METADATA_JSON} says status {status!r}, not 'passed': the files may be "
                          "incomplete or from different runs", stacklevel=2)
    layers = sorted(set(int(x) for x in layers)) if layers is not None else available_layers(outdir, language)
    if not layers:
        raise LayerwiseError(f"{outdir / LAYER_DIR}: no layer files for language {language!r}")
    files = {}
    for layer in layers:
        path = outdir / LAYER_DIR / schema.layer_filename(layer, language)
        files[layer] = load_layer_file(path, mmap=True)
        layer_file_from_dict(files[layer], path)   # the format's checks (keys, layout, shapes), as every reader
    ref_layer, ref = layers[0], files[layers[0]]
    for layer, d in files.items():
        for key in SETTINGS + SHARED_KEYS:
            a, b = d[key], ref[key]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            if not same:
                raise LayerwiseError(f"layer {layer} and layer {ref_layer} of {language!r} differ in {key!r}: "
                                     "not one run's files")
    out: dict[str, Any] = {"language": language, "layers": layers,
                           "activations": {layer: d["activations"] for layer, d in files.items()},
                           "nan_counts": {layer: d["nan_counts"] for layer, d in files.items()}}
    out.update({k: ref[k] for k in SHARED_KEYS + SETTINGS})
    return out
