"""The compute diet: run the vision tower and projector once per image, reuse everywhere.

The image comes before any language-specific text, so its soft-token features are the same in
every language and every layer group. `encode_images` stores them once per sample shard; each
extraction unit feeds them back through the model's `mm_encoder_outputs` instead of pixels, for every
family whose forward takes them (`Family.feature_cache`): the other inputs (token_type_ids, Qwen's
image_grid_thw for the rope index, ...) stay exactly as in the plain pass.

The vision tower sees one image per call (`image_features`: the family's own `get_image_features` on the
image processor's output for that image alone), here and in the plain pass: a batched call is not
batch-invariant (in bf16 a GEMM's kernel, and so its rounding, depends on the number of rows; Qwen's tower
differs in fp32 already), and a batch's padding (LLaVA-NeXT patches, Idefics3 tiles) depends on the other
images, so an image's features, and every activation stored from them, would depend on which other images
share its batch, shard or cache entry. One at a time, they are the same bits with or without the cache,
alone or in any shard.

An entry holds each image's soft tokens as rows, whatever their number (LLaVA-NeXT, Qwen and Idefics3 give
each image its own): `features` [sum of the images' tokens, H], `offsets` [N + 1] (image i is rows
offsets[i]:offsets[i + 1]) and `as_list`, how the family's forward takes them (a tuple of [T_i, H] per image,
or one tensor [N, T, H]). Rows = the image tokens of the sequence, exactly.
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
from layerwise.layerfile.store import atomic_torch_save
from layerwise.models.families import FIXED
from layerwise.models.inputs import load_verified_rgb

# Part of every cache key: entries of other versions hold other bits or another layout and are never reused.
# 1: batches of images; 2: one image per call, features [N, image_tokens, H]; 3: rows + offsets (every family).
CACHE_VERSION = "3"
# How long a unit waits for another unit that is encoding the same shard's images.
CACHE_WAIT_S = 6 * 3600


def vision_tower(model: torch.nn.Module, module: str = "vision_tower") -> torch.nn.Module:
    """The model's vision encoder (`Family.vision_module`: vision_tower, visual or vision_model)."""
    tower = getattr(model.base_model, module, None)
    if tower is None:
        raise LayerwiseError(f"{type(model).__name__} has no vision encoder `{module}` to count or pre-compute images with")
    return tower


class VisionCallCounter:
    """Counts images that pass through the vision tower (a benchmark and audit figure), for a family with
    `Family.feature_cache`; other families count in `Extractor.encode`. `per_call`: every call is one image
    (a tower that takes an image's tiles or patches in one tensor: LLaVA-NeXT, Qwen, Idefics3; layerwise
    calls it one image at a time), else one image per row of the pixel tensor."""

    def __init__(self, model: torch.nn.Module, module: str = "vision_tower", per_call: bool = False):
        self.images = 0
        self.per_call = per_call
        self._handle = vision_tower(model, module).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        self.images += (1 if self.per_call else int(pixels.shape[0])) if pixels is not None else 0

    def close(self) -> None:
        self._handle.remove()


def vision_counter(loaded) -> VisionCallCounter:
    family = loaded.family
    return VisionCallCounter(loaded.model, family.vision_module, per_call=family.image_tokens != FIXED)


def image_inputs(loaded, image) -> dict[str, torch.Tensor]:
    """The image processor's output for one image, as the family's `get_image_features` takes it (pixel_values
    and `Family.feature_inputs`), on the model's device; pixel values in the model's dtype."""
    family = loaded.family
    out = loaded.processor.image_processor([[image]] if family.nested_images else [image], return_tensors="pt")
    inputs = {k: out[k].to(loaded.device) for k in ("pixel_values", *family.feature_inputs)}
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    return inputs


@torch.inference_mode()
def image_features(loaded, image) -> tuple[torch.Tensor, bool]:
    """(rows [image tokens, H], as_list) of one image: the family's own `get_image_features` (vision tower
    and projector) on it alone. `as_list`: the model returns (and its forward takes) a tuple of per-image
    tensors, else one tensor [images, tokens, H]."""
    out = loaded.model.get_image_features(**image_inputs(loaded, image))
    pooled = getattr(out, "pooler_output", out)
    as_list = isinstance(pooled, (list, tuple))
    if (len(pooled) if as_list else pooled.shape[0]) != 1 or pooled[0].dim() != 2:
        raise LayerwiseError(f"{type(loaded.model).__name__}.get_image_features of one image returned "
                             f"{[tuple(p.shape) for p in pooled] if as_list else tuple(pooled.shape)}, not one "
                             "[tokens, hidden] block: a model layerwise's image-feature cache does not know")
    return pooled[0], as_list


