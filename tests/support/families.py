"""Tiny, randomly initialised checkpoints of every vision-language family layerwise supports, built offline.

One folder per ``model_type`` under ``OUT/families/`` (built by `build_families`, called from
`tests.support.fixtures.build_all`)::

    OUT/families/<model_type>/   the family's real model class + its real processor (save_pretrained, float32)
    OUT/families/<model_type>/fixture.json   what the fixture is (see `describe`)

Each loads through the calls production uses for the real hub checkpoint::

    AutoProcessor.from_pretrained(path, local_files_only=True)
    AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)

What is real and what is tiny: the architecture classes, the processor classes (image processor, video
processor where the family has one, the tokenizer's kind: SentencePiece-style BPE with byte fallback for
Gemma/Llama 2/Mistral, byte-level BPE for Qwen2/Llama 3/SmolLM2), the family's special tokens, its chat template
(the hub checkpoint's text, written out here from the hub files as known offline; the rendered formats are checked
in tests/unit/test_family_fixtures.py) and its image-token rule are real; the sizes are tiny: 4 decoder layers
(Mllama 8, two of them cross-attention), hidden 64, vision towers of 2-3 layers of width 32, image tiles of
28-56 px (Qwen: 56..112 px; Idefics3/SmolVLM: 32 px tiles, up to 4x4 + a global view), vocabularies of
~650-1900 tokens trained on English and Arabic. Token ids differ from the hub's; their order follows it.
Loaded back, llava/llava_next/smolvlm/idefics3/mllama tokenizers are `TokenizersBackend` (transformers 5 forces
it for those model types or their hub class), the others keep their class (see each fixture.json).

Everything is seeded: two builds give byte-identical files.

| model_type | hub checkpoint it mimics | prompt format | image tokens |
|---|---|---|---|
| gemma3 | google/gemma-3-4b-it | chat template, writes <bos> | fixed (copy of OUT/model) |
| paligemma | google/paligemma-3b-pt-224 | none: processor(text=prompt, suffix=caption) | fixed |
| qwen2_vl | Qwen/Qwen2-VL-7B-Instruct | chat template, no BOS | depends on the image size |
| qwen2_5_vl | Qwen/Qwen2.5-VL-7B-Instruct | chat template, no BOS | depends on the image size |
| llava | llava-hf/llava-1.5-7b-hf | chat template, writes no <s> (the tokenizer adds it) | fixed |
| llava_next | llava-hf/llava-v1.6-mistral-7b-hf | chat template, writes no <s> (the tokenizer adds it) | depends on the image size |
| mllama | meta-llama/Llama-3.2-11B-Vision-Instruct | chat template, writes <|begin_of_text|> | one <|image|> |
| idefics3 | HuggingFaceM4/Idefics3-8B-Llama3 | chat template, writes <|begin_of_text|> | depends on the aspect ratio |
| smolvlm | HuggingFaceTB/SmolVLM2-2.2B-Instruct | chat template, writes <|im_start|> (= bos) | depends on the aspect ratio |
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

FAMILIES_DIR = "families"
INFO_NAME = "fixture.json"
SEED = 1234

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
BICUBIC, BILINEAR, LANCZOS = 3, 2, 1  # PIL resampling ids, as in the hub preprocessor configs

# Decoder sizes shared by all families (each family adds its own keys).
HIDDEN, INTERMEDIATE, HEADS, LAYERS = 64, 128, 2, 4

# ---------------------------------------------------------------- chat templates (hub text)
# Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json): a default system turn,
# <|vision_start|><|image_pad|><|vision_end|> per image (the processor expands <|image_pad|>), no BOS.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# llava-hf/llava-1.5-7b-hf: "USER: <image>\n<prompt> ASSISTANT:"; images first, every text followed by a space;
# no <s> (the LlamaTokenizer adds it when add_special_tokens=True).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf: Mistral's "[INST] <image>\n<prompt> [/INST]"; no <s> in the template.
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% endif %}{% endfor %}"
)

# meta-llama/Llama-3.2-11B-Vision-Instruct: <|begin_of_text|> first; a system turn with the knowledge cut-off
# only when there is no image; {"type": "image"} -> <|image|> (one token: the image goes in by cross-attention).
MLLAMA_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n"
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{#- Find out if there are any images #}\n"
    "{% set image_ns = namespace(has_images=false) %}\n"
    "{%- for message in messages %}\n"
    "    {%- for content in message['content'] %}\n"
    "        {%- if content['type'] == 'image' %}\n"
    "            {%- set image_ns.has_images = true %}\n"
    "        {%- endif %}\n"
    "    {%- endfor %}\n"
    "{%- endfor %}\n\n"
    "{#- Error out if there are images and system message #}\n"
    "{%- if image_ns.has_images and not system_message == \"\" %}\n"
    "    {{- raise_exception(\"Prompting with images is incompatible with system messages.\") }}\n"
    "{%- endif %}\n\n"
    "{#- System message if there are no images #}\n"
    "{%- if not image_ns.has_images %}\n"
    "    {{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "    {%- if tools is not none %}\n        {{- \"Environment: ipython\\n\" }}\n    {%- endif %}\n"
    "    {{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "    {{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    "        {{- \"You have access to the following functions. To call a function, please respond with JSON for a "
    "function call.\" }}\n"
    "        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    "        {{- \"Do not use variables.\\n\\n\" }}\n"
    "        {%- for t in tools %}\n            {{- t | tojson(indent=4) }}\n            {{- \"\\n\\n\" }}\n"
    "        {%- endfor %}\n"
    "    {%- endif %}\n"
    "    {{- system_message }}\n"
    "    {{- \"<|eot_id|>\" }}\n"
    "{%- endif %}\n\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n"
    "    {%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n"
    "    {{- first_user_message + \"<|eot_id|>\"}}\n"
    "{%- endif %}\n\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] }}\n"
    "        {%- else %}\n"
    "            {%- for content in message['content'] %}\n"
    "                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n"
    "                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n"
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    "        {{- \"}\" }}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# HuggingFaceM4/Idefics3-8B-Llama3: "<|begin_of_text|>User:<image><prompt><end_of_utterance>\nAssistant:";
# the role is followed by ":" when the message starts with an image, by ": " otherwise.
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM2-2.2B-Instruct (also transformers' smolvlm DEFAULT_CHAT_TEMPLATE): as Idefics3 with
# <|im_start|> (SmolLM2's bos) first and <video>.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Text the tokenizers also train on, so that each family's turn markers become word pieces.
TEMPLATE_TEXT = (
    "system\nYou are a helpful assistant.", "user\n", "assistant\n", "USER: ASSISTANT:", "[INST] [/INST]",
    "User:\nAssistant:", "Cutting Knowledge Date: December 2023", "Today Date: 26 Jul 2024",
)

# Llama 3's pre-tokenizer split (Mllama, Idefics3); Qwen2's differs only in single digits.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------- tokenizers
def _corpus() -> list[str]:
    from tests.support import fixtures

    return fixtures.tokenizer_corpus() + list(TEMPLATE_TEXT) * 2  # twice: the trainer keeps pairs seen twice


def _merges(tok) -> list[tuple[str, str]]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _sentencepiece_bpe(first_tokens, prepend: bool, vocab_size: int = 1024):
    """Vocab + merges of a SentencePiece-style BPE (▁ for spaces, byte fallback), `first_tokens` then the
    256 byte pieces at the lowest ids, as in Gemma's and Llama 2's vocabularies."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tests.support import fixtures

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Split before each "▁" for training, or BPE learns whole sentences.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always" if prepend else "never",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(first_tokens) + list(fixtures.BYTE_TOKENS))
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.get_vocab(with_added_tokens=False), _merges(tok)


