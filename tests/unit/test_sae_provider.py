"""The SAE data provider on identity-coded layer files (no SAELens import).

Every stored row encodes where it comes from: dims [sample index, position, kind, language index,
bos marker]. Padding holds a sentinel. So each yielded row names its origin, and the tests compare
what is yielded against what was written, without using the provider's own bookkeeping.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.sae.options import SAEOptions
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource
from tests.support import sae_synthetic as synthetic

H = 8
N = 24
PAD = -999.0
BOS_MARK = 1.0e6
K = schema.TOKEN_KINDS
LANGS = ("english", "arabic")


def identity_rows(i: int, kinds: torch.Tensor, lang: int) -> torch.Tensor:
    t = kinds.shape[0]
    rows = torch.zeros(t, H)
    rows[:, 0] = i
    rows[:, 1] = torch.arange(t)
    rows[:, 2] = kinds.float()
    rows[:, 3] = lang
    rows[kinds == K["bos"], 4] = BOS_MARK
    return rows


def kinds_of(i: int) -> torch.Tensor:
    return synthetic.sample_kinds(image_tokens=2 + i % 3, prompt_tokens=1 + i % 2, caption_tokens=1 + i % 4)


def write_identity(tmp_path, layout: str, dtype=torch.float32, language: str = "english", layer: int = 3,
                   drop_kinds_key: bool = False):
    lang = LANGS.index(language)
    ids = [f"s{i:03d}" for i in range(N)]
    kinds = [kinds_of(i) for i in range(N)]
    rows = [identity_rows(i, k, lang) for i, k in enumerate(kinds)]
    path = synthetic.write_layer_file(tmp_path / f"layer_{layer}_{language}_{layout}.pt", layer=layer,
                                      language=language, sample_ids=ids, rows=rows, kinds=kinds, layout=layout,
                                      dtype=dtype, pad_value=PAD)
    if drop_kinds_key:
        d = torch.load(path, weights_only=True)
        del d["token_kinds"]
        torch.save(d, path)
    return path, kinds


def expected(kinds_per_sample, kept: set[int], lang: int = 0) -> Counter:
    return Counter((lang, i, p) for i, ks in enumerate(kinds_per_sample) for p, k in enumerate(ks.tolist()) if k in kept)


def origins(batches) -> Counter:
    x = torch.cat(list(batches)).float()
    assert not (x == PAD).any(), "padding was yielded"
    return Counter((int(r[3]), int(r[0]), int(r[1])) for r in x)


def all_rows_provider(sources, options, **kw):
    masks = [torch.ones(s.num_samples, dtype=torch.bool) for s in sources]
    kinds = options.kept_kind_names() if options.filters_kinds() else None
    return ActivationProvider(sources, masks, kinds, batch_size=kw.pop("batch_size", 16),
                              chunk_tokens=options.chunk_tokens, buffer_tokens=options.buffer_tokens, **kw)


SMALL = dict(chunk_tokens=40, buffer_tokens=64, batch_size=16)


@pytest.mark.parametrize("layout", ["padded", "ragged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_shuffled_epoch_yields_each_kept_row_once_no_padding_no_bos(tmp_path, layout, dtype):
    path, kinds = write_identity(tmp_path, layout, dtype)
    src = LayerSource.open(path)
    opts = SAEOptions(**SMALL)                       # default filters: drop bos
    p = all_rows_provider([src], opts, epochs=1, shuffle=True, seed=1, drop_last=False)
    batches = list(p)
    assert all(b.dtype == torch.float32 and b.shape[1] == H for b in batches)
    assert all(b.shape[0] == 16 for b in batches[:-1])
    x = torch.cat(batches)
    assert x[:, 4].max() < 1, "a bos row was yielded"
    got = origins(batches)
    want = expected(kinds, {K["image"], K["prompt"], K["caption"], K["template"]})
    assert got == want and max(got.values()) == 1
    order = [(int(r[0]), int(r[1])) for r in x]
    assert order != sorted(order), "rows came out in file order: not shuffled"
    assert p.num_rows == sum(want.values())


@pytest.mark.parametrize("keep,drop,kept", [
    ("image", "none", {K["image"]}),
    ("caption", "bos", {K["caption"]}),
    ("all", "none", {K["bos"], K["image"], K["prompt"], K["caption"], K["template"]}),
    ("caption,prompt", "prompt", {K["caption"]}),
])
@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_token_kind_filters(tmp_path, layout, keep, drop, kept):
    path, kinds = write_identity(tmp_path, layout)
    opts = SAEOptions(keep_kinds=keep, drop_kinds=drop, **SMALL)
    got = origins(all_rows_provider([LayerSource.open(path)], opts, epochs=1, drop_last=False))
    assert got == expected(kinds, kept)


def test_the_huge_bos_row_is_there_and_only_reaches_batches_when_asked(tmp_path):
    path, _ = write_identity(tmp_path, "padded")
    src = LayerSource.open(path)
    keep_bos = torch.cat(list(all_rows_provider([src], SAEOptions(drop_kinds="none", **SMALL), epochs=1,
                                                drop_last=False)))
    assert int((keep_bos[:, 4] == BOS_MARK).sum()) == N
    default = torch.cat(list(all_rows_provider([src], SAEOptions(**SMALL), epochs=2, drop_last=False)))
    assert default[:, 4].abs().max() == 0


def test_pooled_languages_are_mixed_and_complete(tmp_path):
    (p_en, kinds), (p_ar, _) = write_identity(tmp_path, "padded"), write_identity(tmp_path, "ragged", language="arabic")
    srcs = [LayerSource.open(p_en), LayerSource.open(p_ar)]
    opts = SAEOptions(**SMALL)
    x = torch.cat(list(all_rows_provider(srcs, opts, epochs=1, drop_last=False, seed=3)))
    kept = {K["image"], K["prompt"], K["caption"], K["template"]}
    assert origins([x]) == expected(kinds, kept, 0) + expected(kinds, kept, 1)
    first = x[: len(x) // 4, 3]
    assert 0 < float(first.mean()) < 1, "the first quarter of the stream comes from one language only"


class RecordingTensor:
    """Stands in for the mmap'd activations: records every read (its index), refuses whole-tensor reads."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.reads = tensor, []

    shape = property(lambda self: self.tensor.shape)
    dtype = property(lambda self: self.tensor.dtype)

    def dim(self):
        return self.tensor.dim()

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        assert isinstance(first, slice) and first.step is None, f"non-contiguous read {key!r}"
        assert (first.start, first.stop) != (0, self.tensor.shape[0]), "read the whole tensor"
        self.reads.append((first.start, first.stop))
        return self.tensor[key]


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_reads_are_contiguous_runs_within_one_chunk_at_a_time(tmp_path, layout):
    path, kinds = write_identity(tmp_path, layout)
    src = LayerSource.open(path)
    rec = src.activations = RecordingTensor(src.activations)
    chunk_tokens = 40
    opts = SAEOptions(chunk_tokens=chunk_tokens, buffer_tokens=64, batch_size=16)
    p = ActivationProvider.for_split([src], opts, "train", epochs=2, drop_last=False)
    n_batches = sum(1 for _ in p)
    assert n_batches > 0 and rec.reads
    if layout == "padded":
        starts_rows = [(a, b, (b - a) * src.activations.shape[1]) for a, b in rec.reads]
        spans = [(a, b) for a, b, _ in starts_rows]
    else:
        offsets = src.offsets.tolist()
        starts_rows = [(offsets.index(a), offsets.index(b), b - a) for a, b in rec.reads]
        spans = [(a, b) for a, b, _ in starts_rows]
    for a, b, rows in starts_rows:
        assert rows <= chunk_tokens or b - a == 1, f"read of samples {a}..{b} ({rows} rows) exceeds a chunk"
    stored = src.stored_rows()
    for c in p.chunks:   # the plan: runs of consecutive samples, <= chunk_tokens stored rows (or one sample)
        assert sum(int(stored[a:b].sum()) for a, b in c.runs) <= chunk_tokens or sum(b - a for a, b in c.runs) == 1
    # One chunk at a time: map each read to its chunk; a chunk's reads are never interleaved with
    # another's, so the log has one block per chunk visit (2 epochs; the last chunk of epoch 1 may
    # also open epoch 2), and every visit reads every run of its chunk.
    chunk_of = {run: ci for ci, c in enumerate(p.chunks) for run in c.runs}
    sequence = [chunk_of[s] for s in spans]
    blocks = 1 + sum(1 for prev, c in zip(sequence, sequence[1:]) if c != prev)
    assert blocks in (2 * len(p.chunks), 2 * len(p.chunks) - 1)
    assert Counter(sequence) == Counter({ci: 2 * len(c.runs) for ci, c in enumerate(p.chunks)})


