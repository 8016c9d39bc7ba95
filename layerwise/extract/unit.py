"""One extraction work unit: a list of layers x one language x a range of samplesheet rows.

Every input is checked before the model is loaded. The positions each sample will store are
fixed first from the tokenizer alone (`plan_layout`), so each layer file is created at its final
size and its rows are streamed straight into it (`layerfile.LayerFileStream`): each byte is written
once. Every `checkpoint_interval` samples the progress is committed atomically, so re-running the
same command after a kill continues from the last commit and gives byte-identical files. One
process at a time owns a unit's scratch (`locks.FileLock`); image features come from a
content-addressed cache shared by every unit of a shard (`images.shared_features`).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from layerwise.core import schema
from layerwise.core.atomic import atomic_path, atomic_write_json
from layerwise.core.contract import UnitSummary
from layerwise.core.errors import LayerwiseError
from layerwise.core.layers import parse_layer_spec
from layerwise.core.locks import FileLock, is_locked
from layerwise.core.prompts import load_prompts, prompt_for
from layerwise.core.sheet import iter_samples, parse_rows, read_valid_samplesheet
from layerwise.extract.images import ImageFeatures, feature_rows, per_image_features, shared_features, vision_counter
from layerwise.layerfile.stream import LayerFileStream, UnitLayout
from layerwise.models.capture import capture_layers, run_until
from layerwise.models.families import PER_IMAGE, Family, family_of
from layerwise.models.inputs import EncodedBatch, InputBuilder, image_size, load_verified_rgb, selection_mask
from layerwise.models.loading import LoadedModel, load_config, load_model, pick_device, resolve_dtype, text_dims
from layerwise.models.token_kinds import TokenKinds

PARTIAL_DIR = ".partial"
PROGRESS_FILE = "progress.json"
LOCK_FILE = "unit.lock"
SUMMARY_FILE = "summary.json"
# A second process that finds the scratch locked waits this long for the owner to finish or die.
SCRATCH_WAIT_S = float(os.environ.get("LAYERWISE_SCRATCH_WAIT_S", 1800))
# Settings that change how a unit runs, never the values it stores: outside its identity.
EXECUTION_ONLY = ("batch_size", "checkpoint_interval", "device", "image_cache", "adopt_from")


@dataclass(frozen=True)
class UnitConfig:
    samplesheet: str
    model: str
    language: str
    layers: str
    out_dir: str
    revision: str | None = None
    rows: str | None = None
    batch_size: int = 1
    checkpoint_interval: int = 50
    dtype: str = "auto"
    token_selection: str = "all"
    layout: str = "padded"
    nan_policy: str = "zero"
    prompts: str | None = None
    device: str = "auto"
    image_cache: str | None = None        # shared image-feature cache directory (vision tower once per image)
    model_fingerprint: str | None = None  # from PREFLIGHT: identity of the weights (cache key)
    adopt_from: str | None = None         # work dir of a failed attempt whose checkpoint may be continued

    def fingerprint(self) -> str:
        """Identity of the unit's output; execution-only settings do not change values."""
        keep = {k: v for k, v in asdict(self).items() if k not in EXECUTION_ONLY}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


@dataclass
class Preflight:
    samples: list          # samplesheet.Sample, in row order
    layers: list[int]
    prompt: str
    num_layers: int
    hidden_size: int
    model_type: str