def _byte_level_bpe(regex: str | None, first_tokens=(), vocab_size: int = 1024):
    """Vocab + merges of a GPT-2-style byte-level BPE (Qwen2, Llama 3, SmolLM2); `first_tokens` at ids 0.."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if regex is None:  # GPT-2 / SmolLM2
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(first_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok, tok.get_vocab(with_added_tokens=False), _merges(tok)


def _append(vocab: dict, tokens) -> dict:
    """vocab with `tokens` appended at the next ids (the hub's special tokens follow the word pieces)."""
    vocab = dict(vocab)
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def _add_special(tokenizer, tokens, special: bool = True) -> None:
    """Mark `tokens` (already in the vocabulary) as atomic added tokens."""
    from transformers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=special, normalized=False) for t in tokens], special_tokens=special)


def _llama2_tokenizer(extra_tokens, pad="<pad>"):
    """LlamaTokenizer (Llama 2 / Mistral: ▁ pieces, byte fallback, <unk> 0, <s> 1, </s> 2) + `extra_tokens`."""
    from transformers import LlamaTokenizer

    vocab, merges = _sentencepiece_bpe(("<unk>", "<s>", "</s>"), prepend=True)
    vocab = _append(vocab, extra_tokens)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True, add_eos_token=False,
                               pad_token=pad)
    _add_special(tokenizer, extra_tokens)
    return tokenizer


