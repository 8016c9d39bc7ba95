"""Greedy, batched, deterministic caption generation on the one loaded model (with or without latent hooks).

The input is the family's native generation input, built by the model's own processor as extraction builds
its inputs (layerwise.models.inputs), without the caption:

- chat families: the chat template with the image and the prompt as the user turn and the generation prompt
  (`add_generation_prompt=True`, no assistant turn); the tokenizer adds its special tokens only when the
  template writes no <bos> and the tokenizer has one (LLaVA-1.5), never a second <bos>;
- PaliGemma (prefix/suffix): the prompt as the prefix (image tokens + <bos> + prompt + "\\n"), no suffix.

Decoding is plain greedy (`do_sample=False`, `num_beams=1`) with the KV cache, from a fresh GenerationConfig
that keeps only the model's bos/eos/pad ids: sampling settings, repetition penalties and other logits processors
of a hub `generation_config.json` are not applied, so each token is the argmax of the model's logits. Batches
are padded on the LEFT (the tokenizer's padding side is set for the call and restored after it), so every
row's generated tokens start at the same position: the prefill pass is the prompt, which is what
`latent_hooks(..., positions="generated")` relies on. The caption is the decoded new tokens, special tokens
skipped, stripped.

Determinism: the same inputs give identical captions on a re-run (greedy, no sampling). In float32 on CPU the
tokens of an image do not depend on its batch neighbours, its place in the batch or the batch size in any family
fixture (gemma3, paligemma, qwen2_vl, qwen2_5_vl, llava, llava_next, mllama, idefics3, smolvlm;
tests/unit/test_intervention_hooks.py): the left-padded rows get their position ids from the attention mask,
and the per-step scores of 7 images batched agreed with batch size 1 to < 1e-6. Only the families with
image-dependent token counts (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, Idefics3, SmolVLM) pad at all; the others give
every image the same prompt length. Not measured: bfloat16 on a GPU, where the batch shape can change the
kernels' rounding, so a near-tie may resolve differently with other neighbours (re-runs with the same batches
stay identical).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from PIL import Image

from layerwise.core.errors import LayerwiseError
from layerwise.models.families import PREFIX_SUFFIX
from layerwise.models.inputs import InputBuilder, chat_messages


@contextmanager
def left_padding(tokenizer) -> Iterator[None]:
    """The tokenizer pads on the left inside the block (generation); its padding side is restored after."""
    saved = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = saved


def generation_text(loaded, prompt: str) -> str:
    """The text the processor gets for one image and `prompt` (chat template with the generation prompt, or
    PaliGemma's prefix)."""
    processor = loaded.processor
    if loaded.family.prompt_format == PREFIX_SUFFIX:
        # the same text the processor builds from text=prompt (image placeholder, then <bos> + prompt + "\n"),
        # written with the placeholder so that the processor does not warn on every batch
        return processor.image_token + prompt
    messages = chat_messages(prompt, "")[:1]      # the user turn only: image + prompt
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generation_inputs(loaded, images: Sequence[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
    """The model inputs of a batch of images with one prompt, padded on the tokenizer's side (`left_padding`
    for generation), on the model's device, pixel values in its dtype."""
    family = loaded.family
    processor = loaded.processor
    text = generation_text(loaded, prompt)
    imgs = [[img] for img in images] if family.nested_images else list(images)
    texts = [text] * len(imgs)
    if family.prompt_format == PREFIX_SUFFIX:
        enc = processor(text=texts, images=imgs, padding=True, return_tensors="pt")
        enc.pop("labels", None)                   # training labels (all ignored without a suffix)
    else:
        add = InputBuilder(processor, family).add_special_tokens(text)
        enc = processor(text=texts, images=imgs, padding=True, add_special_tokens=add, return_tensors="pt")
    missing = [k for k in family.needs_inputs if k not in enc]
    if missing:
        raise LayerwiseError(f"{type(processor).__name__} returned no {', '.join(missing)}, which the "
                             f"{family.name} model needs")
    inputs = {k: v.to(loaded.device) for k, v in enc.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    return inputs


def greedy_config(model, tokenizer, max_new_tokens: int):
    """Plain greedy decoding with the KV cache; the model's bos/eos/pad ids and nothing else of its
    generation_config."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    eos = getattr(base, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = getattr(base, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1, use_cache=True,
                            bos_token_id=getattr(base, "bos_token_id", None), eos_token_id=eos, pad_token_id=pad)


def _check_hooks(loaded, hooks) -> None:
    if hooks is None:
        return
    if getattr(hooks, "model", None) is not loaded.model:
        raise LayerwiseError("the latent hooks are registered on another model object than the one generating "
                             "(a copy?): they would never fire. Pass the loaded model to latent_hooks().")
    if not hooks.attached:
        raise LayerwiseError("the latent hooks are not attached: generate inside `with latent_hooks(...)`")


def generate_ids(loaded, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int = 64,
                 batch_size: int = 8, hooks=None) -> list[list[int]]:
    """The new token ids of each image's greedy continuation (up to and including the first end token)."""
    if max_new_tokens < 1 or batch_size < 1:
        raise LayerwiseError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be >= 1")
    _check_hooks(loaded, hooks)
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    config = greedy_config(model, tokenizer, max_new_tokens)
    eos = config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    out: list[list[int]] = []
    with left_padding(tokenizer), torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = list(images[start:start + batch_size])
            inputs = generation_inputs(loaded, batch, prompt)
            before = dict(hooks.fired) if hooks is not None else {}
            sequences = model.generate(**inputs, generation_config=config)
            if hooks is not None:
                silent = [layer for layer, n in hooks.fired.items() if n == before[layer]]
                if silent:
                    raise LayerwiseError(f"the hooks of decoder layer(s) {silent} did not fire while generating")
            new = sequences[:, inputs["input_ids"].shape[1]:].tolist()
            for row in new:
                ends = [i for i, t in enumerate(row) if t in stops]
                out.append(row[:ends[0] + 1] if ends else row)
    return out


def generate_captions(loaded, images: Sequence[Image.Image], prompt: str, *, max_new_tokens: int = 64,
                      batch_size: int = 8, hooks=None) -> list[str]:
    """Greedy captions of `images` (PIL, e.g. `layerwise.models.inputs.load_rgb` of the files) for `prompt`,
    in input order, `batch_size` images per `generate` call with the KV cache.

    `hooks`: the `LatentHooks` of an active `latent_hooks(loaded.model, ...)` block, or None. The hooks act
    through the model; passing them makes the call check that they are on this very model object and that
    every hooked layer fired in every batch (it raises otherwise).
    """
    ids = generate_ids(loaded, images, prompt, max_new_tokens=max_new_tokens, batch_size=batch_size, hooks=hooks)
    tokenizer = loaded.processor.tokenizer
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

