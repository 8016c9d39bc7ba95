"""Planted data for the per-latent dashboards (tests/unit/test_sae_dashboard.py).

`write_word_set` writes layer files through the real writer (`layer_file_factory.write_layer_file`) in which one word
(token id `WORD_ID`, string `WORD`) occurs at one caption position of some samples, and only there the rows carry a
unit direction `word_direction` (with a planted strength per sample; every other row has no component along it).
The rows of male samples also carry `gender_direction`. `planted_encoder` is an SAE-like encoder
(`encode(x) = relu(x W + b)`, as a SAELens StandardSAE without b_dec) whose latent `WORD_LATENT` reads the word
direction with a bias that no other row reaches, latent `DEAD_LATENT` never fires, and the others read seeded random
directions. Optional tables as an outdir has them: metadata/tokens.parquet, metadata/samples.parquet (with images,
some missing) and extraction_metadata.json's image_root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerwise.core import schema
from tests.support.layer_file_factory import BOS_ID, IMAGE_ID, FakeSample, write_layer_file

KIND = schema.TOKEN_KINDS
WORD, WORD_ID = "\u2581girl", 4242          # the planted word (SentencePiece form) and its token id
WORD_LATENT, DEAD_LATENT = 0, 1
HIDDEN, D_SAE = 16, 12
BIAS = 2.0                                   # the word latent fires at strength - BIAS
# bos, 4 image tokens, template, 2 prompt tokens, template, 5 caption tokens, template
KINDS = ([KIND["bos"]] + [KIND["image"]] * 4 + [KIND["template"]] + [KIND["prompt"]] * 2 + [KIND["template"]]
         + [KIND["caption"]] * 5 + [KIND["template"]])
CAPTION_START = 9


def _unit(g: torch.Generator, h: int) -> torch.Tensor:
    v = torch.randn(h, generator=g)
    return v / v.norm()


def directions(hidden: int = HIDDEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(word direction, gender direction): orthonormal, seeded."""
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(hidden, 2, generator=g))
    return q[:, 0].contiguous(), q[:, 1].contiguous()


@dataclass
class WordSet:
    paths: dict[str, Path]                               # language -> layer file
    samples: dict[str, list[FakeSample]]                  # language -> the samples written
    word_pairs: dict[tuple[str, str], tuple[int, float]]  # (sample_id, language) -> (word position, strength)
    images: dict[str, Path] = field(default_factory=dict)  # sample_id -> image written (absent: missing image)


def token_string(token_id: int) -> str:
    if token_id == WORD_ID:
        return WORD
    if token_id == BOS_ID:
        return "<bos>"
    if token_id == IMAGE_ID:
        return "<image_soft_token>"
    return f"\u2581w{token_id}"


def write_word_set(out_dir: Path, *, layer: int = 3, languages: tuple[str, ...] = ("english", "arabic"),
                   n_samples: int = 24, hidden: int = HIDDEN, seed: int = 0,
                   nan_samples: frozenset[str] = frozenset()) -> WordSet:
    """Layer files of `layer` (padded for the first language, ragged for the others) with the planted word in the
    caption of every third sample (and of sample 1 in the first language only), at a strength that differs per pair
    (at most 23 pairs). `nan_samples` are recorded with NaN/Inf values at extraction (nan_counts 1)."""
    word, gender_dir = directions(hidden)
    g = torch.Generator().manual_seed(seed)
    ids = [f"s{i:03d}" for i in range(n_samples)]
    genders = [("male", "female", "female", "unknown")[i % 4] for i in range(n_samples)]
    out = WordSet({}, {}, {})
    for li, lang in enumerate(languages):
        samples = []
        for i, (sid, gender) in enumerate(zip(ids, genders)):
            kinds = torch.tensor(KINDS, dtype=torch.int8)
            t = len(KINDS)
            rows = torch.randn(t, hidden, generator=g)
            rows -= torch.outer(rows @ word, word)                   # no component along the word direction
            if gender == "male":
                rows += 1.5 * gender_dir
            token_ids = torch.randint(3, 1000, (t,), generator=g, dtype=torch.int64)
            token_ids[kinds == KIND["bos"]] = BOS_ID
            token_ids[kinds == KIND["image"]] = IMAGE_ID
            if i % 3 == 0 or (i == 1 and li == 0):
                pos = CAPTION_START + (i + li) % 5
                strength = 4.0 + 0.37 * ((5 * len(out.word_pairs)) % 23)   # distinct per pair (23 is prime)
                token_ids[pos] = WORD_ID
                rows[pos] += strength * word
                out.word_pairs[(sid, lang)] = (pos, strength)
            samples.append(FakeSample(sid, gender, rows, token_ids, kinds, nan_count=int(sid in nan_samples)))
        layout = "padded" if li == 0 else "ragged"
        path = write_layer_file(Path(out_dir) / schema.layer_filename(layer, lang), layer, lang, samples,
                                layout=layout)
        out.paths[lang], out.samples[lang] = path, samples
    return out


