"""The offline fixtures: a tiny real-architecture Gemma 3, its tokenizer/processor, a synthetic samplesheet."""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from layerwise.core import schema
from tests.support import fixtures

PROMPTS = {"english": "Describe this image.", "arabic": "صف هذه الصورة."}
ARABIC = re.compile("[\u0600-\u06ff]")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    return processor, model


@pytest.fixture(scope="module")
def rows(samplesheet):
    with open(samplesheet, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def messages(prompt, image=None):
    item = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [{"role": "user", "content": [item, {"type": "text", "text": prompt}]}]


def sample_inputs(processor, samplesheet, row, language):
    """Image + chat-formatted prompt + caption, tokenised without a second <bos>."""
    image = Image.open(Path(samplesheet).parent / row["image"]).convert("RGB")
    text = processor.apply_chat_template(messages(PROMPTS[language]), add_generation_prompt=True)
    text += row[schema.caption_column(language)]
    return processor(text=text, images=[[image]], add_special_tokens=False, return_tensors="pt")


@pytest.mark.parametrize("language,index", [("english", 0), ("arabic", 3)])
def test_forward_returns_every_layer(loaded, samplesheet, rows, language, index):
    processor, model = loaded
    assert type(processor).__name__ == "Gemma3Processor"
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert model.dtype == torch.float32
    inputs = sample_inputs(processor, samplesheet, rows[index], language)
    config = model.config
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    assert int(inputs["token_type_ids"].sum()) == config.mm_tokens_per_image == 16
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 16
    assert inputs["input_ids"].shape[1] > config.text_config.sliding_window  # the window really bites
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == config.text_config.num_hidden_layers + 1 == 7
    for h in hidden:
        assert h.shape == (1, inputs["input_ids"].shape[1], 64)
        assert torch.isfinite(h).all()


def test_image_features_are_nonzero_and_reach_the_decoder(loaded, samplesheet, rows):
    processor, model = loaded
    a, b = (sample_inputs(processor, samplesheet, rows[i], "english") for i in (0, 1))
    with torch.no_grad():
        features = model.get_image_features(pixel_values=a["pixel_values"]).pooler_output  # projector output
        other = model.get_image_features(pixel_values=b["pixel_values"]).pooler_output
    assert features.shape == (1, 16, 64)
    assert features.abs().min() > 0
    assert not torch.allclose(features, other)
    # Same text, another image: the text positions after the image must change.
    b = processor(text=processor.apply_chat_template(messages(PROMPTS["english"]), add_generation_prompt=True)
                  + rows[0]["caption_english"], images=[[Image.open(Path(samplesheet).parent / rows[1]["image"])]],
                  add_special_tokens=False, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        last_a = model(**a, output_hidden_states=True).hidden_states[-1][0, -1]
        last_b = model(**b, output_hidden_states=True).hidden_states[-1][0, -1]
    assert not torch.allclose(last_a, last_b)


def test_arabic_captions_are_real_tokens(loaded, rows):
    tokenizer = loaded[0].tokenizer
    byte_pieces = {tokenizer.convert_tokens_to_ids(t) for t in fixtures.BYTE_TOKENS}
    for row in rows:
        caption = row["caption_arabic"]
        assert ARABIC.search(caption)
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert not byte_pieces & set(ids), tokenizer.convert_ids_to_tokens(ids)
        assert len(ids) < len(caption.split()) * 2  # word pieces, not characters
        assert tokenizer.decode(ids) == caption


def test_unseen_text_falls_back_to_bytes(loaded):
    tokenizer = loaded[0].tokenizer
    text = "Zebra ☃ شمس"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_match_the_model(loaded):
    processor, model = loaded
    tokenizer, config = processor.tokenizer, model.config
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.boi_token_id == config.boi_token_id == tokenizer.convert_tokens_to_ids("<start_of_image>")
    assert tokenizer.convert_tokens_to_ids("<end_of_image>") == config.eoi_token_id
    assert tokenizer.image_token_id == config.image_token_id == tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert processor.boi_token == "<start_of_image>"  # the placeholder the processor expands
    assert processor.image_seq_length == config.mm_tokens_per_image == 16
    assert processor.image_processor.size["height"] == config.vision_config.image_size == 64
    assert len(tokenizer) == config.text_config.vocab_size
    for marker in ("<start_of_turn>", "<end_of_turn>"):  # atomic, not spelled out in pieces
        assert tokenizer(marker, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(marker)]


def test_chat_input_has_exactly_one_bos(loaded, samplesheet, rows):
    processor = loaded[0]
    bos = processor.tokenizer.bos_token_id
    image = Image.open(Path(samplesheet).parent / rows[0]["image"]).convert("RGB")
    rendered = processor.apply_chat_template(messages(PROMPTS["english"]), add_generation_prompt=True)
    assert rendered == ("<bos><start_of_turn>user\n<start_of_image>Describe this image.<end_of_turn>\n"
                        "<start_of_turn>model\n")
    via_template = processor.apply_chat_template(messages(PROMPTS["english"], image), add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
    via_processor = processor(text=rendered, images=[[image]], add_special_tokens=False, return_tensors="pt")
    for inputs in (via_template, via_processor):
        ids = inputs["input_ids"][0].tolist()
        assert ids.count(bos) == 1 and ids[0] == bos
    assert torch.equal(via_template["input_ids"], via_processor["input_ids"])
    assert torch.equal(via_template["token_type_ids"], via_processor["token_type_ids"])
    # The trap this guards against: like Gemma's tokenizer, ours adds <bos> by default.
    doubled = processor(text=rendered, images=[[image]], return_tensors="pt")["input_ids"][0].tolist()
    assert doubled[:2] == [bos, bos]


def test_sliding_and_full_attention_layers(loaded, samplesheet, rows):
    processor, model = loaded
    text_config = model.config.text_config
    assert text_config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]  # Gemma's every 6th
    assert text_config.sliding_window == 16
    assert [layer.self_attn.is_sliding for layer in model.get_decoder().layers] == [True] * 5 + [False]
    # Behaviour: the last position of layer 0 (sliding) cannot see position 1; the full stack can.
    inputs = sample_inputs(processor, samplesheet, rows[0], "english")
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][0, 1] = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    with torch.no_grad():
        before = model(**inputs, output_hidden_states=True).hidden_states
        after = model(**changed, output_hidden_states=True).hidden_states
    assert torch.equal(before[1][0, -1], after[1][0, -1])
    assert not torch.allclose(before[-1][0, -1], after[-1][0, -1])


def test_samplesheet(samplesheet):
    table = pd.read_csv(samplesheet)
    assert list(table.columns) == ["sample_id", "image", "gender", "caption_english", "caption_arabic"]
    assert len(table) == 12
    assert table["sample_id"].is_unique and table["sample_id"].iloc[0] == "s000"
    assert set(table["gender"]) == set(schema.GENDERS)
    assert table["caption_english"].str.contains(",").any()  # quoting matters
    assert table["caption_arabic"].map(lambda c: bool(ARABIC.search(c))).all()
    assert table["caption_english"].is_unique and table["caption_arabic"].is_unique
    sizes = set()
    for rel in table["image"]:
        assert not Path(rel).is_absolute()
        with Image.open(samplesheet.parent / rel) as image:
            image.verify()
        with Image.open(samplesheet.parent / rel) as image:
            assert image.mode == "RGB" and image.format == "PNG"
            assert all(48 <= side <= 96 for side in image.size)
            sizes.add(image.size)
    assert len(sizes) > 3 and any(w != h for w, h in sizes)  # the processor must resize, not just copy


def test_build_is_deterministic_and_idempotent(tmp_path):
    first, built = fixtures.ensure_fixtures(tmp_path / "a")
    assert built and fixtures.is_built(tmp_path / "a")
    again, built = fixtures.ensure_fixtures(tmp_path / "a")
    assert not built and again == first
    second = fixtures.build_all(tmp_path / "b")
    for rel in ("model/model.safetensors", "model/tokenizer.json", "model/config.json", "data/samples.csv",
                "data/images/s007.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert second["samplesheet"].read_bytes() == first["samplesheet"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folder left behind
    (tmp_path / "a" / fixtures.STAMP_NAME).write_text("0 samples=12\n")  # an older fixture version
    assert not fixtures.is_built(tmp_path / "a")
    assert not fixtures.is_built(tmp_path / "a", n_samples=5)


def test_cli_reuses_a_current_build(fixture_dir):
    script = Path(__file__).resolve().parents[2] / "scripts" / "make-fixtures.py"
    result = subprocess.run([sys.executable, str(script), "--out", str(fixture_dir)],
                            capture_output=True, text=True, check=True)
    assert "up to date" in result.stdout and str(fixture_dir / "model") in result.stdout
