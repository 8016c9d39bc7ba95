"""Image features computed once per image and reused give the plain forward pass's values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerwise import schema
from layerwise.errors import LayerwiseError
from layerwise.extract import UnitConfig, run_unit
from layerwise.images import encode_images
from layerwise.model import load_model
from layerwise.samplesheet import iter_samples, read_samplesheet
from layerwise.store import load_layer_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


def cfg(samplesheet, model, out, **kw):
    base = dict(samplesheet=str(samplesheet), model=str(model), language="english", layers="all",
                out_dir=str(out), dtype="float32", device="cpu", batch_size=3)
    base.update(kw)
    return UnitConfig(**base)


def test_reused_image_features_equal_the_plain_pass(tmp_path, samplesheet, tiny_model_dir, loaded):
    samples = list(iter_samples(read_samplesheet(samplesheet, ["english"]), None))
    features = tmp_path / "image_features.pt"
    enc = encode_images(loaded, samples, features, batch_size=5)
    assert enc["vision_tower_images"] == len(samples) == enc["images"]
    for language in ("english", "arabic"):
        plain = run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / f"plain_{language}", language=language), loaded=loaded)
        diet = run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / f"diet_{language}", language=language,
                            image_features=str(features)), loaded=loaded)
        assert plain["vision_tower_images"] == len(samples)
        assert diet["vision_tower_images"] == 0
        for layer in range(loaded.num_layers):
            name = schema.layer_filename(layer, language)
            a = load_layer_file(tmp_path / f"plain_{language}" / name)
            b = load_layer_file(tmp_path / f"diet_{language}" / name)
            assert torch.equal(a["token_ids"], b["token_ids"])
            torch.testing.assert_close(a["activations"], b["activations"], atol=1e-5, rtol=1e-5)


def test_features_of_another_model_are_refused(tmp_path, samplesheet, tiny_model_dir, loaded):
    samples = list(iter_samples(read_samplesheet(samplesheet, ["english"]), None))[:2]
    features = tmp_path / "f.pt"
    encode_images(loaded, samples, features)
    data = torch.load(features, weights_only=True)
    data["model_id"] = "someone/else"
    torch.save(data, features)
    with pytest.raises(LayerwiseError, match="computed with someone/else"):
        run_unit(cfg(samplesheet, tiny_model_dir, tmp_path / "x", rows="0:2", image_features=str(features)), loaded=loaded)


def test_encode_images_cli(tmp_path, samplesheet, tiny_model_dir):
    out = tmp_path / "feats.pt"
    done = subprocess.run([sys.executable, str(ROOT / "bin" / "layerwise-encode-images"), "--samplesheet", str(samplesheet),
                           "--model", str(tiny_model_dir), "--rows", "2:5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = torch.load(out, weights_only=True)
    assert data["sample_ids"] == ["s002", "s003", "s004"] and data["features"].shape[0] == 3
    assert data["features"].abs().sum() > 0
