"""Streamed, atomic, resumable writing of per-(layer, language) `.pt` files.

Rows (the kept positions of one sample) are appended to a raw scratch file on disk as they
arrive, so host memory does not grow with the number of samples. `finish()` assembles the
final tensor in a file-backed (mmap) buffer, `torch.save`s it to `<name>.tmp` and renames it:
a file with the final name is always complete. `state()`/`restore()` let an interrupted run
continue from its last commit.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import schema


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


@dataclass
class LayerFileWriter:
    """Accumulates one layer's rows for one language on disk; see module docstring.

    Rows and their token ids go to two append-only scratch files; only the per-sample lengths
    and NaN counts (a few integers per sample) stay in memory, so a checkpoint is cheap.
    """

    path: Path
    scratch_dir: Path
    hidden_size: int
    dtype: torch.dtype
    layout: str
    lengths: list[int] = field(default_factory=list)
    nan_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.layout not in schema.LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose from {schema.LAYOUTS}")
        self.path = Path(self.path)
        self.scratch_dir = Path(self.scratch_dir)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._rows_path = self.scratch_dir / (self.path.name + ".rows")
        self._ids_path = self.scratch_dir / (self.path.name + ".ids")
        self._rows = open(self._rows_path, "ab")
        self._ids = open(self._ids_path, "ab")
        self._row_bytes = self.hidden_size * torch.empty((), dtype=self.dtype).element_size()

    # -- appending ---------------------------------------------------------------------------
    def append(self, rows: torch.Tensor, token_ids: torch.Tensor, nan_count: int = 0) -> None:
        """Append one sample: rows [T_i, H] (any device), token_ids [T_i]."""
        if rows.dim() != 2 or rows.shape[1] != self.hidden_size:
            raise ValueError(f"rows must be [T, {self.hidden_size}], got {tuple(rows.shape)}")
        if token_ids.shape[0] != rows.shape[0]:
            raise ValueError("token_ids and rows disagree on the number of positions")
        cpu = rows.detach().to("cpu", self.dtype).contiguous()
        self._rows.write(cpu.view(torch.uint8).numpy().data)  # raw bytes, no extra copy
        self._ids.write(token_ids.detach().to("cpu", torch.int64).contiguous().numpy().data)
        self.lengths.append(int(rows.shape[0]))
        self.nan_counts.append(int(nan_count))

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    # -- checkpointing -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Flush both scratch files to disk and return what is needed to restore this point."""
        for fh in (self._rows, self._ids):
            fh.flush()
            os.fsync(fh.fileno())
        return {"lengths": list(self.lengths), "nan_counts": list(self.nan_counts)}

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to a committed `state()`: rows written after it are discarded."""
        self.lengths = [int(x) for x in state["lengths"]]
        self.nan_counts = [int(x) for x in state["nan_counts"]]
        total = sum(self.lengths)
        for attr, path, nbytes in (("_rows", self._rows_path, total * self._row_bytes), ("_ids", self._ids_path, total * 8)):
            getattr(self, attr).close()
            with open(path, "r+b") as fh:
                if fh.seek(0, os.SEEK_END) < nbytes:
                    raise ValueError(f"scratch file {path} is shorter than its checkpoint")
                fh.truncate(nbytes)
            setattr(self, attr, open(path, "ab"))

    # -- finishing ---------------------------------------------------------------------------
    def finish(self, meta: dict[str, Any]) -> int:
        """Write the final file atomically and delete the scratch; returns bytes written."""
        self._rows.close()
        self._ids.close()
        lengths = torch.tensor(self.lengths, dtype=torch.int64)
        offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        total = int(offsets[-1])
        rows = _mapped(self._rows_path, (total, self.hidden_size), self.dtype)
        flat_ids = _mapped(self._ids_path, (total,), torch.int64)
        buffer_path = self.scratch_dir / (self.path.name + ".padded")
        if self.layout == "ragged":
            activations, token_ids = rows, flat_ids
        else:
            t_max = int(lengths.max()) if len(self.lengths) else 0
            activations = file_backed_zeros(buffer_path, (len(self.lengths), t_max, self.hidden_size), self.dtype)
            token_ids = torch.full((len(self.lengths), t_max), schema.PAD_TOKEN_ID, dtype=torch.int64)
            for i, n in enumerate(self.lengths):
                start = int(offsets[i])
                activations[i, :n] = rows[start:start + n]
                token_ids[i, :n] = flat_ids[start:start + n]
        payload = dict(meta)
        payload.update(
            activations=activations,
            lengths=lengths,
            offsets=offsets,
            token_ids=token_ids.clone() if self.layout == "ragged" else token_ids,
            nan_counts=torch.tensor(self.nan_counts, dtype=torch.int64),
            hidden_size=self.hidden_size,
            layout=self.layout,
            dtype=schema.dtype_name(self.dtype),
        )
        missing = [k for k in schema.LAYER_FILE_KEYS if k not in payload]
        if missing:
            raise ValueError(f"layer file {self.path.name} lacks keys {missing}")
        nbytes = atomic_torch_save(payload, self.path)
        del activations, rows, payload, flat_ids, token_ids
        self.discard()
        buffer_path.unlink(missing_ok=True)
        return nbytes

    def discard(self) -> None:
        for fh, path in ((self._rows, self._rows_path), (self._ids, self._ids_path)):
            fh.close()
            path.unlink(missing_ok=True)


def _mapped(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Read-only view of a raw scratch file (copy-on-write mmap: no RAM up front)."""
    numel = 1
    for s in shape:
        numel *= s
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.from_file(str(path), shared=False, size=numel, dtype=dtype).view(shape)


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
