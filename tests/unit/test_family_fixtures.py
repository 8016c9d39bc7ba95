"""The tiny real-architecture fixtures of every VLM family (tests/support/families.py, built by ensure_fixtures into
OUT/families/<model_type>/): each loads offline through the Auto classes, takes its own processor's native input for
(image, prompt, caption) and returns one hidden state per decoder layer + 1."""
import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from layerwise.core import schema
from tests.support import families

PROMPT = "Describe this image."
# Families whose number of image tokens follows the image (size or aspect ratio); the others are fixed.
DYNAMIC = {"qwen2_vl", "qwen2_5_vl", "llava_next", "idefics3", "smolvlm"}
# What each chat template renders for one user turn (image + PROMPT) with the generation prompt: the hub format.
RENDERED = {
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>Describe this image.<end_of_turn>\n<start_of_turn>model\n",
    "qwen2_vl": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n"),
    "llava": "USER: <image>\nDescribe this image. ASSISTANT:",
    "llava_next": "[INST] <image>\nDescribe this image. [/INST]",
    "mllama": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>Describe this image.<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "idefics3": "<|begin_of_text|>User:<image>Describe this image.<end_of_utterance>\nAssistant:",
    "smolvlm": "<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:",
}
RENDERED["qwen2_5_vl"] = RENDERED["qwen2_vl"]
# Turn and image markers that must stay single tokens.
MARKERS = {
    "gemma3": ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<image_soft_token>"),
    "paligemma": ("<image>", "<bos>", "<eos>", "<loc0000>", "<seg127>"),
    "qwen2_vl": ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|endoftext|>"),
    "llava": ("<image>", "<s>", "</s>", "<pad>"),
    "llava_next": ("<image>", "<s>", "</s>", "<pad>"),
    "mllama": ("<|image|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|python_tag|>", "<|finetune_right_pad_id|>"),
    "idefics3": ("<image>", "<fake_token_around_image>", "<end_of_utterance>", "<|begin_of_text|>"),
    "smolvlm": ("<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>", "<row_1_col_1>",
                "<row_6_col_6>", "<|im_start|>"),
}
MARKERS["qwen2_5_vl"] = MARKERS["qwen2_vl"]