def _llama3_tokenizer(specials, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                      **kwargs):
    """Llama 3's fast tokenizer (byte-level BPE, its split regex, <|begin_of_text|> added in front) + `specials`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import TokenizersBackend

    _, vocab, merges = _byte_level_bpe(LLAMA3_REGEX)
    vocab = _append(vocab, specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tokenizer = TokenizersBackend(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                  add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
                                  model_max_length=131072, **kwargs)
    _add_special(tokenizer, specials)
    return tokenizer


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _qwen2_tokenizer():
    """Qwen2Tokenizer (byte-level BPE) with Qwen2-VL's special tokens after the word pieces; no BOS."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    _, vocab, merges = _byte_level_bpe(PRETOKENIZE_REGEX)
    vocab = _append(vocab, QWEN_SPECIALS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", errors="replace", model_max_length=32768)
    _add_special(tokenizer, QWEN_SPECIALS)
    return tokenizer


# ---------------------------------------------------------------- helpers
def _ids(tokenizer, *tokens):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    unk = getattr(tokenizer, "unk_token_id", None)
    for token, i in zip(tokens, ids):
        if i is None or (i == unk and token != tokenizer.unk_token):
            raise ValueError(f"{token!r} is not in the tokenizer")
    return ids if len(ids) > 1 else ids[0]


def _seeded():
    import torch

    torch.manual_seed(SEED)


def _randomise_zero_weights(model) -> list[str]:
    """transformers zero-initialises some weights that trained checkpoints never leave at zero: Gemma 3's projector
    matrix, Mllama's cross-attention gates (tanh(0) = 0: the image would not reach the text at all) and its
    vision positional-embedding gates. Randomise every all-zero matrix and gate; returns the names changed."""
    import torch

    changed = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.any():
                continue
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif name.rsplit(".", 1)[-1].endswith("gate"):
                param.normal_(0.0, 1.0)
            else:
                continue
            changed.append(name)
    return changed


# ---------------------------------------------------------------- families
def paligemma():
    """PaliGemma 1 (google/paligemma-3b-pt-224): SigLIP + Gemma; no chat template (prompt + suffix=caption)."""
    from transformers import (
        GemmaConfig,
        GemmaTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

    image_size, patch = 56, 14
    n_image = (image_size // patch) ** 2
    vocab, merges = _sentencepiece_bpe(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>",
                                        "<end_of_turn>"), prepend=False)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    _add_special(tokenizer, ("<start_of_turn>", "<end_of_turn>"))
    tokenizer.add_tokens(EXTRA_TOKENS)  # <loc0000>..<seg127> before <image>, as on the hub
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=BICUBIC,
                                           image_mean=HALF, image_std=HALF, image_seq_length=n_image)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image> last
    image_id = processor.image_token_id
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=image_size, patch_size=patch,
                                         vision_use_head=False),
        text_config=GemmaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                                head_dim=32, max_position_embeddings=2048, pad_token_id=0, eos_token_id=1,
                                bos_token_id=2),
        image_token_index=image_id, vocab_size=len(tokenizer), projection_dim=HIDDEN, hidden_size=HIDDEN,
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    _seeded()
    return processor, PaliGemmaForConditionalGeneration(config)


def _qwen_image_processors(min_pixels=56 * 56, max_pixels=112 * 112):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    common = dict(size=size, patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=OPENAI_CLIP_MEAN,
                  image_std=OPENAI_CLIP_STD, resample=BICUBIC)
    return Qwen2VLImageProcessor(**common), Qwen2VLVideoProcessor(**common)


def _qwen_text(tokenizer, **extra):
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                max_position_embeddings=4096, rms_norm_eps=1e-6,
                # M-RoPE: temporal/height/width sections of head_dim/2 = 16 (7B: [16, 24, 24] of 64)
                rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1_000_000.0},
                bos_token_id=_ids(tokenizer, "<|endoftext|>"), eos_token_id=_ids(tokenizer, "<|im_end|>"),
                pad_token_id=_ids(tokenizer, "<|endoftext|>"), **extra)