def preflight(cfg: UnitConfig) -> Preflight:
    """Every check that needs no model weights: run before any GPU time is spent."""
    for name, value, allowed in (("--token-selection", cfg.token_selection, schema.TOKEN_SELECTIONS),
                                 ("--layout", cfg.layout, schema.LAYOUTS),
                                 ("--nan-policy", cfg.nan_policy, schema.NAN_POLICIES)):
        if value not in allowed:
            raise LayerwiseError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    if cfg.batch_size < 1:
        raise LayerwiseError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.checkpoint_interval < 1:
        raise LayerwiseError(f"--checkpoint-interval must be >= 1, got {cfg.checkpoint_interval}")
    load_prompts(cfg.prompts)                    # a bad prompts file is named before the model config is read
    config = load_config(cfg.model, cfg.revision)
    family_of(config.model_type)
    prompt = prompt_for(cfg.language, load_prompts(cfg.prompts, config.model_type))
    num_layers, hidden = text_dims(config)
    resolve_dtype(cfg.dtype, pick_device(cfg.device), config.model_type)
    layers = parse_layer_spec(cfg.layers, num_layers)
    # PREFLIGHT's verified sheet, trusted: no re-validation, no image decoded here (an image is decoded only to
    # feed the vision tower, and its bytes are checked then against the sha256 PREFLIGHT recorded)
    table = read_valid_samplesheet(cfg.samplesheet, [cfg.language])
    rows = parse_rows(cfg.rows, len(table)) if cfg.rows else None
    samples = list(iter_samples(table, cfg.language, rows))
    if not samples:
        raise LayerwiseError(f"--rows {cfg.rows}: selects no samples of {cfg.samplesheet}")
    return Preflight(samples, layers, prompt, num_layers, hidden, config.model_type)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def store_batch(captured: dict[int, torch.Tensor], keep: torch.Tensor, selection: str, nan_policy: str,
                sample_ids: list[str], writers: dict) -> int:
    """Append one batch's kept rows of every captured layer to that layer's writer.

    The hot path: per layer one gather, one NaN count and one policy pass on the device, then a
    single copy to the host, split per sample. Returns the positions kept.
    """
    counts = keep.sum(dim=1).tolist()
    pooled = selection == "mean"
    for layer, hidden in captured.items():
        kept = hidden[keep.to(hidden.device)]
        if pooled:
            kept = torch.stack([part.float().mean(0) for part in kept.split(counts)]).to(hidden.dtype)
        bad_per_row = (~torch.isfinite(kept)).sum(dim=-1)
        bad = [int(part.sum()) for part in bad_per_row.cpu().split(1 if pooled else counts)]
        if any(bad) and nan_policy == "fail":
            first = next(i for i, n in enumerate(bad) if n)
            raise LayerwiseError(f"{bad[first]} NaN/Inf values in layer {layer}, sample {sample_ids[first]} "
                                 "(--nan-policy fail)")
        if any(bad) and nan_policy == "zero":
            kept = torch.nan_to_num(kept, nan=0.0, posinf=0.0, neginf=0.0)
        for rows, n_bad in zip(kept.to("cpu").split(1 if pooled else counts), bad):
            writers[layer].append(rows, n_bad)
    return len(sample_ids) if selection in ("mean", "last") else sum(counts)


def blank_image(family: Family, path=None) -> Image.Image:
    """Stands in for a sample's image when only token positions are needed: the number of image tokens never
    depends on the pixels, and for a family whose count depends on the image's size the blank has that size
    (read from the file's header, no decoding)."""
    size = image_size(path) if family.image_tokens == PER_IMAGE and path is not None else (32, 32)
    return Image.new("RGB", size)


def plan_layout(builder: InputBuilder, kinds: TokenKinds, samples, prompt: str, language: str, selection: str,
                batch_size: int = 32) -> UnitLayout:
    """Lengths, token ids and kinds of the positions every sample stores, from the processor alone.

    Uses the same encoding and masks as extraction (`InputBuilder.encode`, `selection_mask`), with a
    blank image of the right size (`blank_image`). Extraction checks each batch against this plan, so the
    layer files can be created at their final size up front.
    """
    lengths, ids_out, kinds_out = [], [], []
    # the kinds this selection may store (schema.SELECTION_KINDS: what PREFLIGHT checks the SAE filters against)
    allowed = torch.tensor([schema.TOKEN_KINDS[k] for k in schema.SELECTION_KINDS[selection]], dtype=torch.int8)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = builder.encode([blank_image(builder.family, s.image) for s in chunk], [prompt] * len(chunk),
                               [s.captions[language] for s in chunk], torch.device("cpu"), torch.float32)
        keep = selection_mask(batch, selection)
        batch_kinds = kinds.of_batch(batch)
        for i in range(len(chunk)):
            if selection == "mean":
                ids_i = torch.full((1,), schema.PAD_TOKEN_ID, dtype=torch.int64)
                kinds_i = torch.full((1,), schema.TOKEN_KINDS[schema.SELECTION_KINDS["mean"][0]], dtype=torch.int8)
            else:
                ids_i = batch.input_ids[i][keep[i]].to(torch.int64)
                kinds_i = batch_kinds[i][keep[i]]
            if not bool(torch.isin(kinds_i, allowed).all()):
                names = {v: k for k, v in schema.TOKEN_KINDS.items()}
                found = sorted({names[int(k)] for k in kinds_i[~torch.isin(kinds_i, allowed)].tolist()})
                raise LayerwiseError(f"sample {chunk[i].sample_id}: --token-selection {selection} stores token kind(s) "
                                     f"{', '.join(found)}, which layerwise.core.schema.SELECTION_KINDS does not list "
                                     f"for it ({', '.join(schema.SELECTION_KINDS[selection])}): a layerwise bug, "
                                     "please report it")
            lengths.append(int(ids_i.shape[0]))
            ids_out.append(ids_i.clone())
            kinds_out.append(kinds_i.clone())
    return UnitLayout(lengths, ids_out, kinds_out)


