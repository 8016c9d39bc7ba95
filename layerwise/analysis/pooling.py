"""Mean-pool the stored rows of each sample over each view, one chunk at a time.

`ViewPooler` consumes `reader.Chunk`s and keeps one float32 sum [N, H] and one count [N] per
view; `result()` divides them. A sample with no position of a view, or with a NaN/Inf among them,
gets a NaN vector for that view (the analyses leave it out and say how many were left out).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .reader import Chunk, LayerFile, iter_chunks, CHUNK_BYTES
from .views import EVERY_ROW, SKIP_FIRST


def view_row_mask(chunk: Chunk, spec) -> torch.Tensor:
    """bool [R]: the chunk rows that belong to a view (kinds set, EVERY_ROW or SKIP_FIRST)."""
    if spec == EVERY_ROW:
        return torch.ones(len(chunk.sample), dtype=torch.bool)
    if spec == SKIP_FIRST:
        return chunk.position > 0
    codes = torch.tensor(sorted(spec), dtype=chunk.kinds.dtype)
    return torch.isin(chunk.kinds, codes)


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
    def __init__(self, n_samples: int, hidden: int, plan: dict):
        self.plan = plan
        self.sums = {v: torch.zeros(n_samples, hidden, dtype=torch.float32) for v in plan}
        self.counts = {v: torch.zeros(n_samples, dtype=torch.int64) for v in plan}

    def add(self, chunk: Chunk) -> None:
        for view, spec in self.plan.items():
            m = view_row_mask(chunk, spec)
            if not bool(m.any()):
                continue
            seg = chunk.sample[m] + chunk.start
            self.sums[view].index_add_(0, seg, chunk.rows[m])
            self.counts[view].index_add_(0, seg, torch.ones_like(seg))

    def result(self) -> dict[str, Pooled]:
        out = {}
        for view in self.plan:
            counts = self.counts[view]
            vec = self.sums[view] / counts.clamp(min=1).unsqueeze(1).to(torch.float32)
            valid = (counts > 0) & torch.isfinite(vec).all(dim=1)
            vec[~valid] = float("nan")
            out[view] = Pooled(vec.numpy(), counts.numpy(), valid.numpy())
        self.sums.clear()
        return out


def pool_file(lf: LayerFile, plan: dict, chunk_bytes: int = CHUNK_BYTES, consumers=()) -> dict[str, Pooled]:
    """Read the file once; every chunk goes to the view pooler and to each extra consumer."""
    pooler = ViewPooler(lf.n_samples, lf.hidden_size, plan)
    for chunk in iter_chunks(lf, chunk_bytes):
        pooler.add(chunk)
        for c in consumers:
            c.add(chunk)
    return pooler.result()