def encoder_outputs(rows: list[torch.Tensor], as_list: bool) -> dict:
    """The model's `mm_encoder_outputs` for a batch, from each sample's rows [T_i, H]: what its own
    `get_image_features` of the batch returns (one tuple entry per image, or one [N, T, H] tensor)."""
    return {"image": BaseModelOutputWithPooling(pooler_output=tuple(rows) if as_list else torch.stack(rows))}


def feature_rows(outputs: dict) -> list[int]:
    """The rows (image tokens) of each sample in `encoder_outputs`."""
    pooled = outputs["image"].pooler_output
    return [int(r.shape[0]) for r in pooled] if isinstance(pooled, tuple) else [int(pooled.shape[1])] * len(pooled)


def per_image_features(loaded, images) -> dict:
    """`mm_encoder_outputs` of `images` (one per sample), one vision-tower and projector call per image, so that
    no image's features depend on the others'. Matches the model's own pixel-values pass of each image alone,
    bit for bit, and what the cache feeds back."""
    computed = [image_features(loaded, img) for img in images]
    return encoder_outputs([rows for rows, _ in computed], computed[0][1])


@torch.inference_mode()
def encode_images(loaded, samples, out_path: str | Path) -> dict:
    """Write {sample_ids, features [rows, H], offsets [N + 1], as_list} for `samples` to `out_path` (atomically).

    One image at a time: decoded, preprocessed, through the vision tower; its rows are appended to a scratch
    file next to `out_path` (no shard's features are held in memory), which is then saved as the entry."""
    out_path = Path(out_path)
    scratch = out_path.with_name(out_path.name + ".buffer")
    counter = vision_counter(loaded)
    started = time.perf_counter()
    offsets, as_list, hidden = [0], False, None
    try:
        with open(scratch, "wb") as fh:
            for s in tqdm(samples, desc="images", unit="image", file=sys.stderr):
                rows, as_list = image_features(loaded, load_verified_rgb(s.image, s.image_sha256, s.sample_id))
                rows = rows.to("cpu", loaded.dtype).contiguous()
                fh.write(rows.view(torch.uint8).numpy())
                offsets.append(offsets[-1] + rows.shape[0])
                hidden = rows.shape[1]
        features = torch.from_file(str(scratch), shared=True, size=offsets[-1] * hidden,
                                   dtype=loaded.dtype).view(offsets[-1], hidden)
        payload = {"sample_ids": [s.sample_id for s in samples], "features": features,
                   "offsets": torch.tensor(offsets, dtype=torch.int64), "as_list": as_list,
                   "model_id": loaded.model_id, "model_revision": loaded.revision,
                   "dtype": schema.dtype_name(loaded.dtype), "version": CACHE_VERSION}
        nbytes = atomic_torch_save(payload, out_path)
    finally:
        counter.close()
        scratch.unlink(missing_ok=True)
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
        if data.get("version") != CACHE_VERSION:
            raise LayerwiseError(f"image features {path}: cache version {data.get('version')}, not {CACHE_VERSION}; "
                                 "delete the entry (the cache is safe to delete)")
        self.features = data["features"]
        self.offsets = data["offsets"].tolist()
        self.as_list = bool(data["as_list"])
        self.index = {sid: i for i, sid in enumerate(data["sample_ids"])}
        self.path = path

    def rows(self, sample_id: str) -> torch.Tensor:
        """The soft-token rows [T, H] of one sample's image."""
        i = self.index[sample_id]
        return self.features[self.offsets[i]:self.offsets[i + 1]]

    def for_samples(self, sample_ids: list[str], device, dtype) -> dict:
        missing = [sid for sid in sample_ids if sid not in self.index]
        if missing:
            raise LayerwiseError(f"image features {self.path}: no features for samples {', '.join(missing[:5])}")
        return encoder_outputs([self.rows(sid).to(device, dtype) for sid in sample_ids], self.as_list)


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
