"""Model inputs in each family's native format, and the masks that say what every position is.

One sample in one language is an image, the language's instruction prompt and the caption. The model's own
processor builds the sequence (`layerwise.models.families`): its chat template with the image and prompt as
the user turn and the caption as the assistant turn (teacher-forced), or, for a family without a chat
template (PaliGemma), the prompt as `text` and the caption as `suffix`. The masks are found from where the
prompt and the caption are in the rendered text (character offsets of the processor's own tokens, counted
from the end of the text: image placeholders are expanded before the prompt, never after it), so a caption
whose first token merges with the template's header (LLaVA's and SmolVLM's `ASSISTANT: `) is still found.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from layerwise.core.errors import LayerwiseError
from layerwise.models.families import PREFIX_SUFFIX, Family

# Stand-ins for the prompt and the caption when locating them in a rendered template (private-use characters
# that no tokenizer's template rewrites)
_PROMPT_MARK, _CAPTION_MARK = "\ue000layerwise-prompt\ue000", "\ue001layerwise-caption\ue001"


def chat_messages(prompt: str, caption: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": caption}]},
    ]


@dataclass
class EncodedBatch:
    inputs: dict[str, torch.Tensor]   # ready for the model (input_ids, attention_mask, pixel_values, family extras)
    input_ids: torch.Tensor           # [B, T] on CPU
    attention_mask: torch.Tensor      # [B, T] bool on CPU
    image_mask: torch.Tensor          # [B, T] bool: image tokens (none for a cross-attention family)
    caption_mask: torch.Tensor        # [B, T] bool: from the caption's first token to the end of the sequence
    prompt_mask: torch.Tensor         # [B, T] bool: the tokens of the instruction prompt's text


class ImageDecodeError(LayerwiseError):
    """An image file that cannot be turned into the 8-bit RGB picture the model sees.

    ``reason`` says what is wrong (without the path), ``path`` names the file (None for bytes).
    """

    def __init__(self, path, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"image {self.path}: {reason}" if self.path else f"image: {reason}")


# 16-bit grey modes of Pillow and the numpy dtype of their pixel buffer.
_UINT16_MODES = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _to_uint8(values, full_scale: float):
    """Linear map of [0, full_scale] onto 0..255 (rounded): 65535 -> 255, 32768 -> 128."""
    import numpy as np

    return np.clip(np.rint(values.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _declared_bits(img: Image.Image) -> int | None:
    """Bits per sample the file declares (TIFF BitsPerSample), if it says."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and bits > 0:
            return bits
    return None


def _grey_to_l(img: Image.Image) -> Image.Image:
    """16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grey -> 8-bit ``L``, scaled, not clipped."""
    import numpy as np

    mode = img.mode
    if mode in _UINT16_MODES:
        arr = np.frombuffer(img.tobytes(), dtype=_UINT16_MODES[mode]).reshape(img.height, img.width)
        return Image.fromarray(_to_uint8(arr, 65535.0))
    arr = np.asarray(img)
    if mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        bits = _declared_bits(img)
        if bits is not None and bits <= 16:
            full = float(2 ** bits - 1)
        elif 0 <= lo and hi <= 65535:
            full = 65535.0        # 16-bit data (PNG, PGM, TIFF) as Pillow opens it in mode I
        else:
            raise ValueError(
                f"32-bit integer grey pixels with values {lo}..{hi} have no defined brightness scale; "
                "save the image as 8-bit or 16-bit (e.g. PNG) first")
        if lo < 0:
            raise ValueError(f"integer grey pixels with negative values ({lo}..{hi}); save the image as 8-bit or 16-bit first")
        return Image.fromarray(_to_uint8(arr, full))
    # mode F: 32-bit float
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("floating-point pixels include NaN or infinity; save the image as 8-bit or 16-bit first")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return Image.fromarray(_to_uint8(arr, 1.0))
    if lo >= 0.0 and hi <= 255.0:
        return Image.fromarray(_to_uint8(arr, 255.0))
    raise ValueError(
        f"floating-point pixels with values {lo:g}..{hi:g} (neither 0..1 nor 0..255) have no defined brightness "
        "scale; save the image as 8-bit or 16-bit first")


