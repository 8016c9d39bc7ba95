"""Mean-pool the stored rows of each sample over each view, one chunk at a time.

`ViewPooler` consumes `reader.Chunk`s and keeps one float32 sum [N, H] and one count [N] per
view; `result()` divides them. A sample with no position of a view, or with a NaN/Inf among them,
gets a NaN vector for that view (the analyses leave it out and say how many were left out). Samples with
NaN/Inf values at extraction (`nan_counts > 0`) reach the poolers with no position at all
(`reader.iter_chunks`), so they are invalid in every view and every consumer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from layerwise.analysis.reader import CHUNK_BYTES, Chunk, iter_chunks
from layerwise.analysis.views import EVERY_ROW, SKIP_FIRST
from layerwise.layerfile.reader import LayerFile


def view_mask(chunk: Chunk, spec) -> torch.Tensor:
    """bool [c, T_c]: the chunk positions that belong to a view (kinds set, EVERY_ROW or SKIP_FIRST)."""
    if spec == EVERY_ROW:
        return chunk.valid
    if spec == SKIP_FIRST:
        return chunk.valid & (torch.arange(chunk.block.shape[1]) > 0).unsqueeze(0)
    codes = torch.tensor(sorted(spec), dtype=chunk.kinds.dtype)
    return torch.isin(chunk.kinds, codes) & chunk.valid


@dataclass
class Pooled:
    """Per-sample vectors of one view of one file."""

    vectors: np.ndarray    # float32 [N, H]; NaN rows where `valid` is False
    counts: np.ndarray     # int64 [N]: positions pooled per sample
    valid: np.ndarray      # bool [N]: at least one position, all finite

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


class ViewPooler:
    """Per view: sum [N, H] and count [N] of the view's positions, one batched matmul per chunk."""

    def __init__(self, n_samples: int, hidden: int, plan: dict):
        self.plan = plan
        self.views = list(plan)
        self.sums = torch.zeros(len(self.views), n_samples, hidden, dtype=torch.float32)
        self.counts = torch.zeros(len(self.views), n_samples, dtype=torch.int64)

    def add(self, chunk: Chunk) -> None:
        if not self.views:
            return
        masks = torch.stack([view_mask(chunk, self.plan[v]) for v in self.views], dim=1)   # [c, V, T_c]
        weights = masks.to(torch.float32)
        sums = torch.bmm(weights, chunk.block)                                              # [c, V, H]
        if not bool(torch.isfinite(sums).all()):
            # a NaN/Inf row: 0 * NaN would leak it into every view; zero it, and void the views it is in
            bad = ~torch.isfinite(chunk.block).all(dim=2)                                   # [c, T_c]
            block = torch.where(bad.unsqueeze(2), torch.zeros((), dtype=chunk.block.dtype), chunk.block)
            sums = torch.bmm(weights, block)
            hit = (masks & bad.unsqueeze(1)).any(dim=2)                                     # [c, V]
            sums[hit] = float("nan")
        self.sums[:, chunk.start:chunk.stop] = sums.transpose(0, 1)
        self.counts[:, chunk.start:chunk.stop] = masks.sum(dim=2).transpose(0, 1)

    def result(self) -> dict[str, Pooled]:
        out = {}
        for k, view in enumerate(self.views):
            counts = self.counts[k]
            vec = self.sums[k] / counts.clamp(min=1).unsqueeze(1).to(torch.float32)
            valid = (counts > 0) & torch.isfinite(vec).all(dim=1)
            vec[~valid] = float("nan")
            out[view] = Pooled(vec.numpy(), counts.numpy(), valid.numpy())
        return out


def pool_file(lf: LayerFile, plan: dict, chunk_bytes: int = CHUNK_BYTES, consumers=()) -> dict[str, Pooled]:
    """Read the file once; every chunk goes to the view pooler and to each extra consumer."""
    pooler = ViewPooler(lf.n_samples, lf.hidden_size, plan)
    for chunk in iter_chunks(lf, chunk_bytes):
        pooler.add(chunk)
        for c in consumers:
            c.add(chunk)
        del chunk          # before the next block is read: one chunk in memory at a time
    return pooler.result()
