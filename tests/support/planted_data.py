"""Samplesheets with a planted gender signal, for the analysis's end-to-end tests.

Two datasets whose answer is known (`tests/integration/test_analysis_planted.py` runs the pipeline on them):

* `write_image_signal`: the **image** carries the label (warm background for `male`, cool for
  `female`, each with its own hue, saturation, brightness, shape and pixel noise), every caption
  is the same neutral sentence. The image view must decode gender.
* `write_caption_signal`: every sample shows the **same pixels**; the `english` caption carries
  the label ("a boy" / "a girl" in varied neutral context) and the `neutral` caption is the same
  sentence with "a child". In `english` the caption view decodes gender and the image view cannot
  (Gemma 3 is causal and the image tokens come before the caption); in `neutral` the labels are
  independent of everything the model sees.

Deterministic: everything comes from `random.Random(seed)`, and the PNGs are written without a
timestamp, so the same seed gives the same bytes.

Two details keep leaks that are not the planted signal out:
* "boy", "girl" and "child" are each three tokens for the fixture tokenizer (`man` is one and
  `woman` two), so the caption's length says nothing about the label;
* the caption-signal images are pixel-identical but not byte-identical (a PNG text chunk holds the
  sample id): the samplesheet's `image_sha256` differs per sample, so folds grouped by image
  (`--samplesheet`) still have one group per sample instead of one group for the whole dataset.
"""
from __future__ import annotations

import colorsys
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

CLASSES = ("male", "female")
SIZE = 64                       # the fixture's SigLIP image size: no resampling blurs the signal
PROMPT = "Describe the person in this image."
NEUTRAL_CAPTION = "A child in a picture."
GENDER_WORDS = {"male": "boy", "female": "girl", None: "child"}   # 3 fixture tokens each
# Neutral context, a distinct one per sample, independent of the label.
OPENINGS = ("In this picture,", "Here", "On the left,", "In the photo,", "Today", "Outside,", "Near the door,",
            "At noon,")
ACTIONS = ("is standing near a tree.", "sits on a chair.", "holds a red ball.", "looks at the sky.",
           "walks down the street.", "reads a book.", "drinks a cup of tea.", "waits for the bus.")
# Background hue per label (fraction of the colour circle): warm for male, cool for female.
HUE = {"male": 0.03, "female": 0.60}


@dataclass
class PlantedData:
    samplesheet: Path
    prompts: Path
    languages: tuple[str, ...]
    genders: list[str]

    @property
    def n_samples(self) -> int:
        return len(self.genders)


def balanced_labels(n: int, rng: random.Random) -> list[str]:
    """n/2 of each class (n even), in a seeded random order."""
    if n % 2:
        raise ValueError(f"n must be even, got {n}")
    labels = [CLASSES[i % 2] for i in range(n)]
    rng.shuffle(labels)
    return labels


def signal_image(gender: str, rng: random.Random) -> Image.Image:
    """A background in the label's hue (jittered), a random grey shape at a random place, pixel noise."""
    hue = (HUE[gender] + rng.uniform(-0.06, 0.06)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    image = Image.new("RGB", (SIZE, SIZE), (int(255 * r), int(255 * g), int(255 * b)))
    _draw_shape(image, rng, grey=rng.randrange(40, 220))
    return _noisy(image, rng, amplitude=24)


def neutral_image(rng: random.Random) -> Image.Image:
    """The one image of the caption-signal dataset: a grey background, a shape, some texture."""
    image = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    _draw_shape(image, rng, grey=200)
    return _noisy(image, rng, amplitude=24)


def _draw_shape(image: Image.Image, rng: random.Random, grey: int) -> None:
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randint(2, SIZE // 3), rng.randint(2, SIZE // 3)
    x1, y1 = rng.randint(2 * SIZE // 3, SIZE - 3), rng.randint(2 * SIZE // 3, SIZE - 3)
    if rng.random() < 0.5:
        draw.ellipse((x0, y0, x1, y1), fill=(grey, grey, grey))
    else:
        draw.rectangle((x0, y0, x1, y1), fill=(grey, grey, grey))


def _noisy(image: Image.Image, rng: random.Random, amplitude: int) -> Image.Image:
    """Uniform per-pixel noise in [-amplitude, amplitude] on every channel (seeded)."""
    noise = bytes(rng.randrange(2 * amplitude + 1) for _ in range(SIZE * SIZE * 3))
    pixels = image.tobytes()
    out = bytes(min(255, max(0, p + n - amplitude)) for p, n in zip(pixels, noise))
    return Image.frombytes("RGB", image.size, out)


def _save_png(image: Image.Image, path: Path, sample_id: str) -> None:
    info = PngInfo()
    info.add_text("sample_id", sample_id)     # differs per sample: distinct bytes for identical pixels
    image.save(path, format="PNG", pnginfo=info)


def _write(out_dir: Path, rows: list[dict[str, str]], languages: tuple[str, ...], genders: list[str]) -> PlantedData:
    sheet = out_dir / "samples.csv"
    columns = ["sample_id", "image", "gender"] + [f"caption_{lang}" for lang in languages]
    with open(sheet, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    prompts = out_dir / "prompts.json"
    # The same instruction in every language: prompts carry nothing that differs between languages.
    prompts.write_text(json.dumps({lang: {"prompt": PROMPT, "name": lang.capitalize()} for lang in languages},
                                  indent=2) + "\n", encoding="utf-8")
    return PlantedData(sheet, prompts, languages, genders)


def write_image_signal(out_dir: Path, n: int = 32, seed: int = 0) -> PlantedData:
    """Dataset A: the image carries the label, the caption (`english`) is one neutral sentence for all."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"image-signal-{seed}")
    genders = balanced_labels(n, rng)
    rows = []
    for i, gender in enumerate(genders):
        sid = f"a{i:03d}"
        _save_png(signal_image(gender, rng), out_dir / "images" / f"{sid}.png", sid)
        rows.append({"sample_id": sid, "image": f"images/{sid}.png", "gender": gender,
                     "caption_english": NEUTRAL_CAPTION})
    return _write(out_dir, rows, ("english",), genders)


def gendered_caption(context: tuple[str, str], gender: str | None) -> str:
    opening, action = context
    return f"{opening} a {GENDER_WORDS[gender]} {action}"


def write_caption_signal(out_dir: Path, n: int = 32, seed: int = 0) -> PlantedData:
    """Dataset B: one image (pixel-identical files); `english` captions name the label, `neutral` ones do not."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"caption-signal-{seed}")
    genders = balanced_labels(n, rng)
    image = neutral_image(random.Random(f"caption-signal-image-{seed}"))
    # every sample gets its own context (drawn without replacement): a neutral caption that occurs twice,
    # once per label, would let a null probe "learn" from its twin and sit below chance
    contexts = [(o, a) for o in OPENINGS for a in ACTIONS]
    if n > len(contexts):
        raise ValueError(f"at most {len(contexts)} samples (distinct caption contexts)")
    rows = []
    for i, (gender, context) in enumerate(zip(genders, rng.sample(contexts, n))):
        sid = f"b{i:03d}"
        _save_png(image, out_dir / "images" / f"{sid}.png", sid)
        rows.append({"sample_id": sid, "image": f"images/{sid}.png", "gender": gender,
                     "caption_english": gendered_caption(context, gender),
                     "caption_neutral": gendered_caption(context, None)})
    return _write(out_dir, rows, ("english", "neutral"), genders)
