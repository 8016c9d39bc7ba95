"""PREFLIGHT's caption check: what a caption does to the model's token sequence, without weights or images.

A caption (and a prompt) is plain text inside the chat template. Three things break that:

* a **control token** of the tokenizer written in the text (``<start_of_turn>``, ``<start_of_image>``,
  ``<image_soft_token>``, ``<bos>``, ... : every special and added-special token of the processor's
  tokenizer, found by string search and, independently, among the caption's token ids). It adds a
  turn, an image placeholder or a sequence boundary: the caption mask starts at the wrong place
  (the stored caption is a fragment) or the processor/model crashes on an image-count mismatch;
* a caption whose first or last characters **merge with the template's tokens** (the model-turn
  header before it, the end-of-turn after it), so that its span cannot be told apart;
* a chat sequence **longer than the model's context** (``max_position_embeddings``).

Lengths are counted on the exact sequence ``inputs.InputBuilder.encode`` builds. For a chat-template
family with a fixed image token sequence that the processor names (Gemma 3's ``full_image_sequence``)
they are computed independently of it and fast, without images: the template is rendered per caption,
the part before the caption is tokenized once per prompt, and the caption's positions are what follows
that prefix. For every other family (image tokens that depend on the image's size, a prefix/suffix
format, a cross-attention image) they are measured with the family's own processor
(``InputBuilder.encode`` on blank images of each sample's size, as extraction plans its layout).
``tests/unit/test_caption_check.py`` proves both agree on every fixture sample.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.models.families import CHAT, FAMILIES, FIXED, Family
from layerwise.models.inputs import InputBuilder, chat_messages, image_size

MAX_LISTED = 20


def special_tokens(processor) -> list[str]:
    """Every control token of the processor's tokenizer (special and added-special), longest first."""
    tok = processor.tokenizer
    found: set[str] = set()
    found.update(str(t) for t in (getattr(tok, "all_special_tokens", None) or []))
    for added in (getattr(tok, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added.content))
    extra = getattr(tok, "extra_special_tokens", None) or {}
    found.update(str(v) for v in (extra.values() if isinstance(extra, dict) else extra))
    for owner in (tok, processor):
        for attr in ("boi_token", "eoi_token", "image_token", "bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(owner, attr, None)
            if isinstance(value, str):
                found.add(value)
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


def special_token_ids(processor) -> set[int]:
    tok = processor.tokenizer
    ids = {int(i) for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items() if getattr(t, "special", False)}
    ids.update(int(i) for i in (getattr(tok, "all_special_ids", None) or []) if i is not None)
    return ids


@dataclass
class _Template:
    """One prompt's chat sequence around the caption, tokenized once."""
    prompt: str
    prefix: str                  # text before the caption, image placeholder expanded
    suffix: str                  # text after the caption
    prefix_ids: list[int]        # its tokens
    suffix_ids: list[int]        # tokens of the suffix as they follow a caption
    image_tokens: int            # image soft tokens in the prefix
    split: int                   # prefix_ids[split:] are the tokens of `tail` alone
    tail: str                    # text of the prefix from its last control token on


class CaptionChecker:
    """Counts and checks chat sequences of one processor (tokenizer + image processor config)."""

    def __init__(self, processor, family: Family | None = None):
        self.processor = processor
        self.family = family or FAMILIES["gemma3"]
        self.tok = processor.tokenizer
        self.tokens = special_tokens(processor)
        self.token_ids = special_token_ids(processor)
        self._pattern = re.compile("|".join(re.escape(t) for t in self.tokens)) if self.tokens else None
        self.image_placeholder = getattr(processor, "image_token", None) or getattr(self.tok, "boi_token", None)
        self.full_image_sequence = getattr(processor, "full_image_sequence", None)
        image_processor = getattr(processor, "image_processor", None)
        # the fast path: a chat template and a fixed image token sequence the processor names (Gemma 3 without
        # pan-and-scan, whose image token count would depend on each image's size)
        self.fast = bool(self.image_placeholder and self.full_image_sequence) and self.family.prompt_format == CHAT \
            and self.family.image_tokens == FIXED and not getattr(image_processor, "do_pan_and_scan", False)
        self.builder = InputBuilder(processor, self.family)
        self.image_token_id = self.builder.image_token_id
        self.unk_id = getattr(self.tok, "unk_token_id", None)
        self._templates: dict[str, _Template] = {}

    # ------------------------------------------------------------ text
    def find_special_tokens(self, text: str) -> list[str]:
        """Control tokens written in ``text``, in order of first appearance, each once."""
        if self._pattern is None:
            return []
        return list(dict.fromkeys(m.group(0) for m in self._pattern.finditer(text)))

    def render(self, prompt: str, caption: str) -> str:
        return self.processor.apply_chat_template(chat_messages(prompt, caption), tokenize=False)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def check_prompt(self, prompt: str) -> None:
        if found := self.find_special_tokens(prompt):
            raise LayerwiseError(f"the prompt {prompt!r} contains the control token{'s' if len(found) > 1 else ''} "
                                 f"{', '.join(found)} of the model's tokenizer; remove {'them' if len(found) > 1 else 'it'} "
                                 "from the prompts file")
        if self.fast:
            self.template(prompt)
        elif self.family.prompt_format == CHAT:
            self.builder.spans(prompt, "x")   # the template places the prompt and a caption where they are found

    def template(self, prompt: str) -> _Template:
        if prompt in self._templates:
            return self._templates[prompt]
        if found := self.find_special_tokens(prompt):
            raise LayerwiseError(f"the prompt {prompt!r} contains the control token{'s' if len(found) > 1 else ''} "
                                 f"{', '.join(found)} of the model's tokenizer; remove {'them' if len(found) > 1 else 'it'} "
                                 "from the prompts file")
        sentinel = "\ue000layerwise-caption\ue000"
        rendered = self.render(prompt, sentinel)
        if rendered.count(sentinel) != 1:
            raise LayerwiseError("the model's chat template does not place the caption once in the model turn")
        prefix, suffix = rendered.split(sentinel)
        if prefix.count(self.image_placeholder) != 1:
            raise LayerwiseError(f"the chat template's user turn has {prefix.count(self.image_placeholder)} image "
                                 f"placeholders ({self.image_placeholder}), expected 1")
        prefix = prefix.replace(self.image_placeholder, self.full_image_sequence)
        prefix_ids, skeleton = self._ids([prefix, prefix + suffix])
        if skeleton[:len(prefix_ids)] != prefix_ids:
            raise LayerwiseError("the chat template's text before the caption does not tokenize on its own")
        # Control tokens are split out before anything else, so the text from the last one on
        # tokenizes to the same ids alone as inside the whole prefix: only that is tokenized per
        # caption (4000 sequences of 256 image tokens would otherwise dominate the check).
        starts = [m.start() for m in self._pattern.finditer(prefix)] if self._pattern else []
        cut = starts[-1] if starts else 0
        split = 0
        if cut:
            head_ids, tail_ids = self._ids([prefix[:cut], prefix[cut:]])
            split = len(head_ids) if head_ids + tail_ids == prefix_ids else 0
        t = _Template(prompt, prefix, suffix, prefix_ids, skeleton[len(prefix_ids):],
                      prefix_ids.count(self.image_token_id), split, prefix[cut:] if split else prefix)
        self._templates[prompt] = t
        return t

    # ------------------------------------------------------------ counting
    def measure(self, prompt: str, captions: Sequence[str], images: Sequence | None = None,
                batch_size: int = 16) -> list[tuple[dict | None, str | None]]:
        """Per caption: (lengths, None), or (None, what is wrong) for a caption that breaks the template.
        `images`: each sample's image file (its size decides the image token count of some families)."""
        if not self.fast:
            return self._measure_with_processor(prompt, captions, images, batch_size)
        t = self.template(prompt)
        out: list[tuple[dict | None, str | None]] = [(None, None)] * len(captions)
        todo: list[int] = []
        texts: list[str] = []
        for i, caption in enumerate(captions):
            if found := self.find_special_tokens(caption):
                out[i] = (None, self._control_message(found))
                continue
            expanded = self.render(prompt, caption).replace(self.image_placeholder, self.full_image_sequence, 1)
            if expanded != t.prefix + caption + t.suffix:
                out[i] = (None, "the chat template changes this caption's text (e.g. strips leading/trailing "
                                "whitespace), so the stored caption would not be the samplesheet's")
                continue
            todo.append(i)
            texts.append(t.tail + caption + t.suffix)
        tail_ids = t.prefix_ids[t.split:]
        n_suffix = len(t.suffix_ids)
        for i, ids in zip(todo, self._ids(texts)):
            if ids[:len(tail_ids)] != tail_ids:
                out[i] = (None, f"the caption's first characters {captions[i][:12]!r} merge with the chat template's "
                                "model-turn header into one token: the caption's span cannot be separated from the template")
                continue
            if len(ids) < len(tail_ids) + n_suffix or ids[len(ids) - n_suffix:] != t.suffix_ids:
                out[i] = (None, f"the caption's last characters {captions[i][-12:]!r} merge with the chat template's "
                                "end-of-turn tokens: the caption's span cannot be separated from the template")
                continue
            cap_ids = ids[len(tail_ids):len(ids) - n_suffix]
            bad = [x for x in cap_ids if x in self.token_ids]
            if bad:
                out[i] = (None, self._control_message(list(dict.fromkeys(self.tok.convert_ids_to_tokens(bad)))))
                continue
            if self.unk_id is not None and self.unk_id in cap_ids:
                out[i] = (None, "the tokenizer has no tokens for some of the caption's characters (they would become "
                                f"{self.tok.unk_token}); remove or replace them")
                continue
            total = t.split + len(ids)
            out[i] = ({"all": total, "text": total - t.image_tokens, "caption": total - len(t.prefix_ids),
                       "mean": 1, "last": 1, "image": t.image_tokens, "caption_tokens": len(cap_ids)}, None)
        return out

    def _measure_with_processor(self, prompt: str, captions: Sequence[str], images: Sequence | None,
                                batch_size: int) -> list[tuple[dict | None, str | None]]:
        """Lengths from the family's own processor on blank images of each sample's size (what extraction plans)."""
        import torch
        from PIL import Image

        from layerwise.models.families import PER_IMAGE

        out: list[tuple[dict | None, str | None]] = [(None, None)] * len(captions)
        todo: list[int] = []
        for i, caption in enumerate(captions):
            if found := self.find_special_tokens(caption):
                out[i] = (None, self._control_message(found))
                continue
            if self.family.prompt_format == CHAT and caption not in self.builder.render(prompt, caption):
                out[i] = (None, "the chat template changes this caption's text (e.g. strips leading/trailing "
                                "whitespace), so the stored caption would not be the samplesheet's")
                continue
            todo.append(i)
        per_image = self.family.image_tokens == PER_IMAGE and images is not None
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            blanks = [Image.new("RGB", image_size(images[i]) if per_image else (32, 32)) for i in chunk]
            try:
                batch = self.builder.encode(blanks, [prompt] * len(chunk), [captions[i] for i in chunk],
                                            torch.device("cpu"), torch.float32)
            except LayerwiseError as e:
                for i in chunk:
                    out[i] = (None, str(e))
                continue
            for b, i in enumerate(chunk):
                att = batch.attention_mask[b]
                ids = batch.input_ids[b][att].tolist()
                cap_ids = batch.input_ids[b][batch.caption_mask[b]].tolist()
                text = [x for x in cap_ids if x not in self.token_ids]
                if not text:
                    out[i] = (None, "no token of the sequence holds the caption's text")
                    continue
                if self.unk_id is not None and self.unk_id in text:
                    out[i] = (None, "the tokenizer has no tokens for some of the caption's characters (they would become "
                                    f"{self.tok.unk_token}); remove or replace them")
                    continue
                image = int(batch.image_mask[b].sum())
                total = len(ids)
                out[i] = ({"all": total, "text": total - image, "caption": int(batch.caption_mask[b].sum()),
                           "mean": 1, "last": 1, "image": image, "caption_tokens": len(text)}, None)
        return out

    def _control_message(self, found: list[str]) -> str:
        return (f"contains the control token{'s' if len(found) > 1 else ''} {', '.join(found)} of the model's tokenizer: "
                "in a caption it would change the chat structure (an extra turn, image placeholder or sequence "
                "boundary) and so the token masks; remove it or write it differently (e.g. without the angle brackets)")


_CHECKERS: dict[int, CaptionChecker] = {}


def _checker(processor, family: Family | None = None) -> CaptionChecker:
    key = id(processor)
    cached = _CHECKERS.get(key)
    if cached is None or cached.processor is not processor or (family is not None and cached.family is not family):
        cached = _CHECKERS[key] = CaptionChecker(processor, family)
    return cached


def check_captions(df, processor, prompts: dict[str, str], languages: Iterable[str], max_positions: int | None,
                   *, samplesheet: str | Path | None = None, family: Family | None = None) -> dict:
    """Check every sample's caption for every language; raise LayerwiseError listing every problem.

    ``df`` is ``samplesheet.read_samplesheet``'s frame; ``prompts`` maps language -> prompt;
    ``max_positions`` is the model's ``max_position_embeddings`` (``model_check.check_model``), None
    to skip the length check. Returns ``{language: {"max_positions_used", "row_of_max", "positions",
    "caption_positions", "image_tokens"}}`` (``positions``: each sample's full sequence length, in row order;
    ``image_tokens``: each sample's image tokens, the positions whose input id is the image token).
    """
    checker = _checker(processor, family)
    name = Path(samplesheet or df.attrs.get("samplesheet", "samplesheet")).name
    languages = list(languages)
    problems: list[tuple[int, int, str]] = []
    stats: dict[str, dict] = {}
    for li, language in enumerate(languages):
        col = schema.caption_column(language)
        if language not in prompts:
            raise LayerwiseError(f"no prompt for language {language!r} (languages with a prompt: {', '.join(prompts)})")
        try:
            checker.check_prompt(prompts[language])
        except LayerwiseError as e:
            raise LayerwiseError(f"prompt for language {language!r}: {e}") from None
        captions = [str(c) for c in df[col].tolist()]
        results = checker.measure(prompts[language], captions, images=df[schema.IMAGE].tolist())
        positions, caption_positions, image_tokens = [], [], []
        for pos, ((lengths, problem), rec) in enumerate(zip(results, df[["row", schema.SAMPLE_ID]].itertuples(index=False))):
            row, sid = int(rec[0]), str(rec[1])
            where = f"{name} row {row + 1}" + (f" (sample {sid})" if sid else "") + f", column '{col}'"
            if problem is None and max_positions is not None and lengths["all"] > max_positions:
                over = lengths["all"] - max_positions
                per_token = len(captions[pos]) / max(lengths["caption_tokens"], 1)
                problem = (f"{lengths['all']} tokens (the whole chat sequence: {lengths['image']} image tokens, the prompt "
                           f"and template, {lengths['caption_tokens']} caption tokens) exceed the model's "
                           f"max_position_embeddings {max_positions}; shorten the caption by at least {over} tokens "
                           f"(about {int(over * per_token) + 1} characters)")
            if problem is not None:
                problems.append((row, li, f"{where}: {problem}"))
                positions.append(None)
                caption_positions.append(None)
                image_tokens.append(None)
                continue
            positions.append(lengths["all"])
            caption_positions.append(lengths["caption"])
            image_tokens.append(lengths["image"])
        valid = [(p, i) for i, p in enumerate(positions) if p is not None]
        top = max(valid) if valid else (None, None)
        stats[language] = {"max_positions_used": top[0], "row_of_max": top[1], "positions": positions,
                           "caption_positions": caption_positions, "image_tokens": image_tokens}
    if problems:
        problems.sort()
        lines = [f"samplesheet {name} has {len(problems)} caption problem{'s' if len(problems) != 1 else ''} "
                 "(rows are counted from 1, after the header line):"]
        lines += [f"  - {text}" for _, _, text in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        raise LayerwiseError("\n".join(lines))
    return stats
