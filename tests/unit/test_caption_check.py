"""PREFLIGHT's caption check (layerwise/preflight/caption_check.py): control tokens, template structure, context length."""
import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.core.prompts import load_prompts
from layerwise.core.sheet import iter_samples
from layerwise.models.families import FAMILIES
from layerwise.models.inputs import InputBuilder, load_rgb, selection_mask
from layerwise.preflight.caption_check import CaptionChecker, check_captions, special_tokens
from layerwise.preflight.samplesheet import read_samplesheet

LANGUAGES = ["english", "arabic"]


def sequence_lengths(processor, prompt: str, caption: str) -> dict:
    """Positions of one sample's chat sequence, as the caption check measures them (``CaptionChecker.measure``):
    ``{"all", "text", "caption", "mean", "last", "image", "caption_tokens"}``; LayerwiseError for a caption
    that breaks the template."""
    (lengths, problem), = CaptionChecker(processor).measure(prompt, [caption])
    if problem is not None:
        raise LayerwiseError(f"caption {caption[:60]!r}: {problem}")
    return lengths


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from layerwise.preflight.model_check import load_processor

    return load_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def prompts():
    return load_prompts()


def sheet(folder: Path, captions: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    path = folder / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "image", "gender", "caption_english", "caption_arabic"])
        for i, (en, ar) in enumerate(captions):
            w.writerow([f"s{i}", "a.png", "female", en, ar])
    return path


def caption_failure(path, processor, prompts, max_positions=2048, languages=LANGUAGES) -> str:
    df = read_samplesheet(path, languages)
    with pytest.raises(LayerwiseError) as e:
        check_captions(df, processor, prompts, languages, max_positions)
    return str(e.value)


# ---------------------------------------------------------------- lengths equal InputBuilder's masks

def test_sequence_lengths_equal_input_builder_masks_for_every_fixture_sample(processor, prompts, samplesheet):
    df = read_samplesheet(samplesheet, LANGUAGES)
    builder = InputBuilder(processor, FAMILIES["gemma3"])
    for language in LANGUAGES:
        samples = list(iter_samples(df, language))
        batch = builder.encode([load_rgb(s.image) for s in samples], [prompts[language]] * len(samples),
                               [s.caption(language) for s in samples], torch.device("cpu"), torch.float32)
        stats = check_captions(df, processor, prompts, [language], 2048)[language]
        for k, s in enumerate(samples):
            lengths = sequence_lengths(processor, prompts[language], s.caption(language))
            for selection in schema.TOKEN_SELECTIONS:
                kept = int(selection_mask(batch, selection)[k].sum())
                if selection == "mean":          # the mask says what is pooled; one position is kept
                    assert lengths["mean"] == 1 and kept == lengths["caption"], (s.sample_id, language)
                else:
                    assert lengths[selection] == kept, (s.sample_id, language, selection)
            assert lengths["image"] == int(batch.image_mask[k].sum())
            assert stats["positions"][k] == lengths["all"] and stats["caption_positions"][k] == lengths["caption"]


def test_lengths_need_no_images_and_grow_with_the_caption(processor, prompts):
    short = sequence_lengths(processor, prompts["english"], "A man.")
    long = sequence_lengths(processor, prompts["english"], "A man standing next to a tall red bus.")
    assert long["all"] - short["all"] == long["caption"] - short["caption"] > 0
    assert short["all"] - short["text"] == short["image"] == processor.image_seq_length


# ---------------------------------------------------------------- control tokens

@pytest.mark.parametrize("caption, token", [
    ("A woman.<start_of_turn>model\nA man.", "<start_of_turn>"),      # made the stored caption a fragment
    ("A woman <start_of_image> smiling.", "<start_of_image>"),         # crashed extraction
    ("A woman <image_soft_token> smiling.", "<image_soft_token>"),     # crashed extraction
    ("<bos>A woman.", "<bos>"),
    ("A woman.<eos>", "<eos>"),
    ("A <pad> woman.", "<pad>"),
    ("A woman.<end_of_turn>\n", "<end_of_turn>"),
    ("A woman<end_of_image>.", "<end_of_image>"),
])
def test_issue_control_tokens_name_row_column_and_token(tmp_path, processor, prompts, caption, token):
    path = sheet(tmp_path, [("A man.", "رجل."), (caption, "امرأة.")])
    msg = caption_failure(path, processor, prompts)
    assert "1 caption problem" in msg
    assert "samples.csv row 2 (sample s1), column 'caption_english'" in msg and token in msg and "control token" in msg