@pytest.fixture(scope="module")
def rows(samplesheet):
    with open(samplesheet, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def image(samplesheet, row) -> Image.Image:
    return Image.open(Path(samplesheet).parent / row["image"]).convert("RGB")


@pytest.fixture(scope="module", params=families.FAMILIES)
def family(request, fixture_dir):
    """(model_type, processor, model, fixture.json) of one family, loaded as production loads a hub checkpoint."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = families.family_paths(fixture_dir)[request.param]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    info = json.loads((path / families.INFO_NAME).read_text(encoding="utf-8"))
    return request.param, processor, model, info


def native_inputs(model_type, processor, picture, prompt, caption):
    """The family's own input for (image, prompt, caption): its chat template with the caption as the assistant
    turn; PaliGemma (no template): prompt + suffix=caption."""
    if model_type == "paligemma":
        return processor(text=prompt, images=picture, suffix=caption, return_tensors="pt")
    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": prompt}]},
                {"role": "assistant", "content": [{"type": "text", "text": caption}]}]
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")


def count_image_tokens(inputs, model) -> int:
    return int((inputs["input_ids"] == families.image_token_id(model.config)).sum())


def test_every_family_has_a_fixture(fixture_dir):
    assert set(families.FAMILIES) == {"gemma3", "paligemma", "qwen2_vl", "qwen2_5_vl", "llava", "llava_next",
                                      "mllama", "idefics3", "smolvlm"}
    for model_type, path in families.family_paths(fixture_dir).items():
        assert (path / "config.json").is_file() and (path / families.INFO_NAME).is_file(), model_type


def test_fixture_json_says_what_the_fixture_is(family):
    model_type, processor, model, info = family
    config = model.config
    assert info["model_type"] == config.model_type == model_type
    assert info["model_class"] == type(model).__name__
    assert info["auto_model_class"] == "AutoModelForImageTextToText"
    assert info["processor_class"] == type(processor).__name__
    assert info["tokenizer_class"] == type(processor.tokenizer).__name__
    assert info["image_processor_class"] == type(processor.image_processor).__name__
    assert info["num_decoder_layers"] == len(model.get_decoder().layers) == config.get_text_config().num_hidden_layers
    assert info["hidden_size"] == config.get_text_config().hidden_size == 64
    assert info["image_token_id"] == families.image_token_id(config)
    assert processor.tokenizer.convert_tokens_to_ids(info["image_token"]) == info["image_token_id"]
    assert info["chat_template"] is (model_type != "paligemma") is bool(processor.chat_template)
    assert info["image_tokens"].startswith("dynamic") is (model_type in DYNAMIC)
    # tiny: builds in a fraction of a second, a forward pass in milliseconds
    assert model.dtype == torch.float32
    assert 4 <= info["num_decoder_layers"] <= 8 and info["parameters"] < 1_000_000


@pytest.mark.parametrize("language,index", [("english", 0), ("arabic", 3)])
def test_forward_returns_every_decoder_layer(family, samplesheet, rows, language, index):
    model_type, processor, model, _ = family
    caption = rows[index][schema.caption_column(language)]
    inputs = native_inputs(model_type, processor, image(samplesheet, rows[index]), PROMPT, caption)
    ids = inputs["input_ids"]
    assert ids.shape[0] == 1
    n_image = count_image_tokens(inputs, model)
    assert n_image == 1 if model_type == "mllama" else n_image > 1
    assert caption in processor.tokenizer.decode(ids[0])  # the caption is in the sequence, as text
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    layers = model.get_decoder().layers
    assert len(hidden) == len(layers) + 1 == model.config.get_text_config().num_hidden_layers + 1
    for h in hidden:
        assert h.shape == (1, ids.shape[1], 64)
        assert torch.isfinite(h).all()


def test_the_image_reaches_the_text(family, samplesheet, rows):
    """Another image, same text: the last (caption) position changes; no zero-initialised projector or gate."""
    model_type, processor, model, _ = family
    caption = rows[0]["caption_english"]
    last = []
    for row in rows[:2]:
        inputs = native_inputs(model_type, processor, image(samplesheet, row), PROMPT, caption)
        with torch.no_grad():
            last.append(model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1])
    assert not torch.allclose(last[0], last[1])


def test_image_token_count_follows_the_family_rule(family, samplesheet, rows):
    model_type, processor, model, _ = family
    counts = {}
    for row in rows:
        inputs = native_inputs(model_type, processor, image(samplesheet, row), PROMPT, row["caption_english"])
        counts[image(samplesheet, row).size] = count_image_tokens(inputs, model)
    if model_type in DYNAMIC:  # planned per sample: the fixture images give more than one count
        assert len(set(counts.values())) > 1, counts
    else:
        assert len(set(counts.values())) == 1, counts
    if model_type == "mllama":
        assert set(counts.values()) == {1}


@pytest.mark.parametrize("model_type,first,second", [("qwen2_vl", 0, 3), ("qwen2_5_vl", 0, 3), ("smolvlm", 0, 2),
                                                     ("idefics3", 0, 2)])
def test_two_image_sizes_give_two_token_counts(fixture_dir, samplesheet, rows, model_type, first, second):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = families.family_paths(fixture_dir)[model_type]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    config = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).config
    a, b = (image(samplesheet, rows[i]) for i in (first, second))
    assert a.size != b.size
    counts = [int((native_inputs(model_type, processor, picture, PROMPT, "A man.")["input_ids"]
                   == families.image_token_id(config)).sum()) for picture in (a, b)]
    assert counts[0] != counts[1] and min(counts) > 0


def test_chat_template_renders_the_hub_format(family):
    model_type, processor, _, _ = family
    if model_type == "paligemma":
        assert not processor.chat_template  # PaliGemma has none: prompt + suffix
        return
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == RENDERED[model_type]


def test_bos_once_where_the_family_has_one(family, samplesheet, rows):
    model_type, processor, model, _ = family
    tokenizer = processor.tokenizer
    ids = native_inputs(model_type, processor, image(samplesheet, rows[0]), PROMPT,
                        rows[0]["caption_english"])["input_ids"][0].tolist()
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        assert tokenizer.bos_token is None  # Qwen has no BOS
        return
    assert ids.count(tokenizer.bos_token_id) == 1
    if model_type == "paligemma":  # <image> x N <bos> prompt \n caption <eos>
        n_image = count_image_tokens({"input_ids": torch.tensor([ids])}, model)
        assert ids.index(tokenizer.bos_token_id) == n_image and ids[-1] == tokenizer.eos_token_id
    else:
        assert ids[0] == tokenizer.bos_token_id


def test_markers_are_single_tokens(family):
    model_type, processor, _, _ = family
    tokenizer = processor.tokenizer
    for marker in MARKERS[model_type]:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (marker, ids)


def test_captions_round_trip_in_both_languages(family, rows):
    tokenizer = family[1].tokenizer
    for row in rows:
        for language in ("english", "arabic"):
            caption = row[schema.caption_column(language)]
            ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == caption
            assert len(ids) < 3 * len(caption.split())  # word pieces, not bytes


def test_paligemma_prefix_and_suffix(fixture_dir, samplesheet, rows):
    """PaliGemma: token_type_ids mark the suffix (caption + <eos>), not the image; `<image>` in the prompt or not
    gives the same ids."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(families.family_paths(fixture_dir)["paligemma"], local_files_only=True)
    picture, caption = image(samplesheet, rows[0]), rows[0]["caption_english"]
    inputs = processor(text=PROMPT, images=picture, suffix=caption, return_tensors="pt")
    explicit = processor(text="<image>" + PROMPT, images=picture, suffix=caption, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], explicit["input_ids"])
    ids, kinds = inputs["input_ids"][0].tolist(), inputs["token_type_ids"][0].tolist()
    suffix = processor.tokenizer(caption, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    assert kinds == [0] * (len(ids) - len(suffix)) + [1] * len(suffix)
    assert ids[-len(suffix):] == suffix
    assert processor.tokenizer.decode(ids[:-len(suffix)]).endswith(PROMPT + "\n")


def test_mllama_cross_attention_layers_sit_in_the_decoder(fixture_dir):
    from transformers import AutoModelForImageTextToText

    path = families.family_paths(fixture_dir)["mllama"]
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    cross = model.config.text_config.cross_attention_layers
    info = json.loads((path / families.INFO_NAME).read_text(encoding="utf-8"))
    assert info["cross_attention_layers"] == cross == [3, 7]
    kinds = [type(layer).__name__ for layer in model.get_decoder().layers]
    assert [i for i, kind in enumerate(kinds) if kind == "MllamaCrossAttentionDecoderLayer"] == cross
    assert len(kinds) == 8
    for i in cross:  # the gates are not left at zero: the image reaches the text through them
        layer = model.get_decoder().layers[i]
        assert layer.cross_attn_attn_gate.abs().item() > 0 and layer.cross_attn_mlp_gate.abs().item() > 0


@pytest.mark.parametrize("model_type", ["qwen2_vl", "mllama", "smolvlm"])
def test_family_build_is_deterministic(fixture_dir, tmp_path, model_type):
    built = families.build_family(model_type, tmp_path / model_type)
    reference = families.family_paths(fixture_dir)[model_type]
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in built.iterdir())
    for name in names:
        assert (built / name).read_bytes() == (reference / name).read_bytes(), name