def _over_white(img: Image.Image) -> Image.Image:
    """Transparent pixels composited onto white, as transformers' ``convert_to_rgb`` does."""
    rgba = img.convert("RGBA") if img.mode != "La" else img.convert("LA").convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            pass  # a broken profile: fall back to the plain conversion, as viewers do
    return img.convert("RGB")


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(img, transform)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: high bit depths scaled (not clipped), alpha over white, CMYK/LAB by colour profile."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _UINT16_MODES or mode in ("I", "F"):
        return _grey_to_l(img).convert("RGB")
    if mode == "P":
        return _over_white(img) if "transparency" in img.info else img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _over_white(img)
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode == "LAB":
        return _lab_to_rgb(img)
    if mode in ("L", "1", "RGBX", "YCbCr", "HSV"):
        return img.convert("RGB")
    raise ValueError(f"unsupported pixel mode {mode!r}; save the image as 8-bit RGB (PNG or JPEG)")


def load_rgb(source) -> Image.Image:
    """The 8-bit RGB picture of an image file, as PREFLIGHT checks it and extraction feeds it to the model.

    ``source`` is a path, ``bytes`` or a binary file object. The file is fully decoded (a truncated
    or corrupt file raises here, not later), its EXIF orientation is applied (as viewers and
    image processors do), and every Pillow mode is converted to RGB by :func:`to_rgb`: 16-bit
    and 32-bit grey and float images are scaled to 0..255 (Pillow's own ``convert`` clips them
    to white), transparency is composited onto white, CMYK and LAB go through colour profiles.
    Raises :class:`ImageDecodeError` (a LayerwiseError naming the file) when that is impossible.
    """
    import io
    import os

    from PIL import ImageFile, ImageOps

    path = None if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read") else os.fspath(source)
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageDecodeError(path, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: truncated images "
                                     "would be padded silently; unset it")
    img = None
    try:
        img = Image.open(stream)
        img.load()                                   # full decode: truncation and corrupt data fail here
        ImageOps.exif_transpose(img, in_place=True)
        rgb = to_rgb(img)
        if rgb is not img:
            img.close()
        elif getattr(img, "_exclusive_fp", False) and getattr(img, "fp", None) is not None:
            rgb = img.copy()                         # a multi-frame file Pillow keeps open: detach, then close it
            img.close()
        return rgb
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise _unreadable(path, e) from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, f"too large to decode safely ({e}); resize it") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "corrupt image, or not an image format PIL can read (PIL cannot identify it)") from None
    except Exception as e:  # PIL raises many types for broken files
        raise ImageDecodeError(path, f"corrupt image (PIL cannot decode it: {type(e).__name__}: {e})") from None
    finally:
        if img is not None and getattr(img, "fp", None) is not None and getattr(img, "_exclusive_fp", False):
            img.close()                              # an error left the file open


def _unreadable(path, exc: OSError) -> ImageDecodeError:
    """The error of an image file that cannot be opened, in the samplesheet's words."""
    if isinstance(exc, FileNotFoundError):
        return ImageDecodeError(path, "not found")
    if isinstance(exc, IsADirectoryError):
        return ImageDecodeError(path, "a directory, not an image file")
    if isinstance(exc, PermissionError):
        return ImageDecodeError(path, "cannot be read (permission denied)")
    return ImageDecodeError(path, f"cannot be read ({exc.strerror or exc})")


def load_rgb_with_digest(path) -> tuple[Image.Image, str]:
    """(:func:`load_rgb` picture, sha256 hex of the file's bytes), reading the file once."""
    import hashlib
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        return load_rgb(data), digest
    except ImageDecodeError as e:
        raise ImageDecodeError(path, e.reason) from None


