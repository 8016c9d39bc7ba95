"""Synthetic layer files for tests and benchmarks: the layout of real files, with planted structure.

`write_layer_file` writes a dict with every key of `schema.LAYER_FILE_KEYS` plus `token_kinds`,
padded or ragged, from per-sample rows and kinds. `write_planted_set` makes files whose rows are
sparse combinations of a hidden dictionary (so a small SAE can reconstruct them), with a huge-norm
`bos` row at position 0 of every sample and a sentinel value in the padding (neither must ever
reach the SAE with the default filters).
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from layerwise.core import schema
from tests.support.layer_file_factory import stream_rows

KIND = schema.TOKEN_KINDS
PAD_SENTINEL = -12345.0     # value of padded positions in planted files (real files hold zeros there)
BOS_VALUE = 5000.0          # every coordinate of a planted bos row


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "little")


def write_layer_file(path: str | os.PathLike, *, layer: int, language: str, sample_ids: Sequence[str],
                     rows: Sequence[torch.Tensor], kinds: Sequence[torch.Tensor], layout: str = "padded",
                     dtype: torch.dtype = torch.float32, pad_value: float = 0.0, genders: Sequence[str] | None = None,
                     model_id: str = "synthetic/gemma-3", num_layers: int = 34) -> Path:
    """One layer file from rows [T_i, H] and kinds int8 [T_i] per sample, through the real writer
    (LayerFileStream). The real writer pads with zeros; a sentinel `pad_value`, which proves that readers
    never read padding, is written with torch.save in the same format instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, hidden = len(sample_ids), rows[0].shape[1]
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = [torch.arange(int(n), dtype=torch.int64) + 7 for n in lengths]
    if pad_value == 0.0 or layout == "ragged":
        meta = {"layer": layer, "genders": list(genders or ["unknown"] * n), "language": language,
                "sample_ids": list(sample_ids), "token_selection": "all", "nan_policy": "zero", "model_id": model_id,
                "model_revision": "synthetic", "num_layers": num_layers}
        return stream_rows(path, rows=rows, token_ids=ids, kinds=kinds, layout=layout, dtype=dtype, meta=meta)
    if layout == "padded":
        t_max = int(lengths.max())
        acts = torch.full((n, t_max, hidden), pad_value, dtype=dtype)
        token_ids = torch.full((n, t_max), schema.PAD_TOKEN_ID, dtype=torch.int64)
        token_kinds = torch.full((n, t_max), KIND["pad"], dtype=torch.int8)
        for i, (r, k) in enumerate(zip(rows, kinds)):
            acts[i, :r.shape[0]] = r.to(dtype)
            token_ids[i, :r.shape[0]] = ids[i]
            token_kinds[i, :r.shape[0]] = k
    elif layout == "ragged":
        acts = torch.cat([r.to(dtype) for r in rows])
        token_ids, token_kinds = torch.cat(ids), torch.cat([k.to(torch.int8) for k in kinds])
    else:
        raise ValueError(f"layout {layout!r}")
    data = {
        "layer": layer, "activations": acts, "genders": list(genders or ["unknown"] * n), "hidden_size": hidden,
        "language": language, "sample_ids": list(sample_ids), "lengths": lengths, "offsets": offsets,
        "token_ids": token_ids, "nan_counts": torch.zeros(n, dtype=torch.int64), "token_selection": "all",
        "layout": layout, "dtype": schema.dtype_name(dtype), "nan_policy": "zero", "model_id": model_id,
        "model_revision": "synthetic", "num_layers": num_layers, "token_kinds": token_kinds,
    }
    return save_layer_file(path, data)


