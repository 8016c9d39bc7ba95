"""The data provider: batches [batch, H] of stored rows for SAELens, read in large contiguous chunks.

Random row reads are slow on cluster file systems, so rows are never read one by one:

1. the samples of one split (train or validation) of every file are cut into *chunks*: runs of
   consecutive samples whose stored rows add up to at most `chunk_tokens` (at least one sample);
2. each epoch visits the chunks (of all files: languages are mixed) in a random order, and reads
   one chunk at a time, as contiguous reads of its consecutive selected samples; a worker thread
   reads the next chunk while the current one is shuffled and batched (reads stay sequential);
3. the kept rows (not padding, token kind allowed) go through a shuffle buffer of `buffer_tokens`
   rows (in the file's dtype): each new row takes the slot of a randomly chosen row, which is
   emitted. Every row enters and leaves once, so a finite pass yields each kept row exactly once;
4. the emitted rows are cut into batches of `batch_size` rows, converted to the training dtype.

Host memory is the buffer plus a few chunks, whatever the size of the files.

Samples with NaN/Inf values at extraction (`nan_counts > 0` in their layer file, whatever the
`--nan_policy`: zeroed rows are not data, kept NaNs cannot be trained on) are left out of every
provider, whatever the sample masks say; `excluded` counts them per language.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from layerwise.core.errors import LayerwiseError
from layerwise.sae.options import SAEOptions
from layerwise.sae.source import LayerSource, allowed_table
from layerwise.sae.split import split_mask

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Chunk:
    source: int                                   # index into the provider's sources
    runs: list[tuple[int, int]] = field(default_factory=list)   # [a, b): consecutive samples read together
    rows: int = 0                                 # stored rows of the chunk (cost of its reads)

    @property
    def start(self) -> int:
        return self.runs[0][0]

    @property
    def end(self) -> int:
        return self.runs[-1][1]


def plan_chunks(source_index: int, selected: torch.Tensor, stored: torch.Tensor, chunk_tokens: int) -> list[Chunk]:
    """Cut the selected samples (bool [N]) into chunks of consecutive samples of <= chunk_tokens stored rows."""
    chunks: list[Chunk] = []
    current = Chunk(source_index)
    for i in torch.nonzero(selected).flatten().tolist():
        cost = int(stored[i])
        if current.runs and current.rows + cost > chunk_tokens:
            chunks.append(current)
            current = Chunk(source_index)
        if current.runs and current.runs[-1][1] == i:
            current.runs[-1] = (current.runs[-1][0], i + 1)
        else:
            current.runs.append((i, i + 1))
        current.rows += cost
    if current.runs:
        chunks.append(current)
    return chunks


class ShuffleBuffer:
    """A fixed-size buffer of rows; each row pushed replaces (and emits) a randomly chosen one."""

    def __init__(self, capacity: int, hidden: int, dtype: torch.dtype, generator: torch.Generator):
        self.capacity, self.generator, self.fill = capacity, generator, 0
        self.rows = torch.empty(capacity, hidden, dtype=dtype)

    def push(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Store `rows`; returns the rows they displaced (as many, in random order), as blocks."""
        out, i, n = [], 0, rows.shape[0]
        if self.fill < self.capacity:
            take = min(self.capacity - self.fill, n)
            self.rows[self.fill:self.fill + take] = rows[:take]
            self.fill += take
            i = take
        while i < n:
            m = min(self.capacity, n - i)
            slots = torch.randperm(self.capacity, generator=self.generator)[:m]
            out.append(self.rows.index_select(0, slots))
            self.rows.index_copy_(0, slots, rows[i:i + m])
            i += m
        return out

    def drain(self) -> list[torch.Tensor]:
        perm = torch.randperm(self.fill, generator=self.generator)
        out = self.rows[:self.fill][perm]
        self.fill = 0
        return [out]


