"""Every model family, extracted exactly: stored activations equal the model's own `output_hidden_states`.

For each family of `layerwise.models.families` there is a tiny randomly initialised model of the real
architecture with its real processor (tests/support/families.py). The reference (native_forward there) is built without
layerwise's input code: the family's processor on its native input (the chat template with the caption as
the assistant turn, with `add_special_tokens` only when the template writes no BOS; PaliGemma: the prompt as
`text` and the caption as `suffix`), the model's forward with `output_hidden_states=True`. Images of three
sizes, so that families whose image token count depends on the image are planned per sample.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from layerwise.core import schema
from layerwise.core.prompts import load_prompts, prompt_for
from layerwise.core.sheet import read_valid_samplesheet
from layerwise.extract.unit import UnitConfig, run_unit
from layerwise.layerfile.store import load_layer_file
from layerwise.models.families import CROSS_ATTENTION, FAMILIES
from layerwise.models.loading import load_model
from layerwise.preflight.samplesheet import read_samplesheet, write_valid_samplesheet
from tests.support.families import native_forward as reference
from tests.support.sheets import resized_sheet

SIZES = ((64, 64), (96, 48), (40, 80))
KIND = schema.TOKEN_KINDS


def family_dir(fixture_dir: Path, model_type: str) -> Path:
    return fixture_dir / "families" / model_type


@pytest.fixture(scope="module")
def sheet(tmp_path_factory, fixture_dir) -> Path:
    """Three samples of the fixture data with images of three sizes, as PREFLIGHT writes the sheet."""
    folder = tmp_path_factory.mktemp("family-data")
    user = resized_sheet(fixture_dir, folder, SIZES)
    return write_valid_samplesheet(read_samplesheet(user, ["english"]), folder / "samplesheet.valid.csv")


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_stored_activations_equal_the_models_own_hidden_states(tmp_path, fixture_dir, sheet, model_type):
    model_dir = family_dir(fixture_dir, model_type)
    assert (model_dir / "config.json").is_file(), f"no tiny {model_type} fixture: scripts/setup.sh builds it"
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    n = loaded.num_layers
    cfg = UnitConfig(samplesheet=str(sheet), model=str(model_dir), language="english", layers="all",
                     out_dir=str(tmp_path / "out"), dtype="float32", device="cpu", batch_size=2)
    run_unit(cfg, loaded=loaded)
    prompt = prompt_for("english", load_prompts(None, model_type))   # the family's own prompt where it has one
    table = read_valid_samplesheet(sheet, ["english"])
    counts = []
    for i, row in enumerate(table.itertuples()):
        with Image.open(row.image) as img:
            ids, hidden, config = reference(model_dir, model_type, img.convert("RGB"), prompt, row.caption_english)
        for layer in range(n - 1):          # the last entry of hidden_states is after the final norm
            d = load_layer_file(tmp_path / "out" / schema.layer_filename(layer, "english"))
            length = int(d["lengths"][i])
            assert torch.equal(d["token_ids"][i, :length], ids), f"{model_type}: token ids of sample {i}"
            torch.testing.assert_close(d["activations"][i, :length], hidden[layer + 1][0], atol=1e-5, rtol=1e-5,
                                       msg=lambda m, layer=layer, i=i: f"{model_type} layer {layer} sample {i}: {m}")
        kinds = d["token_kinds"][i, :length]
        image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
        image_positions = int((ids == image_id).sum())
        if FAMILIES[model_type].image_tokens == CROSS_ATTENTION:
            assert image_positions == 1 and int((kinds == KIND["image"]).sum()) == 0   # no image view
        else:
            assert image_positions > 0 and torch.equal(kinds == KIND["image"], ids == image_id)
        assert int((kinds == KIND["caption"]).sum()) > 0 and int((kinds == KIND["prompt"]).sum()) > 0
        assert int((kinds == KIND["bos"]).sum()) <= 1
        bos = loaded.processor.tokenizer.bos_token_id
        if bos is not None:                 # the model's BOS, exactly once, never dropped, never doubled
            assert int((ids == bos).sum()) == 1, f"{model_type}: {int((ids == bos).sum())} BOS tokens"
        counts.append(image_positions)
    if FAMILIES[model_type].image_tokens == "per_image":
        assert len(set(counts)) > 1, f"{model_type}: the image sizes {SIZES} gave the same image token count {counts}"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_preflight_checks_and_counts_every_family(capsys, tmp_path, fixture_dir, sheet, model_type):
    """PREFLIGHT passes each family's checks (config, weights, processor, captions) and plans it; the caption
    check's sequence lengths are the lengths of the model's own input."""
    from layerwise.models.families import family_of
    from layerwise.preflight.caption_check import check_captions
    from layerwise.preflight.model_check import check_model, load_processor
    from tests.support.command_runner import run_in_process

    model_dir = family_dir(fixture_dir, model_type)
    code, out, err = run_in_process("preflight", ["--samplesheet", sheet, "--model", model_dir, "--layers", "all",
                                                  "--languages", "english", "--out-dir", tmp_path / "pre"], capsys)
    assert code == 0, err
    info = check_model(str(model_dir))
    assert info["model_type"] == model_type and info["architecture"] == FAMILIES[model_type].architecture
    assert f"{info['num_layers']} layers" in out
    table = read_samplesheet(sheet, ["english"])
    prompt = prompt_for("english", load_prompts(None, model_type))
    stats = check_captions(table, load_processor(str(model_dir)), {"english": prompt},
                           ["english"], info["max_position_embeddings"], family=family_of(model_type))
    for i, row in enumerate(read_valid_samplesheet(sheet, ["english"]).itertuples()):
        with Image.open(row.image) as img:
            ids, _, _ = reference(model_dir, model_type, img.convert("RGB"), prompt, row.caption_english)
        assert stats["english"]["positions"][i] == len(ids), (model_type, i)
