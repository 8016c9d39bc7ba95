"""The image-feature cache in every family whose forward takes precomputed features (`Family.feature_cache`).

Per family, on its tiny model (tests/support/families.py) in float32 on CPU, with images of two sizes (so that
LLaVA-NeXT, Qwen and Idefics3/SmolVLM give each image its own number of tokens) at batch 2: two units of one
shard share a cache (english fills it, arabic hits it), and the english one is compared with the plain unit
(no cache). Stored layers are bitwise equal; the vision tower runs once per distinct image across the two
cached units, never inside a unit's forward; the entry holds, per image, exactly the model's own
`get_image_features` of that image alone, one row per image token of the sequence.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from layerwise.core import schema
from layerwise.core.prompts import load_prompts, prompt_for
from layerwise.core.sheet import read_valid_samplesheet
from layerwise.extract import images as image_cache
from layerwise.extract import unit as unit_module
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.layerfile.store import load_layer_file, sample_rows
from layerwise.models.families import FAMILIES
from layerwise.models.inputs import InputBuilder
from layerwise.models.loading import load_model
from tests.support.sheets import resized_sheet, verified_sheet

SIZES = ((64, 64), (96, 48))   # two sizes, two token counts in each per-image family; one batch of 2
LANGUAGES = ("english", "arabic")
CACHED = sorted(m for m, f in FAMILIES.items() if f.feature_cache)


@pytest.fixture(scope="module")
def sheet(tmp_path_factory, fixture_dir) -> Path:
    """Two samples of the fixture data, images of two sizes, both languages, verified as PREFLIGHT does."""
    folder = tmp_path_factory.mktemp("cache-family-data")
    resized_sheet(fixture_dir, folder, SIZES)
    return verified_sheet(folder / "samples.csv", folder / "verified", LANGUAGES)


def test_the_table_caches_every_family_that_takes_features_but_mllama():
    """Mllama's image enters the cross-attention layers (`cross_attention_states`), not the sequence: its forward
    takes no `mm_encoder_outputs`, so it has no cache; every other family has one."""
    from transformers import MllamaModel

    assert CACHED == sorted(set(FAMILIES) - {"mllama"})
    assert "mm_encoder_outputs" not in inspect.signature(MllamaModel.forward).parameters


@pytest.mark.parametrize("model_type", CACHED)
def test_cached_units_equal_plain_units_bitwise(tmp_path, fixture_dir, sheet, model_type, monkeypatch):
    model_dir = fixture_dir / "families" / model_type
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    family = loaded.family
    in_forward = {"on": False, "tower": 0}

    def run_until(model, **inputs):      # the model's forward, watched: the vision tower must not run in it
        in_forward["on"] = True
        try:
            return real_run_until(model, **inputs)
        finally:
            in_forward["on"] = False

    def count(*_):
        in_forward["tower"] += in_forward["on"]

    real_run_until = unit_module.run_until
    monkeypatch.setattr(unit_module, "run_until", run_until)
    handle = image_cache.vision_tower(loaded.model, family.vision_module).register_forward_pre_hook(count)
    cache = tmp_path / "cache"
    try:
        summaries = {}
        for name, language, image_cache_dir in (("english_cached", "english", cache),
                                                ("arabic_cached", "arabic", cache), ("english_plain", "english", None)):
            cfg = UnitConfig(samplesheet=str(sheet), model=str(model_dir), language=language, layers="all",
                             out_dir=str(tmp_path / name), dtype="float32", device="cpu", batch_size=2,
                             image_cache=str(image_cache_dir) if image_cache_dir else None,
                             model_fingerprint="sha256:tiny")
            summaries[name] = run_unit(cfg, loaded=loaded)
    finally:
        handle.remove()
    n = len(SIZES)

    # the vision tower: once per distinct image across the cached units (the fill), never in a forward
    fill, hit = summaries["english_cached"], summaries["arabic_cached"]
    assert fill["image_features"]["cache_hit"] is False and fill["vision_tower_images"] == n
    assert hit["image_features"]["cache_hit"] is True and hit["vision_tower_images"] == 0
    assert hit["image_features"]["cache_file"] == fill["image_features"]["cache_file"]
    assert summaries["english_plain"]["vision_tower_images"] == n and "image_features" not in summaries["english_plain"]
    assert in_forward["tower"] == 0

    # bitwise: every stored layer of every sample, with the cache and without it
    for layer in range(loaded.num_layers):
        fname = schema.layer_filename(layer, "english")
        a = load_layer_file(tmp_path / "english_cached" / fname)
        b = load_layer_file(tmp_path / "english_plain" / fname)
        for key in ("lengths", "token_ids", "token_kinds", "nan_counts"):
            assert torch.equal(a[key], b[key]), (model_type, fname, key)
        assert a["activations"].dtype == torch.float32
        diff = (a["activations"] - b["activations"]).abs().max().item()
        assert torch.equal(a["activations"], b["activations"]), (model_type, fname, diff)

    # the entry: per image, the model's own get_image_features of the processor's input for that sample alone,
    # one row per image token of its sequence (what the storage plan counts)
    feats = image_cache.ImageFeatures(fill["image_features"]["cache_file"], loaded.model_id, loaded.revision)
    assert len(feats.offsets) == n + 1 and feats.features.shape == (feats.offsets[-1], loaded.hidden_size)
    layer0 = load_layer_file(tmp_path / "english_cached" / schema.layer_filename(0, "english"))
    builder = InputBuilder(loaded.processor, family)
    prompt = prompt_for("english", load_prompts(None, model_type))
    for i, row in enumerate(read_valid_samplesheet(sheet, ["english"]).itertuples()):
        kinds, _ = sample_rows({**layer0, "activations": layer0["token_kinds"]}, i)
        rows = feats.rows(row.sample_id)
        assert rows.shape[0] == int((kinds == schema.TOKEN_KINDS["image"]).sum()), (model_type, i)
        with Image.open(row.image) as img:
            enc = builder.encode([img.convert("RGB")], [prompt], [row.caption_english], loaded.device,
                                 loaded.dtype).inputs
        with torch.inference_mode():
            own = loaded.model.get_image_features(**{k: enc[k] for k in ("pixel_values", *family.feature_inputs)})
        own = own.pooler_output
        assert torch.equal(rows, own[0] if isinstance(own, (list, tuple)) else own.reshape(rows.shape)), (model_type, i)
    if family.image_tokens == "per_image":
        assert len({feats.offsets[i + 1] - feats.offsets[i] for i in range(n)}) > 1, model_type


def test_features_that_do_not_fit_the_sequence_name_the_sample(tmp_path, fixture_dir, sheet, monkeypatch):
    """The sequence is built from a blank image of the size read from the file's header, the features from the
    decoded image: if the two ever disagree (Qwen: another token count), the unit stops naming the sample."""
    from layerwise.core.errors import LayerwiseError

    model_dir = fixture_dir / "families" / "qwen2_vl"
    monkeypatch.setattr(unit_module, "blank_image", lambda family, path=None: Image.new("RGB", (112, 112)))
    cfg = UnitConfig(samplesheet=str(sheet), model=str(model_dir), language="english", layers="0",
                     out_dir=str(tmp_path / "out"), dtype="float32", device="cpu")
    with pytest.raises(LayerwiseError, match=r"sample s000: 4 image-feature rows for 16 image tokens"):
        run_unit(cfg, loaded=load_model(str(model_dir), dtype="float32", device="cpu"))
