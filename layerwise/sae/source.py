"""One layer file, opened memory-mapped, read as contiguous runs of consecutive samples.

`LayerSource` never touches the whole `activations` tensor: `read_run(a, b, allowed)` reads the
stored rows of samples a..b-1 only (padded: `activations[a:b, :t]`, with t the longest of those
samples; ragged: `activations[offsets[a]:offsets[b]]`) and returns the rows that are not padding
and whose token kind is allowed. The small per-position tensors (`lengths`, `offsets`,
`token_kinds`, `nan_counts`) are read whole: they are 1 byte (kinds) or 8 bytes (lengths) per position or sample.

A sample whose `nan_counts` is above 0 (NaN/Inf values at extraction, zeroed by `--nan_policy zero` or
kept by `keep`) is not data: `excluded` marks it, and the provider never reads its rows.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.layerfile.reader import LayerFile, layer_file_from_dict, nan_policy_words, open_layer_file
from layerwise.sae.options import POOLED


def allowed_table(kind_names: tuple[str, ...]) -> torch.Tensor:
    """bool [max kind + 1]: True at the ids of `kind_names` (never at `pad`)."""
    table = torch.zeros(max(schema.TOKEN_KINDS.values()) + 1, dtype=torch.bool)
    for name in kind_names:
        if name != "pad":
            table[schema.TOKEN_KINDS[name]] = True
    return table


@dataclass
class LayerSource:
    """A layer file's tensors (memory-mapped when opened with `open`)."""

    path: str
    layer: int
    language: str
    layout: str
    hidden_size: int
    sample_ids: list[str]
    lengths: torch.Tensor          # int64 [N]
    offsets: torch.Tensor          # int64 [N+1]
    activations: Any               # Tensor [N, T_max, H] (padded) / [P, H] (ragged); only sliced
    token_kinds: torch.Tensor | None
    model_id: str = ""
    token_selection: str = ""
    nan_counts: torch.Tensor | None = None   # int64 [N]: NaN/Inf values seen per sample at extraction
    nan_policy: str = ""

    def __post_init__(self) -> None:
        if self.nan_counts is None:
            self.nan_counts = torch.zeros(len(self.sample_ids), dtype=torch.int64)

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = True) -> LayerSource:
        return cls.from_layer_file(open_layer_file(path, mmap=mmap))

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "<memory>") -> LayerSource:
        return cls.from_layer_file(layer_file_from_dict(data, Path(path)))

    @classmethod
    def from_layer_file(cls, lf: LayerFile) -> LayerSource:
        """Over a file opened by the format's one reader (which checked keys, layout and shapes)."""
        return cls(path=str(lf.path), layer=lf.layer, language=lf.language, layout=lf.layout,
                   hidden_size=lf.hidden_size, sample_ids=lf.sample_ids, lengths=lf.lengths, offsets=lf.offsets,
                   activations=lf.activations, token_kinds=lf.token_kinds, model_id=lf.model_id,
                   token_selection=lf.token_selection, nan_counts=lf.nan_counts, nan_policy=lf.nan_policy)

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def excluded(self) -> torch.Tensor:
        """bool [N]: samples with NaN/Inf values at extraction (nan_counts > 0), never used."""
        return self.nan_counts > 0

    def policy_words(self) -> str:
        """How the file's NaN/Inf rows were stored, for messages."""
        return nan_policy_words(self.nan_policy)

    @property
    def dtype(self) -> torch.dtype:
        return self.activations.dtype

    def stored_rows(self) -> torch.Tensor:
        """int64 [N]: rows each sample occupies in the file (what a read of it costs)."""
        if self.layout == "padded":
            return torch.full((self.num_samples,), int(self.activations.shape[1]), dtype=torch.int64)
        return self.lengths.clone()

    def require_kinds(self, reason: str) -> None:
        if self.token_kinds is None:
            raise LayerwiseError(
                f"{self.path}: the layer file has no 'token_kinds' key (written by an older layerwise), so {reason} "
                "cannot be applied; re-extract, or train on every position with keep_kinds=all drop_kinds=none")

    def _mask(self, kinds: torch.Tensor | None, lengths: torch.Tensor, t: int, allowed: torch.Tensor | None) -> torch.Tensor:
        """bool mask of kept positions of a padded block [n, t] (or a ragged run [rows] when t < 0)."""
        if t >= 0:
            mask = torch.arange(t)[None, :] < lengths[:, None]
        else:
            mask = torch.ones(int(lengths.sum()), dtype=torch.bool)
        if allowed is not None:
            mask &= allowed[kinds.to(torch.int64)]
        return mask

    def kept_counts(self, allowed: torch.Tensor | None) -> torch.Tensor:
        """int64 [N]: kept rows per sample (not padding, kind allowed); `allowed` None: every position."""
        if allowed is None:
            return self.lengths.clone()
        self.require_kinds("the token-kind filter")
        if self.layout == "padded":
            return self._mask(self.token_kinds, self.lengths, self.token_kinds.shape[1], allowed).sum(1)
        keep = allowed[self.token_kinds.to(torch.int64)].to(torch.int64)
        csum = torch.cat([torch.zeros(1, dtype=torch.int64), keep.cumsum(0)])
        return csum[self.offsets[1:]] - csum[self.offsets[:-1]]

    def read_run(self, a: int, b: int, allowed: torch.Tensor | None) -> torch.Tensor:
        """Kept rows [m, H] of samples a..b-1 (one contiguous read), in file order and file dtype."""
        lengths = self.lengths[a:b]
        if self.layout == "padded":
            t = int(lengths.max()) if b > a else 0
            block = self.activations[a:b, :t]
            kinds = self.token_kinds[a:b, :t] if allowed is not None else None
            mask = self._mask(kinds, lengths, t, allowed)
            return block[mask]
        r0, r1 = int(self.offsets[a]), int(self.offsets[b])
        block = self.activations[r0:r1]
        if allowed is None:
            return block.clone()
        mask = self._mask(self.token_kinds[r0:r1], lengths, -1, allowed)
        return block[mask]