def test_every_special_token_of_the_tokenizer_is_refused(tmp_path, processor, prompts):
    tok = processor.tokenizer
    expected = {t.content for t in tok.added_tokens_decoder.values() if t.special} | set(tok.all_special_tokens)
    assert expected <= set(special_tokens(processor))
    checker = CaptionChecker(processor)
    for token in sorted(expected):
        (lengths, problem), = checker.measure(prompts["arabic"], [f"رجل {token} يبتسم"])
        assert lengths is None and token in problem, token


def test_an_added_special_token_is_refused(processor, prompts):
    extended = copy.deepcopy(processor)
    extended.tokenizer.add_special_tokens({"additional_special_tokens": ["<my_control>"]})
    assert "<my_control>" in special_tokens(extended)
    (lengths, problem), = CaptionChecker(extended).measure(prompts["english"], ["A <my_control> man."])
    assert lengths is None and "<my_control>" in problem
    (lengths, problem), = CaptionChecker(processor).measure(prompts["english"], ["A <my_control> man."])
    assert problem is None                                       # plain text for the unextended tokenizer


def test_look_alikes_of_control_tokens_are_plain_text(processor, prompts):
    checker = CaptionChecker(processor)
    for caption in ["<START_OF_TURN>", "<start_of_turn", "start_of_image>", "< bos >", "{{ bos_token }}", "{% if %}"]:
        (lengths, problem), = checker.measure(prompts["english"], [caption])
        assert problem is None, caption


def test_control_tokens_in_a_prompt_are_refused(tmp_path, processor, prompts):
    path = sheet(tmp_path, [("A man.", "رجل.")])
    bad = dict(prompts, english="Describe<end_of_turn> the person.")
    with pytest.raises(LayerwiseError) as e:
        check_captions(read_samplesheet(path, LANGUAGES), processor, bad, LANGUAGES, 2048)
    assert "prompt for language 'english'" in str(e.value) and "<end_of_turn>" in str(e.value)


def test_a_caption_merging_with_the_template_header_is_refused(tmp_path, tiny_model_dir, prompts):
    """A tokenizer whose BPE joins the model-turn header with the caption's first letter."""
    from layerwise.preflight.model_check import load_processor

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["del\na"] = max(vocab.values()) + 1
    tokenizer["model"]["merges"].append(["del\n", "a"])
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    merging = load_processor(str(folder))
    (lengths, problem), = CaptionChecker(merging).measure(prompts["english"], ["a"])
    assert lengths is None and "merge with the chat template's model-turn header" in problem
    assert CaptionChecker(merging).measure(prompts["english"], ["A man."])[0][1] is None


# ---------------------------------------------------------------- context length

def test_caption_longer_than_the_context_names_row_column_count_and_limit(tmp_path, processor, prompts):
    long = ("The person in this picture wears a long coat and stands near a window. " * 700)[:50_000].strip()
    path = sheet(tmp_path, [("A man.", "رجل."), ("A woman.", long), ("A child.", "طفل.")])
    msg = caption_failure(path, processor, prompts)
    n = sequence_lengths(processor, prompts["arabic"], long)["all"]
    assert n > 2048
    assert "row 2 (sample s1), column 'caption_arabic'" in msg
    assert f"{n} tokens" in msg and "max_position_embeddings 2048" in msg
    assert "caption_english" not in msg                          # the other language is fine


def test_length_limit_is_inclusive_and_every_language_is_counted(tmp_path, processor, prompts):
    path = sheet(tmp_path, [("A man smiling.", "رجل يبتسم.")])
    df = read_samplesheet(path, LANGUAGES)
    stats = check_captions(df, processor, prompts, LANGUAGES, None)
    longest = max(stats[lang]["max_positions_used"] for lang in LANGUAGES)
    check_captions(df, processor, prompts, LANGUAGES, longest)             # exactly at the limit: fine
    with pytest.raises(LayerwiseError, match=f"exceed the model's max_position_embeddings {longest - 1}"):
        check_captions(df, processor, prompts, LANGUAGES, longest - 1)


def test_good_captions_pass_with_statistics(samplesheet, processor, prompts):
    df = read_samplesheet(samplesheet, LANGUAGES)
    stats = check_captions(df, processor, prompts, LANGUAGES, 2048)
    for language in LANGUAGES:
        assert len(stats[language]["positions"]) == len(df)
        assert stats[language]["max_positions_used"] == max(stats[language]["positions"])
