"""Per-latent dashboards of one trained SAE: `dashboard.html` and `dashboard.parquet` in its folder (docs/sae.md).

Which latents: the `dashboard_latents` latents with the largest |mean activation(male) - mean activation(female)|
(`gender`) and then the `dashboard_latents` most frequent ones not already chosen (`frequent`); a latent that never
fires is never chosen. For each: the `dashboard_examples` (sample, language) pairs where it is strongest, each with
the image thumbnail and its tokens coloured by activation (the position of the largest marked), the histogram of
its nonzero activations, and its firing rate by gender and by language. The page is self-contained (CSS and images
inline, no script, no URL), so it reads offline; `dashboard.parquet` is the table behind it.

The rows: every sample of the layer files (both splits: the `split` column says which), its stored rows of the
token kinds the SAE was trained on (`keep_kinds`/`drop_kinds`; padding never), without the samples that had
NaN/Inf values at extraction: the rows training and evaluation read. The unit of the examples and of the gender
means is a (sample, language) pair: one sample of one layer file. mean activation(gender) is the mean, over the
pairs of that gender, of each pair's mean activation over its rows; pairs whose gender is not male or female do
not enter it. A latent fires on a row when its activation is not 0 (SAELens activations are >= 0).

Three passes, each reading the files sequentially in runs of consecutive samples (as the data provider does):
(1) every latent's firing counts by gender and language, its largest activation and its pair means summed by
gender, from which the latents are chosen; (2) for the chosen latents only, the histogram and each pair's largest
activation, from which the examples are chosen; (3) the examples' own positions, all of them, for the page.
Memory: a few d_sae vectors, and pairs x chosen latents.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise.core import schema
from layerwise.core.atomic import atomic_path, atomic_write_text
from layerwise.core.errors import LayerwiseError
from layerwise.core.html import BASE_CSS
from layerwise.core.outdir import METADATA_JSON
from layerwise.layerfile.store import load_layer_file
from layerwise.sae.options import SAEOptions
from layerwise.sae.outputs import layer_outdir, sae_folder_name
from layerwise.sae.provider import TORCH_DTYPES, plan_chunks
from layerwise.sae.source import LayerSource, allowed_table, open_sources, select_sources
from layerwise.sae.split import TRAIN, VALIDATION, is_validation

DASHBOARD_HTML = "dashboard.html"
DASHBOARD_TABLE = "dashboard.parquet"
WHY_GENDER, WHY_FREQUENT = "gender", "frequent"
GENDER_GROUPS = ("male", "female", "unknown")     # a pair whose gender is neither male nor female counts as unknown
THUMBNAIL_PX = 96            # the longer side of an image thumbnail (JPEG)
HISTOGRAM_BINS = 24          # equal bins over (0, the latent's largest activation]
MAX_TEXT_TOKENS = 160        # text positions shown per example; beyond that a window around the largest
IMAGE_GRID_PX = 96           # the heat map of an example's image-token activations is at most this wide
NO_IMAGE = "image not available"

# Columns of dashboard.parquet: one row per (chosen latent, example). The latent's columns repeat on each of its
# examples (a latent that fires has at least one). firing_rate_lang_<language> follow firing_rate_unknown, one per
# language of the SAE, in sorted order.
LATENT_COLUMNS = ("layer", "language", "languages", "sae_dir", "d_sae", "latent", "why", "rank", "rows",
                  "firing_rate", "firing_rate_male", "firing_rate_female", "firing_rate_unknown")
GENDER_COLUMNS = ("mean_activation_male", "mean_activation_female", "difference", "max_activation")
EXAMPLE_COLUMNS = ("example", "sample_id", "example_language", "gender", "split", "example_max", "max_position",
                   "max_kind", "max_token", "image")
LANGUAGE_RATE = "firing_rate_lang_"

_KIND_NAMES = {code: name for name, code in schema.TOKEN_KINDS.items()}


def dashboard_columns(languages: Sequence[str]) -> list[str]:
    return [*LATENT_COLUMNS, *(LANGUAGE_RATE + lang for lang in sorted(languages)), *GENDER_COLUMNS, *EXAMPLE_COLUMNS]


# ---------------------------------------------------------------- the pairs and their rows
@dataclass
class Pairs:
    """The (sample, language) pairs with rows: one per kept sample of each source, numbered source by source."""

    source: np.ndarray          # int64 [U]: index of the source
    index: np.ndarray           # int64 [U]: the sample's index in its file
    gender: np.ndarray          # int64 [U]: index into GENDER_GROUPS
    language: np.ndarray        # int64 [U]: index into `languages`
    rows: np.ndarray            # int64 [U]: kept rows of the pair
    ids: list[np.ndarray]       # per source: the pair id of each sample, -1 when it has none
    genders: list[list[str]]    # per source: the file's genders

    def __len__(self) -> int:
        return len(self.source)


def _pairs(sources: Sequence[LayerSource], data: Sequence[dict | None], allowed, languages: list[str]) -> Pairs:
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "index", "gender", "language", "rows")}
    ids, genders, start = [], [], 0
    for si, (src, d) in enumerate(zip(sources, data)):
        counts = src.kept_counts(allowed).numpy().astype(np.int64)
        keep = (~src.excluded.numpy()) & (counts > 0)
        idx = np.flatnonzero(keep)
        own = np.full(src.num_samples, -1, dtype=np.int64)
        own[idx] = np.arange(start, start + len(idx))
        start += len(idx)
        g = [str(x) for x in d["genders"]] if d is not None and "genders" in d else ["unknown"] * src.num_samples
        codes = np.array([GENDER_GROUPS.index(x) if x in GENDER_GROUPS[:2] else 2 for x in g], dtype=np.int64)
        cols["source"].append(np.full(len(idx), si, dtype=np.int64))
        cols["index"].append(idx.astype(np.int64))
        cols["gender"].append(codes[idx])
        cols["language"].append(np.full(len(idx), languages.index(src.language), dtype=np.int64))
        cols["rows"].append(counts[idx])
        ids.append(own)
        genders.append(g)
    joined = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in cols.items()}
    return Pairs(ids=ids, genders=genders, **joined)


def _row_batches(sources: Sequence[LayerSource], pairs: Pairs, allowed, options: SAEOptions):
    """(rows [m, H] in the file's dtype, pair id of each row [m]) over every kept row, file by file, in order."""
    for si, src in enumerate(sources):
        own = pairs.ids[si]
        selected = torch.from_numpy(own >= 0)
        for chunk in plan_chunks(si, selected, src.stored_rows(), options.chunk_tokens):
            for a, b in chunk.runs:
                rows = src.read_run(a, b, allowed)
                pid = torch.from_numpy(np.repeat(own[a:b], pairs.rows[own[a:b]]))
                if pid.shape[0] != rows.shape[0]:
                    raise AssertionError(f"{src.path}: {rows.shape[0]} rows read for {pid.shape[0]} kept positions")
                for s in range(0, rows.shape[0], options.batch_size):
                    yield rows[s:s + options.batch_size], pid[s:s + options.batch_size]


def _encode(sae: Any, x: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    acts = sae.encode(x.to(device=device, dtype=dtype))
    return (acts.to_dense() if acts.is_sparse else acts).float()      # TopKSAE(use_sparse_activations=True): COO


# ---------------------------------------------------------------- pass 1: every latent
@dataclass
class LatentStats:
    """What pass 1 knows of every latent (numpy, float64)."""

    fires_gender: np.ndarray      # [3, d]: rows where the latent fires, by GENDER_GROUPS
    rows_gender: np.ndarray       # [3]
    fires_language: np.ndarray    # [L, d]
    rows_language: np.ndarray     # [L]
    mean_sum_gender: np.ndarray   # [3, d]: sum over the pairs of each gender of the pair's mean activation
    pairs_gender: np.ndarray      # [3]
    max_activation: np.ndarray    # [d]

    @property
    def d_sae(self) -> int:
        return int(self.max_activation.shape[0])

    @property
    def rows(self) -> int:
        return int(self.rows_gender.sum())

    @property
    def firing_rate(self) -> np.ndarray:
        return self.fires_gender.sum(0) / max(self.rows, 1)

    @property
    def alive(self) -> np.ndarray:
        return self.fires_gender.sum(0) > 0

    def mean_activation(self, gender: str) -> np.ndarray:
        g = GENDER_GROUPS.index(gender)
        n = self.pairs_gender[g]
        return self.mean_sum_gender[g] / n if n else np.full(self.d_sae, np.nan)

    @property
    def difference(self) -> np.ndarray:
        """mean activation(male) - mean activation(female); NaN without pairs of either."""
        return self.mean_activation("male") - self.mean_activation("female")

    def rate(self, fires: np.ndarray, rows: float) -> np.ndarray:
        return fires / rows if rows else np.full(self.d_sae, np.nan)


@torch.no_grad()
def latent_statistics(sae: Any, sources: Sequence[LayerSource], pairs: Pairs, allowed, options: SAEOptions,
                      device: str, n_languages: int) -> LatentStats:
    dtype = TORCH_DTYPES[options.dtype]
    gender = torch.from_numpy(pairs.gender).to(device)
    language = torch.from_numpy(pairs.language).to(device)
    weight = torch.from_numpy(1.0 / np.maximum(pairs.rows, 1)).float().to(device)
    acc: dict[str, torch.Tensor] = {}
    for x, pid in _row_batches(sources, pairs, allowed, options):
        acts = _encode(sae, x, device, dtype)
        pid = pid.to(device)
        if not acc:
            d = acts.shape[1]
            acc = {"fg": torch.zeros(3, d, dtype=torch.float64, device=device),
                   "fl": torch.zeros(n_languages, d, dtype=torch.float64, device=device),
                   "ms": torch.zeros(3, d, dtype=torch.float64, device=device),
                   "mx": torch.zeros(d, dtype=torch.float32, device=device)}
        fired = (acts != 0).float()
        onehot_g = torch.nn.functional.one_hot(gender[pid], 3).float()
        onehot_l = torch.nn.functional.one_hot(language[pid], n_languages).float()
        acc["fg"] += (onehot_g.T @ fired).double()
        acc["fl"] += (onehot_l.T @ fired).double()
        # each row weighted by 1 / its pair's rows: summed over the rows of a gender, the sum of its pairs' means
        acc["ms"] += ((onehot_g * weight[pid][:, None]).T @ acts).double()
        acc["mx"] = torch.maximum(acc["mx"], acts.max(0).values)
    if not acc:
        raise LayerwiseError(f"layer {sources[0].layer}: no row to build the SAE dashboard from")
    rows_gender = np.bincount(pairs.gender, weights=pairs.rows, minlength=3).astype(np.float64)
    rows_language = np.bincount(pairs.language, weights=pairs.rows, minlength=n_languages).astype(np.float64)
    return LatentStats(fires_gender=acc["fg"].cpu().numpy(), rows_gender=rows_gender,
                       fires_language=acc["fl"].cpu().numpy(), rows_language=rows_language,
                       mean_sum_gender=acc["ms"].cpu().numpy(),
                       pairs_gender=np.bincount(pairs.gender, minlength=3).astype(np.float64),
                       max_activation=acc["mx"].cpu().double().numpy())


def choose_latents(stats: LatentStats, n: int) -> list[tuple[int, str, int]]:
    """[(latent, why, rank)]: the n latents with the largest |mean(male) - mean(female)| (none without male or female
    pairs; only latents whose difference is not 0), then the n most frequent not already chosen; a latent that
    never fires is never chosen. Ties: the lower latent index first."""
    if n <= 0:
        return []
    alive = np.flatnonzero(stats.alive)
    chosen: list[tuple[int, str, int]] = []
    diff = np.abs(stats.difference)
    if stats.pairs_gender[0] and stats.pairs_gender[1]:
        cand = alive[np.isfinite(diff[alive]) & (diff[alive] > 0)]
        order = cand[np.lexsort((cand, -diff[cand]))][:n]
        chosen += [(int(j), WHY_GENDER, r + 1) for r, j in enumerate(order)]
    taken = {j for j, _, _ in chosen}
    rate = stats.firing_rate
    cand = np.array([j for j in alive if int(j) not in taken], dtype=np.int64)
    order = cand[np.lexsort((cand, -rate[cand]))][:n] if len(cand) else cand
    chosen += [(int(j), WHY_FREQUENT, r + 1) for r, j in enumerate(order)]
    return chosen


# ---------------------------------------------------------------- pass 2: the chosen latents
@torch.no_grad()
def chosen_pass(sae: Any, sources: Sequence[LayerSource], pairs: Pairs, allowed, options: SAEOptions, device: str,
                latents: Sequence[int], max_activation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(histogram counts [c, HISTOGRAM_BINS] of the nonzero activations over (0, max], each pair's largest
    activation [U, c]) of the chosen latents."""
    dtype = TORCH_DTYPES[options.dtype]
    c = len(latents)
    cols = torch.tensor(list(latents), dtype=torch.int64, device=device)
    top = torch.tensor(max_activation[list(latents)], dtype=torch.float32, device=device).clamp_min(1e-30)
    hist = torch.zeros(c * HISTOGRAM_BINS, dtype=torch.float64, device=device)
    pair_max = torch.zeros(len(pairs), c, dtype=torch.float32, device=device)
    for x, pid in _row_batches(sources, pairs, allowed, options):
        acts = _encode(sae, x, device, dtype).index_select(1, cols)          # [m, c]
        pid = pid.to(device)
        nz = acts != 0
        b = ((acts / top).mul(HISTOGRAM_BINS).ceil().long() - 1).clamp(0, HISTOGRAM_BINS - 1)
        flat = (torch.arange(c, device=device)[None, :] * HISTOGRAM_BINS + b)[nz]
        hist.index_add_(0, flat, torch.ones(flat.shape[0], dtype=torch.float64, device=device))
        pair_max.scatter_reduce_(0, pid[:, None].expand(-1, c), acts, reduce="amax", include_self=True)
    return hist.view(c, HISTOGRAM_BINS).cpu().numpy(), pair_max.cpu().numpy()


def top_pairs(pair_max: np.ndarray, k: int) -> list[list[int]]:
    """Per chosen latent, the ids of the k pairs with the largest activation (> 0), largest first; ties: lower id."""
    out = []
    ids = np.arange(pair_max.shape[0])
    for j in range(pair_max.shape[1]):
        m = pair_max[:, j]
        order = ids[np.lexsort((ids, -m))]
        out.append([int(p) for p in order[:k] if m[p] > 0])
    return out


# ---------------------------------------------------------------- pass 3: the examples
@dataclass
class Example:
    latent: int
    pair: int
    sample_id: str
    language: str
    gender: str
    split: str
    activations: np.ndarray     # float [n]: every stored position; NaN where not encoded (kind left out)
    kinds: np.ndarray           # int [n]: token kind codes (schema.TOKEN_KINDS; -1 unknown)
    labels: list[str]           # [n]: the token strings, or the token ids as text
    max_position: int
    image: Path | None = None
    thumbnail: str | None = None
    ids_shown: bool = False     # `labels` are token ids (no token table for this pair)

    @property
    def max_value(self) -> float:
        return float(self.activations[self.max_position])


def _sample_positions(src: LayerSource, i: int, data: dict | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """(rows [n, H], kinds [n], token ids [n] or None) of every stored position of sample i."""
    n = int(src.lengths[i])
    if src.layout == "padded":
        rows = src.activations[i, :n]
        kinds = src.token_kinds[i, :n] if src.token_kinds is not None else None
        ids = data["token_ids"][i, :n] if data is not None and "token_ids" in data else None
    else:
        a, b = int(src.offsets[i]), int(src.offsets[i + 1])
        rows = src.activations[a:b]
        kinds = src.token_kinds[a:b] if src.token_kinds is not None else None
        ids = data["token_ids"][a:b] if data is not None and "token_ids" in data else None
    kind_codes = kinds.to(torch.int64).numpy() if kinds is not None else np.full(n, -1, dtype=np.int64)
    return rows, kind_codes, (torch.as_tensor(ids).to(torch.int64).numpy() if ids is not None else None)


def read_tokens(path: Path, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[np.ndarray, list]]:
    """{(sample_id, language): (token ids, token strings)} of the wanted pairs from metadata/tokens.parquet, in
    position order (only those rows are read)."""
    import pandas as pd

    ids = sorted({s for s, _ in wanted})
    if not ids:
        return {}
    try:
        frame = pd.read_parquet(path, columns=["sample_id", "language", "position", "token_id", "token"],
                                filters=[("sample_id", "in", ids)])
    except Exception as exc:
        raise LayerwiseError(f"{path}: cannot read the token table (metadata/tokens.parquet): {exc}") from exc
    out = {}
    for (sid, lang), part in frame.groupby(["sample_id", "language"], sort=False):
        if (sid, lang) not in wanted:
            continue
        part = part.sort_values("position", kind="stable")
        if part["position"].tolist() != list(range(len(part))):
            continue
        out[(sid, lang)] = (part["token_id"].to_numpy(dtype=np.int64),
                            [None if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
                             for t in part["token"].tolist()])
    return out


def read_images(path: Path, sample_ids: set[str]) -> dict[str, list[Path]]:
    """{sample_id: candidate image paths} from metadata/samples.parquet: the recorded absolute path, then its path
    relative to the run's image root (extraction_metadata.json `image_root`, beside metadata/)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise LayerwiseError(f"{path}: cannot read the samples table (metadata/samples.parquet): {exc}") from exc
    root = None
    try:
        meta = json.loads((Path(path).parent.parent / METADATA_JSON).read_text(encoding="utf-8"))
        root = meta.get("image_root") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        pass
    out: dict[str, list[Path]] = {}
    for row in frame.to_dict("records"):
        sid = str(row.get("sample_id"))
        if sid not in sample_ids or sid in out:
            continue
        found = []
        if row.get("image"):
            found.append(Path(str(row["image"])))
        if root and row.get("image_relative"):
            found.append(Path(root) / str(row["image_relative"]))
        out[sid] = found
    return out


def thumbnail(path: Path) -> str | None:
    """The image as a base64 JPEG whose longer side is at most THUMBNAIL_PX; None when it cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- the page
def display_token(token: str) -> str:
    """A token string as read in running text: SentencePiece / byte-BPE word starts as a space, newlines as ↵."""
    return token.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\u21b5").replace("\n", "\u21b5")


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def _pct(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.3g} %"


def histogram_svg(counts: np.ndarray, top: float) -> str:
    """An inline SVG bar chart of the histogram (equal bins over (0, top]), with its axis values as text."""
    w, h, left, bottom, pad = 300, 96, 40, 18, 6
    pw, ph = w - left - pad, h - bottom - pad
    most = float(counts.max()) if len(counts) and counts.max() > 0 else 1.0
    bw = pw / len(counts)
    bars = []
    for i, c in enumerate(counts):
        bh = ph * float(c) / most
        lo, hi = top * i / len(counts), top * (i + 1) / len(counts)
        bars.append(f'<rect x="{left + i * bw:.1f}" y="{pad + ph - bh:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                    f'height="{bh:.1f}" fill="#e07b00"><title>{lo:.3g}-{hi:.3g}: {int(c)}</title></rect>')
    return (f'<svg class="hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'role="img" aria-label="histogram of the nonzero activations">'
            f'<line x1="{left}" y1="{pad + ph}" x2="{left + pw}" y2="{pad + ph}" stroke="#444" stroke-width="0.8"/>'
            f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{pad + ph}" stroke="#444" stroke-width="0.8"/>'
            + "".join(bars)
            + f'<text x="{left}" y="{h - 4}" font-size="10">0</text>'
            f'<text x="{left + pw}" y="{h - 4}" font-size="10" text-anchor="end">{top:.3g}</text>'
            f'<text x="{left - 3}" y="{pad + 8}" font-size="10" text-anchor="end">{int(most)}</text>'
            f'<text x="{left - 3}" y="{pad + ph}" font-size="10" text-anchor="end">0</text></svg>')


def image_grid(values: np.ndarray, marked: int | None) -> str:
    """The activations of an example's image tokens as a small heat map (base64 PNG): a square grid when their
    number is a square, else rows of at most 32; white = 0, orange = the latent's largest; `marked` outlined."""
    from PIL import Image, ImageDraw

    n = len(values)
    side = int(round(n ** 0.5))
    cols = side if side * side == n else min(n, 32)
    rows = -(-n // cols)
    cell = max(2, IMAGE_GRID_PX // cols)
    im = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, v in enumerate(values):
        a = 0.0 if not np.isfinite(v) else float(min(max(v, 0.0), 1.0))
        colour = (255, int(round(255 - 115 * a)), int(round(255 - 255 * a)))
        x, y = (i % cols) * cell, (i // cols) * cell
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
    if marked is not None:
        x, y = (marked % cols) * cell, (marked // cols) * cell
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(170, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _token_spans(ex: Example, top: float) -> str:
    image_code = schema.TOKEN_KINDS["image"]
    text = [p for p in range(len(ex.labels)) if ex.kinds[p] != image_code]
    if len(text) > MAX_TEXT_TOKENS:
        acts = np.nan_to_num(ex.activations[text], nan=-1.0)
        centre = text.index(ex.max_position) if ex.max_position in text else int(np.argmax(acts))
        start = max(0, min(centre - MAX_TEXT_TOKENS // 2, len(text) - MAX_TEXT_TOKENS))
        shown = text[start:start + MAX_TEXT_TOKENS]
    else:
        shown = text
    out = []
    if shown and shown[0] != (text[0] if text else None):
        out.append('<span class="gap">…</span>')
    for p in shown:
        v = float(ex.activations[p])
        kind = _KIND_NAMES.get(int(ex.kinds[p]), "?")
        label = html.escape(display_token(ex.labels[p]))
        if not np.isfinite(v):
            out.append(f'<span class="t off{" id" if ex.ids_shown else ""}" title="position {p} · {kind} · not encoded (token kind left out)">'
                       f"{label}</span>")
            continue
        cls = ("t max" if p == ex.max_position else "t") + (" id" if ex.ids_shown else "")
        alpha = round(min(max(v / top, 0.0), 1.0), 2) if top > 0 else 0.0
        style = f' style="background:rgba(255,140,0,{alpha:.2f})"' if v != 0 else ""
        out.append(f'<span class="{cls}" data-act="{v:.4g}"{style} title="position {p} · {kind} · {v:.4g}">'
                   f"{label}</span>")
    if shown and text and shown[-1] != text[-1]:
        out.append('<span class="gap">…</span>')
    return "".join(out)


def _example_html(ex: Example, top: float) -> str:
    if ex.thumbnail:
        thumb = f'<img class="thumb" alt="image of {html.escape(ex.sample_id)}" src="data:image/jpeg;base64,{ex.thumbnail}">'
    else:
        thumb = f'<div class="thumb none">{NO_IMAGE}</div>'
    image_code = schema.TOKEN_KINDS["image"]
    image_pos = [p for p in range(len(ex.labels)) if ex.kinds[p] == image_code]
    encoded = [p for p in image_pos if np.isfinite(ex.activations[p])]
    grid = ""
    if encoded:
        values = np.array([ex.activations[p] / top if top > 0 else 0.0 for p in image_pos])
        marked = image_pos.index(ex.max_position) if ex.max_position in image_pos else None
        grid = (f'<img class="grid" alt="activations on the {len(image_pos)} image tokens" '
                f'title="activations on the {len(image_pos)} image tokens (max {np.nanmax(ex.activations[image_pos]):.4g})" '
                f'src="data:image/png;base64,{image_grid(values, marked)}">')
    kind = _KIND_NAMES.get(int(ex.kinds[ex.max_position]), "?")
    where = (f"image token {image_pos.index(ex.max_position)}" if ex.max_position in image_pos
             else f"“{html.escape(display_token(ex.labels[ex.max_position]))}”")
    meta = (f"<b>{html.escape(ex.sample_id)}</b> · {html.escape(ex.language)} · {html.escape(ex.gender)} · {ex.split}"
            f" · max {ex.max_value:.4g} at position {ex.max_position} ({kind}: {where})")
    return (f'<div class="ex" data-latent="{ex.latent}" data-sample="{html.escape(ex.sample_id)}" '
            f'data-language="{html.escape(ex.language)}" data-max-position="{ex.max_position}">{thumb}'
            f'<div class="body"><div class="meta">{meta}</div>{grid}<div class="tokens">{_token_spans(ex, top)}</div>'
            "</div></div>")


CSS = """
 body { max-width: 1200px; }
 th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 section.latent { border-top: 2px solid #ddd; margin-top: 1.5em; padding-top: 0.5em; }
 .facts { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
 .ex { display: flex; gap: 0.8em; align-items: flex-start; margin: 0.6em 0; }
 .thumb { width: 96px; min-width: 96px; }
 .thumb.none { height: 64px; border: 1px dashed #aaa; color: #777; font-size: 0.75em; display: flex;
               align-items: center; justify-content: center; text-align: center; }
 img.grid { image-rendering: pixelated; border: 1px solid #ccc; margin: 0.2em 0; }
 .meta { font-size: 0.8em; color: #444; margin-bottom: 0.2em; }
 .tokens { font-family: ui-monospace, monospace; font-size: 0.85em; line-height: 1.7; }
 .tokens span.t { white-space: pre; border-radius: 2px; }
 .tokens span.id { margin-right: 0.3em; }
 .tokens span.off { color: #aaa; }
 .tokens span.max { outline: 2px solid #a00; font-weight: bold; }
 .tokens span.gap { color: #999; }
 p.note { color: #8a5300; }
"""


def _latent_html(row: dict[str, Any], languages: list[str], hist: np.ndarray, examples: list[Example]) -> str:
    j, top = row["latent"], row["max_activation"]
    why = (f"gender rank {row['rank']} ({'male' if row['difference'] > 0 else 'female'} &gt; "
           f"{'female' if row['difference'] > 0 else 'male'})" if row["why"] == WHY_GENDER
           else f"frequency rank {row['rank']}")
    rates = "".join(f"<tr><td>{html.escape(g)}</td><td class='num'>{_pct(row['firing_rate_' + g])}</td></tr>"
                    for g in GENDER_GROUPS)
    rates += "".join(f"<tr><td>{html.escape(lang)}</td><td class='num'>{_pct(row[LANGUAGE_RATE + lang])}</td></tr>"
                     for lang in languages)
    means = (f"<tr><td>mean activation, male</td><td class='num'>{_fmt(row['mean_activation_male'], 4)}</td></tr>"
             f"<tr><td>mean activation, female</td><td class='num'>{_fmt(row['mean_activation_female'], 4)}</td></tr>"
             f"<tr><td>difference (male − female)</td><td class='num'>{_fmt(row['difference'], 4)}</td></tr>"
             f"<tr><td>largest activation</td><td class='num'>{_fmt(top, 4)}</td></tr>")
    body = "".join(_example_html(ex, top) for ex in examples)
    return (f'<section class="latent" id="latent-{j}"><h2>Latent {j} · {why}</h2>'
            f'<div class="facts"><table><tr><th>firing rate</th><th>{_pct(row["firing_rate"])} of '
            f'{row["rows"]} rows</th></tr>{rates}</table><table>{means}</table>'
            f'<figure>{histogram_svg(hist, top)}<figcaption class="files">nonzero activations '
            f'({int(hist.sum())} rows), {HISTOGRAM_BINS} bins over (0, {top:.3g}]</figcaption></figure></div>'
            f'<h3>Top {len(examples)} (sample, language) pairs by largest activation</h3>{body}</section>')


def _index_html(rows: list[dict[str, Any]], languages: list[str]) -> str:
    head = ("<tr><th>latent</th><th>why</th><th>rank</th><th>firing rate</th><th>male</th><th>female</th>"
            + "".join(f"<th>{html.escape(lang)}</th>" for lang in languages)
            + "<th>mean male</th><th>mean female</th><th>difference</th></tr>")
    body = []
    for r in rows:
        body.append(f"<tr><td><a href='#latent-{r['latent']}'>{r['latent']}</a></td><td>{r['why']}</td>"
                    f"<td class='num'>{r['rank']}</td><td class='num'>{_pct(r['firing_rate'])}</td>"
                    f"<td class='num'>{_pct(r['firing_rate_male'])}</td><td class='num'>{_pct(r['firing_rate_female'])}</td>"
                    + "".join(f"<td class='num'>{_pct(r[LANGUAGE_RATE + lang])}</td>" for lang in languages)
                    + f"<td class='num'>{_fmt(r['mean_activation_male'], 4)}</td>"
                    f"<td class='num'>{_fmt(r['mean_activation_female'], 4)}</td>"
                    f"<td class='num'>{_fmt(r['difference'], 4)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


# ---------------------------------------------------------------- the whole dashboard
def find_metadata_table(layer_files: Sequence[str | os.PathLike], given: str | os.PathLike | None,
                        name: str, flag: str) -> Path | None:
    """`given` (an error when it does not exist), else `<outdir>/<name>` when the layer files are an outdir's
    layer_checkpoints/ (links followed) and it exists there, else None."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise LayerwiseError(f"{flag} {given}: no such file")
        return path
    outdir = layer_outdir([p.path if isinstance(p, LayerSource) else p for p in layer_files])
    if outdir is None:
        return None
    path = outdir / name
    return path if path.is_file() else None


def write_dashboard(sae: Any, layer_files: Sequence[str | os.PathLike | LayerSource], folder: str | os.PathLike,
                    options: SAEOptions | None = None, *, tokens: str | os.PathLike | None = None,
                    samples: str | os.PathLike | None = None, device: str = "cpu",
                    sae_dir: str | None = None) -> dict[str, Any] | None:
    """Write `folder`/dashboard.html and dashboard.parquet for `sae` (anything with `encode(x) -> [rows, d_sae]`:
    a SAELens SAE) on the layer files' rows as training chose them (`options`); returns a summary (for
    training.json), or None when `options.dashboard_latents` is 0 (nothing written).

    `tokens` / `samples`: the outdir's metadata/tokens.parquet and samples.parquet (token strings; images); without
    them the page shows token ids and no images. `sae_dir`: the SAE folder's final name (default: named from the
    layer and options.language)."""
    options = options or SAEOptions()
    if options.dashboard_latents <= 0:
        return None
    started = time.perf_counter()
    if all(isinstance(s, LayerSource) for s in layer_files):
        sources = list(layer_files)
    else:
        sources = open_sources([s.path if isinstance(s, LayerSource) else s for s in layer_files])
    sources = select_sources(sources, options.language)
    layer = sources[0].layer
    languages = sorted(s.language for s in sources)
    sae_dir = sae_dir or sae_folder_name(layer, options.language)
    allowed = allowed_table(options.kept_kind_names()) if options.filters_kinds() else None
    data = [load_layer_file(s.path) if Path(s.path).is_file() else None for s in sources]
    pairs = _pairs(sources, data, allowed, languages)
    if hasattr(sae, "eval"):
        sae.eval()
    notes: list[str] = []

    stats = latent_statistics(sae, sources, pairs, allowed, options, device, len(languages))
    chosen = choose_latents(stats, options.dashboard_latents)
    if not (stats.pairs_gender[0] and stats.pairs_gender[1]):
        notes.append("no latent is chosen for gender: the rows include no male or no female sample")
    latents = [j for j, _, _ in chosen]
    hist, pair_max = (chosen_pass(sae, sources, pairs, allowed, options, device, latents, stats.max_activation)
                      if latents else (np.zeros((0, HISTOGRAM_BINS)), np.zeros((len(pairs), 0))))
    tops = top_pairs(pair_max, options.dashboard_examples)

    # pass 3: every position of each example pair, encoded where its kind was kept
    wanted = sorted({p for ps in tops for p in ps})
    key = {p: (sources[pairs.source[p]].sample_ids[pairs.index[p]], sources[pairs.source[p]].language) for p in wanted}
    token_path = Path(tokens) if tokens is not None else None
    token_table = read_tokens(token_path, set(key.values())) if token_path is not None else {}
    sample_path = Path(samples) if samples is not None else None
    images = read_images(sample_path, {s for s, _ in key.values()}) if sample_path is not None else {}
    thumbs: dict[str, tuple[Path | None, str | None]] = {}
    dtype = TORCH_DTYPES[options.dtype]
    col = {j: c for c, j in enumerate(latents)}
    per_pair: dict[int, tuple[np.ndarray, np.ndarray, list[str], bool]] = {}
    mismatched = 0
    with torch.no_grad():
        for p in wanted:
            src, i = sources[pairs.source[p]], int(pairs.index[p])
            rows, kinds, ids = _sample_positions(src, i, data[pairs.source[p]])
            kept = np.ones(len(kinds), dtype=bool) if allowed is None else allowed[torch.from_numpy(kinds).clamp_min(0)].numpy()
            acts = np.full((len(kinds), len(latents)), np.nan)
            if kept.any():
                enc = _encode(sae, rows[torch.from_numpy(kept)], device, dtype)[:, torch.tensor(latents, device=device)]
                acts[kept] = enc.cpu().double().numpy()
            labels = None
            if token_path is not None:
                found = token_table.get(key[p])
                if found is not None and len(found[0]) == len(kinds) and (ids is None or np.array_equal(found[0], ids)):
                    labels = [t if t is not None else str(int(tid)) for tid, t in zip(found[0], found[1])]
                else:
                    mismatched += 1
            ids_shown = labels is None
            if labels is None:
                labels = [str(int(t)) for t in ids] if ids is not None else [f"pos{q}" for q in range(len(kinds))]
            per_pair[p] = (acts, kinds, labels, ids_shown)
    if token_path is None:
        notes.append("token strings are not available (no metadata/tokens.parquet): token ids are shown")
    elif mismatched:
        notes.append(f"{token_path}: no rows matching the layer files for {mismatched} example(s): their token ids "
                     "are shown")
    if sample_path is None:
        notes.append("images are not available (no metadata/samples.parquet)")

    def image_of(sid: str) -> tuple[Path | None, str | None]:
        if sid not in thumbs:
            thumbs[sid] = (None, None)
            for cand in images.get(sid, []):
                t = thumbnail(cand) if cand.is_file() else None
                if t is not None:
                    thumbs[sid] = (cand, t)
                    break
        return thumbs[sid]

    firing = {g: stats.rate(stats.fires_gender[k], stats.rows_gender[k]) for k, g in enumerate(GENDER_GROUPS)}
    by_lang = {lang: stats.rate(stats.fires_language[k], stats.rows_language[k]) for k, lang in enumerate(languages)}
    mean_m, mean_f, diff, rate = stats.mean_activation("male"), stats.mean_activation("female"), stats.difference, \
        stats.firing_rate
    latent_rows, table_rows, sections = [], [], []
    for c, (j, why, rank) in enumerate(chosen):
        row = {"layer": layer, "language": options.language, "languages": ",".join(languages), "sae_dir": sae_dir,
               "d_sae": stats.d_sae, "latent": j, "why": why, "rank": rank, "rows": stats.rows,
               "firing_rate": float(rate[j]), **{f"firing_rate_{g}": float(firing[g][j]) for g in GENDER_GROUPS},
               **{LANGUAGE_RATE + lang: float(by_lang[lang][j]) for lang in languages},
               "mean_activation_male": float(mean_m[j]), "mean_activation_female": float(mean_f[j]),
               "difference": float(diff[j]), "max_activation": float(stats.max_activation[j])}
        latent_rows.append(row)
        examples = []
        for e, p in enumerate(tops[c]):
            acts, kinds, labels, ids_shown = per_pair[p]
            values = acts[:, col[j]]
            pos = int(np.nanargmax(values))
            src = sources[pairs.source[p]]
            sid = src.sample_ids[pairs.index[p]]
            path, thumb = image_of(sid)
            ex = Example(latent=j, pair=p, sample_id=sid, language=src.language,
                         gender=pairs.genders[pairs.source[p]][pairs.index[p]],
                         split=VALIDATION if is_validation(sid, options.validation_fraction, options.split_seed) else TRAIN,
                         activations=values, kinds=kinds, labels=labels, max_position=pos, image=path, thumbnail=thumb,
                         ids_shown=ids_shown)
            examples.append(ex)
            table_rows.append({**row, "example": e + 1, "sample_id": sid, "example_language": ex.language,
                               "gender": ex.gender, "split": ex.split, "example_max": ex.max_value,
                               "max_position": pos, "max_kind": _KIND_NAMES.get(int(kinds[pos]), "unknown"),
                               "max_token": labels[pos], "image": str(path) if path is not None else None})
        sections.append(_latent_html(row, languages, hist[c], examples))

    folder = Path(folder)
    _write_table(table_rows, languages, folder / DASHBOARD_TABLE)
    page = _page(layer, options, languages, stats, pairs, latent_rows, sections, notes, sae_dir,
                 token_path, sample_path)
    atomic_write_text(folder / DASHBOARD_HTML, page)
    return {"html": DASHBOARD_HTML, "table": DASHBOARD_TABLE, "latents": len(chosen),
            "gender_latents": sum(1 for _, w, _ in chosen if w == WHY_GENDER),
            "examples": len(table_rows), "rows": stats.rows, "pairs": len(pairs),
            "dead_latents": int((~stats.alive).sum()), "tokens": str(token_path) if token_path else None,
            "samples": str(sample_path) if sample_path else None, "html_bytes": len(page.encode("utf-8")),
            "notes": notes, "seconds": round(time.perf_counter() - started, 3)}


def _write_table(rows: list[dict[str, Any]], languages: list[str], path: Path) -> None:
    import pandas as pd

    columns = dashboard_columns(languages)
    frame = pd.DataFrame(rows, columns=columns)
    for c in ("layer", "d_sae", "latent", "rank", "rows", "example", "max_position"):
        frame[c] = frame[c].astype("int64")
    for c in columns:
        if c.startswith(("firing_rate", "mean_activation")) or c in ("difference", "max_activation", "example_max"):
            frame[c] = frame[c].astype("float64")
    for c in ("language", "languages", "sae_dir", "why", "sample_id", "example_language", "gender", "split",
              "max_kind", "max_token", "image"):
        frame[c] = frame[c].astype("string")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _page(layer: int, options: SAEOptions, languages: list[str], stats: LatentStats, pairs: Pairs,
          latent_rows: list[dict[str, Any]], sections: list[str], notes: list[str], sae_dir: str,
          token_path: Path | None, sample_path: Path | None) -> str:
    arch = options.architecture + (f" k={options.k}" if options.architecture == "topk" else "")
    genders = ", ".join(f"{int(n)} {g}" for g, n in zip(GENDER_GROUPS, stats.pairs_gender))
    n_gender = sum(1 for r in latent_rows if r["why"] == WHY_GENDER)
    source = (f"token strings from {html.escape(token_path.name)}" if token_path is not None else "token ids")
    note_html = "".join(f'<p class="note">Note: {html.escape(n)}</p>' for n in notes)
    title = f"SAE dashboard: layer {layer} ({options.language})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{BASE_CSS}
{CSS}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>SAE <code>{html.escape(sae_dir)}</code>: {html.escape(arch)}, d_sae={stats.d_sae}, languages
{html.escape(', '.join(languages))}, token kinds {html.escape(', '.join(options.kept_kind_names()))}. Encoded:
{stats.rows} rows of {len(pairs)} (sample, language) pairs ({genders}), both splits, samples with NaN/Inf values at
extraction left out. {int((~stats.alive).sum())} of {stats.d_sae} latents never fire on them.</p>
<p>Chosen: {n_gender} latent(s) with the largest |mean activation(male) − mean activation(female)| (each pair's mean
over its rows, averaged over the pairs of a gender) and {len(latent_rows) - n_gender} of the most frequent ones
(firing rate: rows where the latent is not 0). For each, the {options.dashboard_examples} pairs with the largest
activation: {source}, coloured by activation / the latent's largest activation (the position of the pair's largest
outlined; grey: a kind the SAE was not trained on), image tokens as a heat map beside the thumbnail. The table
behind this page: {DASHBOARD_TABLE}.</p>
{note_html}
{_index_html(latent_rows, languages) if latent_rows else '<p>No latent fires on these rows.</p>'}
{''.join(sections)}
</body></html>
"""
