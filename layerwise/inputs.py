"""Chat-formatted model inputs and the masks that say which positions each token selection keeps.

One sample in one language is a user turn (the image first, then the language's instruction
prompt) followed by the caption as the model turn (teacher-forced).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .errors import LayerwiseError


def chat_messages(prompt: str, caption: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": caption}]},
    ]


@dataclass
class EncodedBatch:
    inputs: dict[str, torch.Tensor]   # ready for the model (input_ids, attention_mask, token_type_ids, pixel_values)
    input_ids: torch.Tensor           # [B, T] on CPU
    attention_mask: torch.Tensor      # [B, T] bool on CPU
    image_mask: torch.Tensor          # [B, T] bool: image soft tokens
    caption_mask: torch.Tensor        # [B, T] bool: the model turn after its header


def load_rgb(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


class InputBuilder:
    """Turns (image, prompt, caption) triples into model inputs and position masks."""

    def __init__(self, processor):
        self.processor = processor
        tok = processor.tokenizer
        self.start_of_turn_id = tok.convert_tokens_to_ids("<start_of_turn>")
        self.model_header = tok.encode("model\n", add_special_tokens=False)
        self.image_token_id = tok.convert_tokens_to_ids(getattr(tok, "image_token", "<image_soft_token>"))

    def render(self, prompt: str, caption: str) -> str:
        return self.processor.apply_chat_template(chat_messages(prompt, caption), tokenize=False)

    def encode(self, images: list[Image.Image], prompts: list[str], captions: list[str],
               device: torch.device, dtype: torch.dtype) -> EncodedBatch:
        texts = [self.render(p, c) for p, c in zip(prompts, captions)]
        # The chat template already starts with <bos>: add_special_tokens=False avoids a second one.
        enc = self.processor(text=texts, images=[[img] for img in images], return_tensors="pt",
                             padding=True, add_special_tokens=False)
        if "token_type_ids" not in enc:
            raise LayerwiseError("the processor returned no token_type_ids; Gemma 3's image attention needs them")
        input_ids = enc["input_ids"]
        attention = enc["attention_mask"].bool()
        image_mask = enc["token_type_ids"].bool() & attention
        caption_mask = torch.stack([self._caption_mask(row, mask) for row, mask in zip(input_ids, attention)])
        inputs = {k: v.to(device) for k, v in enc.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return EncodedBatch(inputs, input_ids, attention, image_mask, caption_mask)

    def _caption_mask(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        turns = (ids == self.start_of_turn_id).nonzero().flatten()
        if len(turns) == 0:
            raise LayerwiseError("the chat template produced no <start_of_turn>: cannot locate the caption")
        start = int(turns[-1]) + 1
        header = ids[start:start + len(self.model_header)].tolist()
        if header != self.model_header:
            raise LayerwiseError(f"unexpected model-turn header tokens {header}, expected {self.model_header}")
        mask = torch.zeros_like(attention)
        mask[start + len(self.model_header):] = True
        return mask & attention


def selection_mask(batch: EncodedBatch, selection: str) -> torch.Tensor:
    """[B, T] positions kept by a per-token selection; `mean` pools over `caption`."""
    if selection == "all":
        return batch.attention_mask
    if selection == "text":
        return batch.attention_mask & ~batch.image_mask
    if selection in ("caption", "mean"):
        return batch.caption_mask
    if selection == "last":
        last = batch.attention_mask.sum(dim=1) - 1
        mask = torch.zeros_like(batch.attention_mask)
        mask[torch.arange(mask.shape[0]), last] = True
        return mask
    raise LayerwiseError(f"--token-selection {selection!r} is unknown")