def load_verified_rgb(path, sha256: str = "", sample_id: str = "") -> Image.Image:
    """`load_rgb` of a file whose sha256 PREFLIGHT recorded: a file changed since then is an error (its unit must
    be planned again), never silently different pixels. No recorded sha256: plain `load_rgb`."""
    if not sha256:
        return load_rgb(path)
    img, digest = load_rgb_with_digest(path)
    if digest != sha256:
        raise LayerwiseError(f"image {path} of sample {sample_id} changed since PREFLIGHT checked it (sha256 now "
                             f"{digest[:16]}..., recorded {sha256[:16]}...): run the pipeline again (-resume), so that "
                             "PREFLIGHT sees the new file and re-plans the units that read it")
    return img


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image as `load_rgb` will return it, read from the file's header (no pixel is
    decoded): the EXIF orientation that `load_rgb` applies swaps the sides of a rotated photo."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def image_token_id(processor) -> int:
    """The id of the token that stands for image content in the sequence (the model config's `image_token_id`;
    Mllama's one placeholder). The tokenizer's `image_token` comes first: Gemma 3's processor names its
    placeholder `<start_of_image>` `image_token_id`, while the image content is `<image_soft_token>`."""
    tok = processor.tokenizer
    token = getattr(tok, "image_token", None)
    if isinstance(token, str) and token:
        return int(tok.convert_tokens_to_ids(token))
    tid = getattr(processor, "image_token_id", None)
    if tid is not None:
        return int(tid)
    token = getattr(processor, "image_token", None)
    if token is None:
        raise LayerwiseError(f"{type(processor).__name__} names no image token")
    return int(tok.convert_tokens_to_ids(token))


@dataclass(frozen=True)
class _Spans:
    """Where the prompt and the caption sit in one rendered text, in characters counted from its end."""
    text: str
    prompt: tuple[int, int]    # (start, end) from the end of the text
    caption: tuple[int, int]


