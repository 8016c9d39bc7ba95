"""The kind of every position of an encoded batch (`schema.TOKEN_KINDS`), stored as `token_kinds`.

The analysis views (image / caption / prompt / all) and the SAE token filters select on these
kinds, so they are derived here once, from the same masks extraction uses:

* ``bos``      -- the ``<bos>`` at position 0;
* ``image``    -- image soft tokens (``token_type_ids == 1``);
* ``caption``  -- `EncodedBatch.caption_mask` (the model turn after its header), except special
  tokens and whitespace-only tokens after the caption text (``<end_of_turn>``, ``\\n``);
* ``prompt``   -- the instruction text of the user turn: positions after the last image token and
  before the user turn's ``<end_of_turn>``, except special and whitespace-only tokens;
  (``<bos>`` is the first attended position: the processor may pad on the left)
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
        self.end_of_turn_id = tok.convert_tokens_to_ids("<end_of_turn>")
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
        for b in range(ids.shape[0]):
            row = ids[b].tolist()
            attended = attention[b].nonzero().flatten()
            if not len(attended):
                continue
            first, n = int(attended[0]), int(attended[-1]) + 1   # the processor may pad on either side
            if row[first] == self.bos_id:
                kinds[b, first] = KIND["bos"]
            image_pos = batch.image_mask[b].nonzero().flatten()
            after_image = int(image_pos[-1]) + 1 if len(image_pos) else first + 1
            turn_ends = [i for i in range(after_image, n) if row[i] == self.end_of_turn_id]
            prompt_end = turn_ends[0] if turn_ends else n
            for i in range(after_image, prompt_end):
                if not self._is_blank(row[i]):
                    kinds[b, i] = KIND["prompt"]
            for i in batch.caption_mask[b].nonzero().flatten().tolist():
                if not self._is_blank(row[i]):
                    kinds[b, i] = KIND["caption"]
        return kinds
