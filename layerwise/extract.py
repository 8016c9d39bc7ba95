"""One extraction work unit: a list of layers x one language x a range of samplesheet rows.

Every input is checked before the model is loaded. Activations leave the accelerator batch by
batch and are appended to on-disk scratch files (store.LayerFileWriter); every
`checkpoint_interval` samples the progress is committed atomically, so re-running the same
command after a kill continues from the last commit and gives the same files.
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import schema
from .capture import capture_layers, run_until
from .errors import LayerwiseError
from .images import ImageFeatures, VisionCallCounter
from .inputs import EncodedBatch, InputBuilder, load_rgb, selection_mask
from .layers import parse_layer_spec
from .model import LoadedModel, load_config, load_model, resolve_dtype, pick_device, text_dims
from .prompts import load_prompts, prompt_for
from .samplesheet import iter_samples, parse_rows, read_samplesheet
from .store import LayerFileWriter, atomic_torch_save, atomic_write_json

PARTIAL_DIR = ".partial"


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
    image_features: str | None = None  # from encode_images: skip the vision tower

    def fingerprint(self) -> str:
        """Identity of the unit's output; batch size and checkpointing do not change values."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "checkpoint_interval", "device")}
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
    prompt = prompt_for(cfg.language, load_prompts(cfg.prompts))
    config = load_config(cfg.model, cfg.revision)
    num_layers, hidden = text_dims(config)
    resolve_dtype(cfg.dtype, pick_device(cfg.device), config.model_type)
    layers = parse_layer_spec(cfg.layers, num_layers)
    table = read_samplesheet(cfg.samplesheet, [cfg.language], check_images=True)
    rows = parse_rows(cfg.rows, len(table)) if cfg.rows else None
    samples = list(iter_samples(table, cfg.language, rows))
    if not samples:
        raise LayerwiseError(f"--rows {cfg.rows}: selects no samples of {cfg.samplesheet}")
    return Preflight(samples, layers, prompt, num_layers, hidden, config.model_type)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def store_batch(captured: dict[int, torch.Tensor], keep: torch.Tensor, input_ids: torch.Tensor, selection: str,
                nan_policy: str, sample_ids: list[str], writers: dict[int, LayerFileWriter]) -> int:
    """Append one batch's kept rows of every captured layer to that layer's writer.

    The hot path: per layer one gather, one NaN count and one policy pass on the device, then a
    single copy to the host, split per sample. Returns the positions kept.
    """
    counts = keep.sum(dim=1).tolist()
    pooled = selection == "mean"
    token_ids = [torch.full((1,), schema.PAD_TOKEN_ID)] * len(sample_ids) if pooled else input_ids[keep].split(counts)
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
        for rows, ids, n_bad in zip(kept.to("cpu").split(1 if pooled else counts), token_ids, bad):
            writers[layer].append(rows, ids, n_bad)
    return len(sample_ids) if selection in ("mean", "last") else sum(counts)