def _qwen_ids(tokenizer):
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def qwen2_vl():
    """Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct): dynamic-resolution ViT + Qwen2 with M-RoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = _qwen2_tokenizer()
    image_processor, video_processor = _qwen_image_processors()
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=QWEN2_VL_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(tokenizer))
    _seeded()
    return processor, Qwen2VLForConditionalGeneration(config)


def qwen2_5_vl():
    """Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct): windowed-attention ViT (full attention in some blocks) + Qwen2."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tokenizer = _qwen2_tokenizer()
    image_processor, video_processor = _qwen_image_processors()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN2_VL_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
                           fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, tokens_per_second=2),
        **_qwen_ids(tokenizer))
    _seeded()
    return processor, Qwen2_5_VLForConditionalGeneration(config)


def _clip_vision(image_size, patch=14):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=image_size, patch_size=patch, projection_dim=32)


def llava():
    """LLaVA-1.5 (llava-hf/llava-1.5-7b-hf): CLIP ViT (second-to-last layer, CLS dropped) + Llama 2."""
    from transformers import CLIPImageProcessor, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    image_size, patch = 56, 14
    n_image = (image_size // patch) ** 2
    tokenizer = _llama2_tokenizer(("<image>", "<pad>"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size}, resample=BICUBIC,
                                         image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>", chat_template=LLAVA_TEMPLATE)
    pad = _ids(tokenizer, "<pad>")
    config = LlavaConfig(
        vision_config=_clip_vision(image_size, patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                                max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=pad,
                                bos_token_id=1, eos_token_id=2),
        image_token_index=_ids(tokenizer, "<image>"), image_seq_length=n_image, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", pad_token_id=pad)
    _seeded()
    return processor, LlavaForConditionalGeneration(config)


def llava_next():
    """LLaVA-NeXT / 1.6 (llava-hf/llava-v1.6-mistral-7b-hf): CLIP ViT on a base view + any-resolution tiles
    (a grid chosen from image_grid_pinpoints, unpadded, one newline embedding per row) + Mistral."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tile, patch = 28, 14
    # the 7B's pinpoints [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] in units of its 336 tile
    pinpoints = [[tile * a, tile * b] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    tokenizer = _llama2_tokenizer(("<image>", "<pad>"))
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                              image_grid_pinpoints=pinpoints, resample=BICUBIC,
                                              image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token="<image>", chat_template=LLAVA_NEXT_TEMPLATE)
    pad = _ids(tokenizer, "<pad>")
    config = LlavaNextConfig(
        vision_config=_clip_vision(tile, patch),
        text_config=MistralConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                                  head_dim=HIDDEN // HEADS, max_position_embeddings=4096, sliding_window=None,
                                  rms_norm_eps=1e-5, pad_token_id=pad, bos_token_id=1, eos_token_id=2),
        image_token_index=_ids(tokenizer, "<image>"), image_grid_pinpoints=pinpoints,
        image_seq_length=(tile // patch) ** 2, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", pad_token_id=pad)
    _seeded()
    return processor, LlavaNextForConditionalGeneration(config)


MLLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>")
MLLAMA_TEXT_LAYERS, MLLAMA_CROSS_LAYERS = 8, [3, 7]  # 11B: 40 layers, cross-attention at 3, 8, ..., 38


def mllama():
    """Llama 3.2 Vision (meta-llama/Llama-3.2-11B-Vision-Instruct): tiled ViT read through cross-attention layers
    that sit in the decoder's layer list; one <|image|> token in the sequence."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    tile, patch = 28, 14
    tokenizer = _llama3_tokenizer(MLLAMA_SPECIALS)
    image_processor = MllamaImageProcessor(size={"height": tile, "width": tile}, max_image_tiles=4,
                                           resample=BILINEAR, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)
    image_id = _ids(tokenizer, "<|image|>")
    indices = [0, 1]
    config = MllamaConfig(
        vision_config=MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_global_layers=1, attention_heads=2, image_size=tile, patch_size=patch,
                                         max_num_tiles=4, intermediate_layers_indices=indices,
                                         vision_output_dim=32 * (len(indices) + 1)),
        # As on the hub, <|image|> is the id just past vocab_size (the embedding has vocab_size + 8 rows).
        text_config=MllamaTextConfig(vocab_size=image_id, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                     num_hidden_layers=MLLAMA_TEXT_LAYERS, num_attention_heads=HEADS,
                                     num_key_value_heads=1, cross_attention_layers=MLLAMA_CROSS_LAYERS,
                                     max_position_embeddings=131072,
                                     rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 8192,
                                                      "rope_theta": 500000.0},
                                     bos_token_id=_ids(tokenizer, "<|begin_of_text|>"),
                                     eos_token_id=list(_ids(tokenizer, "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
                                     pad_token_id=_ids(tokenizer, "<|finetune_right_pad_id|>")),
        image_token_index=image_id)
    _seeded()
    return processor, MllamaForConditionalGeneration(config)


IDEFICS3_SPECIALS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")


def idefics3():
    """Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3): SigLIP on tiles + a global view, pixel shuffle, Llama 3."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tile, patch, scale = 32, 8, 2
    seq_len = (tile // patch) ** 2 // scale ** 2
    tokenizer = _llama3_tokenizer(MLLAMA_SPECIALS[:-1] + IDEFICS3_SPECIALS, eos="<end_of_utterance>",
                                  pad="<|reserved_special_token_0|>")
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
                                             resample=LANCZOS, image_mean=HALF, image_std=HALF)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    pad = _ids(tokenizer, "<|reserved_special_token_0|>")
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=tile, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                                max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=pad,
                                bos_token_id=_ids(tokenizer, "<|begin_of_text|>"),
                                eos_token_id=_ids(tokenizer, "<end_of_utterance>")),
        image_token_id=_ids(tokenizer, "<image>"), scale_factor=scale, pad_token_id=pad)
    _seeded()
    return processor, Idefics3ForConditionalGeneration(config)


SMOLVLM_FIRST = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SMOLVLM_SPECIALS = (("<global-img>",) + tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
                    + ("<fake_token_around_image>", "<image>", "<end_of_utterance>"))


def smolvlm():
    """SmolVLM2 (HuggingFaceTB/SmolVLM2-2.2B-Instruct): Idefics3's design on SmolLM2 (a Llama), GPT-2 tokenizer."""
    from transformers import (
        GPT2Tokenizer,
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
        SmolVLMVisionConfig,
    )

    tile, patch, scale = 32, 8, 2
    seq_len = (tile // patch) ** 2 // scale ** 2
    _, vocab, merges = _byte_level_bpe(None, first_tokens=SMOLVLM_FIRST)
    vocab = _append(vocab, SMOLVLM_SPECIALS)
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", pad_token="<|im_end|>", add_prefix_space=False, model_max_length=8192,
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"})
    _add_special(tokenizer, SMOLVLM_FIRST + SMOLVLM_SPECIALS)
    common = dict(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile}, resample=LANCZOS,
                  image_mean=HALF, image_std=HALF)
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**common), tokenizer=tokenizer,
                                 video_processor=SmolVLMVideoProcessor(**common), image_seq_len=seq_len,
                                 chat_template=SMOLVLM_TEMPLATE)
    pad = _ids(tokenizer, "<|im_end|>")
    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=tile, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                                max_position_embeddings=8192, rms_norm_eps=1e-5, pad_token_id=pad,
                                bos_token_id=_ids(tokenizer, "<|im_start|>"),
                                eos_token_id=_ids(tokenizer, "<end_of_utterance>"), tie_word_embeddings=True),
        image_token_id=_ids(tokenizer, "<image>"), scale_factor=scale, pad_token_id=pad)
    _seeded()
    return processor, SmolVLMForConditionalGeneration(config)