def save_layer_file(path: Path, data: dict) -> Path:
    """torch.save via a temporary file, fsync'd (so the page cache can be dropped for cold reads)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def sample_kinds(image_tokens: int, prompt_tokens: int, caption_tokens: int) -> torch.Tensor:
    """int8 kinds of a Gemma 3 style sequence: bos, template, image..., template, prompt..., template,
    caption..., template (the order of `docs/output.md`, token selection `all`)."""
    t = KIND["template"]
    seq = ([KIND["bos"], t] + [KIND["image"]] * image_tokens + [t] + [KIND["prompt"]] * prompt_tokens
           + [t, t] + [KIND["caption"]] * caption_tokens + [t, t])
    return torch.tensor(seq, dtype=torch.int8)


@functools.lru_cache(maxsize=8)
def planted_dictionary(layer: int, hidden: int, n_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed("dict", layer, hidden, n_features))
    d = torch.randn(n_features, hidden, generator=g)
    return d / d.norm(dim=1, keepdim=True)


def planted_rows(layer: int, language: str, sample_id: str, kinds: torch.Tensor, hidden: int, *,
                 n_features: int, active: int, noise: float = 0.02) -> torch.Tensor:
    """Rows [T, H]: mean + `active` dictionary atoms with positive weights + noise; bos rows huge."""
    t = kinds.shape[0]
    g = torch.Generator().manual_seed(_seed("rows", layer, language, sample_id))
    dictionary = planted_dictionary(layer, hidden, n_features)
    mean = torch.linspace(-1, 1, hidden) * (1 + 0.1 * layer)
    idx = torch.randint(0, n_features, (t, active), generator=g)
    coef = 1.0 + 2.0 * torch.rand(t, active, generator=g)
    rows = mean + torch.einsum("ta,tah->th", coef, dictionary[idx]) + noise * torch.randn(t, hidden, generator=g)
    rows[kinds == KIND["bos"]] = BOS_VALUE
    return rows


def write_planted_set(out_dir: str | os.PathLike, *, layers: Sequence[int], languages: Sequence[str],
                      n_samples: int, hidden: int, image_tokens: int = 6, prompt_tokens: int = 3,
                      caption_tokens: tuple[int, int] = (2, 6), n_features: int | None = None, active: int = 3,
                      layout: str = "padded", dtype: torch.dtype = torch.float32,
                      first_sample: int = 0) -> dict[tuple[int, str], Path]:
    """layer_{L}_{language}.pt for each layer and language; {(layer, language): path}."""
    n_features = n_features or 2 * hidden
    ids = [f"img{i:05d}" for i in range(first_sample, first_sample + n_samples)]
    out = {}
    for language in languages:
        kinds = []
        for sid in ids:
            lo, hi = caption_tokens
            kinds.append(sample_kinds(image_tokens, prompt_tokens, lo + _seed("cap", language, sid) % (hi - lo + 1)))
        for layer in layers:
            rows = [planted_rows(layer, language, sid, k, hidden, n_features=n_features, active=active)
                    for sid, k in zip(ids, kinds)]
            out[(layer, language)] = write_layer_file(
                Path(out_dir) / schema.layer_filename(layer, language), layer=layer, language=language,
                sample_ids=ids, rows=rows, kinds=kinds, layout=layout, dtype=dtype, pad_value=PAD_SENTINEL)
    return out


def write_random_padded(path: str | os.PathLike, *, layer: int, language: str, n_samples: int, hidden: int,
                        image_tokens: int, prompt_tokens: int, caption_tokens: tuple[int, int],
                        dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A large padded layer file fast (benchmarks): Gaussian rows, huge bos rows, sentinel padding (torch.save:
    the real writer pads with zeros, and the sentinel proves that readers never read padding)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:05d}" for i in range(n_samples)]
    lo, hi = caption_tokens
    kinds = [sample_kinds(image_tokens, prompt_tokens, lo + _seed("cap", language, s) % (hi - lo + 1)) for s in ids]
    lengths = torch.tensor([k.shape[0] for k in kinds], dtype=torch.int64)
    t_max = int(lengths.max())
    token_kinds = torch.full((n_samples, t_max), KIND["pad"], dtype=torch.int8)
    for i, k in enumerate(kinds):
        token_kinds[i, :k.shape[0]] = k
    acts = torch.empty(n_samples, t_max, hidden, dtype=dtype)
    g = torch.Generator().manual_seed(_seed("random", layer, language, seed))
    for a in range(0, n_samples, 64):
        acts[a:a + 64] = torch.randn(min(64, n_samples - a), t_max, hidden, generator=g)
    acts[token_kinds == KIND["bos"]] = BOS_VALUE
    acts[token_kinds == KIND["pad"]] = PAD_SENTINEL
    token_ids = torch.where(token_kinds == KIND["pad"], schema.PAD_TOKEN_ID, 7).to(torch.int64)
    data = {
        "layer": layer, "activations": acts, "genders": ["unknown"] * n_samples, "hidden_size": hidden,
        "language": language, "sample_ids": ids, "lengths": lengths,
        "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]), "token_ids": token_ids,
        "nan_counts": torch.zeros(n_samples, dtype=torch.int64), "token_selection": "all", "layout": "padded",
        "dtype": schema.dtype_name(dtype), "nan_policy": "zero", "model_id": "synthetic/gemma-3",
        "model_revision": "synthetic", "num_layers": 34, "token_kinds": token_kinds,
    }
    return save_layer_file(path, data)