def test_files_without_token_kinds(tmp_path):
    path, kinds = write_identity(tmp_path, "padded", drop_kinds_key=True)
    src = LayerSource.open(path)
    with pytest.raises(LayerwiseError, match="token_kinds"):
        all_rows_provider([src], SAEOptions(**SMALL), epochs=1)
    got = origins(all_rows_provider([src], SAEOptions(drop_kinds="none", **SMALL), epochs=1, drop_last=False))
    assert got == expected(kinds, set(K.values()) - {K["pad"]})


def test_infinite_stream_full_batches_and_training_dtype(tmp_path):
    path, _ = write_identity(tmp_path, "ragged", torch.bfloat16)
    src = LayerSource.open(path)
    opts = SAEOptions(dtype="bfloat16", **SMALL)
    p = ActivationProvider.for_split([src], opts, "train")          # epochs=None: forever
    it = iter(p)
    n_rows = p.num_rows
    batches = [next(it) for _ in range(3 * n_rows // 16 + 2)]      # more than 3 epochs
    assert all(b.shape == (16, H) and b.dtype == torch.bfloat16 for b in batches)


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_files_written_by_the_pipeline_writer(tmp_path, layout):
    """Layer files from the extraction writer (tests/support/layer_file_factory -> LayerFileStream) read as written."""
    from tests.support import layer_file_factory as factory

    ids = factory.sample_ids(10)
    written = factory.write_layer_set(tmp_path, [2], ["english", "arabic"], ids, layout=layout,
                                      dtype=torch.float32)
    paths = [written[(2, lang)][0] for lang in ("english", "arabic")]
    want = torch.cat([s.rows[(s.token_kinds != K["bos"]) & (s.token_kinds != K["pad"])]
                      for lang in ("english", "arabic") for s in written[(2, lang)][1]])
    srcs = [LayerSource.open(p) for p in paths]
    got = torch.cat(list(all_rows_provider(srcs, SAEOptions(**SMALL), epochs=1, drop_last=False, shuffle=False)))
    assert got.shape == want.shape and torch.equal(got, want)