BUILDERS = {
    "paligemma": paligemma, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "llava": llava,
    "llava_next": llava_next, "mllama": mllama, "idefics3": idefics3, "smolvlm": smolvlm,
}
FAMILIES = ("gemma3",) + tuple(BUILDERS)  # every family with a fixture folder

# What each family's fixture.json says about its image tokens and prompt (checked by the unit tests).
IMAGE_TOKEN_RULE = {
    "gemma3": "fixed: image_seq_length soft tokens between <start_of_image> and <end_of_image>",
    "paligemma": "fixed: image_seq_length <image> tokens before <bos>",
    "qwen2_vl": "dynamic: grid_t*grid_h*grid_w/merge_size**2 <|image_pad|> tokens (depends on the image size)",
    "qwen2_5_vl": "dynamic: grid_t*grid_h*grid_w/merge_size**2 <|image_pad|> tokens (depends on the image size)",
    "llava": "fixed: (crop/patch)**2 <image> tokens (CLS dropped)",
    "llava_next": "dynamic: base view + unpadded any-res grid + one newline per grid row (depends on the image size)",
    "mllama": "one <|image|> token; the image enters through cross-attention layers",
    "idefics3": "dynamic: image_seq_len <image> tokens per tile + global view (tiles follow the aspect ratio)",
    "smolvlm": "dynamic: image_seq_len <image> tokens per tile + global view (tiles follow the aspect ratio)",
}