def open_sources(paths: list[str | os.PathLike], mmap: bool = True) -> list[LayerSource]:
    """Open the files of one layer (one per language) and check that they belong together."""
    if not paths:
        raise LayerwiseError("no layer files given")
    sources = [LayerSource.open(p, mmap=mmap) for p in paths]
    layers = sorted({s.layer for s in sources})
    if len(layers) != 1:
        raise LayerwiseError(f"the layer files of one SAE must hold one layer, got layers {layers} "
                             f"({', '.join(Path(s.path).name for s in sources)})")
    hidden = sorted({s.hidden_size for s in sources})
    if len(hidden) != 1:
        raise LayerwiseError(f"the layer files of one SAE must have one hidden size, got {hidden}")
    langs = [s.language for s in sources]
    dup = sorted({lang for lang in langs if langs.count(lang) > 1})
    if dup:
        raise LayerwiseError(f"layer {layers[0]}: more than one file for language(s) {', '.join(dup)}")
    return sources


def group_by_layer(paths: list[str | os.PathLike]) -> dict[int, list[str]]:
    """{layer: [paths]} from each file's own `layer` key (memory-mapped load: no activations read)."""
    groups: dict[int, list[str]] = {}
    for p in paths:
        groups.setdefault(open_layer_file(p).layer, []).append(str(p))
    return dict(sorted(groups.items()))


def select_sources(sources: Sequence[LayerSource], language: str) -> list[LayerSource]:
    if language == POOLED:
        return list(sources)
    chosen = [s for s in sources if s.language == language]
    if not chosen:
        raise LayerwiseError(f"SAE option 'language' is {language!r}, but the layer files given are for "
                             f"{', '.join(sorted(s.language for s in sources))}")
    return chosen
