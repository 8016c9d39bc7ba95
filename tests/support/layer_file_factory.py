"""Test helper: realistic layer files, unit folders, samplesheets and plans with known contents.

Layer files are streamed through `layerfile.LayerFileStream` (as extraction does: the layout is
planned up front, then rows are appended sample by sample), with every key of
`schema.LAYER_FILE_KEYS`, `token_kinds` included. Contents are deterministic functions of
(layer, language, sample), so tests compare outputs against the `FakeSample`s they were written
from, not against the code under test.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from layerwise.core import schema  # noqa: E402
from layerwise.layerfile.stream import LayerFileStream, UnitLayout  # noqa: E402

MODEL_ID = "google/gemma-3-tiny-test"
MODEL_REVISION = "0123456789abcdef"
NUM_LAYERS = 6
HIDDEN_SIZE = 16
GENDER_CYCLE = ("male", "female", "female", "unknown", "male")
KIND = schema.TOKEN_KINDS
BOS_ID, IMAGE_ID = 2, 262144  # Gemma 3's <bos> and <image_soft_token> ids


@dataclass
class FakeSample:
    sample_id: str
    gender: str
    rows: torch.Tensor         # float32 [T, H]: the values given to the writer
    token_ids: torch.Tensor    # int64 [T]
    token_kinds: torch.Tensor  # int8 [T]: schema.TOKEN_KINDS codes
    nan_count: int = 0

    @property
    def length(self) -> int:
        return int(self.rows.shape[0])

    def stored(self, dtype: torch.dtype) -> torch.Tensor:
        """The rows as the file stores them."""
        return self.rows.to(dtype)

    def truncate(self, n: int) -> FakeSample:
        """Keep the first n positions (rows, token ids and kinds together)."""
        self.rows, self.token_ids, self.token_kinds = self.rows[:n], self.token_ids[:n], self.token_kinds[:n]
        return self


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


def sample_kinds(sample_id: str, language: str, length: int, token_selection: str = "all") -> torch.Tensor:
    """int8 [length]: the kind of every kept position, in the order a Gemma 3 sequence has them.

    "all": <bos>, image soft tokens, a template token, prompt text, caption (at least one caption
    position); "text": the same without image tokens; "caption": only caption; "mean": the pooled
    caption position; "last": the last token of the sequence (a template token, "\\n")."""
    if token_selection in ("caption", "mean"):
        return torch.full((length,), KIND["caption"], dtype=torch.int8)
    if token_selection == "last":
        return torch.full((length,), KIND["template"], dtype=torch.int8)
    kinds = [KIND["bos"]]
    rest = length - 1
    s = _seed("kinds", sample_id, language)
    n_image = 0 if token_selection == "text" else s % rest if rest > 1 else 0
    kinds += [KIND["image"]] * n_image
    rest -= n_image
    if rest > 1:
        kinds.append(KIND["template"])
        rest -= 1
    n_prompt = (s // 7) % rest if rest > 1 else 0
    kinds += [KIND["prompt"]] * n_prompt + [KIND["caption"]] * (rest - n_prompt)
    assert len(kinds) == length
    return torch.tensor(kinds, dtype=torch.int8)


def sample_token_ids(sample_id: str, language: str, kinds: torch.Tensor, token_selection: str = "all") -> torch.Tensor:
    if token_selection == "mean":
        return torch.full((len(kinds),), schema.PAD_TOKEN_ID, dtype=torch.int64)
    g = torch.Generator().manual_seed(_seed("tok", language, sample_id))
    ids = torch.randint(3, 1000, (len(kinds),), generator=g, dtype=torch.int64)
    ids[kinds == KIND["bos"]] = BOS_ID
    ids[kinds == KIND["image"]] = IMAGE_ID
    return ids


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
        kinds = sample_kinds(sid, language, t, token_selection)
        out.append(FakeSample(sid, gender, rows, sample_token_ids(sid, language, kinds, token_selection), kinds))
    return out


def layout_of(samples: Sequence[FakeSample]) -> UnitLayout:
    for s in samples:
        if not (len(s.token_ids) == len(s.token_kinds) == s.length):
            raise ValueError(f"fake sample {s.sample_id}: rows, token_ids and token_kinds disagree in length")
    return UnitLayout([s.length for s in samples], [s.token_ids.clone() for s in samples],
                      [s.token_kinds.clone() for s in samples])


def layer_meta(layer: int, language: str, samples: Sequence[FakeSample], *, token_selection: str = "all",
               nan_policy: str = "zero", model_id: str = MODEL_ID, model_revision: str = MODEL_REVISION,
               num_layers: int = NUM_LAYERS, meta_overrides: dict | None = None) -> dict:
    """The keys extraction passes to LayerFileStream (it fills activations, lengths, ... itself)."""
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
    return meta


def stream_rows(path: Path, *, rows: Sequence[torch.Tensor], token_ids: Sequence[torch.Tensor],
                kinds: Sequence[torch.Tensor], layout: str, dtype: torch.dtype, meta: dict) -> Path:
    """Write one layer file through the real writer (LayerFileStream) from per-sample rows [T_i, H],
    token ids int64 [T_i] and kinds int8 [T_i]; `meta` holds the keys extraction passes (layer_meta)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = UnitLayout([int(r.shape[0]) for r in rows], [torch.as_tensor(i, dtype=torch.int64).clone() for i in token_ids],
                      [torch.as_tensor(k, dtype=torch.int8).clone() for k in kinds])
    stream = LayerFileStream(path, plan, layout, int(rows[0].shape[1]), dtype, meta)
    try:
        for r in rows:
            stream.append(r.to(dtype))
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    return path