def image_token_id(config) -> int:
    """The id that marks image positions in input_ids (`image_token_id` or `image_token_index` by family)."""
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


def describe(model_type: str, processor, model) -> dict:
    """fixture.json: what the fixture is."""
    text = model.config.get_text_config()
    tokenizer = processor.tokenizer
    image_id = image_token_id(model.config)
    video_processor = getattr(processor, "video_processor", None)
    info = {
        "model_type": model_type,
        "model_class": type(model).__name__,
        "auto_model_class": "AutoModelForImageTextToText",
        "processor_class": type(processor).__name__,
        "image_processor_class": type(processor.image_processor).__name__,
        "video_processor_class": type(video_processor).__name__ if video_processor is not None else None,
        "tokenizer_class": type(tokenizer).__name__,
        "num_decoder_layers": len(model.get_decoder().layers),
        "hidden_size": text.hidden_size,
        "tokenizer_size": len(tokenizer),
        "image_token": tokenizer.convert_ids_to_tokens(image_id),  # what input_ids carry at image positions
        "image_token_id": image_id,
        "image_placeholder": processor.image_token,  # what the prompt / template writes; the processor expands it
        "image_tokens": IMAGE_TOKEN_RULE[model_type],
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "chat_template": bool(getattr(processor, "chat_template", None)),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if model_type == "mllama":
        info["cross_attention_layers"] = list(text.cross_attention_layers)
    return info


def build_family(model_type: str, out_dir) -> Path:
    """Build one family's processor + model into out_dir (save_pretrained, float32) and its fixture.json,
    written from the saved folder loaded back through the Auto classes (what production will see)."""
    import torch

    out_dir = Path(out_dir)
    processor, model = BUILDERS[model_type]()
    model = model.to(torch.float32).eval()
    randomised = _randomise_zero_weights(model)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    _describe_saved(model_type, out_dir, randomised_zero_weights=randomised)
    return out_dir


def _describe_saved(model_type: str, out_dir: Path, **extra) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(out_dir, local_files_only=True)
    info = dict(describe(model_type, processor, model), **extra)
    (out_dir / INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_families(out_dir, gemma3_dir=None) -> dict[str, Path]:
    """Build out_dir/<model_type>/ for every family; gemma3 is a copy of `gemma3_dir` (OUT/model) when given."""
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # 18 saves and loads: no progress bars in setup's output
    try:
        if gemma3_dir is not None:
            built["gemma3"] = out_dir / "gemma3"
            shutil.copytree(gemma3_dir, built["gemma3"])
            _describe_saved("gemma3", built["gemma3"])
        for model_type in BUILDERS:
            built[model_type] = build_family(model_type, out_dir / model_type)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return built


def family_paths(out_dir) -> dict[str, Path]:
    """OUT/families/<model_type> for every family (whether built or not)."""
    return {model_type: Path(out_dir) / FAMILIES_DIR / model_type for model_type in FAMILIES}


@functools.lru_cache(maxsize=1)   # the samples of one family in a row load its model once
def _loaded(model_dir: str):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return (AutoProcessor.from_pretrained(model_dir, local_files_only=True),
            AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval())


def native_forward(model_dir, model_type: str, image, prompt: str, caption: str):
    """(input_ids, hidden_states, config) of the model's own forward on the family's native input, built without
    layerwise's input code: the family's processor with its chat template (the caption as the assistant turn;
    `add_special_tokens` only when the template writes no BOS), or PaliGemma's prompt as `text` and the caption
    as `suffix`; float32, `output_hidden_states=True`."""
    import torch

    from layerwise.models.families import FAMILIES as FAMILY_TABLE
    from layerwise.models.families import PREFIX_SUFFIX

    processor, model = _loaded(str(model_dir))
    family = FAMILY_TABLE[model_type]
    if family.prompt_format == PREFIX_SUFFIX:
        enc = processor(text=[prompt], images=[image], suffix=[caption], return_tensors="pt")
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                    {"role": "assistant", "content": [{"type": "text", "text": caption}]}]
        text = processor.apply_chat_template(messages, tokenize=False)
        bos = processor.tokenizer.bos_token
        images = [[image]] if family.nested_images else [image]
        enc = processor(text=[text], images=images, return_tensors="pt",
                        add_special_tokens=bool(bos) and not text.startswith(bos))
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return enc["input_ids"][0], out.hidden_states, model.config
