"""Test helper: realistic layer files, samplesheets and plans with known contents.

Layer files are written with `store.LayerFileWriter` (as extraction does), with every key of
`schema.LAYER_FILE_KEYS`. Contents are deterministic functions of (layer, language, sample),
so tests compare outputs against the `FakeSample`s they were written from, not against the
code under test.
"""
from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from layerwise import schema  # noqa: E402
from layerwise.store import LayerFileWriter  # noqa: E402

MODEL_ID = "google/gemma-3-tiny-test"
MODEL_REVISION = "0123456789abcdef"
NUM_LAYERS = 6
HIDDEN_SIZE = 16
GENDER_CYCLE = ("male", "female", "female", "unknown", "male")


@dataclass
class FakeSample:
    sample_id: str
    gender: str
    rows: torch.Tensor       # float32 [T, H]: the values given to the writer
    token_ids: torch.Tensor  # int64 [T]
    nan_count: int = 0

    def stored(self, dtype: torch.dtype) -> torch.Tensor:
        """The rows as the file stores them."""
        return self.rows.to(dtype)


def sample_ids(n: int, start: int = 0) -> list[str]:
    return [f"img{i:04d}" for i in range(start, start + n)]


def genders_for(ids: Sequence[str]) -> list[str]:
    return [GENDER_CYCLE[int(s[3:]) % len(GENDER_CYCLE)] for s in ids]


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "little")


def sample_length(sample_id: str, language: str, token_selection: str = "all") -> int:
    """Positions kept: depends on (sample, language) only, as with real captions."""
    if token_selection in ("mean", "last"):
        return 1
    return 2 + _seed("len", sample_id, language) % 6  # 2..7


def make_samples(
    layer: int,
    language: str,
    ids: Sequence[str],
    hidden_size: int = HIDDEN_SIZE,
    token_selection: str = "all",
    genders: Sequence[str] | None = None,
) -> list[FakeSample]:
    genders = list(genders) if genders is not None else genders_for(ids)
    out = []
    for sid, gender in zip(ids, genders):
        t = sample_length(sid, language, token_selection)
        g = torch.Generator().manual_seed(_seed("rows", layer, language, sid))
        rows = torch.randn(t, hidden_size, generator=g) * (1.0 + layer)
        gt = torch.Generator().manual_seed(_seed("tok", language, sid))
        if token_selection == "mean":
            tokens = torch.full((t,), -1, dtype=torch.int64)
        else:
            tokens = torch.randint(0, 1000, (t,), generator=gt, dtype=torch.int64)
        out.append(FakeSample(sid, gender, rows, tokens))
    return out


def write_layer_file(
    path: Path,
    layer: int,
    language: str,
    samples: Sequence[FakeSample],
    *,
    dtype: torch.dtype = torch.float32,
    layout: str = "padded",
    token_selection: str = "all",
    nan_policy: str = "zero",
    model_id: str = MODEL_ID,
    model_revision: str = MODEL_REVISION,
    num_layers: int = NUM_LAYERS,
    meta_overrides: dict | None = None,
) -> Path:
    """Write one layer file through LayerFileWriter; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = samples[0].rows.shape[1] if samples else HIDDEN_SIZE
    writer = LayerFileWriter(path, path.parent / ".scratch", hidden, dtype, layout)
    for s in samples:
        writer.append(s.rows, s.token_ids, s.nan_count)
    meta = {
        "layer": layer,
        "genders": [s.gender for s in samples],
        "language": language,
        "sample_ids": [s.sample_id for s in samples],
        "token_selection": token_selection,
        "nan_policy": nan_policy,
        "model_id": model_id,
        "model_revision": model_revision,
        "num_layers": num_layers,
    }
    meta.update(meta_overrides or {})
    writer.finish(meta)
    return path


def write_layer_set(
    out_dir: Path,
    layers: Iterable[int],
    languages: Iterable[str],
    ids: Sequence[str],
    **kwargs,
) -> dict[tuple[int, str], tuple[Path, list[FakeSample]]]:
    """One complete file per (layer, language) over `ids`; returns {(layer, lang): (path, samples)}."""
    hidden = kwargs.pop("hidden_size", HIDDEN_SIZE)
    out = {}
    for lang in languages:
        for layer in layers:
            samples = make_samples(layer, lang, ids, hidden, kwargs.get("token_selection", "all"))
            path = write_layer_file(Path(out_dir) / schema.layer_filename(layer, lang), layer, lang, samples, **kwargs)
            out[(layer, lang)] = (path, samples)
    return out


def write_samplesheet(path: Path, ids: Sequence[str], languages: Sequence[str], image_dir: str = "/data/images") -> Path:
    """A samplesheet.valid.csv as PREFLIGHT writes it: row, sample_id, image, gender, caption_<lang>..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    genders = genders_for(ids)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + [schema.caption_column(l) for l in languages])
        for i, (sid, g) in enumerate(zip(ids, genders)):
            w.writerow([i, sid, f"{image_dir}/{sid}.jpg", g] + [f"{lang} caption of {sid}, with a comma" for lang in languages])
    return path


def make_plan(
    layers: Sequence[int],
    languages: Sequence[str],
    n_samples: int,
    shard_size: int,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = NUM_LAYERS,
) -> dict:
    shards = [
        {"index": k, "rows": f"{start}:{min(start + shard_size, n_samples)}"}
        for k, start in enumerate(range(0, n_samples, shard_size))
    ]
    return {
        "model": {"id": MODEL_ID, "revision": MODEL_REVISION, "num_layers": num_layers,
                  "hidden_size": hidden_size, "model_type": "gemma3"},
        "layers": list(layers),
        "languages": list(languages),
        "shards": shards,
        "layer_groups": [list(layers)],
        "units": [{"layers": list(layers), "language": lang, "shard": s["index"], "rows": s["rows"]}
                  for lang in languages for s in shards],
    }