def tokens_table(tokenizer, samples, language: str, layout: UnitLayout):
    """One row per stored row of the unit's layer files (`schema.TOKENS_COLUMNS`): sample, position in its stored
    rows, token id, the tokenizer's string for it (`convert_ids_to_tokens`) and its kind's name. `mean` files
    store one pooled row per sample (token id -1): its row has no token string (null), so that the table always
    mirrors the stored rows, one for one."""
    import pandas as pd

    ids = torch.cat(layout.token_ids).tolist() if layout.token_ids else []
    kinds = torch.cat(layout.token_kinds).tolist() if layout.token_kinds else []
    known = sorted({i for i in ids if i >= 0})                    # each distinct id converted once
    strings = dict(zip(known, tokenizer.convert_ids_to_tokens(known)))
    names = {code: name for name, code in schema.TOKEN_KINDS.items()}
    table = pd.DataFrame({
        "sample_id": [s.sample_id for s, n in zip(samples, layout.lengths) for _ in range(n)],
        "language": language,
        "position": pd.array([p for n in layout.lengths for p in range(n)], dtype="int64"),
        "token_id": pd.array(ids, dtype="int64"),
        "token": pd.array([strings.get(i) for i in ids], dtype="object"),
        "kind": [names[k] for k in kinds],
    }, columns=list(schema.TOKENS_COLUMNS))
    return table


