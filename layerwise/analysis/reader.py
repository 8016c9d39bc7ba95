"""Open a layer file memory-mapped and walk its stored rows in chunks of samples.

`open_layer_file` reads only the small tensors (lengths, offsets, token kinds) into memory; the
activations stay memory-mapped. `iter_chunks` slices the activations one chunk of samples at a
time (at most `chunk_bytes` of float32 working set), so host memory does not grow with the number
of samples. Both layouts come out the same way: the chunk's stored rows without padding, their
token kinds and the sample each row belongs to.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .. import schema
from ..errors import LayerwiseError

CHUNK_BYTES = 64 << 20        # float32 working set per chunk of samples
REQUIRED_KEYS = ("layer", "activations", "genders", "hidden_size", "language", "sample_ids", "lengths",
                 "offsets", "token_selection", "layout")


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

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else f"layer_{self.layer}_{self.language}"


def open_layer_file(path: str | Path) -> LayerFile:
    """torch.load(weights_only=True, mmap=True) and check the keys the analysis needs."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
    lengths = torch.as_tensor(data["lengths"]).to(torch.int64)
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
        kinds = torch.as_tensor(kinds).to(torch.int8)
        want = tuple(shape[:2]) if layout == "padded" else (shape[0],)
        if tuple(kinds.shape) != want:
            raise LayerwiseError(f"{where}: token_kinds has shape {list(kinds.shape)}, expected {list(want)}")
    return LayerFile(
        path=path, layer=int(data["layer"]), language=str(data["language"]), layout=layout,
        token_selection=str(data["token_selection"]), dtype=str(data.get("dtype", "")), hidden_size=hidden,
        sample_ids=[str(s) for s in data["sample_ids"]], genders=[str(g) for g in data["genders"]],
        lengths=lengths, offsets=offsets, token_kinds=kinds, activations=acts,
    )


@dataclass
class Chunk:
    """Samples [start, stop) as a float32 block [c, T_c, H]; positions beyond a sample's length are 0.

    `block` is what pooling multiplies with its view masks (one batched matmul per chunk);
    `rows`, `sample`, `position` and `row_kinds` are the stored positions only, for consumers that
    work row by row (the SAE encoder).
    """

    start: int
    stop: int
    block: torch.Tensor            # float32 [c, T_c, H]
    kinds: torch.Tensor | None     # int8 [c, T_c] (pad beyond lengths); None in files without token_kinds
    lengths: torch.Tensor          # int64 [c]

    @property
    def n(self) -> int:
        return self.stop - self.start

    @cached_property
    def valid(self) -> torch.Tensor:
        """bool [c, T_c]: stored positions."""
        return torch.arange(self.block.shape[1]).unsqueeze(0) < self.lengths.unsqueeze(1)

    @cached_property
    def rows(self) -> torch.Tensor:
        return self.block[self.valid]

    @cached_property
    def sample(self) -> torch.Tensor:
        """int64 [R]: the chunk-local sample of every stored row."""
        return torch.repeat_interleave(torch.arange(self.n), self.lengths)

    @cached_property
    def position(self) -> torch.Tensor:
        """int64 [R]: the position of every stored row within its sample."""
        return self.valid.nonzero()[:, 1]


def samples_per_chunk(lf: LayerFile, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many samples one chunk holds: the widest sample's float32 rows times this fit chunk_bytes."""
    if lf.layout == "padded":
        width = int(lf.activations.shape[1])
    else:
        width = int(lf.lengths.max()) if lf.n_samples else 1
    return max(1, int(chunk_bytes) // max(1, width * lf.hidden_size * 4))


def iter_chunks(lf: LayerFile, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Walk the file in chunks of samples; the activations are sliced once per chunk."""
    step = samples_per_chunk(lf, chunk_bytes)
    for i0 in range(0, lf.n_samples, step):
        i1 = min(lf.n_samples, i0 + step)
        lens = lf.lengths[i0:i1]
        if lf.layout == "padded":
            block = lf.activations[i0:i1].to(torch.float32)       # mmap slice [c, T_max, H] -> float32 copy
            kinds = lf.token_kinds[i0:i1] if lf.token_kinds is not None else None
        else:
            a, b = int(lf.offsets[i0]), int(lf.offsets[i1])
            width = int(lens.max()) if len(lens) else 0
            valid = torch.arange(width).unsqueeze(0) < lens.unsqueeze(1)
            block = torch.zeros(i1 - i0, width, lf.hidden_size, dtype=torch.float32)
            block[valid] = lf.activations[a:b].to(torch.float32)
            kinds = None
            if lf.token_kinds is not None:
                kinds = torch.zeros(i1 - i0, width, dtype=torch.int8)
                kinds[valid] = lf.token_kinds[a:b]
        yield Chunk(i0, i1, block, kinds, lens)
        del block
