"""Latent selection: which SAE latents differ most between male and female samples (no model loaded).

`select_latents(layer_files, sae_folder, options)` works on one layer and one SAE folder (as layerwise.sae writes
it). It encodes, with that SAE, the published activations of the SAE's *selection* samples: its training split
(`split.json` "train"; the held-out samples are the evaluation images of the intervention and never enter the
selection), restricted to samples whose gender is male or female. A sample's code vector is the mean of the
codes over its positions whose token kind is in `options.pool_kinds`:

    text    prompt + caption          caption   caption          prompt   prompt
    image   image                     all       every stored position except bos (and padding)

The file is walked in chunks of samples: only the pooled positions of the selected samples are gathered from
the memory-mapped activations (at most `chunk_bytes` of float32 rows at a time), encoded `batch_rows` rows at
a time, and folded into per-class running moments (float64, Chan's merge), so memory does not grow with the
number of samples.

One row per latent (see `COLUMNS`). Dead latents (pooled code never > 0 on the selection samples) are never
selected; fewer live latents than k is an error (k is never capped silently). Ties are broken by latent index.

A pooled SAE (training.json options.language == "pooled") gives one selection per language: the SAE's
selection samples in that language's file (`feature_language`). A per-language SAE selects in its own
language only: its latent indices mean nothing in another SAE's dictionary.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.intervention.options import InterventionOptions
from layerwise.layerfile.reader import LayerFile, open_layer_file
from layerwise.sae.options import POOLED
from layerwise.sae.outputs import SPLIT_FILE, TRAINING_FILE

CHUNK_BYTES = 64 << 20      # float32 rows gathered per chunk of samples
BATCH_ROWS = 1024           # rows per sae.encode call
GENDER_CLASSES = ("male", "female")

_K = schema.TOKEN_KINDS
POOL_KIND_CODES: dict[str, tuple[int, ...]] = {
    "text": (_K["prompt"], _K["caption"]),
    "caption": (_K["caption"],),
    "prompt": (_K["prompt"],),
    "image": (_K["image"],),
    "all": tuple(sorted(v for name, v in _K.items() if name not in ("pad", "bos"))),
}

COLUMNS = (
    "layer",            # int: decoder layer of the SAE and the files
    "feature_language",  # str: language of the samples the latents were selected on
    "sae",              # str: SAE folder name (layer_{L} pooled, layer_{L}_{language} per language)
    "latent",           # int: latent index in that SAE's dictionary
    "mean_male",        # float: mean pooled code over the male selection samples
    "mean_female",      # float: same, female
    "difference",       # float: mean_male - mean_female
    "cohens_d",         # float: difference / pooled std (ddof 1); 0 when both stds are 0
    "firing_rate",      # float: fraction of the selection samples whose pooled code is > 0
    "dead",             # bool: firing_rate == 0 (never selected)
    "selected",         # bool: in the targeted set of k latents
    "rank",             # Int64: 1..k for selected latents, <NA> otherwise
    "sign",             # int8: sign of the difference (+1 male-leaning, -1 female-leaning, 0 equal)
    "n_male",           # int: male selection samples encoded (training split, >= 1 pooled position)
    "n_female",         # int: female selection samples encoded
    "pool_kinds",       # str: options.pool_kinds
    "ranking",          # str: options.ranking
)


# --------------------------------------------------------------------------------------------- SAE folder
def _load_sae(folder: Path, device: str) -> Any:
    try:
        from sae_lens import SAE
    except ImportError as exc:  # pragma: no cover - sae_lens is pinned in the environment
        raise LayerwiseError(f"latent selection needs sae_lens, which cannot be imported: {exc}") from exc
    try:
        return SAE.load_from_disk(folder, device=device)
    except Exception as exc:
        raise LayerwiseError(f"{folder}: cannot be loaded with sae_lens.SAE.load_from_disk: "
                             f"{type(exc).__name__}: {exc}") from exc


def read_sae_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """What the selection needs of an SAE folder: its training ids, language ('pooled' or one), languages and
    layer (None where training.json does not say)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LayerwiseError(f"SAE folder {folder} does not exist")
    for name in (SPLIT_FILE, TRAINING_FILE):
        if not (folder / name).is_file():
            raise LayerwiseError(f"{folder}: has no {name}; is it an SAE folder written by layerwise.sae?")
    try:
        split = json.loads((folder / SPLIT_FILE).read_text(encoding="utf-8"))
        training = json.loads((folder / TRAINING_FILE).read_text(encoding="utf-8"))
        train_ids = [str(s) for s in split["train"]]
        language = str(training["options"].get("language", POOLED))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LayerwiseError(f"{folder}: unreadable {SPLIT_FILE} / {TRAINING_FILE} "
                             f"({type(exc).__name__}: {exc})") from exc
    languages = training.get("languages") or split.get("languages")
    layer = training.get("layer", split.get("layer"))
    return {"train_ids": train_ids, "language": language,
            "languages": [str(x) for x in languages] if languages else None,
            "layer": int(layer) if layer is not None else None, "name": folder.name}


