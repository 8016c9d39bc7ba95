"""The kind of every position of an encoded batch (`schema.TOKEN_KINDS`), stored as `token_kinds`.

The analysis views (image / caption / prompt / all) and the SAE token filters select on these kinds, so
they are derived here once, from the masks `InputBuilder.encode` made from the family's own processor:

* ``bos``      -- the tokenizer's ``<bos>``, its first occurrence (at the first attended position, or after the
  image tokens in PaliGemma's prefix);
* ``image``    -- image tokens (``input_ids == image_token_id``; none for a cross-attention family such as
  Mllama, whose one ``<|image|>`` placeholder is ``template``);
* ``caption``  -- the caption's tokens (`EncodedBatch.caption_mask`), except special tokens and
  whitespace-only tokens (the turn end after the caption);
* ``prompt``   -- the instruction prompt's tokens (`EncodedBatch.prompt_mask`), except special and
  whitespace-only tokens;
* ``template`` -- everything else that is not padding (turn markers, role names, image delimiters,
  newlines); ``pad`` beyond a sample's length.
"""
from __future__ import annotations

import torch

from layerwise.core import schema
from layerwise.models.inputs import EncodedBatch

KIND = schema.TOKEN_KINDS


class TokenKinds:
    """Per-position kinds for batches encoded by one processor."""

    def __init__(self, processor):
        tok = processor.tokenizer
        self.bos_id = tok.bos_token_id
        self.special_ids = set(int(i) for i in tok.all_special_ids)
        self.special_ids.update(int(i) for i, t in tok.added_tokens_decoder.items() if t.special)
        self._blank: dict[int, bool] = {}
        self._tok = tok

    def _is_blank(self, token_id: int) -> bool:
        """Whitespace-only (or special) token: template, not prompt or caption text."""
        if token_id not in self._blank:
            text = self._tok.decode([token_id])
            self._blank[token_id] = token_id in self.special_ids or not text.strip()
        return self._blank[token_id]

    def of_batch(self, batch: EncodedBatch) -> torch.Tensor:
        """int8 [B, T]: the kind of every position (``pad`` where attention is 0)."""
        ids, attention = batch.input_ids, batch.attention_mask
        kinds = torch.full(ids.shape, KIND["template"], dtype=torch.int8)
        kinds[~attention] = KIND["pad"]
        kinds[batch.image_mask] = KIND["image"]
        blank = torch.tensor([[self._is_blank(int(t)) for t in row] for row in ids.tolist()], dtype=torch.bool) \
            if ids.numel() else torch.zeros_like(attention)
        kinds[batch.prompt_mask & ~blank & ~batch.image_mask] = KIND["prompt"]
        kinds[batch.caption_mask & ~blank] = KIND["caption"]
        if self.bos_id is not None:
            for b in range(ids.shape[0]):
                at = ((ids[b] == self.bos_id) & attention[b]).nonzero().flatten()
                if len(at):
                    kinds[b, int(at[0])] = KIND["bos"]
        return kinds
