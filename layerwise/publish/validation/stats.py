"""Activation statistics of a layer file, walked in chunks of samples (host memory stays flat).

`stream_stats` gives the NaN/Inf count and the L2-norm mean/std of the stored rows, overall and per
gender, and checks the padding of the padded layout on the way.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from layerwise.core import schema
from layerwise.publish.validation.problems import Problems

CHUNK_BYTES = 64 << 20        # float32 working set per chunk of samples


@dataclass
class RunningStats:
    """Count, mean and M2 of a stream of values (Chan et al. parallel merge; float64)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        k = int(values.numel())
        if k == 0:
            return
        values = values.to(torch.float64)
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + k
        delta = mean_b - self.mean
        self.mean += delta * k / n
        self.m2 += m2_b + delta * delta * self.n * k / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")

    def result(self) -> tuple[float | None, float | None]:
        return (self.mean, self.std) if self.n else (None, None)



def row_norms(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(L2 norm per row (float64), mask of rows without NaN/Inf, number of NaN/Inf values).

    Norms are taken in float32 (fast); a row whose float32 norm is not finite holds a NaN/Inf
    or overflowed, and only those rows are looked at value by value (in float64).
    """
    flat = rows.reshape(-1, rows.shape[-1]) if rows.dim() else rows
    if flat.numel() == 0:
        return torch.zeros(flat.shape[0], dtype=torch.float64), torch.ones(flat.shape[0], dtype=torch.bool), 0
    x = flat if flat.dtype == torch.float32 else flat.to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1).to(torch.float64)
    suspect = ~torch.isfinite(norms)
    ok = torch.ones_like(suspect)
    nonfinite = 0
    if bool(suspect.any()):
        idx = suspect.nonzero().squeeze(1)
        exact = flat[idx].to(torch.float64)
        finite = torch.isfinite(exact)
        nonfinite = int((~finite).sum())
        ok[idx] = finite.all(dim=1)
        norms[idx] = torch.linalg.vector_norm(torch.where(finite, exact, 0.0), dim=1)
    return norms, ok, nonfinite


def stream_stats(name: str, d: dict[str, Any], genders: Sequence[str], problems: Problems):
    """Walk the stored rows in chunks of samples: non-finite count, L2-norm stats overall and per gender."""
    acts, lengths, layout = d["activations"], d["lengths"].to(torch.int64), d["layout"]
    n = len(lengths)
    hidden = int(acts.shape[-1]) if acts.dim() else 0
    gender_names = sorted(set(genders))
    code = torch.tensor([gender_names.index(g) for g in genders], dtype=torch.int64)
    overall = RunningStats()
    per_gender = {g: RunningStats() for g in gender_names}
    nonfinite = 0
    pad_nonzero = pad_bad_ids = 0
    t_max = int(acts.shape[1]) if layout == "padded" else 0
    positions_per_sample = t_max if layout == "padded" else (int(lengths.max()) if n else 1)
    step = max(1, CHUNK_BYTES // max(1, positions_per_sample * hidden * 4))
    offsets = d["offsets"].to(torch.int64)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        lens = lengths[i0:i1]
        if layout == "padded":
            block = acts[i0:i1]
            mask = torch.arange(t_max).unsqueeze(0) < lens.unsqueeze(1)
            pad_nonzero += int(torch.count_nonzero(block[~mask]))
            pad_bad_ids += int((d["token_ids"][i0:i1][~mask] != schema.PAD_TOKEN_ID).sum())
            rows = block[mask]
            del block
        else:
            rows = acts[int(offsets[i0]):int(offsets[i1])]
        norms, ok, bad = row_norms(rows)
        del rows
        nonfinite += bad
        row_gender = torch.repeat_interleave(code[i0:i1], lens)[ok]
        norms = norms[ok]
        overall.add(norms)
        for k, g in enumerate(gender_names):
            per_gender[g].add(norms[row_gender == k])
    if pad_nonzero:
        problems.add("shapes", f"{name}: {pad_nonzero} non-zero value(s) in the padding beyond lengths")
    if pad_bad_ids:
        problems.add("shapes", f"{name}: {pad_bad_ids} padding token id(s) are not {schema.PAD_TOKEN_ID}")
    return nonfinite, overall, per_gender

