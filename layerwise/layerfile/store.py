"""Small file helpers: atomic torch.save (on `atomic`), file-backed tensors, reading layer files.

Layer files themselves are written once, streamed into their final format, by
`layerfile.LayerFileStream` (on top of `ptfile.PtFileWriter`); `load_layer_file` / `sample_rows`
read them back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from layerwise.core.atomic import atomic_path
from layerwise.core.atomic import (
    atomic_write_json as atomic_write_json,  # re-exported: benchmarks/gpu_benchmark.py imports it here
)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> int:
    """torch.save to `path` atomically and durably (`atomic.atomic_path`); returns bytes written."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path).stat().st_size


def file_backed_zeros(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled tensor whose storage is an mmap of `path` (sparse file: no RAM up front)."""
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    with open(path, "wb") as fh:
        fh.truncate(nbytes)
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)


def load_layer_file(path: str | os.PathLike, mmap: bool = True) -> dict[str, Any]:
    """Load a layer file the way users do (weights_only), memory-mapped by default."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def sample_rows(data: dict[str, Any], i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [T_i, H], token_ids [T_i]) of sample i, whatever the layout."""
    n = int(data["lengths"][i])
    if data["layout"] == "ragged":
        a, b = int(data["offsets"][i]), int(data["offsets"][i + 1])
        return data["activations"][a:b], data["token_ids"][a:b]
    return data["activations"][i, :n], data["token_ids"][i, :n]
