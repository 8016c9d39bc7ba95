"""The extraction engine against an independent path: the model's own output_hidden_states."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from layerwise.core import contract, schema
from layerwise.core.errors import LayerwiseError
from layerwise.core.prompts import load_prompts
from layerwise.extract.unit import PARTIAL_DIR, PROGRESS_FILE, UnitConfig, run_unit
from layerwise.layerfile.store import load_layer_file, sample_rows
from layerwise.models.loading import load_model
from tests.support.sheets import verified_sheet

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("english", "arabic")


@pytest.fixture(scope="module")
def samplesheet(samplesheet, tmp_path_factory):
    """PREFLIGHT's verified sheet of the fixture data: what an extraction unit reads."""
    return verified_sheet(samplesheet, tmp_path_factory.mktemp("verified"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, samplesheet):
    """Per language and sample: (input_ids, hidden_states tuple, final norm) from a plain forward pass,
    built directly with the processor (not with layerwise's input code)."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True, dtype=torch.float32).eval()
    table = pd.read_csv(samplesheet, dtype=str, keep_default_na=False)
    prompts = load_prompts()
    out = {}
    for language in LANGUAGES:
        for _, row in table.iterrows():
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts[language]}]},
                {"role": "assistant", "content": [{"type": "text", "text": row[f"caption_{language}"]}]},
            ]
            text = processor.apply_chat_template(messages, tokenize=False)
            image = Image.open(samplesheet.parent / row["image"]).convert("RGB")
            enc = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                res = model(**enc, output_hidden_states=True)
            out[language, row["sample_id"]] = (enc["input_ids"][0], enc["token_type_ids"][0], res.hidden_states)
    return out, model.model.language_model.norm


def unit(samplesheet, tiny_model_dir, out_dir, **kw) -> UnitConfig:
    base = dict(samplesheet=str(samplesheet), model=str(tiny_model_dir), language="english", layers="all",
                out_dir=str(out_dir), dtype="float32", device="cpu", checkpoint_interval=4)
    base.update(kw)
    return UnitConfig(**base)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, samplesheet, tiny_model_dir, loaded):
    """All layers, all tokens, both languages, batch size 1 (the reference configuration)."""
    dirs = {}
    for language in LANGUAGES:
        out = tmp_path_factory.mktemp(f"full_{language}")
        run_unit(unit(samplesheet, tiny_model_dir, out, language=language), loaded=loaded)
        dirs[language] = out
    return dirs


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_layer_equals_output_hidden_states(full_runs, reference, loaded, language):
    ref, final_norm = reference
    num_layers = loaded.num_layers
    for layer in range(num_layers):
        data = load_layer_file(full_runs[language] / schema.layer_filename(layer, language))
        assert data["layer"] == layer and data["language"] == language
        assert set(schema.LAYER_FILE_KEYS) <= set(data)
        for i, sample_id in enumerate(data["sample_ids"]):
            ids, _, hidden_states = ref[language, sample_id]
            rows, token_ids = sample_rows(data, i)
            assert torch.equal(token_ids, ids)
            if layer < num_layers - 1:
                expected = hidden_states[layer + 1][0]
                got = rows
            else:  # hidden_states[-1] is normed; the file holds the raw residual stream
                expected = hidden_states[-1][0]
                got = final_norm(rows)
                assert not torch.allclose(rows, expected, atol=1e-3), "last layer must be stored before the norm"
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_file_keys_and_seed_shape(full_runs, samplesheet, loaded):
    data = torch.load(full_runs["english"] / "layer_0_english.pt", weights_only=True)
    n = len(pd.read_csv(samplesheet))
    assert data["activations"].shape == (n, int(data["lengths"].max()), loaded.hidden_size)
    assert data["hidden_size"] == loaded.hidden_size
    assert len(data["genders"]) == n and set(data["genders"]) <= set(schema.GENDERS)
    assert data["token_selection"] == "all" and data["layout"] == "padded" and data["dtype"] == "float32"
    assert data["model_id"] and data["model_revision"]
    # padding positions carry no values and a -1 token id
    for i, n_i in enumerate(data["lengths"].tolist()):
        assert torch.all(data["activations"][i, n_i:] == 0)
        assert torch.all(data["token_ids"][i, n_i:] == schema.PAD_TOKEN_ID)


def test_early_exit_gives_identical_values(tmp_path, samplesheet, tiny_model_dir, loaded, full_runs):
    run_unit(unit(samplesheet, tiny_model_dir, tmp_path, layers="1-2"), loaded=loaded)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["layer_1_english.pt", "layer_2_english.pt"]
    for layer in (1, 2):
        a = load_layer_file(tmp_path / f"layer_{layer}_english.pt")["activations"]
        b = load_layer_file(full_runs["english"] / f"layer_{layer}_english.pt")["activations"]
        assert torch.equal(a, b)


def test_early_exit_stops_after_highest_layer(loaded):
    from layerwise.models.capture import capture_layers, decoder_layers, run_until
    from layerwise.models.inputs import InputBuilder

    calls = []
    handles = [m.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, m in enumerate(decoder_layers(loaded.model))]
    try:
        batch = InputBuilder(loaded.processor, loaded.family).encode([Image.new("RGB", (64, 64))], ["Describe."], ["A cat."],
                                                      loaded.device, loaded.dtype)
        with capture_layers(loaded.model, [1]) as captured:
            run_until(loaded.model, **batch.inputs)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1] and list(captured) == [1]


def test_batch_size_four_matches_batch_size_one(tmp_path, samplesheet, tiny_model_dir, loaded, full_runs):
    run_unit(unit(samplesheet, tiny_model_dir, tmp_path, batch_size=4), loaded=loaded)
    for layer in range(loaded.num_layers):
        a = load_layer_file(tmp_path / f"layer_{layer}_english.pt")
        b = load_layer_file(full_runs["english"] / f"layer_{layer}_english.pt")
        assert torch.equal(a["lengths"], b["lengths"]) and torch.equal(a["token_ids"], b["token_ids"])
        torch.testing.assert_close(a["activations"], b["activations"], atol=1e-5, rtol=1e-5)


def test_ragged_layout_holds_the_padded_values(tmp_path, samplesheet, tiny_model_dir, loaded, full_runs):
    run_unit(unit(samplesheet, tiny_model_dir, tmp_path, layers="0,5", layout="ragged"), loaded=loaded)
    for layer in (0, 5):
        r = load_layer_file(tmp_path / f"layer_{layer}_english.pt")
        p = load_layer_file(full_runs["english"] / f"layer_{layer}_english.pt")
        assert r["activations"].shape == (int(r["lengths"].sum()), loaded.hidden_size)
        assert torch.equal(r["offsets"][1:], torch.cumsum(r["lengths"], 0))
        for i in range(len(r["sample_ids"])):
            ra, rt = sample_rows(r, i)
            pa, pt = sample_rows(p, i)
            assert torch.equal(ra, pa) and torch.equal(rt, pt)


def test_token_selections_keep_the_right_positions(tmp_path, samplesheet, tiny_model_dir, loaded, full_runs):
    tok = loaded.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image_soft_token>")
    table = pd.read_csv(samplesheet, dtype=str, keep_default_na=False)
    full = load_layer_file(full_runs["english"] / "layer_3_english.pt")
    files = {}
    for selection in ("text", "caption", "mean", "last"):
        out = tmp_path / selection
        run_unit(unit(samplesheet, tiny_model_dir, out, layers="3", token_selection=selection), loaded=loaded)
        files[selection] = load_layer_file(out / "layer_3_english.pt")
        assert files[selection]["token_selection"] == selection
    for i, caption in enumerate(table["caption_english"]):
        all_rows, all_ids = sample_rows(full, i)
        text_rows, text_ids = sample_rows(files["text"], i)
        assert image_id in all_ids.tolist() and image_id not in text_ids.tolist()
        assert torch.equal(text_rows, all_rows[all_ids != image_id])
        cap_rows, cap_ids = sample_rows(files["caption"], i)
        assert tok.decode(cap_ids).strip().startswith(caption)
        assert "<start_of_turn>" not in tok.decode(cap_ids) and len(cap_ids) < len(text_ids)
        assert torch.equal(cap_rows, all_rows[-len(cap_ids):])  # the model turn ends the sequence
        mean_rows, _ = sample_rows(files["mean"], i)
        torch.testing.assert_close(mean_rows[0], cap_rows.mean(0))
        last_rows, last_ids = sample_rows(files["last"], i)
        assert torch.equal(last_rows[0], all_rows[-1]) and last_ids.tolist() == [all_ids[-1].item()]


def test_resume_after_injected_failure_gives_identical_files(tmp_path, samplesheet, tiny_model_dir, loaded, full_runs):
    class Killed(Exception):
        pass

    def die_after_six(done):
        if done >= 6:
            raise Killed

    cfg = unit(samplesheet, tiny_model_dir, tmp_path, layers="0-5", checkpoint_interval=4)
    with pytest.raises(Killed):
        run_unit(cfg, on_batch=die_after_six, loaded=loaded)
    assert not list(tmp_path.glob("*.pt")), "no final file may exist after a failure"
    assert (tmp_path / PARTIAL_DIR / PROGRESS_FILE).exists()
    summary = run_unit(cfg, loaded=loaded)
    assert summary["resumed_from_sample"] == 4
    assert not (tmp_path / PARTIAL_DIR).exists()
    reference_dir = tmp_path.parent / "uninterrupted"
    run_unit(unit(samplesheet, tiny_model_dir, reference_dir, layers="0-5"), loaded=loaded)
    for layer in range(6):
        name = schema.layer_filename(layer, "english")
        assert sha256(tmp_path / name) == sha256(reference_dir / name)


def test_nan_policies(tmp_path, samplesheet, tiny_model_dir, loaded):
    layer_module = loaded.model.get_decoder().layers[1]
    handle = layer_module.register_forward_hook(lambda m, a, o: o.index_fill(-1, torch.tensor([0]), float("nan")))
    try:
        zero = run_unit(unit(samplesheet, tiny_model_dir, tmp_path / "zero", layers="1", rows="0:2"), loaded=loaded)
        data = load_layer_file(tmp_path / "zero" / "layer_1_english.pt")
        assert zero["nan_counts"]["1"] == int(data["lengths"].sum()) > 0
        assert torch.equal(data["nan_counts"], data["lengths"])
        assert torch.isfinite(data["activations"]).all()
        keep = run_unit(unit(samplesheet, tiny_model_dir, tmp_path / "keep", layers="1", rows="0:2", nan_policy="keep"), loaded=loaded)
        kept = load_layer_file(tmp_path / "keep" / "layer_1_english.pt")
        assert int(torch.isnan(kept["activations"]).sum()) == keep["nan_counts"]["1"]
        with pytest.raises(LayerwiseError, match=r"layer 1, sample s000.*--nan-policy fail"):
            run_unit(unit(samplesheet, tiny_model_dir, tmp_path / "fail", layers="1", rows="0:2", nan_policy="fail"), loaded=loaded)
        assert not list((tmp_path / "fail").glob("*.pt"))
    finally:
        handle.remove()


def test_float16_is_refused_with_the_reason(tmp_path, samplesheet, tiny_model_dir):
    with pytest.raises(LayerwiseError, match=r"float16.*overflow.*36822"):
        run_unit(unit(samplesheet, tiny_model_dir, tmp_path, dtype="float16"))


def test_missing_model_names_model_and_cache(tmp_path, samplesheet, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(LayerwiseError, match=r"--model 'google/not-a-model'.*--hf_home"):
        run_unit(unit(samplesheet, "google/not-a-model", tmp_path))


def test_a_user_samplesheet_is_not_a_unit_sheet(tmp_path, fixture_dir, tiny_model_dir, monkeypatch):
    """A unit reads PREFLIGHT's verified sheet only (the user's samplesheet is checked once, by PREFLIGHT:
    tests/unit/test_samplesheet.py, tests/unit/test_early_failures.py); anything else is refused naming the file
    and the columns it lacks, before the model loads."""
    import layerwise.extract.unit as extract

    monkeypatch.setattr(extract, "load_model", lambda *a, **k: pytest.fail("model loaded despite bad input"))
    user = fixture_dir / "data" / "samples.csv"
    with pytest.raises(LayerwiseError, match=r"samples.csv: samplesheet lacks columns \['row'\]"):
        run_unit(unit(user, tiny_model_dir, tmp_path / "out"))


def test_an_image_changed_after_preflight_fails_naming_it(tmp_path, fixture_dir, tiny_model_dir, loaded):
    """The unit trusts the sheet but not the bytes: an image whose sha256 differs from PREFLIGHT's record fails
    when it is decoded (to feed the vision tower), naming the file and the sample; no layer file is left."""
    data = tmp_path / "data"
    shutil.copytree(fixture_dir / "data", data)
    sheet = verified_sheet(data / "samples.csv", tmp_path / "verified")
    table = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    changed = Path(table.loc[1, "image"])
    with Image.open(changed) as img:
        Image.new("RGB", img.size, (0, 255, 0)).save(changed)
    with pytest.raises(LayerwiseError, match=rf"image {changed} of sample {table.loc[1, 'sample_id']} changed since "
                                             "PREFLIGHT"):
        run_unit(unit(sheet, tiny_model_dir, tmp_path / "out", rows="0:3", layers="0"), loaded=loaded)
    assert not list((tmp_path / "out").glob("*.pt"))


@pytest.mark.parametrize("override, pattern", [
    ({"language": "klingon"}, r"klingon"),
    ({"layers": "0-6"}, r"--layers.*6"),
    ({"layers": "-1"}, r"--layers"),
    ({"token_selection": "middle"}, r"--token-selection"),
])
def test_bad_parameters_name_the_parameter(tmp_path, samplesheet, tiny_model_dir, override, pattern):
    with pytest.raises(LayerwiseError, match=pattern):
        run_unit(unit(samplesheet, tiny_model_dir, tmp_path, **override))


def test_cli_end_to_end_and_error_exit(tmp_path, samplesheet, tiny_model_dir):
    cmd = [sys.executable, str(ROOT / "bin" / "layerwise-extract"), "--samplesheet", str(samplesheet),
           "--model", str(tiny_model_dir), "--language", "arabic", "--layers", "0 3", "--rows", "0:3",
           "--batch-size", "2", "--out-dir", str(tmp_path / "ok")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sample/s" in done.stderr or "samples/s" in done.stderr or "it/s" in done.stderr  # tqdm on stderr
    summary = pd.read_json(tmp_path / "ok" / "summary.json", typ="series")
    assert summary["samples"] == 3 and summary["bytes_written"] > 0 and summary["peak_host_memory_bytes"] > 0
    # the summary is contract.UnitSummary's record (no image cache given: no image_features)
    record = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert record["format_version"] == contract.FORMAT_VERSION and record["kind"] == "extract"
    assert set(record) == {f.name for f in dataclasses.fields(contract.UnitSummary)} - {"image_features"}
    assert sorted(p.name for p in (tmp_path / "ok").glob("*.pt")) == ["layer_0_arabic.pt", "layer_3_arabic.pt"]
    bad = cmd[:-2] + ["--out-dir", str(tmp_path / "bad")]
    bad[bad.index("0 3")] = "0-99"
    failed = subprocess.run(bad, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "ERROR:" in failed.stderr and "--layers" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list((tmp_path / "bad").glob("*.pt"))
