"""Small file helpers: atomic writes (torch, text, JSON), file-backed tensors, reading layer files.

Layer files themselves are written once, streamed into their final format, by
`layerfile.LayerFileStream` (on top of `ptfile.PtFileWriter`); `load_layer_file` / `sample_rows`
read them back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> int:
    """torch.save to `path` via a temporary file and a rename; returns bytes written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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
