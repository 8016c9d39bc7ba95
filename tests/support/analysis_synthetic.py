"""Synthetic layer files with planted signals, for the analysis tests and benchmark.

Every sample has the Gemma 3 structure (`<bos>`, template, image soft tokens, template, prompt,
template, caption, template). A stored row is

    noise + shared * s_(sample, kind) + offset_(language) + strength_(kind) * sign(gender) * u

with `s` shared by both languages and all layers (what makes matched cross-lingual pairs similar),
`u` a fixed unit direction (`planted_direction`), sign +1 for female, -1 for male, 0 for unknown,
and `strength` non-zero only for the kinds listed in `signal`. `<bos>` can be given a huge norm
(`bos_value`) that no view may see. Files have every key of `schema.LAYER_FILE_KEYS` plus
`token_kinds`, and are written through the real writer (LayerFileStream) in either layout and dtype.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerwise.core import schema
from tests.support.layer_file_factory import stream_rows

KIND = schema.TOKEN_KINDS
IMAGE_TOKEN_ID = 262144


@dataclass
class SyntheticSpec:
    n_samples: int = 80
    hidden: int = 32
    layers: Sequence[int] = (0, 1)
    languages: Sequence[str] = ("english", "arabic")
    layout: str = "padded"
    dtype: torch.dtype = torch.float32
    token_selection: str = "all"
    n_image: int = 8
    prompt_len: tuple[int, int] = (2, 4)        # inclusive range, per (sample, language)
    caption_len: tuple[int, int] = (3, 6)
    signal: dict = field(default_factory=dict)  # kind -> strength, e.g. {"image": 2.0}
    signal_layers: Sequence[int] | None = None  # layers that carry the signal (None: all)
    shared: float = 1.0
    offset: float = 3.0
    noise: float = 1.0
    bos_value: float | None = None              # every <bos> element set to this (None: noise)
    genders: Sequence[str] | None = None
    seed: int = 0


def synthetic_genders(n: int, seed: int = 0) -> list[str]:
    """2/5 male, 2/5 female, 1/5 unknown, in a seeded random order."""
    base = ["male", "female", "male", "female", "unknown"]
    g = [base[i % 5] for i in range(n)]
    order = np.random.default_rng(seed + 7919).permutation(n)
    return [g[i] for i in order]


def planted_direction(hidden: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed + 104729).standard_normal(hidden)
    return v / np.linalg.norm(v)


def sample_kinds(spec: SyntheticSpec, i: int, language: str) -> np.ndarray:
    """Token kinds of the full sequence of sample i in a language."""
    rng = np.random.default_rng([spec.seed, i, sum(map(ord, language))])
    n_prompt = int(rng.integers(spec.prompt_len[0], spec.prompt_len[1] + 1))
    n_caption = int(rng.integers(spec.caption_len[0], spec.caption_len[1] + 1))
    parts = [(KIND["bos"], 1), (KIND["template"], 3), (KIND["image"], spec.n_image), (KIND["template"], 2),
             (KIND["prompt"], n_prompt), (KIND["template"], 4), (KIND["caption"], n_caption), (KIND["template"], 2)]
    return np.concatenate([np.full(k, code, dtype=np.int8) for code, k in parts])


def _kept(kinds: np.ndarray, selection: str) -> np.ndarray:
    """Indices of the positions a token selection keeps (`mean`: the rows it averages)."""
    if selection == "all":
        return np.arange(len(kinds))
    if selection == "text":
        return np.flatnonzero(kinds != KIND["image"])
    if selection in ("caption", "mean"):   # the model turn after its header: caption + trailing template
        first = int(np.flatnonzero(kinds == KIND["caption"])[0])
        return np.arange(first, len(kinds))
    if selection == "last":
        return np.array([len(kinds) - 1])
    raise ValueError(selection)


def _rows(spec: SyntheticSpec, i: int, layer: int, language: str, kinds: np.ndarray, sign: float,
          u: np.ndarray, shared: np.ndarray, offset: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 1, i, layer, sum(map(ord, language))])
    x = spec.noise * rng.standard_normal((len(kinds), spec.hidden)).astype(np.float32)
    x += offset
    for code in (KIND["image"], KIND["prompt"], KIND["caption"], KIND["template"]):
        x[kinds == code] += spec.shared * shared[code]
    if spec.signal_layers is None or layer in spec.signal_layers:
        for kind, strength in spec.signal.items():
            x[kinds == KIND[kind]] += float(strength) * sign * u.astype(np.float32)
    if spec.bos_value is not None:
        x[kinds == KIND["bos"]] = spec.bos_value
    return x


@dataclass
class SyntheticRun:
    paths: list[Path]
    sample_ids: list[str]
    genders: list[str]
    direction: np.ndarray


def write_synthetic_run(out_dir: str | Path, spec: SyntheticSpec) -> SyntheticRun:
    """One file per (layer, language) of `spec` in out_dir; returns their paths and the planted facts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, h = spec.n_samples, spec.hidden
    ids = [f"s{i:05d}" for i in range(n)]
    genders = list(spec.genders) if spec.genders is not None else synthetic_genders(n, spec.seed)
    sign = np.array([{"female": 1.0, "male": -1.0}.get(g, 0.0) for g in genders])
    u = planted_direction(h, spec.seed)
    shared_rng = np.random.default_rng(spec.seed + 31)
    shared = [{code: shared_rng.standard_normal(h).astype(np.float32) for code in range(6)} for _ in range(n)]
    paths = []
    for language in spec.languages:
        lang_rng = np.random.default_rng([spec.seed, 2, sum(map(ord, language))])
        offset = (spec.offset * lang_rng.standard_normal(h)).astype(np.float32)   # language mean vector
        kinds_all = [sample_kinds(spec, i, language) for i in range(n)]
        kept = [_kept(k, spec.token_selection) for k in kinds_all]
        single = spec.token_selection in ("mean", "last")
        lengths = torch.tensor([1 if single else len(k) for k in kept], dtype=torch.int64)
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        for layer in spec.layers:
            rows, token_ids, token_kinds = [], [], []
            for i in range(n):
                kinds = kinds_all[i]
                x = _rows(spec, i, layer, language, kinds, sign[i], u, shared[i], offset)[kept[i]]
                k = kinds[kept[i]]
                ids_i = np.where(k == KIND["image"], IMAGE_TOKEN_ID, 1000 + k.astype(np.int64) * 10)
                if spec.token_selection == "mean":
                    x, k, ids_i = x.mean(axis=0, keepdims=True), np.array([KIND["caption"]], np.int8), np.array([-1])
                rows.append(torch.from_numpy(np.ascontiguousarray(x)))
                token_ids.append(torch.from_numpy(np.ascontiguousarray(ids_i)))
                token_kinds.append(torch.from_numpy(np.ascontiguousarray(k)))
            meta = {"layer": int(layer), "genders": genders, "language": language, "sample_ids": ids,
                    "token_selection": spec.token_selection, "nan_policy": "zero", "model_id": "synthetic",
                    "model_revision": "local", "num_layers": max(spec.layers) + 1}
            path = stream_rows(out_dir / schema.layer_filename(int(layer), language), rows=rows, token_ids=token_ids,
                               kinds=token_kinds, layout=spec.layout, dtype=spec.dtype, meta=meta)
            paths.append(path)
    return SyntheticRun(paths, ids, genders, u)