def write_layer_file_info(
    path: Path,
    layer: int,
    language: str,
    samples: Sequence[FakeSample],
    *,
    dtype: torch.dtype = torch.float32,
    layout: str = "padded",
    hidden_size: int | None = None,
    **meta_kwargs,
) -> dict:
    """Stream one layer file through LayerFileStream; returns the writer's {"bytes", "sha256"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = hidden_size or (samples[0].rows.shape[1] if samples else HIDDEN_SIZE)
    meta = layer_meta(layer, language, samples, **meta_kwargs)
    stream = LayerFileStream(path, layout_of(samples), layout, hidden, dtype, meta)
    try:
        for s in samples:
            stream.append(s.rows, s.nan_count)
        return stream.finish()
    except BaseException:
        stream.abort()
        raise


def write_layer_file(path: Path, layer: int, language: str, samples: Sequence[FakeSample], **kwargs) -> Path:
    """Write one layer file through LayerFileStream; returns its path."""
    write_layer_file_info(path, layer, language, samples, **kwargs)
    return Path(path)


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
        w.writerow(["row", schema.SAMPLE_ID, schema.IMAGE, schema.GENDER] + [schema.caption_column(lang) for lang in languages])
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
    layer_groups: Sequence[Sequence[int]] | None = None,
) -> dict:
    """The plan.json structure (layerwise/preflight/plan.py make_plan): units ordered by group, language, shard."""
    from layerwise.preflight.plan import make_unit

    shards = [
        {"index": k, "rows": f"{start}:{min(start + shard_size, n_samples)}"}
        for k, start in enumerate(range(0, n_samples, shard_size))
    ]
    groups = [list(g) for g in (layer_groups or [layers])]
    return {
        "model": {"id": MODEL_ID, "revision": MODEL_REVISION, "num_layers": num_layers,
                  "hidden_size": hidden_size, "model_type": "gemma3", "fingerprint": "sha256:test"},
        "layers": list(layers),
        "languages": list(languages),
        "shards": shards,
        "layer_groups": groups,
        "units": [make_unit(g, lang, s) for g in groups for lang in languages for s in shards],
    }


def shard_ids(ids: Sequence[str], rows: str) -> list[str]:
    start, end = (int(x) for x in rows.split(":"))
    return list(ids[start:end])


def write_unit(root: Path, unit: dict, ids: Sequence[str], *, samples_for=None, **kwargs) -> Path:
    """`<root>/<unit id>/`: the unit's layer files (its shard's rows of `ids`) and a summary.json as
    extraction writes it ("files": [{file, layer, bytes, sha256}], sha256 as the writer returned it).

    `samples_for(layer, language, ids)` may replace `make_samples` (to write changed contents)."""
    folder = Path(root) / unit["id"]
    folder.mkdir(parents=True, exist_ok=True)
    mine = shard_ids(ids, unit["rows"])
    files = []
    for layer in unit["layers"]:
        make = samples_for or (lambda layer_, lang, i: make_samples(layer_, lang, i, token_selection=kwargs.get("token_selection", "all")))
        samples = make(layer, unit["language"], mine)
        name = schema.layer_filename(layer, unit["language"])
        info = write_layer_file_info(folder / name, layer, unit["language"], samples, **kwargs)
        files.append({"file": name, "layer": layer, "bytes": info["bytes"], "sha256": info["sha256"]})
    summary = {"kind": "extract", "language": unit["language"], "layers": list(unit["layers"]), "rows": unit["rows"],
               "samples": len(mine), "samples_this_run": len(mine), "resumed_from_sample": 0,
               "positions_kept": 0, "seconds": 1.0, "bytes_written": sum(f["bytes"] for f in files),
               "files": files, "vision_tower_images": 0}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def write_units(root: Path, plan: dict, ids: Sequence[str], **kwargs) -> list[Path]:
    """Every unit folder of `plan` (see write_unit)."""
    return [write_unit(root, u, ids, **kwargs) for u in plan["units"]]


def expected_samples(layer: int, language: str, ids: Sequence[str], token_selection: str = "all") -> list[FakeSample]:
    """What the (merged) file of (layer, language) over `ids` must hold, whatever the sharding."""
    return make_samples(layer, language, ids, token_selection=token_selection)