class PlantedEncoder(torch.nn.Module):
    """encode(x) = relu(x W + b) (a StandardSAE without b_dec); counts its calls."""

    def __init__(self, hidden: int = HIDDEN, d_sae: int = D_SAE, seed: int = 0):
        super().__init__()
        word, _ = directions(hidden)
        g = torch.Generator().manual_seed(100 + seed)
        w = torch.randn(hidden, d_sae, generator=g)
        w -= torch.outer(word, word @ w)                              # the others ignore the word direction
        w /= w.norm(dim=0, keepdim=True)
        b = 0.3 * torch.randn(d_sae, generator=g)
        w[:, WORD_LATENT], b[WORD_LATENT] = word, -BIAS
        w[:, DEAD_LATENT], b[DEAD_LATENT] = 0.0, -1.0               # never fires
        self.W_enc = torch.nn.Parameter(w)
        self.b_enc = torch.nn.Parameter(b)
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.relu(x @ self.W_enc + self.b_enc)


def write_tokens_table(path: Path, word_set: WordSet) -> Path:
    """metadata/tokens.parquet's columns for every stored row of the set."""
    import pandas as pd

    rows = []
    for lang, samples in word_set.samples.items():
        for s in samples:
            for pos, (tid, kind) in enumerate(zip(s.token_ids.tolist(), s.token_kinds.tolist())):
                rows.append({"sample_id": s.sample_id, "language": lang, "position": pos, "token_id": tid,
                             "token": token_string(tid), "kind": {v: k for k, v in KIND.items()}[kind]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(schema.TOKENS_COLUMNS)).to_parquet(path, index=False)
    return path


def write_samples_table(outdir: Path, word_set: WordSet, image_dir: Path, *, missing: set[str] = frozenset(),
                        moved: set[str] = frozenset()) -> Path:
    """<outdir>/metadata/samples.parquet and <outdir>/extraction_metadata.json (image_root = image_dir) with a small
    PNG per sample in image_dir, except `missing` (no file anywhere); `moved` ones are recorded at an absolute path
    that does not exist, found only through image_root + image_relative."""
    import pandas as pd
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for lang, samples in word_set.samples.items():
        for i, s in enumerate(samples):
            name = f"{s.sample_id}.png"
            if s.sample_id not in missing and not (image_dir / name).exists():
                Image.new("RGB", (160, 120), ((40 * i) % 256, 90, 200)).save(image_dir / name)
                word_set.images[s.sample_id] = image_dir / name
            recorded = f"/nonexistent/moved/{name}" if s.sample_id in moved else str(image_dir / name)
            rows.append({"sample_id": s.sample_id, "language": lang, "gender": s.gender, "image": recorded,
                         "image_relative": name, "caption": "", "positions_kept": s.length, "shard": 0, "row": i})
    path = outdir / schema.SAMPLES_PARQUET
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    (outdir / schema.METADATA_JSON).write_text(json.dumps({"status": "passed", "image_root": str(image_dir)}),
                                               encoding="utf-8")
    return path
