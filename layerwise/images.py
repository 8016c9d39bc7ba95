"""The compute diet: run the vision tower and projector once per image, reuse everywhere.

The image comes before any language-specific text, so its soft-token features are the same in
every language and every layer group. `encode_images` stores them once per sample shard; each
extraction unit feeds them back through Gemma 3's `mm_encoder_outputs` instead of pixels, which
keeps `token_type_ids` (and so the bidirectional image attention) exactly as in the plain pass.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import schema
from .errors import LayerwiseError
from .inputs import load_rgb
from .store import atomic_torch_save, file_backed_zeros

FEATURES_KEYS = ("sample_ids", "features", "model_id", "model_revision", "dtype")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    tower = getattr(model.base_model, "vision_tower", None)
    if tower is None:
        raise LayerwiseError(f"{type(model).__name__} has no vision tower to pre-compute image features with")
    return tower


class VisionCallCounter:
    """Counts images that pass through the vision tower (a benchmark and audit figure)."""

    def __init__(self, model: torch.nn.Module):
        self.images = 0
        self._handle = vision_tower(model).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        self.images += int(pixels.shape[0]) if pixels is not None else 0

    def close(self) -> None:
        self._handle.remove()


@torch.inference_mode()
def encode_images(loaded, samples, out_path: str | Path, batch_size: int = 8) -> dict:
    """Write {sample_ids, features [N, image_tokens, H]} for `samples` to `out_path` (atomically)."""
    processor, model = loaded.processor, loaded.model
    out_path = Path(out_path)
    buffer = None
    counter = VisionCallCounter(model)
    started = time.perf_counter()
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="images", unit="batch", file=sys.stderr):
            chunk = samples[start:start + batch_size]
            pixels = processor.image_processor([load_rgb(s.image) for s in chunk], return_tensors="pt")["pixel_values"]
            feats = model.get_image_features(pixel_values=pixels.to(loaded.device, loaded.dtype))
            feats = getattr(feats, "pooler_output", feats)
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
                f"--image-features {path}: computed with {data.get('model_id')}@{data.get('model_revision')}, "
                f"not {model_id}@{revision}")
        self.features = data["features"]
        self.index = {sid: i for i, sid in enumerate(data["sample_ids"])}
        self.path = path

    def for_samples(self, sample_ids: list[str], device, dtype) -> dict:
        missing = [sid for sid in sample_ids if sid not in self.index]
        if missing:
            raise LayerwiseError(f"--image-features {self.path}: no features for samples {', '.join(missing[:5])}")
        rows = torch.stack([self.features[self.index[sid]] for sid in sample_ids])
        return {"image": BaseModelOutputWithPooling(pooler_output=rows.to(device, dtype))}
