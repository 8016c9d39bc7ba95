"""The one reader of layer files: every stage opens a published `layer_{L}_{language}.pt` through
`open_layer_file` and gets a `LayerFile` (metadata in memory, activations memory-mapped), checked against
the format once, here (required keys, layout, shapes, lengths, token kinds, NaN counts).

`nan_counts` (int64 [N]) is what extraction saw per sample: NaN/Inf values among its rows BEFORE the
`--nan_policy` applied (`zero` stored them as 0, `keep` stored them as they were). A sample with a count
above 0 holds no real data whatever the policy; `LayerFile.excluded` marks those samples, and every
consumer (the SAE data path, the analysis) leaves them out.

(`layerwise.publish.validation` reads files its own way on purpose: it reports every problem of a file
rather than stopping at the first.)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError

# What a reader needs of a file (every file layerwise writes has all of schema.LAYER_FILE_KEYS)
REQUIRED_KEYS = ("layer", "activations", "genders", "hidden_size", "language", "sample_ids", "lengths",
                 "offsets", "token_selection", "layout")


def nan_policy_words(policy: str) -> str:
    """`--nan_policy <policy>` and what it did to the rows of a sample with NaN/Inf values (for messages)."""
    what = {"zero": "their NaN/Inf values were stored as 0", "keep": "their NaN/Inf values were stored as they were",
            "fail": "extraction should have failed on them"}.get(policy, "the policy is not recorded in the file")
    return f"--nan_policy {policy or '?'}: {what}"


@dataclass
class LayerFile:
    """One (layer, language) file: metadata in memory, activations memory-mapped."""

    path: Path | None
    layer: int
    language: str
    layout: str
    token_selection: str
    dtype: str
    hidden_size: int
    sample_ids: list[str]
    genders: list[str]
    lengths: torch.Tensor            # int64 [N]
    offsets: torch.Tensor            # int64 [N+1]
    token_kinds: torch.Tensor | None  # int8, same shape as token_ids; None in files without it
    activations: Any                 # tensor (mmap) or anything sliceable like one
    model_id: str = ""
    nan_counts: torch.Tensor | None = None  # int64 [N]: NaN/Inf values seen per sample (zeros without the key)
    nan_policy: str = ""             # the extraction's --nan_policy ("" when the file does not say)

    def __post_init__(self) -> None:
        if self.nan_counts is None:
            self.nan_counts = torch.zeros(len(self.sample_ids), dtype=torch.int64)

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def excluded(self) -> torch.Tensor:
        """bool [N]: samples with NaN/Inf values at extraction (nan_counts > 0): not data, whatever the policy."""
        return self.nan_counts > 0

    @property
    def n_excluded(self) -> int:
        return int(self.excluded.sum())

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else f"layer_{self.layer}_{self.language}"


def open_layer_file(path: str | Path, mmap: bool = True) -> LayerFile:
    """torch.load(weights_only=True), memory-mapped by default, and check the file against the format."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise LayerwiseError(f"{path}: no such layer file") from None
    except Exception as exc:
        raise LayerwiseError(f"{path}: cannot be loaded with torch.load(weights_only=True): "
                             f"{type(exc).__name__}: {exc}") from exc
    return layer_file_from_dict(data, path)


def layer_file_from_dict(data: Mapping[str, Any], path: Path | None = None) -> LayerFile:
    """A LayerFile over an already loaded dict (the activations are only ever sliced)."""
    where = str(path) if path is not None else "layer file"
    if not isinstance(data, Mapping):
        raise LayerwiseError(f"{where}: holds a {type(data).__name__}, not a layer-file dict")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise LayerwiseError(f"{where}: lacks keys {missing}; is it a layerwise layer file?")
    layout = str(data["layout"])
    if layout not in schema.LAYOUTS:
        raise LayerwiseError(f"{where}: unknown layout {layout!r}")
    lengths = torch.as_tensor(data["lengths"]).to(torch.int64).clone()
    n = len(data["sample_ids"])
    if len(lengths) != n or len(data["genders"]) != n:
        raise LayerwiseError(f"{where}: {n} sample ids but {len(lengths)} lengths and {len(data['genders'])} genders")
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    acts = data["activations"]
    shape = tuple(acts.shape)
    hidden = int(data["hidden_size"])
    expect = (n, None, hidden) if layout == "padded" else (int(offsets[-1]), hidden)
    if len(shape) != len(expect) or any(e is not None and e != s for e, s in zip(expect, shape)):
        raise LayerwiseError(f"{where}: activations have shape {list(shape)}, expected "
                             f"{['T_max' if e is None else e for e in expect]} for the {layout} layout")
    if layout == "padded" and n and int(lengths.max()) > shape[1]:
        raise LayerwiseError(f"{where}: a length exceeds the padded width {shape[1]}")
    kinds = data.get("token_kinds")
    if kinds is not None:
        kinds = torch.as_tensor(kinds).to(torch.int8).clone()   # small (1 byte per position): read once, off the mmap
        want = tuple(shape[:2]) if layout == "padded" else (shape[0],)
        if tuple(kinds.shape) != want:
            raise LayerwiseError(f"{where}: token_kinds has shape {list(kinds.shape)}, expected {list(want)}")
    nan_counts = data.get("nan_counts")
    if nan_counts is None:            # a file without the key (older writer): nothing was counted
        nan_counts = torch.zeros(n, dtype=torch.int64)
    else:
        nan_counts = torch.as_tensor(nan_counts).to(torch.int64).clone()
        if tuple(nan_counts.shape) != (n,):
            raise LayerwiseError(f"{where}: nan_counts has shape {list(nan_counts.shape)}, expected [{n}]")
        if n and int(nan_counts.min()) < 0:
            raise LayerwiseError(f"{where}: nan_counts holds a negative count")
    return LayerFile(
        path=path, layer=int(data["layer"]), language=str(data["language"]), layout=layout,
        token_selection=str(data["token_selection"]), dtype=str(data.get("dtype", "")), hidden_size=hidden,
        sample_ids=[str(s) for s in data["sample_ids"]], genders=[str(g) for g in data["genders"]],
        lengths=lengths, offsets=offsets, token_kinds=kinds, activations=acts, model_id=str(data.get("model_id", "")),
        nan_counts=nan_counts, nan_policy=str(data.get("nan_policy", "")),
    )