# --------------------------------------------------------------------------------------------- pooling
def _pool_counts(lf: LayerFile, codes: torch.Tensor) -> torch.Tensor:
    """int64 [N]: positions of the pooled kinds per sample (from the in-memory token kinds)."""
    if lf.layout == "padded":
        t = lf.token_kinds.shape[1]
        valid = torch.arange(t).unsqueeze(0) < lf.lengths.unsqueeze(1)
        return (torch.isin(lf.token_kinds, codes) & valid).sum(1)
    keep = torch.isin(lf.token_kinds, codes).to(torch.int64)
    csum = torch.cat([torch.zeros(1, dtype=torch.int64), keep.cumsum(0)])
    return csum[lf.offsets[1:]] - csum[lf.offsets[:-1]]


def _chunks(idx: np.ndarray, counts: np.ndarray, max_rows: int, max_samples: int) -> Iterator[np.ndarray]:
    """Consecutive groups of `idx` with at most max_rows pooled positions (at least one sample) and
    max_samples samples."""
    start, rows = 0, 0
    for j in range(len(idx)):
        c = int(counts[idx[j]])
        if j > start and (rows + c > max_rows or j - start >= max_samples):
            yield idx[start:j]
            start, rows = j, 0
        rows += c
    if start < len(idx):
        yield idx[start:]


