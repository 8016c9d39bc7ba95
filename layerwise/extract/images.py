"""The compute diet: run the vision tower and projector once per image, reuse everywhere.

The image comes before any language-specific text, so its soft-token features are the same in
every language and every layer group. `encode_images` stores them once per sample shard; each
extraction unit feeds them back through Gemma 3's `mm_encoder_outputs` instead of pixels, which
keeps `token_type_ids` (and so the bidirectional image attention) exactly as in the plain pass.

The vision tower sees one image per call (`per_image_features`), here and in the plain pass: a batched
call is not batch-invariant (in bf16 a GEMM's kernel, and so its rounding, depends on the number of
rows), so an image's features, and every activation stored from them, would depend on which other
images share its batch, shard or cache entry. One at a time, they are the same bits with or without
the cache, alone or in any shard.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from layerwise.core import schema
from layerwise.core.contract import ImageFeaturesSummary
from layerwise.core.errors import LayerwiseError
from layerwise.core.locks import FileLock
from layerwise.layerfile.store import atomic_torch_save, file_backed_zeros
from layerwise.models.inputs import load_verified_rgb

# Images decoded and preprocessed per step when filling the cache; the vision tower still runs on one
# image at a time (`per_image_features`).
IMAGE_BATCH_SIZE = 8
# Part of every cache key: entries written before images were encoded one at a time (version 1, batches of
# IMAGE_BATCH_SIZE) hold other bits in bf16 and must never be reused.
CACHE_VERSION = "2"
# How long a unit waits for another unit that is encoding the same shard's images.
CACHE_WAIT_S = 6 * 3600


def vision_tower(model: torch.nn.Module, module: str = "vision_tower") -> torch.nn.Module:
    """The model's vision encoder (`Family.vision_module`: vision_tower, visual or vision_model)."""
    tower = getattr(model.base_model, module, None)
    if tower is None:
        raise LayerwiseError(f"{type(model).__name__} has no vision encoder `{module}` to count or pre-compute images with")
    return tower


class VisionCallCounter:
    """Counts images that pass through the vision tower (a benchmark and audit figure), for a family whose
    tower takes one pixel tensor per image (`Family.feature_cache`); other families count in `Extractor.encode`."""

    def __init__(self, model: torch.nn.Module, module: str = "vision_tower"):
        self.images = 0
        self._handle = vision_tower(model, module).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        self.images += int(pixels.shape[0]) if pixels is not None else 0

    def close(self) -> None:
        self._handle.remove()


@torch.inference_mode()
def per_image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Soft-token features [N, image_tokens, H] of the N images (rows) of `pixel_values`, one vision-tower
    and projector call per image, so that no image's features depend on the others'. Matches the
    model's own pixel-values pass (`get_image_features`) of each image alone, bit for bit."""
    rows = []
    for i in range(pixel_values.shape[0]):
        out = model.get_image_features(pixel_values=pixel_values[i:i + 1])
        rows.append(getattr(out, "pooler_output", out))
    return torch.cat(rows)


@torch.inference_mode()
def encode_images(loaded, samples, out_path: str | Path, batch_size: int = IMAGE_BATCH_SIZE) -> dict:
    """Write {sample_ids, features [N, image_tokens, H]} for `samples` to `out_path` (atomically).

    `batch_size` images are decoded and preprocessed at a time; the vision tower runs on each alone."""
    processor, model = loaded.processor, loaded.model
    out_path = Path(out_path)
    buffer = None
    counter = VisionCallCounter(model)
    started = time.perf_counter()
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="images", unit="batch", file=sys.stderr):
            chunk = samples[start:start + batch_size]
            pixels = processor.image_processor([load_verified_rgb(s.image, s.image_sha256, s.sample_id) for s in chunk],
                                      return_tensors="pt")["pixel_values"]
            feats = per_image_features(model, pixels.to(loaded.device, loaded.dtype))
            if buffer is None:
                scratch = out_path.with_name(out_path.name + ".buffer")
                buffer = file_backed_zeros(scratch, (len(samples), *feats.shape[1:]), loaded.dtype)
            buffer[start:start + len(chunk)] = feats.to("cpu")
        payload = {"sample_ids": [s.sample_id for s in samples], "features": buffer, "model_id": loaded.model_id,
                   "model_revision": loaded.revision, "dtype": schema.dtype_name(loaded.dtype)}
        nbytes = atomic_torch_save(payload, out_path)
    finally:
        counter.close()
        out_path.with_name(out_path.name + ".buffer").unlink(missing_ok=True)
    return {"kind": "encode_images", "images": len(samples), "vision_tower_images": counter.images, "bytes_written": nbytes,
            "seconds": round(time.perf_counter() - started, 3)}


class ImageFeatures:
    """Pre-computed features of one shard, memory-mapped, looked up by sample id."""

    def __init__(self, path: str | Path, model_id: str, revision: str):
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if data.get("model_id") != model_id or data.get("model_revision") != revision:
            raise LayerwiseError(
                f"image features {path}: computed with {data.get('model_id')}@{data.get('model_revision')}, "
                f"not {model_id}@{revision}")
        self.features = data["features"]
        self.index = {sid: i for i, sid in enumerate(data["sample_ids"])}
        self.path = path

    def for_samples(self, sample_ids: list[str], device, dtype) -> dict:
        missing = [sid for sid in sample_ids if sid not in self.index]
        if missing:
            raise LayerwiseError(f"image features {self.path}: no features for samples {', '.join(missing[:5])}")
        rows = torch.stack([self.features[self.index[sid]] for sid in sample_ids])
        return {"image": BaseModelOutputWithPooling(pooler_output=rows.to(device, dtype))}


def cache_key(model_fingerprint: str, dtype: torch.dtype, image_digests: list[str],
              sample_ids: list[str] | None = None) -> str:
    """Content address of a shard's image features: cache version (how features are computed), model
    identity, dtype, the images' bytes and the sample ids the entry is looked up by."""
    import hashlib

    h = hashlib.sha256()
    for part in ("layerwise-image-features", CACHE_VERSION, model_fingerprint, schema.dtype_name(dtype),
                 *image_digests, "ids", *(sample_ids or [])):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def shared_features(loaded, samples, cache_dir: str | Path,
                    model_fingerprint: str) -> tuple[ImageFeatures, ImageFeaturesSummary]:
    """Image features of `samples` from a content-addressed cache, computed by the first unit that needs them.

    Every unit of a sample shard (each language and layer group) runs in its own GPU job; the first
    to take the shard's lock runs the vision tower and stores the features, the others (and any
    later -resume) memory-map them. The key covers the cache version, model fingerprint, dtype and every
    image's sha256, so changed images, weights or encoding never hit a stale entry. Returns (features, summary).
    """
    digests = [getattr(s, "image_sha256", None) or str(s.image) for s in samples]
    key = cache_key(model_fingerprint, loaded.dtype, digests, [s.sample_id for s in samples])
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    summary = ImageFeaturesSummary(cache_file=str(path), images=len(samples), vision_tower_images=0,
                                   bytes_written=0, cache_hit=True, seconds=0.0)
    with FileLock(cache_dir / f"{key}.lock", wait_s=CACHE_WAIT_S, what=f"image-feature cache entry {path.name}"):
        if not path.is_file():
            made = encode_images(loaded, samples, path)
            summary = ImageFeaturesSummary(cache_file=str(path), images=made["images"],
                                           vision_tower_images=made["vision_tower_images"],
                                           bytes_written=made["bytes_written"], cache_hit=False,
                                           seconds=made["seconds"])
    return ImageFeatures(path, loaded.model_id, loaded.revision), summary
