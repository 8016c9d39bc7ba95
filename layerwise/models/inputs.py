"""Chat-formatted model inputs and the masks that say which positions each token selection keeps.

One sample in one language is a user turn (the image first, then the language's instruction
prompt) followed by the caption as the model turn (teacher-forced).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from layerwise.core.errors import LayerwiseError


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
