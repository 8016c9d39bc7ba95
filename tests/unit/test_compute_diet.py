"""The compute diet: image features from a content-addressed cache shared by every unit of a shard.

The first unit of a shard runs the vision tower once per image and stores the features under a key
made of the model fingerprint, the dtype and every image's sha256 (`images.cache_key`); the shard's
other units (other languages, other layer groups) memory-map them and feed them back through Gemma
3's `mm_encoder_outputs`. The independent reference is the plain forward pass with pixel values
(a unit run without `image_cache`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.extract.images import ImageFeatures, cache_key
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.layerfile.store import load_layer_file
from layerwise.models.loading import load_model
from tests.support.sheets import verified_sheet

ROWS, N = "0:6", 6  # the shard the units below share (half the fixture's 12 samples, one distinct image each)


@pytest.fixture(scope="module")
def samplesheet(samplesheet, tmp_path_factory):
    """PREFLIGHT's verified sheet of the fixture data: what an extraction unit reads."""
    return verified_sheet(samplesheet, tmp_path_factory.mktemp("verified"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


def cfg(samplesheet, model, out, **kw):
    base = dict(samplesheet=str(samplesheet), model=str(model), language="english", layers="all",
                out_dir=str(out), dtype="float32", device="cpu", batch_size=3)
    base.update(kw)
    return UnitConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, samplesheet, tiny_model_dir, loaded):
    """Three units of one shard sharing a cache (english all layers, arabic all layers, english layer
    group "4-5"), and the plain pass (pixel values, no cache) of both languages over the same rows."""
    root = tmp_path_factory.mktemp("diet")
    cache = root / "cache"
    out = {"root": root, "cache": cache, "summaries": {}}
    for name, kw in (("english", {}), ("arabic", {"language": "arabic"}), ("english_4_5", {"layers": "4-5"})):
        out["summaries"][name] = run_unit(cfg(samplesheet, tiny_model_dir, root / f"diet_{name}", rows=ROWS,
                                              image_cache=str(cache), **kw), loaded=loaded)
    for language in ("english", "arabic"):
        out["summaries"][f"plain_{language}"] = run_unit(
            cfg(samplesheet, tiny_model_dir, root / f"plain_{language}", rows=ROWS, language=language), loaded=loaded)
    return out


def test_the_vision_tower_runs_once_per_image_across_the_units_of_a_shard(runs):
    s = runs["summaries"]
    first, second, third = s["english"], s["arabic"], s["english_4_5"]
    assert first["image_features"]["cache_hit"] is False
    assert first["image_features"]["vision_tower_images"] == N == first["vision_tower_images"]
    for later in (second, third):
        assert later["image_features"]["cache_hit"] is True
        assert later["image_features"]["vision_tower_images"] == 0 == later["vision_tower_images"]
        assert later["image_features"]["cache_file"] == first["image_features"]["cache_file"]
    assert sum(x["vision_tower_images"] for x in (first, second, third)) == N
    # without the cache, every unit runs the tower over every image
    assert s["plain_english"]["vision_tower_images"] == N == s["plain_arabic"]["vision_tower_images"]
    assert "image_features" not in s["plain_english"]
    entries = sorted(runs["cache"].glob("*.pt"))
    assert [str(p) for p in entries] == [first["image_features"]["cache_file"]]
    data = torch.load(entries[0], weights_only=True, mmap=True)
    assert data["sample_ids"] == [f"s{i:03d}" for i in range(N)]
    # one row per image token of each image (offsets [N+1] give each image's rows)
    assert len(data["offsets"]) == N + 1 and data["features"].shape[0] == int(data["offsets"][-1])
    assert data["features"].abs().sum() > 0


@pytest.mark.parametrize("name,language,layers", [("english", "english", range(6)), ("arabic", "arabic", range(6)),
                                                  ("english_4_5", "english", (4, 5))])
def test_layer_files_equal_the_plain_pass(runs, loaded, name, language, layers):
    """Same positions exactly; same values up to float32 round-off. Both paths encode one image per
    vision-tower call (images.per_image_features), so only the language model's own batching could change
    the last bits (on the 2-core CPU dev VM the files are bit-identical: max |diff| 0.0 for every layer,
    |values| up to ~13; tests/unit/test_determinism.py checks bitwise equality). The tolerance, 1e-5, is far
    below what a wrong feature (another image, shifted rows, a stale entry) changes: O(1)."""
    assert [p.name for p in sorted((runs["root"] / f"diet_{name}").glob("*.pt"))] == sorted(
        schema.layer_filename(layer, language) for layer in layers)
    for layer in layers:
        fname = schema.layer_filename(layer, language)
        a = load_layer_file(runs["root"] / f"plain_{language}" / fname)
        b = load_layer_file(runs["root"] / f"diet_{name}" / fname)
        for key in ("lengths", "offsets", "token_ids", "token_kinds", "nan_counts"):
            assert torch.equal(a[key], b[key]), (fname, key)
        assert a["sample_ids"] == b["sample_ids"] and a["genders"] == b["genders"]
        torch.testing.assert_close(b["activations"], a["activations"], atol=1e-5, rtol=1e-5)
        image = a["token_kinds"] == schema.TOKEN_KINDS["image"]
        assert bool(image.any())  # the image positions (where the features enter) are compared too


# -- the key: no stale reuse ------------------------------------------------------------------
def test_cache_key_covers_model_dtype_and_every_image():
    digests = ["a" * 64, "b" * 64, "c" * 64]
    key = cache_key("sha256:model-1", torch.float32, digests)
    assert key == cache_key("sha256:model-1", torch.float32, list(digests))  # a pure function
    others = [
        cache_key("sha256:model-2", torch.float32, digests),      # other weights
        cache_key("sha256:model-1", torch.bfloat16, digests),     # other dtype
        cache_key("sha256:model-1", torch.float32, ["a" * 64, "d" * 64, "c" * 64]),  # one image changed
        cache_key("sha256:model-1", torch.float32, digests[::-1]),  # other order
        cache_key("sha256:model-1", torch.float32, digests[:2]),  # fewer images
    ]
    assert len({key, *others}) == 1 + len(others)
    # parts are delimited: moving characters between parts gives another key
    assert cache_key("m", torch.float32, ["ab", "c"]) != cache_key("m", torch.float32, ["a", "bc"])


def changed_copy(data: Path, folder: Path, sample: str = "s001") -> Path:
    """The fixture data with one image replaced by another picture (same size), verified as PREFLIGHT does."""
    shutil.copytree(data, folder)
    table = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    path = folder / table.set_index("sample_id").loc[sample, "image"]
    with Image.open(path) as img:
        size = img.size
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return verified_sheet(folder / "samples.csv", folder / "verified")


def test_other_fingerprint_or_changed_image_misses_the_cache(tmp_path, samplesheet, tiny_model_dir, loaded, fixture_dir):
    cache = tmp_path / "cache"
    small = dict(rows="0:3", layers="0", image_cache=str(cache))

    def unit(name, sheet=samplesheet, **kw):
        return run_unit(cfg(sheet, tiny_model_dir, tmp_path / name, **{**small, **kw}), loaded=loaded)

    a = unit("a", model_fingerprint="sha256:weights-A")
    assert a["image_features"]["cache_hit"] is False and a["vision_tower_images"] == 3
    again = unit("a2", model_fingerprint="sha256:weights-A")
    assert again["image_features"]["cache_hit"] is True and again["vision_tower_images"] == 0
    b = unit("b", model_fingerprint="sha256:weights-B")  # new weights: their own entry
    assert b["image_features"]["cache_hit"] is False and b["vision_tower_images"] == 3
    assert b["image_features"]["cache_file"] != a["image_features"]["cache_file"]
    assert len(list(cache.glob("*.pt"))) == 2

    # one image replaced: a new entry, and the stored values are those of the new image
    sheet = changed_copy(fixture_dir / "data", tmp_path / "data")
    c = unit("c", sheet=sheet, model_fingerprint="sha256:weights-A")
    assert c["image_features"]["cache_hit"] is False and c["vision_tower_images"] == 3
    assert len(list(cache.glob("*.pt"))) == 3
    plain = run_unit(cfg(sheet, tiny_model_dir, tmp_path / "plain", rows="0:3", layers="0"), loaded=loaded)
    assert plain["vision_tower_images"] == 3
    name = schema.layer_filename(0, "english")
    new = load_layer_file(tmp_path / "c" / name)["activations"]
    torch.testing.assert_close(new, load_layer_file(tmp_path / "plain" / name)["activations"], atol=1e-5, rtol=1e-5)
    old = load_layer_file(tmp_path / "a" / name)["activations"]
    assert not torch.allclose(new[1], old[1], atol=1e-3)   # s001 changed ...
    torch.testing.assert_close(new[0], old[0], atol=1e-5, rtol=1e-5)  # ... s000 did not


def _rewrite_entry(path: Path, **changes) -> None:
    data = torch.load(path, weights_only=True)
    data.update(changes)
    torch.save(data, path)


def test_features_of_another_model_are_refused(tmp_path, samplesheet, tiny_model_dir, loaded):
    cache = tmp_path / "cache"
    first = run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / "a", rows="0:2", layers="0", image_cache=str(cache)),
                     loaded=loaded)
    entry = Path(first["image_features"]["cache_file"])
    _rewrite_entry(entry, model_id="someone/else")
    with pytest.raises(LayerwiseError, match=rf"computed with someone/else@{loaded.revision}, not "
                                             rf"{loaded.model_id}@{loaded.revision}") as err:
        run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / "b", rows="0:2", layers="0", image_cache=str(cache)),
                 loaded=loaded)
    assert entry.name in str(err.value)
    assert not list((tmp_path / "b").glob("*.pt"))
    # another revision of the same model id is refused as well
    _rewrite_entry(entry, model_id=loaded.model_id, model_revision="0" * 40)
    with pytest.raises(LayerwiseError, match=f"computed with {loaded.model_id}@{'0' * 40}"):
        ImageFeatures(entry, loaded.model_id, loaded.revision)
    _rewrite_entry(entry, model_revision=loaded.revision)
    feats = ImageFeatures(entry, loaded.model_id, loaded.revision)  # the right model: accepted
    with pytest.raises(LayerwiseError, match="no features for samples s005"):
        feats.for_samples(["s000", "s005"], torch.device("cpu"), torch.float32)


def test_same_images_under_other_sample_ids_reuse_or_recompute(tmp_path, samplesheet, tiny_model_dir, loaded,
                                                               fixture_dir):
    cache = tmp_path / "cache"
    run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / "a", rows="0:2", layers="0", image_cache=str(cache)),
             loaded=loaded)
    folder = tmp_path / "data"
    shutil.copytree(fixture_dir / "data", folder)
    table = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    table["sample_id"] = "renamed_" + table["sample_id"]
    table.to_csv(folder / "samples.csv", index=False)
    run_unit(cfg(verified_sheet(folder / "samples.csv", folder / "verified"), tiny_model_dir, tmp_path / "b",
                 rows="0:2", layers="0", image_cache=str(cache)), loaded=loaded)