def write_tokens_table(path: Path, tokenizer, samples, language: str, layout: UnitLayout) -> int:
    """`tokens_table` as Parquet, atomically (PUBLISH_RESULTS concatenates the units' tables); returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tokens_table(tokenizer, samples, language, layout)
    types = pa.schema([(c, pa.int64() if c in ("position", "token_id") else pa.string()) for c in table.columns])
    with atomic_path(path) as tmp:   # typed: a `mean` table's tokens are all null, still a string column
        pq.write_table(pa.Table.from_pandas(table, schema=types, preserve_index=False), tmp)
    return len(table)


class Extractor:
    """Runs a unit with an already loaded model (the model can be reused across units)."""

    def __init__(self, loaded: LoadedModel, image_features: ImageFeatures | None = None):
        self.loaded = loaded
        self.builder = InputBuilder(loaded.processor, loaded.family)
        self.kinds = TokenKinds(loaded.processor)
        self.image_features = image_features
        self.images_encoded = 0               # images through the vision tower, counted here for families without a cache

    def encode(self, samples, prompt: str, language: str) -> EncodedBatch:
        family, loaded = self.loaded.family, self.loaded
        features = None
        if self.image_features is not None:   # cached features: an image is decoded only to feed the vision tower
            features = self.image_features.for_samples([s.sample_id for s in samples], loaded.device, loaded.dtype)
        elif family.feature_cache:            # no cache: the same features, one image per vision-tower call, now
            features = per_image_features(loaded, [load_verified_rgb(s.image, s.image_sha256, s.sample_id)
                                                   for s in samples])
        if features is not None:              # the processor builds the rest from a blank image of the same size
            images = [blank_image(family, s.image) for s in samples]
        else:                                 # the tower runs inside the model's forward, once per image
            images = [load_verified_rgb(s.image, s.image_sha256, s.sample_id) for s in samples]
            self.images_encoded += len(samples)
        captions = [s.captions[language] for s in samples]
        batch = self.builder.encode(images, [prompt] * len(samples), captions, loaded.device, loaded.dtype)
        if features is not None:
            for s, tokens, rows in zip(samples, batch.image_mask.sum(dim=1).tolist(), feature_rows(features)):
                if tokens != rows:
                    raise LayerwiseError(f"sample {s.sample_id}: {rows} image-feature rows for {tokens} image tokens "
                                         f"(its image's size read from {s.image} differs from the decoded one?)")
            del batch.inputs["pixel_values"]
            batch.inputs["mm_encoder_outputs"] = features
        return batch

    @torch.inference_mode()
    def forward(self, batch: EncodedBatch, layers: list[int]) -> dict[int, torch.Tensor]:
        with capture_layers(self.loaded.model, layers) as captured:
            run_until(self.loaded.model, **batch.inputs)
        return dict(captured)

    def run(self, cfg: UnitConfig, pre: Preflight, on_batch: Callable[[int], None] | None = None) -> UnitSummary:
        out_dir = Path(cfg.out_dir)
        scratch = out_dir / PARTIAL_DIR
        progress_path = scratch / PROGRESS_FILE
        dtype = self.loaded.dtype
        layout_plan = plan_layout(self.builder, self.kinds, pre.samples, pre.prompt, cfg.language, cfg.token_selection)
        meta = self._meta(cfg, pre)
        state = self._restore(progress_path, cfg)
        done = int(state["done"]) if state else 0
        writers = {
            layer: LayerFileStream(out_dir / schema.layer_filename(layer, cfg.language), layout_plan, cfg.layout,
                                   pre.hidden_size, dtype, {**meta, "layer": layer},
                                   state["writers"][str(layer)] if state else None)
            for layer in pre.layers
        }
        resumed_from = done
        started, positions = time.perf_counter(), 0
        bar = tqdm(total=len(pre.samples), initial=done, unit="sample", desc=f"{cfg.language} layers {cfg.layers}",
                   file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
        last_commit = done
        family = self.loaded.family
        vision = vision_counter(self.loaded) if family.feature_cache else None
        try:
            while done < len(pre.samples):
                chunk = pre.samples[done:done + cfg.batch_size]
                positions += self._extract_batch(cfg, pre, chunk, writers, layout_plan, done)
                done += len(chunk)
                bar.update(len(chunk))
                if done - last_commit >= cfg.checkpoint_interval and done < len(pre.samples):
                    self._commit(progress_path, cfg, writers, done)
                    last_commit = done
                if on_batch is not None:
                    on_batch(done)
        finally:
            bar.close()
            if vision is not None:
                vision.close()
        seconds = time.perf_counter() - started
        files = []
        for layer, w in writers.items():
            info = w.finish()
            files.append({"file": w.path.name, "layer": layer, "bytes": info["bytes"], "sha256": info["sha256"]})
        nan_counts = {str(layer): int(sum(w.nan_counts)) for layer, w in writers.items()}
        # every unit of a (language, shard) writes the same table; publishing takes the first layer group's
        write_tokens_table(out_dir / schema.UNIT_TOKENS_FILE, getattr(self.loaded.processor, "tokenizer",
                           self.loaded.processor), pre.samples, cfg.language, layout_plan)
        summary = UnitSummary(
            language=cfg.language, layers=pre.layers, rows=cfg.rows,
            samples=len(pre.samples), samples_this_run=len(pre.samples) - resumed_from,
            resumed_from_sample=resumed_from, positions_kept=positions, seconds=round(seconds, 3),
            samples_per_s=round((len(pre.samples) - resumed_from) / seconds, 3) if seconds else None,
            bytes_written=sum(f["bytes"] for f in files), files=files, nan_counts=nan_counts,
            peak_host_memory_bytes=_peak_rss_bytes(),
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated() if self.loaded.device.type == "cuda" else None,
            vision_tower_images=vision.images if vision is not None else self.images_encoded,
            device=str(self.loaded.device), dtype=schema.dtype_name(dtype), batch_size=cfg.batch_size,
            token_selection=cfg.token_selection, layout=cfg.layout, model_id=cfg.model,
            unit_fingerprint=cfg.fingerprint(),
        )
        shutil.rmtree(scratch, ignore_errors=True)
        return summary

    def _extract_batch(self, cfg: UnitConfig, pre: Preflight, chunk, writers, layout_plan: UnitLayout,
                       first: int) -> int:
        """Forward one batch and append each sample's kept rows to every layer's writer."""
        batch = self.encode(chunk, pre.prompt, cfg.language)
        keep = selection_mask(batch, cfg.token_selection)
        if cfg.token_selection != "mean":
            for i, s in enumerate(chunk):
                if not torch.equal(batch.input_ids[i][keep[i]].to(torch.int64), layout_plan.token_ids[first + i]):
                    raise LayerwiseError(f"sample {s.sample_id}: its tokens differ from the planned layout "
                                         "(the image changed the token count?); please report this")
        captured = self.forward(batch, pre.layers)
        return store_batch(captured, keep, cfg.token_selection, cfg.nan_policy, [s.sample_id for s in chunk], writers)

    def _meta(self, cfg: UnitConfig, pre: Preflight) -> dict:
        return {
            "genders": [s.gender for s in pre.samples], "language": cfg.language,
            "sample_ids": [s.sample_id for s in pre.samples], "token_selection": cfg.token_selection,
            "nan_policy": cfg.nan_policy, "model_id": cfg.model, "model_revision": self.loaded.revision,
            "num_layers": pre.num_layers,
        }

    @staticmethod
    def _commit(path: Path, cfg: UnitConfig, writers: dict[int, LayerFileStream], done: int) -> None:
        # Each writer's state() fsyncs its file first: the progress file never points past durable bytes.
        state = {"fingerprint": cfg.fingerprint(), "done": done,
                 "writers": {str(layer): w.state() for layer, w in writers.items()}}
        atomic_write_json(path, state)

    @staticmethod
    def _restore(path: Path, cfg: UnitConfig) -> dict | None:
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if not state or state.get("fingerprint") != cfg.fingerprint():
            print("layerwise: discarding a checkpoint of a different work unit", file=sys.stderr)
            path.unlink(missing_ok=True)
            return None
        print(f"layerwise: resuming after sample {state['done']} (last checkpoint)", file=sys.stderr)
        return state


def adopt_checkpoint(previous: Path, out_dir: Path, layers: list[int], language: str) -> bool:
    """Move a failed attempt's checkpoint into `out_dir` (a retry continues from it).

    Only from a dead owner: if a live process still holds the previous scratch (an orphan), its
    files are left alone and this attempt starts afresh.
    """
    prev_scratch = Path(previous) / PARTIAL_DIR
    if not (prev_scratch / PROGRESS_FILE).is_file():
        return False
    if is_locked(prev_scratch / LOCK_FILE):
        print(f"layerwise: {previous} is still being written by a live process: starting afresh", file=sys.stderr)
        return False
    scratch = Path(out_dir) / PARTIAL_DIR       # holds this process's lock: move files, not the folder
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.move(str(prev_scratch / PROGRESS_FILE), str(scratch / PROGRESS_FILE))
    for layer in layers:
        name = schema.layer_filename(layer, language) + ".partial"
        if (Path(previous) / name).is_file():
            os.replace(Path(previous) / name, Path(out_dir) / name)
    print(f"layerwise: continuing from the checkpoint of the previous attempt in {previous}", file=sys.stderr)
    return True


def run_unit(cfg: UnitConfig, on_batch: Callable[[int], None] | None = None,
             loaded: LoadedModel | None = None) -> dict:
    """Check everything, load the model, extract, write files; returns the run summary."""
    pre = preflight(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / PARTIAL_DIR / LOCK_FILE, wait_s=SCRATCH_WAIT_S, what=f"the scratch of {out_dir}")
    with lock:
        if cfg.adopt_from:
            adopt_checkpoint(Path(cfg.adopt_from), out_dir, pre.layers, cfg.language)
        for layer in pre.layers:  # nothing stale may look complete while this unit runs
            (out_dir / schema.layer_filename(layer, cfg.language)).unlink(missing_ok=True)
        (out_dir / schema.UNIT_TOKENS_FILE).unlink(missing_ok=True)
        (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
        if loaded is None:
            loaded = load_model(cfg.model, cfg.revision, cfg.dtype, cfg.device)
        features, image_summary = None, None
        # the cache feeds features back through the model's own input for them: only families that have one
        if cfg.image_cache and loaded.family.feature_cache:
            features, image_summary = shared_features(loaded, pre.samples, cfg.image_cache,
                                                      cfg.model_fingerprint or f"{cfg.model}@{loaded.revision}")
        try:
            summary = Extractor(loaded, features).run(cfg, pre, on_batch)
        except torch.cuda.OutOfMemoryError as exc:
            raise LayerwiseError(
                f"the GPU ran out of memory at --batch-size {cfg.batch_size} ({str(exc).splitlines()[0]}). "
                "Re-run with a smaller --batch_size or on a GPU with more memory.") from None
        if image_summary is not None:
            summary.image_features = image_summary.to_dict()
            summary.vision_tower_images += image_summary.vision_tower_images
        record = summary.to_dict()
        atomic_write_json(out_dir / SUMMARY_FILE, record)
        return record
