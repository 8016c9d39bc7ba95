"""Walk a layer file's stored rows in chunks of samples.

Files are opened by the format package's one reader (`layerwise.layerfile.reader.open_layer_file`), which
reads only the small tensors (lengths, offsets, token kinds) into memory; the activations stay
memory-mapped. `iter_chunks` slices the activations one chunk of samples at a
time (at most `chunk_bytes` of float32 working set), so host memory does not grow with the number
of samples. Both layouts come out the same way: the chunk's stored rows without padding, their
token kinds and the sample each row belongs to.

Samples with NaN/Inf values at extraction (`nan_counts > 0`: zeroed by `--nan_policy zero`, kept by `keep`)
are not data: they come out with no stored rows (length 0, zero block), so no view, probe, direction, CKA
or SAE latent ever sees them (the analysis notes how many were left out).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from layerwise.layerfile.reader import LayerFile

CHUNK_BYTES = 64 << 20        # float32 working set per chunk of samples


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


def iter_chunks(lf: LayerFile, chunk_bytes: int = CHUNK_BYTES, exclude: torch.Tensor | None = None) -> Iterator[Chunk]:
    """Walk the file in chunks of samples; the activations are sliced once per chunk. Samples marked in
    `exclude` (bool [N]; default `lf.excluded`: nan_counts > 0) have no stored rows in the chunks."""
    step = samples_per_chunk(lf, chunk_bytes)
    excluded = lf.excluded if exclude is None else torch.as_tensor(exclude, dtype=torch.bool)
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
        out = excluded[i0:i1]
        if bool(out.any()):
            # a new block (never written into the file's mapping); zeros, so that no NaN reaches a matmul
            block = torch.where(out[:, None, None], torch.zeros((), dtype=block.dtype), block)
            lens = torch.where(out, torch.zeros((), dtype=lens.dtype), lens)
            if kinds is not None:
                kinds = torch.where(out[:, None], torch.zeros((), dtype=kinds.dtype), kinds)
        yield Chunk(i0, i1, block, kinds, lens)
        del block