class Batcher:
    """Cuts a stream of row blocks into [batch_size, H] batches of `dtype` (one copy per row, which is
    also the dtype conversion)."""

    def __init__(self, batch_size: int, dtype: torch.dtype, drop_last: bool):
        self.batch_size, self.dtype, self.drop_last = batch_size, dtype, drop_last
        self.pending: deque[torch.Tensor] = deque()
        self.count = 0

    def push(self, blocks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        for rows in blocks:
            if rows.shape[0]:
                self.pending.append(rows)
                self.count += rows.shape[0]
        while self.count >= self.batch_size:
            yield self._take(self.batch_size)

    def _take(self, n: int) -> torch.Tensor:
        out = torch.empty(n, self.pending[0].shape[1], dtype=self.dtype)
        filled = 0
        while filled < n:
            head = self.pending[0]
            take = min(n - filled, head.shape[0])
            out[filled:filled + take].copy_(head[:take])
            if take == head.shape[0]:
                self.pending.popleft()
            else:
                self.pending[0] = head[take:]
            filled += take
        self.count -= n
        return out

    def finish(self) -> Iterator[torch.Tensor]:
        if self.count and not self.drop_last:
            yield self._take(self.count)
        self.pending.clear()
        self.count = 0


class _Inline:
    """ThreadPoolExecutor's submit/shutdown, run in the calling thread (read_ahead=False)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

    def submit(self, fn, *args):
        return self._Done(fn(*args))

    def shutdown(self, **_):
        pass


class ActivationProvider:
    """Iterable of float batches [batch_size, H] over the kept rows of one split of some layer files.

    `epochs=None` iterates forever (what `SAETrainer` wants: it stops after its token budget);
    an integer makes a finite pass. `shuffle=False` reads the chunks in file order and yields the
    rows in file order (evaluation)."""

    def __init__(self, sources: Sequence[LayerSource], sample_masks: Sequence[torch.Tensor],
                 kind_names: tuple[str, ...] | None, *, batch_size: int, dtype: torch.dtype = torch.float32,
                 shuffle: bool = True, epochs: int | None = None, seed: int = 0, chunk_tokens: int = 16384,
                 buffer_tokens: int = 131072, drop_last: bool | None = None):
        if len(sources) != len(sample_masks):
            raise ValueError("one sample mask per source")
        self.sources = list(sources)
        self.allowed = None if kind_names is None else allowed_table(kind_names)
        self.batch_size, self.dtype, self.shuffle, self.epochs, self.seed = batch_size, dtype, shuffle, epochs, seed
        self.drop_last = (epochs is None) if drop_last is None else drop_last
        self.hidden_size = self.sources[0].hidden_size
        self.chunks: list[Chunk] = []
        self.num_rows = 0
        ids: set[str] = set()
        # language -> ids of the masked samples left out for NaN/Inf values at extraction (nan_counts > 0)
        self.excluded_ids: dict[str, list[str]] = {}
        for si, (src, mask) in enumerate(zip(self.sources, sample_masks)):
            bad = mask & src.excluded
            self.excluded_ids.setdefault(src.language, []).extend(
                sid for sid, b in zip(src.sample_ids, bad.tolist()) if b)
            mask = mask & ~src.excluded
            counts = src.kept_counts(self.allowed)
            selected = mask & (counts > 0)
            self.chunks += plan_chunks(si, selected, src.stored_rows(), chunk_tokens)
            self.num_rows += int(counts[mask].sum())
            ids.update(sid for sid, m in zip(src.sample_ids, mask.tolist()) if m)
        self.num_samples = len(ids)        # distinct sample ids (a sample of several languages counts once)
        self.excluded = {lang: len(v) for lang, v in self.excluded_ids.items()}   # language -> samples left out
        self.buffer_tokens = max(1, min(buffer_tokens, self.num_rows))
        self.read_ahead = True     # read the next chunk in a worker thread

    @classmethod
    def for_split(cls, sources: Sequence[LayerSource], options: SAEOptions, split: str, *, shuffle: bool = True,
                  epochs: int | None = None, seed: int | None = None, drop_last: bool | None = None,
                  batch_size: int | None = None) -> ActivationProvider:
        """The rows of `split` ("train"/"validation") of `sources`, with the options' filters and sizes."""
        kinds = options.kept_kind_names() if options.filters_kinds() else None
        masks = [split_mask(s.sample_ids, split, options.validation_fraction, options.split_seed) for s in sources]
        return cls(sources, masks, kinds, batch_size=batch_size or options.batch_size,
                   dtype=TORCH_DTYPES[options.dtype], shuffle=shuffle, epochs=epochs,
                   seed=options.seed if seed is None else seed, chunk_tokens=options.chunk_tokens,
                   buffer_tokens=options.buffer_tokens, drop_last=drop_last)

    def read_chunk(self, chunk: Chunk) -> list[torch.Tensor]:
        """The kept rows of one chunk, one block per run of consecutive samples (read in file order)."""
        src = self.sources[chunk.source]
        return [src.read_run(a, b, self.allowed) for a, b in chunk.runs]

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.num_rows == 0:
            left_out = sum(self.excluded.values())
            why = (f" ({left_out} sample(s) left out for NaN/Inf values at extraction, nan_counts > 0)"
                   if left_out else "")
            raise LayerwiseError(f"no rows to read: the selected samples of {', '.join(s.path for s in self.sources)} "
                                 f"have no position of the kept token kinds{why}")
        generator = torch.Generator().manual_seed(self.seed)
        batcher = Batcher(self.batch_size, self.dtype, self.drop_last)
        file_dtype = self.sources[0].dtype
        buffer = ShuffleBuffer(self.buffer_tokens, self.hidden_size, file_dtype, generator) if self.shuffle else None
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sae-chunk-reader") if self.read_ahead else _Inline()
        try:
            yield from self._epochs(reader, generator, batcher, buffer, file_dtype)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
        if buffer is not None:
            yield from batcher.push(buffer.drain())
        yield from batcher.finish()

    def _epochs(self, reader, generator, batcher, buffer, file_dtype) -> Iterator[torch.Tensor]:
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = torch.randperm(len(self.chunks), generator=generator).tolist() if self.shuffle else list(range(len(self.chunks)))
            pending = reader.submit(self.read_chunk, self.chunks[order[0]]) if order else None
            for j in range(len(order)):
                blocks = pending.result()
                # Read the next chunk (from disk, in a worker thread) while this one is shuffled and batched:
                # the reads stay sequential, one chunk after the other.
                pending = reader.submit(self.read_chunk, self.chunks[order[j + 1]]) if j + 1 < len(order) else None
                for rows in blocks:
                    if rows.dtype != file_dtype:
                        rows = rows.to(file_dtype)
                    yield from batcher.push(buffer.push(rows) if buffer is not None else [rows])
                del blocks
            epoch += 1
