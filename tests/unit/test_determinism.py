"""Same sample, same numbers: a sample's stored activations do not depend on what else is in its batch,
its shard or its image-cache entry, nor on whether the image cache is used.

The vision tower and projector are not batch-invariant: in bf16 a GEMM's kernel (and so its rounding)
depends on the number of rows. On CPU, a random Gemma 3 with the 4B's widths (64 px images) gave a
sample extracted alone and the same sample in a six-image shard with batched cache filling max |diff|
0.25 (|values| up to 17, up to 1 % relative) in bf16, 0.0 in fp32; the issue saw 0.35 % to 1.8 % at
full size. `images.per_image_features` therefore runs them on one image per call, both when the
shared cache is filled and in the plain (uncached) pass, so the features of an image are the same
bits everywhere.

The tiny fixture's widths give 0.0 both ways on CPU, so the plain comparisons below would pass with
batched encoding too; `batch_variant_projector` makes the projector's result depend on its batch
size (as real bf16 kernels do) so that any batched vision call shows, on any machine.

What remains for a language-model batch > 1 is the language model's own batching (padding, GEMM rows):
measured max |diff| 0.0 on CPU (tiny fixture and 4B widths, fp32 and bf16, batch 3, |values| up to 17);
not measured on GPU, where cuBLAS chooses kernels by shape. `test_lm_batch_tolerance` bounds it.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from layerwise.core import schema
from layerwise.extract import images
from layerwise.extract.images import cache_key
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.layerfile.store import load_layer_file, sample_rows
from layerwise.models.loading import load_model
from tests.support.sheets import verified_sheet

LAYERS = (0, 5)           # the first layer and the last (global-attention) layer of the tiny model
SHARD, N = "0:6", 6       # a shard of six samples, one distinct image each
ALONE = (1, 4)            # samples extracted on their own as well


@pytest.fixture(scope="module")
def samplesheet(samplesheet, tmp_path_factory):
    """PREFLIGHT's verified sheet of the fixture data: what an extraction unit reads."""
    return verified_sheet(samplesheet, tmp_path_factory.mktemp("verified"))

pytestmark = pytest.mark.parametrize("loaded", ["float32", "bfloat16"], indirect=True)


@pytest.fixture(scope="module")
def loaded(request, tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype=request.param, device="cpu")


def extract(loaded, samplesheet, tiny_model_dir, out: Path, rows: str, batch_size: int = 1,
            cache: Path | None = None) -> Path:
    cfg = UnitConfig(samplesheet=str(samplesheet), model=str(tiny_model_dir), language="english",
                     layers=",".join(map(str, LAYERS)), out_dir=str(out), rows=rows, batch_size=batch_size,
                     dtype=schema.dtype_name(loaded.dtype), device="cpu",
                     image_cache=str(cache) if cache is not None else None)
    run_unit(cfg, loaded=loaded)
    return out