def _gather(lf: LayerFile, idx: np.ndarray, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [R, H] in file dtype, chunk-local sample of every row int64 [R]): the pooled positions of the
    samples `idx`, read from the memory-mapped activations (only those rows)."""
    ti = torch.as_tensor(idx, dtype=torch.int64)
    lens = lf.lengths[ti]
    if lf.layout == "padded":
        t = int(lens.max()) if len(lens) else 0
        kinds = lf.token_kinds[ti, :t]
        mask = torch.isin(kinds, codes) & (torch.arange(t).unsqueeze(0) < lens.unsqueeze(1))
        local, pos = mask.nonzero(as_tuple=True)
        return lf.activations[ti[local], pos], local
    starts = lf.offsets[ti]
    local = torch.repeat_interleave(torch.arange(len(ti)), lens)
    first = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    rowpos = torch.repeat_interleave(starts, lens) + (torch.arange(int(lens.sum())) - first)
    keep = torch.isin(lf.token_kinds[rowpos], codes)
    rowpos, local = rowpos[keep], local[keep]
    return lf.activations[rowpos], local


class _Moments:
    """Running count, mean and M2 (float64 [d]) of one class, merged chunk by chunk (Chan et al.)."""

    def __init__(self, d: int):
        self.n, self.mean, self.m2 = 0, np.zeros(d), np.zeros(d)

    def add(self, x: np.ndarray) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def var(self) -> np.ndarray:
        return self.m2 / max(1, self.n - 1)


def _encode(sae: Any, rows: torch.Tensor, dtype: torch.dtype, device: Any) -> torch.Tensor:
    with torch.no_grad():
        z = sae.encode(rows.to(device=device, dtype=dtype))
    return torch.as_tensor(z).to("cpu", torch.float32)


def _sae_dtype_device(sae: Any) -> tuple[torch.dtype, Any]:
    dtype = getattr(sae, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next(iter(sae.parameters())).dtype if hasattr(sae, "parameters") else torch.float32
    return dtype, getattr(sae, "device", "cpu")


def class_statistics(lf: LayerFile, sae: Any, sample_ids: set[str], pool_kinds: str, *,
                     chunk_bytes: int = CHUNK_BYTES, batch_rows: int = BATCH_ROWS) -> dict[str, Any]:
    """Per-latent moments of the pooled codes of the male and female samples of `lf` among `sample_ids`:
    {"male": _Moments, "female": _Moments, "fired": int64 [d_sae], "n": samples, "skipped": samples without a
    pooled position or with a non-finite code}."""
    if lf.token_kinds is None:
        raise LayerwiseError(f"{lf.name}: the layer file has no 'token_kinds' (written by an older layerwise), so "
                             f"the selection cannot pool over the '{pool_kinds}' token kinds; re-extract")
    codes = torch.tensor(POOL_KIND_CODES[pool_kinds], dtype=lf.token_kinds.dtype)
    d_sae = int(sae.cfg.d_sae) if hasattr(sae, "cfg") else None
    counts = _pool_counts(lf, codes).numpy()
    label = np.array([GENDER_CLASSES.index(g) if g in GENDER_CLASSES else -1 for g in lf.genders])
    chosen = np.array([s in sample_ids for s in lf.sample_ids], dtype=bool) & (label >= 0)
    # samples with NaN/Inf at extraction are not data (their rows were zeroed or kept non-finite)
    nonfinite = chosen & lf.excluded.numpy()
    chosen &= ~nonfinite
    skipped = int((chosen & (counts == 0)).sum()) + int(nonfinite.sum())
    idx = np.flatnonzero(chosen & (counts > 0))
    dtype, device = _sae_dtype_device(sae)
    max_rows = max(1, int(chunk_bytes) // (4 * lf.hidden_size))
    moments: dict[str, _Moments] = {}
    fired = None
    n = 0
    for group in _chunks(idx, counts, max_rows, max(1, int(chunk_bytes) // (4 * (d_sae or lf.hidden_size)))):
        rows, local = _gather(lf, group, codes)
        sums = None
        for b0 in range(0, rows.shape[0], batch_rows):
            z = _encode(sae, rows[b0:b0 + batch_rows], dtype, device)
            if z.dim() != 2 or z.shape[0] != min(batch_rows, rows.shape[0] - b0):
                raise LayerwiseError(f"SAE encode returned shape {list(z.shape)} for {min(batch_rows, rows.shape[0] - b0)} rows")
            if sums is None:
                sums = torch.zeros(len(group), z.shape[1], dtype=torch.float32)
            sums.index_add_(0, local[b0:b0 + batch_rows], z)
        del rows
        pooled = (sums.double() / torch.as_tensor(counts[group], dtype=torch.float64).unsqueeze(1)).numpy()
        finite = np.isfinite(pooled).all(axis=1)
        skipped += int((~finite).sum())
        pooled, lab = pooled[finite], label[group][finite]
        if fired is None:
            d = pooled.shape[1]
            moments = {c: _Moments(d) for c in GENDER_CLASSES}
            fired = np.zeros(d, dtype=np.int64)
        for ci, c in enumerate(GENDER_CLASSES):
            moments[c].add(pooled[lab == ci])
        fired += (pooled > 0).sum(axis=0)
        n += len(pooled)
    if fired is None:                                          # no sample to encode
        d = d_sae or 0
        moments, fired = {c: _Moments(d) for c in GENDER_CLASSES}, np.zeros(d, dtype=np.int64)
    return {**moments, "fired": fired, "n": n, "skipped": skipped}


# --------------------------------------------------------------------------------------------- ranking
def rank_latents(table: pd.DataFrame, k: int, ranking: str, *, where: str = "") -> pd.DataFrame:
    """Mark the k selected latents of one (layer, feature language, SAE) table (columns latent, difference,
    cohens_d, dead): `selected`, `rank` (1..k), `sign`. Dead latents are never selected; fewer eligible latents
    than needed raises LayerwiseError with the counts. Ties: lower latent index first."""
    df = table.copy()
    latent = df["latent"].to_numpy()
    diff = df["difference"].to_numpy(dtype=np.float64)
    live = ~df["dead"].to_numpy(dtype=bool)
    n_live, n = int(live.sum()), len(df)

    def top(mask: np.ndarray, score: np.ndarray, m: int, what: str) -> np.ndarray:
        cand = np.flatnonzero(mask)
        if len(cand) < m:
            raise LayerwiseError(
                f"{where}: {len(cand)} {what}, fewer than the {m} needed (k={k}, ranking '{ranking}'; {n_live} live and "
                f"{n - n_live} dead latents of {n}); dead latents are never selected and k is never capped: lower "
                "--intervention_k or use an SAE with more live latents")
        order = np.lexsort((latent[cand], -score[cand]))
        return cand[order[:m]]

    if ranking == "difference":
        chosen = top(live, np.abs(diff), k, "live latents")
    elif ranking == "cohens_d":
        chosen = top(live, np.abs(df["cohens_d"].to_numpy(dtype=np.float64)), k, "live latents")
    elif ranking == "per_sign":
        if k % 2:
            raise LayerwiseError(f"{where}: ranking 'per_sign' needs an even k, got {k}")
        pos = top(live & (diff > 0), diff, k // 2, "live latents with a positive difference (male > female)")
        neg = top(live & (diff < 0), -diff, k // 2, "live latents with a negative difference (female > male)")
        chosen = np.concatenate([pos, neg])
        chosen = chosen[np.lexsort((latent[chosen], -np.abs(diff[chosen])))]
    else:
        raise LayerwiseError(f"{where}: unknown ranking {ranking!r}")
    rank = pd.array([pd.NA] * n, dtype="Int64")
    rank[chosen] = np.arange(1, len(chosen) + 1)
    selected = np.zeros(n, dtype=bool)
    selected[chosen] = True
    df["selected"] = selected
    df["rank"] = rank
    df["sign"] = np.sign(diff).astype(np.int8)
    return df


def latent_table(stats: dict[str, Any], *, layer: int, feature_language: str, sae: str) -> pd.DataFrame:
    """The per-latent columns (before ranking) from `class_statistics`."""
    m, f = stats["male"], stats["female"]
    diff = m.mean - f.mean
    dof = m.n + f.n - 2
    pooled_sd = np.sqrt((m.m2 + f.m2) / dof) if dof > 0 else np.zeros_like(diff)
    scale = np.maximum(np.abs(m.mean), np.abs(f.mean))
    flat = pooled_sd <= 1e-9 * np.maximum(scale, 1e-30)       # both stds 0 (up to rounding of the merge)
    d = np.where(flat, 0.0, diff / np.where(flat, 1.0, pooled_sd))
    rate = stats["fired"] / max(1, stats["n"])
    n = len(diff)
    return pd.DataFrame({
        "layer": np.full(n, layer, dtype=np.int64), "feature_language": feature_language, "sae": sae,
        "latent": np.arange(n, dtype=np.int64), "mean_male": m.mean, "mean_female": f.mean, "difference": diff,
        "cohens_d": d, "firing_rate": rate, "dead": stats["fired"] == 0,
    })


# --------------------------------------------------------------------------------------------- entry point
def refuse_per_sample_files(files: Sequence[LayerFile], sae_name: str) -> None:
    """The hooks apply an SAE to the residual stream at every position the model writes: its latents mean
    something there only if it was trained on token rows, not on one pooled (or last-position) vector per sample."""
    selections = sorted({lf.token_selection for lf in files} & set(schema.PER_SAMPLE_SELECTIONS))
    if selections:
        raise LayerwiseError(
            f"SAE {sae_name}: its layer files hold one vector per sample (--token_selection {selections[0]}), but the "
            "intervention applies the SAE to every token position while the model writes captions; extract per-token "
            "rows (--token_selection all, text or caption) and train the SAEs on them")


def _open(f: str | os.PathLike | LayerFile) -> LayerFile:
    return f if isinstance(f, LayerFile) else open_layer_file(f)


def select_latents(layer_files: Sequence[str | os.PathLike | LayerFile] | str | os.PathLike | LayerFile,
                   sae_folder: str | os.PathLike, options: InterventionOptions | None = None,
                   language: str | None = None, *, sae: Any = None, device: str = "cpu",
                   chunk_bytes: int = CHUNK_BYTES, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """One layer, one SAE folder: the per-latent table (`COLUMNS`) of each feature language, concatenated.

    `layer_files`: the layer's published files (one per language). `language`: the feature language; None:
    every language of the files that a pooled SAE was trained on, or a per-language SAE's own language.
    `sae`: an already loaded SAE for this folder (else `sae_lens.SAE.load_from_disk(sae_folder, device)`).
    """
    options = options or InterventionOptions()
    folder = Path(sae_folder)
    info = read_sae_folder(folder)
    if isinstance(layer_files, (str, os.PathLike, LayerFile)):
        layer_files = [layer_files]
    files = [_open(f) for f in layer_files]
    if not files:
        raise LayerwiseError(f"{folder.name}: no layer files given for the latent selection")
    refuse_per_sample_files(files, folder.name)
    by_lang: dict[str, LayerFile] = {}
    for lf in files:
        if lf.language in by_lang:
            raise LayerwiseError(f"{folder.name}: two layer files for language {lf.language!r} "
                                 f"({by_lang[lf.language].name}, {lf.name})")
        by_lang[lf.language] = lf
    layers = sorted({lf.layer for lf in files})
    if len(layers) != 1:
        raise LayerwiseError(f"{folder.name}: the layer files hold layers {layers}; the selection takes one layer")
    layer = layers[0]
    if info["layer"] is not None and info["layer"] != layer:
        raise LayerwiseError(f"SAE {folder} was trained on layer {info['layer']}, not on layer {layer} of "
                             f"{', '.join(lf.name for lf in files)}: an SAE's latents belong to its own layer")

    if info["language"] != POOLED:
        own = info["language"]
        if language is not None and language != own:
            raise LayerwiseError(f"SAE {folder.name} was trained on {own!r} only: it selects latents in {own!r}, not "
                                 f"{language!r} (latent indices of one SAE mean nothing in another's dictionary)")
        wanted = [own]
    elif language is not None:
        wanted = [language]
    else:
        wanted = sorted(lang for lang in by_lang if info["languages"] is None or lang in info["languages"])
    for lang in wanted:
        if lang not in by_lang:
            raise LayerwiseError(f"{folder.name}: no layer file of layer {layer} for feature language {lang!r} "
                                 f"(given: {', '.join(sorted(by_lang))})")
        if info["languages"] is not None and lang not in info["languages"]:
            raise LayerwiseError(f"SAE {folder.name} was trained on {', '.join(info['languages'])}, not on {lang!r}")
    if not wanted:
        raise LayerwiseError(f"SAE {folder.name} was trained on {', '.join(info['languages'] or [])}; none of the "
                             f"given layer files ({', '.join(sorted(by_lang))}) is in those languages")

    model = sae if sae is not None else _load_sae(folder, device)
    d_in = getattr(getattr(model, "cfg", None), "d_in", None)
    if d_in is not None and int(d_in) != files[0].hidden_size:
        raise LayerwiseError(f"SAE {folder.name} takes d_in={d_in}, but layer {layer} has hidden size "
                             f"{files[0].hidden_size}")
    train_ids = set(info["train_ids"])
    out = []
    for lang in wanted:
        lf = by_lang[lang]
        where = f"layer {layer}, SAE {folder.name}, feature language {lang}"
        stats = class_statistics(lf, model, train_ids, options.pool_kinds, chunk_bytes=chunk_bytes,
                                 batch_rows=batch_rows)
        n_m, n_f = stats["male"].n, stats["female"].n
        if n_m < 2 or n_f < 2:
            raise LayerwiseError(
                f"{where}: {n_m} male and {n_f} female selection samples (training split of the SAE, with a "
                f"'{options.pool_kinds}' position; {stats['skipped']} left out): at least 2 of each are needed")
        table = latent_table(stats, layer=layer, feature_language=lang, sae=folder.name)
        table = rank_latents(table, options.k, options.ranking, where=where)
        table["n_male"], table["n_female"] = n_m, n_f
        table["pool_kinds"], table["ranking"] = options.pool_kinds, options.ranking
        out.append(table[list(COLUMNS)])
    return pd.concat(out, ignore_index=True)