class Extractor:
    """Runs a unit with an already loaded model (the model can be reused across units)."""

    def __init__(self, loaded: LoadedModel, image_features: ImageFeatures | None = None):
        self.loaded = loaded
        self.builder = InputBuilder(loaded.processor)
        self.image_features = image_features

    def encode(self, samples, prompt: str, language: str) -> EncodedBatch:
        images = [load_rgb(s.image) for s in samples]
        captions = [s.captions[language] for s in samples]
        batch = self.builder.encode(images, [prompt] * len(samples), captions, self.loaded.device, self.loaded.dtype)
        if self.image_features is not None:
            del batch.inputs["pixel_values"]
            batch.inputs["mm_encoder_outputs"] = self.image_features.for_samples(
                [s.sample_id for s in samples], self.loaded.device, self.loaded.dtype)
        return batch

    @torch.inference_mode()
    def forward(self, batch: EncodedBatch, layers: list[int]) -> dict[int, torch.Tensor]:
        with capture_layers(self.loaded.model, layers) as captured:
            run_until(self.loaded.model, **batch.inputs)
        return dict(captured)

    def run(self, cfg: UnitConfig, pre: Preflight, on_batch: Callable[[int], None] | None = None) -> dict:
        out_dir = Path(cfg.out_dir)
        scratch = out_dir / PARTIAL_DIR
        scratch.mkdir(parents=True, exist_ok=True)
        progress_path = scratch / "progress.pt"
        dtype = self.loaded.dtype
        writers = {
            layer: LayerFileWriter(out_dir / schema.layer_filename(layer, cfg.language), scratch / f"layer_{layer}",
                                   pre.hidden_size, dtype, cfg.layout)
            for layer in pre.layers
        }
        done = self._restore(progress_path, cfg, writers)
        resumed_from = done
        started, positions = time.perf_counter(), 0
        bar = tqdm(total=len(pre.samples), initial=done, unit="sample", desc=f"{cfg.language} layers {cfg.layers}",
                   file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
        last_commit = done
        vision = VisionCallCounter(self.loaded.model)
        try:
            while done < len(pre.samples):
                chunk = pre.samples[done:done + cfg.batch_size]
                positions += self._extract_batch(cfg, pre, chunk, writers)
                done += len(chunk)
                bar.update(len(chunk))
                if done - last_commit >= cfg.checkpoint_interval and done < len(pre.samples):
                    self._commit(progress_path, cfg, writers, done)
                    last_commit = done
                if on_batch is not None:
                    on_batch(done)
        finally:
            bar.close()
            vision.close()
        seconds = time.perf_counter() - started
        meta = self._meta(cfg, pre)
        bytes_written = sum(w.finish({**meta, "layer": layer}) for layer, w in writers.items())
        nan_counts = {str(layer): int(sum(w.nan_counts)) for layer, w in writers.items()}
        summary = {
            "language": cfg.language, "layers": pre.layers, "rows": cfg.rows, "samples": len(pre.samples),
            "samples_this_run": len(pre.samples) - resumed_from, "resumed_from_sample": resumed_from,
            "positions_kept": positions, "seconds": round(seconds, 3),
            "samples_per_s": round((len(pre.samples) - resumed_from) / seconds, 3) if seconds else None,
            "bytes_written": bytes_written, "nan_counts": nan_counts, "peak_host_memory_bytes": _peak_rss_bytes(),
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if self.loaded.device.type == "cuda" else None,
            "vision_tower_images": vision.images, "image_features": cfg.image_features,
            "device": str(self.loaded.device), "dtype": schema.dtype_name(dtype), "batch_size": cfg.batch_size,
            "token_selection": cfg.token_selection, "layout": cfg.layout, "model_id": cfg.model,
        }
        atomic_write_json(out_dir / "summary.json", summary)
        shutil.rmtree(scratch, ignore_errors=True)
        return summary

    def _extract_batch(self, cfg: UnitConfig, pre: Preflight, chunk, writers) -> int:
        """Forward one batch and append each sample's kept rows to every layer's writer."""
        batch = self.encode(chunk, pre.prompt, cfg.language)
        keep = selection_mask(batch, cfg.token_selection)
        captured = self.forward(batch, pre.layers)
        return store_batch(captured, keep, batch.input_ids, cfg.token_selection, cfg.nan_policy,
                           [s.sample_id for s in chunk], writers)

    def _meta(self, cfg: UnitConfig, pre: Preflight) -> dict:
        return {
            "genders": [s.gender for s in pre.samples], "language": cfg.language,
            "sample_ids": [s.sample_id for s in pre.samples], "token_selection": cfg.token_selection,
            "nan_policy": cfg.nan_policy, "model_id": cfg.model, "model_revision": self.loaded.revision,
            "num_layers": pre.num_layers,
        }

    @staticmethod
    def _commit(path: Path, cfg: UnitConfig, writers: dict[int, LayerFileWriter], done: int) -> None:
        state = {"fingerprint": cfg.fingerprint(), "done": done,
                 "writers": {str(layer): w.state() for layer, w in writers.items()}}
        atomic_torch_save(state, path)

    @staticmethod
    def _restore(path: Path, cfg: UnitConfig, writers: dict[int, LayerFileWriter]) -> int:
        if not path.exists():
            for w in writers.values():
                w.restore({"lengths": [], "nan_counts": []})
            return 0
        state = torch.load(path, weights_only=True)
        if state["fingerprint"] != cfg.fingerprint() or set(state["writers"]) != {str(k) for k in writers}:
            print("layerwise: discarding a checkpoint of a different work unit", file=sys.stderr)
            path.unlink()
            return Extractor._restore(path, cfg, writers)
        for layer, w in writers.items():
            w.restore(state["writers"][str(layer)])
        print(f"layerwise: resuming after sample {state['done']} (last checkpoint)", file=sys.stderr)
        return int(state["done"])


def run_unit(cfg: UnitConfig, on_batch: Callable[[int], None] | None = None,
             loaded: LoadedModel | None = None) -> dict:
    """Check everything, load the model, extract, write files; returns the run summary."""
    pre = preflight(cfg)
    for layer in pre.layers:  # nothing stale may look complete while this unit runs
        (Path(cfg.out_dir) / schema.layer_filename(layer, cfg.language)).unlink(missing_ok=True)
    if loaded is None:
        loaded = load_model(cfg.model, cfg.revision, cfg.dtype, cfg.device)
    features = ImageFeatures(cfg.image_features, cfg.model, loaded.revision) if cfg.image_features else None
    try:
        return Extractor(loaded, features).run(cfg, pre, on_batch)
    except torch.cuda.OutOfMemoryError as exc:
        raise LayerwiseError(
            f"the GPU ran out of memory at --batch-size {cfg.batch_size} ({str(exc).splitlines()[0]}). "
            "Re-run with a smaller --batch_size or on a GPU with more memory.") from None