def rows_of(out: Path, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_layer_file(out / schema.layer_filename(layer, "english"))
    return sample_rows(data, i)


def assert_same_sample(a: Path, i: int, b: Path, j: int) -> None:
    """Sample i of unit a and sample j of unit b: same tokens, bitwise the same activations in every layer."""
    for layer in LAYERS:
        (xa, ta), (xb, tb) = rows_of(a, layer, i), rows_of(b, layer, j)
        assert torch.equal(ta, tb), (layer, "token ids")
        assert xa.dtype == xb.dtype and xa.shape == xb.shape
        assert torch.equal(xa, xb), (layer, (xa.float() - xb.float()).abs().max().item())


@contextmanager
def batch_variant_projector(model):
    """The projector's output shifted by (images in the call - 1) / 16: a batch-variant kernel, exaggerated
    (far above bf16's rounding, so the shift survives it). Also records the images per vision-tower call."""
    calls: list[int] = []

    def shift(_module, _args, output):
        return output + (output.shape[0] - 1) / 16

    def count(_module, args, kwargs):
        calls.append(int(kwargs.get("pixel_values", args[0] if args else None).shape[0]))

    handles = [model.model.multi_modal_projector.register_forward_hook(shift),
               images.vision_tower(model).register_forward_pre_hook(count, with_kwargs=True)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def test_alone_or_in_a_shard_with_the_cache(loaded, samplesheet, tiny_model_dir, tmp_path):
    """Batch 1, image cache on: a sample extracted alone equals the same sample in a shard of six images
    (whose cache entry holds all six), bit for bit, in every layer."""
    shard = extract(loaded, samplesheet, tiny_model_dir, tmp_path / "shard", SHARD, cache=tmp_path / "cache")
    for i in ALONE:
        alone = extract(loaded, samplesheet, tiny_model_dir, tmp_path / f"alone{i}", f"{i}:{i + 1}",
                        cache=tmp_path / "cache")
        assert_same_sample(alone, 0, shard, i)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1 + len(ALONE)  # one entry per shard


def test_cached_equals_uncached(loaded, samplesheet, tiny_model_dir, tmp_path):
    """With and without the image cache, bit for bit: at batch 1 (the model's own pixel-values pass of one
    image) and at batch 3 (both paths feed the same per-image features)."""
    for bs in (1, 3):
        cached = extract(loaded, samplesheet, tiny_model_dir, tmp_path / f"cached{bs}", SHARD, bs, tmp_path / "cache")
        plain = extract(loaded, samplesheet, tiny_model_dir, tmp_path / f"plain{bs}", SHARD, bs)
        for i in range(N):
            assert_same_sample(cached, i, plain, i)


def test_no_vision_call_sees_two_images(loaded, samplesheet, tiny_model_dir, tmp_path):
    """With a projector whose result depends on its batch, every path still gives a sample the bits it
    has alone: filling a six-image cache entry, and the uncached pass at batch 3. Before the fix the
    cache's batch of six (and the uncached batch of three) shifted every image feature."""
    with batch_variant_projector(loaded.model) as calls:
        alone = {i: extract(loaded, samplesheet, tiny_model_dir, tmp_path / f"alone{i}", f"{i}:{i + 1}")
                 for i in ALONE}
        shard = extract(loaded, samplesheet, tiny_model_dir, tmp_path / "shard", SHARD, cache=tmp_path / "cache")
        plain3 = extract(loaded, samplesheet, tiny_model_dir, tmp_path / "plain3", SHARD, batch_size=3)
    assert calls and set(calls) == {1}, calls
    assert len(calls) == len(ALONE) + N + N
    for i in ALONE:
        assert_same_sample(alone[i], 0, shard, i)
        assert_same_sample(alone[i], 0, plain3, i)


def test_lm_batch_tolerance(loaded, samplesheet, tiny_model_dir, tmp_path):
    """Language-model batch 3 (samples padded to the longest of their batch) against each sample alone.
    Measured on CPU: 0.0 (bitwise) in fp32 and bf16, tiny fixture and 4B widths. The bound allows for
    kernels that choose their blocking by the number of rows (GPUs): 2 units in the last place of the
    largest value in bf16, 1e-5 of it in fp32, far below what another sample's features change."""
    cache = tmp_path / "cache"
    batched = extract(loaded, samplesheet, tiny_model_dir, tmp_path / "batched", SHARD, batch_size=3, cache=cache)
    worst = 0.0
    for i in range(N):
        alone = extract(loaded, samplesheet, tiny_model_dir, tmp_path / f"alone{i}", f"{i}:{i + 1}", cache=cache)
        for layer in LAYERS:
            (xa, ta), (xb, tb) = rows_of(alone, layer, 0), rows_of(batched, layer, i)
            assert torch.equal(ta, tb)
            scale = xa.float().abs().max().item()
            tol = 2 * 2.0 ** (torch.tensor(scale).log2().floor().item() - 7) if xa.dtype == torch.bfloat16 \
                else 1e-5 * scale
            diff = (xa.float() - xb.float()).abs().max().item()
            assert diff <= tol, (layer, i, diff, tol)
            worst = max(worst, diff)
    print(f"{schema.dtype_name(loaded.dtype)}: LM batch 3 vs alone, max |diff| {worst}")


def test_cache_key_has_a_version(loaded, monkeypatch):
    """Entries written before features were computed one image at a time must never be reused: the
    encoding's version is part of the key."""
    digests, ids = ["a" * 64, "b" * 64], ["s0", "s1"]
    key = cache_key("sha256:m", loaded.dtype, digests, ids)
    monkeypatch.setattr(images, "CACHE_VERSION", "1")
    assert cache_key("sha256:m", loaded.dtype, digests, ids) != key
