"""Every model family through the real engine: one extraction per family (every layer, English, three images of
three sizes), all launched side by side, each published file equal to the model's own `output_hidden_states`.

Gemma 3 goes through the engine in the shared run (tests/integration/conftest.py) and Qwen2-VL in
test_pipeline.py's languages test; the exactness of each family on more cases is checked in-process by
tests/unit/test_families.py.
"""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from layerwise.core import schema
from layerwise.core.prompts import load_prompts, prompt_for
from layerwise.core.sheet import read_valid_samplesheet
from layerwise.layerfile.store import load_layer_file
from layerwise.models.loading import read_model_info
from tests.support.families import FAMILIES, native_forward
from tests.support.pipeline_helpers import finish, kill_process_group, start_pipeline
from tests.support.sheets import resized_sheet

RUN_TIMEOUT = 1500
SIZES = ((64, 64), (96, 48), (40, 80))
THROUGH_THE_ENGINE_ELSEWHERE = ("gemma3", "qwen2_vl")
ENGINE_FAMILIES = [f for f in FAMILIES if f not in THROUGH_THE_ENGINE_ELSEWHERE]


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory, fixture_dir):
    """One `-profile test` run per family, started together (each engine mostly waits for its few tasks)."""
    sheet = resized_sheet(fixture_dir, tmp_path_factory.mktemp("family-data"), SIZES)
    runs = {}
    try:
        for family in ENGINE_FAMILIES:
            runs[family] = start_pipeline(tmp_path_factory.mktemp(f"engine-{family}"), "--input", sheet,
                                          "--model", fixture_dir / "families" / family, "--layers", "all",
                                          "--languages", "english", "--layer_groups", "1", "--analysis", "false")
        for run in runs.values():
            finish(run, timeout=RUN_TIMEOUT)
    finally:
        for run in runs.values():
            kill_process_group(run.process)
    return runs


@pytest.mark.parametrize("model_type", ENGINE_FAMILIES)
def test_every_family_is_extracted_exactly_through_the_engine(family_runs, fixture_dir, model_type):
    run = family_runs[model_type]
    assert not run.timed_out and run.returncode == 0, run.failure_message()
    meta = json.loads((run.outdir / "extraction_metadata.json").read_text())
    assert meta["status"] == "passed", meta.get("error")
    model_dir = fixture_dir / "families" / model_type
    n = read_model_info(str(model_dir))["num_layers"]
    published = sorted(p.name for p in (run.outdir / "layer_checkpoints").glob("*.pt"))
    assert published == sorted(schema.layer_filename(layer, "english") for layer in range(n))
    prompt = prompt_for("english", load_prompts(None, model_type))
    table = read_valid_samplesheet(run.outdir / "pipeline_info" / "samplesheet.valid.csv", ["english"])
    files = {layer: load_layer_file(run.outdir / "layer_checkpoints" / schema.layer_filename(layer, "english"))
             for layer in range(n)}
    for i, row in enumerate(table.itertuples()):
        with Image.open(row.image) as img:
            ids, hidden, _ = native_forward(model_dir, model_type, img.convert("RGB"), prompt, row.caption_english)
        for layer in range(n - 1):          # the last entry of hidden_states is after the final norm
            d = files[layer]
            length = int(d["lengths"][i])
            assert torch.equal(d["token_ids"][i, :length], ids), f"{model_type}: token ids of sample {i}"
            torch.testing.assert_close(d["activations"][i, :length].float(), hidden[layer + 1][0], atol=1e-5,
                                       rtol=1e-5, msg=lambda m, layer=layer, i=i: f"{model_type} layer {layer} sample {i}: {m}")
