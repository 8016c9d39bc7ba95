"""Train/validation split by sample: disjoint, deterministic, the same for every layer and language."""
from __future__ import annotations

import hashlib
import random

import torch

from layerwise.sae.options import SAEOptions
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource
from layerwise.sae.split import is_validation, split_ids, split_key, split_mask
from tests.support import sae_synthetic as synthetic


def documented_rule(sample_id: str, fraction: float, seed: int) -> bool:
    """docs/sae.md's rule, written out here independently of layerwise.sae.split."""
    digest = hashlib.sha256(b"layerwise-sae-split-v1\0" + str(seed).encode() + b"\0" + sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def test_split_is_a_function_of_sample_id_and_seed_only():
    ids = [f"img{i:05d}" for i in range(3000)]
    val = {s for s in ids if is_validation(s, 0.1, 0)}
    assert 0.08 < len(val) / len(ids) < 0.12
    assert val == {s for s in ids if documented_rule(s, 0.1, 0)}
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert set(split_ids(shuffled, 0.1, 0)["validation"]) == val             # order does not matter
    assert set(split_ids(ids[:500], 0.1, 0)["validation"]) == val & set(ids[:500])   # nor the other samples
    assert {s for s in ids if is_validation(s, 0.1, 1)} != val                 # the seed does
    assert all(0 <= split_key(s, 0) < 1 for s in ids[:50])
    m_train, m_val = split_mask(ids, "train", 0.1, 0), split_mask(ids, "validation", 0.1, 0)
    assert not (m_train & m_val).any() and (m_train | m_val).all()


def test_provider_splits_rows_by_sample_same_for_every_layer_and_language(tmp_path):
    files = synthetic.write_planted_set(tmp_path, layers=[0, 5], languages=["english", "arabic"], n_samples=40,
                                        hidden=8, layout="ragged")
    opts = SAEOptions(validation_fraction=0.3, split_seed=7, chunk_tokens=32, buffer_tokens=64, batch_size=8,
                      drop_kinds="none")
    seen = {}
    for (layer, lang), path in files.items():
        src = LayerSource.open(path)
        # Tag every stored row with its sample index in dim 0, so yielded rows name their sample.
        tagged = src.activations.clone()
        row_sample = torch.repeat_interleave(torch.arange(src.num_samples), src.lengths)
        tagged[:, 0] = row_sample.float()
        src.activations = tagged
        per_split = {}
        for split in ("train", "validation"):
            x = torch.cat(list(ActivationProvider.for_split([src], opts, split, epochs=1, drop_last=False)))
            per_split[split] = {src.sample_ids[int(i)] for i in x[:, 0].tolist()}
            assert len(x) == int(src.lengths[split_mask(src.sample_ids, split, 0.3, 7)].sum())
        assert not per_split["train"] & per_split["validation"]
        assert per_split["train"] | per_split["validation"] == set(src.sample_ids)
        assert per_split["validation"] == {s for s in src.sample_ids if documented_rule(s, 0.3, 7)}
        seen[(layer, lang)] = per_split["validation"]
    assert len(set(map(frozenset, seen.values()))) == 1, seen
