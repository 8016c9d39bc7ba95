"""Per-(layer, language) files written once, straight into their final `.pt` format.

Every position a unit will store is known before the first forward pass (`UnitLayout`: lengths,
token ids and kinds come from the tokenizer alone), so the file's shape is fixed up front and
`ptfile.PtFileWriter` streams the activation rows, sample by sample (zero padding included),
into the final file. Nothing is buffered, copied or rewritten: the bytes a unit writes are the
bytes that are published. Small per-sample tensors (lengths, offsets, token ids and kinds, NaN
counts) are written when the file is finished.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.layerfile.ptfile import PtFileWriter, TensorSlot

STREAMED = ["activations"]


@dataclass
class UnitLayout:
    """What every layer file of one unit will hold, per sample, known before extraction."""

    lengths: list[int]                 # positions stored per sample
    token_ids: list[torch.Tensor]      # int64 [lengths[i]] per sample
    token_kinds: list[torch.Tensor]    # int8 [lengths[i]] per sample

    @property
    def t_max(self) -> int:
        return max(self.lengths, default=0)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def activation_shape(self, layout: str, hidden: int) -> list[int]:
        n = len(self.lengths)
        return [self.total, hidden] if layout == "ragged" else [n, self.t_max, hidden]

    def small_tensors(self, layout: str, nan_counts: list[int]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor(self.lengths, dtype=torch.int64)
        offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        if layout == "ragged":
            ids = torch.cat(self.token_ids) if self.token_ids else torch.zeros(0, dtype=torch.int64)
            kinds = torch.cat(self.token_kinds) if self.token_kinds else torch.zeros(0, dtype=torch.int8)
        else:
            n, t = len(self.lengths), self.t_max
            ids = torch.full((n, t), schema.PAD_TOKEN_ID, dtype=torch.int64)
            kinds = torch.full((n, t), schema.TOKEN_KINDS["pad"], dtype=torch.int8)
            for i, (a, k) in enumerate(zip(self.token_ids, self.token_kinds)):
                ids[i, :len(a)] = a
                kinds[i, :len(k)] = k
        return {"lengths": lengths, "offsets": offsets, "token_ids": ids.contiguous(), "token_kinds": kinds.contiguous(),
                "nan_counts": torch.tensor(nan_counts, dtype=torch.int64)}


def layer_file_template(layout_plan: UnitLayout, layout: str, hidden: int, dtype: torch.dtype,
                        meta: dict[str, Any]) -> dict[str, Any]:
    """The object a layer file holds, with slots for its tensors (shapes fixed by the layout)."""
    n = len(layout_plan.lengths)
    id_shape = [layout_plan.total] if layout == "ragged" else [n, layout_plan.t_max]
    obj = dict(meta)
    obj.update(
        activations=TensorSlot(layout_plan.activation_shape(layout, hidden), dtype),
        lengths=TensorSlot([n], torch.int64),
        offsets=TensorSlot([n + 1], torch.int64),
        token_ids=TensorSlot(id_shape, torch.int64),
        token_kinds=TensorSlot(id_shape, torch.int8),
        nan_counts=TensorSlot([n], torch.int64),
        hidden_size=int(hidden),
        layout=layout,
        dtype=schema.dtype_name(dtype),
    )
    missing = [k for k in schema.LAYER_FILE_KEYS if k not in obj]
    if missing:
        raise ValueError(f"layer file lacks keys {missing}")
    return obj


class LayerFileStream:
    """Streams one layer's rows, sample by sample, into its final file; resumable from `state()`."""

    def __init__(self, path: Path, layout_plan: UnitLayout, layout: str, hidden: int, dtype: torch.dtype,
                 meta: dict[str, Any], state: dict | None = None):
        if layout not in schema.LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {schema.LAYOUTS}")
        self.path = Path(path)
        self.plan = layout_plan
        self.layout = layout
        self.hidden = int(hidden)
        self.dtype = dtype
        self._row_bytes = self.hidden * torch.empty((), dtype=dtype).element_size()
        obj = layer_file_template(layout_plan, layout, hidden, dtype, meta)
        if state is None:
            self.writer = PtFileWriter(self.path, obj, STREAMED)
            self.nan_counts: list[int] = []
        else:
            self.writer = PtFileWriter.resume(self.path, obj, STREAMED, state["writer"])
            self.nan_counts = [int(x) for x in state["nan_counts"]]

    @property
    def num_samples(self) -> int:
        return len(self.nan_counts)

    def append(self, rows: torch.Tensor, nan_count: int = 0) -> None:
        """Rows [T_i, H] (CPU) of the next sample; must match the planned length."""
        i = self.num_samples
        if i >= len(self.plan.lengths):
            raise ValueError(f"{self.path.name}: sample {i} is beyond the {len(self.plan.lengths)} planned samples")
        expected = self.plan.lengths[i]
        if rows.dim() != 2 or rows.shape[0] != expected or rows.shape[1] != self.hidden:
            raise ValueError(f"{self.path.name}: sample {i} has rows {tuple(rows.shape)}, planned [{expected}, {self.hidden}]")
        self.writer.write(rows.to(self.dtype).contiguous())
        if self.layout == "padded":
            self.writer.write_zeros((self.plan.t_max - expected) * self._row_bytes)
        self.nan_counts.append(int(nan_count))

    def state(self) -> dict:
        return {"writer": self.writer.state(), "nan_counts": list(self.nan_counts)}

    def finish(self) -> dict:
        """Complete the file under its final name; returns {"bytes", "sha256"}."""
        if self.num_samples != len(self.plan.lengths):
            raise ValueError(f"{self.path.name}: {self.num_samples} of {len(self.plan.lengths)} samples written")
        return self.writer.finish(self.plan.small_tensors(self.layout, self.nan_counts))

    def abort(self) -> None:
        self.writer.abort()