class InputBuilder:
    """Turns (image, prompt, caption) triples into a family's native model inputs and position masks."""

    def __init__(self, processor, family: Family):
        self.processor = processor
        self.family = family
        self.tok = processor.tokenizer
        self.image_token_id = image_token_id(processor)
        self._layout: tuple[str, str, str] | None = None       # template text around the prompt and the caption
        self._add_special_tokens: bool | None = None

    # ------------------------------------------------------------------ text
    def render(self, prompt: str, caption: str) -> str:
        """The text the processor tokenizes (its chat template; PaliGemma: the prompt, the caption as suffix)."""
        if self.family.prompt_format == PREFIX_SUFFIX:
            return prompt
        return self.processor.apply_chat_template(chat_messages(prompt, caption), tokenize=False)

    def _template_layout(self) -> tuple[str, str, str]:
        """(text before the prompt, between prompt and caption, after the caption) of the chat template."""
        if self._layout is None:
            text = self.render(_PROMPT_MARK, _CAPTION_MARK)
            if text.count(_PROMPT_MARK) != 1 or text.count(_CAPTION_MARK) != 1 or \
                    text.index(_PROMPT_MARK) > text.index(_CAPTION_MARK):
                raise LayerwiseError("the model's chat template does not place the prompt once in the user turn and "
                                     "the caption once in the assistant turn after it")
            before, rest = text.split(_PROMPT_MARK)
            between, after = rest.split(_CAPTION_MARK)
            self._layout = (before, between, after)
        return self._layout

    def spans(self, prompt: str, caption: str) -> _Spans:
        if self.family.prompt_format == PREFIX_SUFFIX:
            # text = the prompt; the processor adds image tokens and <bos> before it and "\n" after it
            return _Spans(prompt, (len(prompt) + 1, 1), (0, 0))
        text = self.render(prompt, caption)
        before, between, after = self._template_layout()
        # the template may rewrite the text it is given (e.g. trim it): read what it wrote
        with_mark = self.render(prompt, _CAPTION_MARK)
        head = with_mark[:with_mark.index(_CAPTION_MARK)]
        if not text.startswith(head) or not text.endswith(after):
            raise LayerwiseError("the model's chat template renders the caption in a way layerwise cannot locate")
        cap_len = len(text) - len(head) - len(after)
        prompt_len = len(head) - len(before) - len(between)
        cap = (len(after) + cap_len, len(after))
        return _Spans(text, (cap[0] + len(between) + prompt_len, cap[0] + len(between)), cap)

    def add_special_tokens(self, text: str) -> bool:
        """Whether the tokenizer must add its special tokens: only when the template writes no <bos> itself and
        the tokenizer has one (LLaVA-1.5's template writes no `<s>`); never a second <bos>."""
        if self._add_special_tokens is None:
            bos = self.tok.bos_token
            self._add_special_tokens = bool(bos) and not text.startswith(bos)
        return self._add_special_tokens

    # ------------------------------------------------------------------ encoding
    def encode(self, images: list[Image.Image], prompts: list[str], captions: list[str],
               device: torch.device, dtype: torch.dtype) -> EncodedBatch:
        spans = [self.spans(p, c) for p, c in zip(prompts, captions)]
        imgs = [[img] for img in images] if self.family.nested_images else list(images)
        if self.family.prompt_format == PREFIX_SUFFIX:
            enc = self.processor(text=[s.text for s in spans], images=imgs, suffix=list(captions), return_tensors="pt",
                                 padding=True, return_offsets_mapping=True)
        else:
            enc = self.processor(text=[s.text for s in spans], images=imgs, return_tensors="pt", padding=True,
                                 add_special_tokens=self.add_special_tokens(spans[0].text), return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping", None)
        if offsets is None:
            raise LayerwiseError(f"{type(self.processor).__name__} returned no offset mapping (a fast tokenizer is needed)")
        missing = [k for k in self.family.needs_inputs if k not in enc]
        if missing:
            raise LayerwiseError(f"{type(self.processor).__name__} returned no {', '.join(missing)}, which the "
                                 f"{self.family.name} model needs")
        input_ids = enc["input_ids"]
        attention = enc["attention_mask"].bool()
        image_mask = (input_ids == self.image_token_id) & attention if self.family.image_view else \
            torch.zeros_like(attention)
        if self.family.prompt_format == PREFIX_SUFFIX:
            # token_type_ids mark the suffix (the caption and its <eos>); offsets of the first text locate the prompt
            suffix = enc["token_type_ids"].bool() & attention
            prompt_mask = torch.stack([_overlap(off, att & ~suf, s.prompt) for off, att, suf, s in
                                       zip(offsets, attention, suffix, spans)])
            caption_mask = suffix
        else:
            prompt_mask = torch.stack([_overlap(off, att, s.prompt) for off, att, s in zip(offsets, attention, spans)])
            caption_mask = torch.stack([_from_first(_overlap(off, att, s.caption), att)
                                        for off, att, s in zip(offsets, attention, spans)])
        for i, c in enumerate(captions):
            if not bool(caption_mask[i].any()):
                raise LayerwiseError(f"caption {c[:60]!r}: no token of the sequence holds it")
        inputs = {k: v.to(device) for k, v in enc.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return EncodedBatch(inputs, input_ids, attention, image_mask, caption_mask, prompt_mask)


def _overlap(offsets: torch.Tensor, attention: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """bool [T]: attended tokens whose characters overlap `span` (counted from the end of the text). Tokens the
    tokenizer added (offsets (0, 0)) and padding overlap nothing."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = attention & (ends > starts)
    if not bool(real.any()):
        return torch.zeros_like(attention)
    length = int(ends[real].max())            # the text's length: where its last token ends
    lo, hi = length - span[0], length - span[1]
    return real & (ends > lo) & (starts < hi)


def _from_first(mask: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """From the first True of `mask` to the last attended position (the caption and the turn end after it)."""
    hits = mask.nonzero().flatten()
    out = torch.zeros_like(attention)
    if len(hits):
        out[int(hits[0]):] = True
    return out & attention


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
