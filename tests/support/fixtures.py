"""A tiny, randomly initialised Gemma 3 (real architecture) and a synthetic samplesheet, built offline.

Layout of a build folder ``OUT``::

    OUT/model/               Gemma3ForConditionalGeneration + Gemma3Processor (save_pretrained, float32)
    OUT/families/<type>/     one tiny real-architecture model + real processor per VLM family (gemma3 = a copy
                             of OUT/model, paligemma, qwen2_vl, qwen2_5_vl, llava, llava_next, mllama, idefics3,
                             smolvlm), each with a fixture.json; see tests/support/families.py
    OUT/data/samples.csv     sample_id,image,gender,caption_english,caption_arabic
    OUT/data/images/*.png    varied RGB drawings, 48..96 px (the processor resizes them to 64x64)
    OUT/.fixture-version     stamp written last; see `ensure_fixtures`

Everything is seeded: two builds give byte-identical files. The model loads through the same calls
production uses for ``google/gemma-3-4b-it``::

    AutoProcessor.from_pretrained(OUT / "model", local_files_only=True)
    AutoModelForImageTextToText.from_pretrained(OUT / "model", local_files_only=True)

Rendering one sample (one ``<bos>``: the template writes it, so never let the tokenizer add another)::

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True) + caption
    inputs = processor(text=text, images=[[image]], add_special_tokens=False, return_tensors="pt")
    model(**inputs)   # inputs carry token_type_ids (1 on image soft tokens): pass them
"""
from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

from tests.support import families

FIXTURE_VERSION = "3"  # 3: OUT/families/ (one tiny model per VLM family)
STAMP_NAME = ".fixture-version"
SEED = 1234
N_SAMPLES = 12

# Gemma's ids for pad/eos/bos/unk/mask are 0..4; the turn and image markers follow.
SPECIAL_TOKENS = (
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
)
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # byte fallback pieces, as in Gemma's vocab
BPE_VOCAB_SIZE = 1024  # upper bound; the small corpus stops the trainer earlier

# Tiny architecture (docs: facts.md "A tiny Gemma 3 built offline").
IMAGE_SIZE, PATCH_SIZE, MM_TOKENS_PER_IMAGE = 64, 8, 16
TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
    num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
    max_position_embeddings=2048,
    # Gemma 3: every 6th layer global, the rest sliding window (4B: layers 5, 11, 17, 23, 29 global).
    layer_types=["sliding_attention"] * 5 + ["full_attention"],
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, layer_norm_eps=1e-6, vision_use_head=False,
)

# Gemma 3's chat template: <bos> first, user/assistant -> user/model turns, a system message is
# folded into the first user turn, {"type": "image"} -> <start_of_image> (the processor expands it).
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# ---------------------------------------------------------------- synthetic captions and images
COLOURS = (  # english, arabic masculine, arabic feminine, RGB
    ("red", "أحمر", "حمراء", (220, 40, 40)),
    ("blue", "أزرق", "زرقاء", (40, 70, 220)),
    ("green", "أخضر", "خضراء", (40, 170, 60)),
    ("yellow", "أصفر", "صفراء", (235, 210, 40)),
    ("purple", "بنفسجي", "بنفسجية", (140, 60, 180)),
    ("orange", "برتقالي", "برتقالية", (245, 140, 30)),
)
SHAPES = (  # english, arabic, arabic gender
    ("circle", "دائرة", "f"), ("square", "مربع", "m"), ("triangle", "مثلث", "m"), ("rectangle", "مستطيل", "m"),
)
BACKGROUNDS = (("white", "بيضاء", (250, 250, 250)), ("grey", "رمادية", (128, 128, 128)),
               ("black", "سوداء", (15, 15, 15)))
PEOPLE = {"male": ("man", "رجل"), "female": ("woman", "امرأة"), "unknown": ("person", "شخص")}
TEMPLATES = (  # (english, arabic); some carry commas and double quotes so CSV quoting matters
    ("{A_colour} {shape} next to a {person}.", "{shape} {colour} بجانب {person}."),
    ("In this picture, {a_colour} {shape} sits on a {bg} background.",
     "في هذه الصورة، {shape} {colour} على خلفية {bg}."),
    ("{A_colour} {shape}, held in the hand of a {person}.", "{shape} {colour} في يد {person}."),
    ('{A_colour} {shape} and the number "{n}", beside a {person}.',
     '{shape} {colour} والرقم "{n}"، بجانب {person}.'),
    ("A simple drawing: {a_colour} {shape}, and a {bg} background.",
     "رسم بسيط: {shape} {colour}، وخلفية {bg}."),
)
CORPUS = (  # general sentences for the tokenizer, beside the captions and prompts
    "The cat sat on the red carpet near the window.",
    "A man reads a book in the garden while the sun shines.",
    "A woman carries a blue umbrella in the rain.",
    "Two children play with a ball on the beach, near the sea.",
    "The old man drinks tea in the cafe with his friends.",
    "A black dog runs across the green field.",
    "The girl paints a picture of a large tree.",
    "A blue car is parked in front of the house.",
    "She cooks dinner in the kitchen every evening.",
    "He rides a bicycle down the busy street and smiles.",
    "The picture shows a small shape on a plain background.",
    "Describe this image in one sentence.",
    "Describe the person in this image.",  # assets/prompts.json's prompts tokenise to word pieces too
    "What do you see in the picture?",
    "قطة صغيرة تجلس على السجادة الحمراء قرب النافذة.",
    "رجل يقرأ كتابا في الحديقة والشمس مشرقة.",
    "امرأة تحمل مظلة زرقاء تحت المطر.",
    "طفلان يلعبان بالكرة على الشاطئ، بالقرب من البحر.",
    "الرجل العجوز يشرب الشاي في المقهى مع أصدقائه.",
    "كلب أسود يركض في الحقل الأخضر.",
    "الفتاة ترسم صورة لشجرة كبيرة.",
    "سيارة زرقاء متوقفة أمام المنزل.",
    "هي تطبخ العشاء في المطبخ كل مساء.",
    "هو يركب دراجة في الشارع المزدحم ويبتسم.",
    "تظهر الصورة شكلا صغيرا على خلفية بسيطة.",
    "صف هذه الصورة في جملة واحدة.",
    "صف الشخص في هذه الصورة.",
    "ماذا ترى في الصورة؟",
)
CHAT_TEXT = ("user\nDescribe this image.", "\n\nmodel\n", "user\nصف هذه الصورة.", "\n\nmodel\n")


def genders(n_samples: int) -> list[str]:
    """male/female alternating, every 5th sample `unknown`."""
    return ["unknown" if i % 5 == 4 else ("male", "female")[i % 2] for i in range(n_samples)]


def captions(i: int, gender: str) -> tuple[str, str]:
    """English and Arabic caption of sample i (they describe its drawing: see `draw_image`)."""
    colour, shape, bg = COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)], BACKGROUNDS[i % len(BACKGROUNDS)]
    en, ar = TEMPLATES[i % len(TEMPLATES)]
    person_en, person_ar = PEOPLE[gender]
    colour_ar = colour[2] if shape[2] == "f" else colour[1]
    a_colour = ("an " if colour[0][0] in "aeiou" else "a ") + colour[0]
    return (en.format(a_colour=a_colour, A_colour=a_colour.capitalize(), shape=shape[0], person=person_en,
                      bg=bg[0], n=i + 1),
            ar.format(colour=colour_ar, shape=shape[1], person=person_ar, bg=bg[1], n=i + 1))


def draw_image(i: int):
    """Sample i's RGB drawing: its caption's shape and colour on its background, size 48..96 px."""
    from PIL import Image, ImageDraw

    rng = random.Random(SEED + i)
    width, height = 48 + 8 * (i % 7), 48 + 8 * ((3 * i + 2) % 7)
    image = Image.new("RGB", (width, height), BACKGROUNDS[i % len(BACKGROUNDS)][2])
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randint(2, width // 3), rng.randint(2, height // 3)
    x1, y1 = rng.randint(2 * width // 3, width - 3), rng.randint(2 * height // 3, height - 3)
    fill, shape = COLOURS[i % len(COLOURS)][3], SHAPES[i % len(SHAPES)][0]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        side = min(x1 - x0, y1 - y0)
        draw.rectangle((x0, y0, x0 + side, y0 + side), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        draw.rectangle((x0, (y0 + y1) // 2 - 6, x1, (y0 + y1) // 2 + 6), fill=fill)
    for _ in range(3):  # a little texture so no two images share pixels
        x, y = rng.randrange(width), rng.randrange(height)
        draw.point((x, y), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


# ---------------------------------------------------------------- tokenizer and processor
def tokenizer_corpus() -> list[str]:
    """Fixed training text: independent of n_samples, so the tokenizer never changes with it."""
    texts = list(CORPUS) + list(CHAT_TEXT)
    for i in range(len(COLOURS) * len(SHAPES)):
        texts.extend(captions(i, genders(i + 1)[i]))
    return texts


def make_tokenizer():
    """A GemmaTokenizer (fast, BPE + byte fallback) trained on English and Arabic; ids pad 0, eos 1, bos 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, GemmaTokenizer

    # Train word pieces: Metaspace splits before each "▁" (Gemma writes spaces as "▁", no dummy prefix),
    # otherwise BPE learns whole sentences.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS + BYTE_TOKENS))
    trainer_tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    vocab = trainer_tok.get_vocab(with_added_tokens=False)
    merges = _merges(trainer_tok)
    # GemmaTokenizer rebuilds its backend from vocab + merges (also when loaded from disk), so build it
    # the same way here: what is saved is what is used.
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False)
                          for t in ("<start_of_turn>", "<end_of_turn>")], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _merges(tok) -> list[tuple[str, str]]:
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def make_processor(tokenizer):
    """Gemma3Processor: image processor at IMAGE_SIZE, MM_TOKENS_PER_IMAGE soft tokens per image."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    # Gemma 3's values (mean/std 0.5, bilinear, rescale 1/255); only the size is tiny.
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                           image_seq_length=MM_TOKENS_PER_IMAGE)


def build_tokenizer(out_dir) -> Path:
    """Save tokenizer + image processor + chat template (a Gemma3Processor) into out_dir; returns it."""
    out_dir = Path(out_dir)
    make_processor(make_tokenizer()).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------- model
def make_config(tokenizer):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = tokenizer.convert_tokens_to_ids
    text = Gemma3TextConfig(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=[1, ids("<end_of_turn>")],
                            bos_token_id=2, **TEXT)
    return Gemma3Config(
        text_config=text, vision_config=SiglipVisionConfig(**VISION), mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), pad_token_id=0, eos_token_id=[1, ids("<end_of_turn>")],
        bos_token_id=2)


def make_model(tokenizer):
    """Randomly initialised Gemma3ForConditionalGeneration (float32, seeded)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(make_config(tokenizer)).to(torch.float32).eval()
    # transformers zero-initialises the projector weight: without this every image feature is 0.
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.mm_input_projection_weight.normal_(0.0, VISION["hidden_size"] ** -0.5)
    return model


def build_model(out_dir, tokenizer=None) -> Path:
    """Save the model into out_dir (config.json, model.safetensors); the tokenizer defaults to out_dir's."""
    out_dir = Path(out_dir)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    make_model(tokenizer).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------- dataset
def build_dataset(out_dir, n_samples: int = N_SAMPLES) -> Path:
    """Write out_dir/images/sNNN.png and out_dir/samples.csv (image paths relative to it); returns the CSV."""
    from layerwise.core import schema

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    columns = [schema.SAMPLE_ID, schema.IMAGE, schema.GENDER,
               schema.caption_column("english"), schema.caption_column("arabic")]
    csv_path = out_dir / "samples.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, gender in enumerate(genders(n_samples)):
            image = f"images/s{i:03d}.png"
            draw_image(i).save(out_dir / image, format="PNG")
            writer.writerow([f"s{i:03d}", image, gender, *captions(i, gender)])
    return csv_path


# ---------------------------------------------------------------- whole build
def build_all(out_dir, n_samples: int = N_SAMPLES) -> dict[str, Path]:
    """Build OUT/model, OUT/families and OUT/data in place (no stamp, not atomic: see `ensure_fixtures`)."""
    out_dir = Path(out_dir)
    model_dir = build_tokenizer(out_dir / "model")
    build_model(model_dir)  # sizes the vocabulary from the tokenizer as saved
    families.build_families(out_dir / families.FAMILIES_DIR, gemma3_dir=model_dir)
    build_dataset(out_dir / "data", n_samples)
    for path in out_dir.rglob("*"):  # save_pretrained leaves model.safetensors 0600; containers may run as others
        path.chmod(0o755 if path.is_dir() else 0o644)
    return paths(out_dir)


def stamp(n_samples: int) -> str:
    return f"{FIXTURE_VERSION} samples={n_samples}\n"


def is_built(out_dir, n_samples: int = N_SAMPLES) -> bool:
    out_dir = Path(out_dir)
    stamp_file = out_dir / STAMP_NAME
    return ((out_dir / "model" / "config.json").is_file() and (out_dir / "data" / "samples.csv").is_file()
            and all((path / families.INFO_NAME).is_file() for path in families.family_paths(out_dir).values())
            and stamp_file.is_file() and stamp_file.read_text() == stamp(n_samples))


def paths(out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"model": out_dir / "model", "families": out_dir / families.FAMILIES_DIR,
            "samplesheet": out_dir / "data" / "samples.csv"}


def ensure_fixtures(out_dir, n_samples: int = N_SAMPLES, force: bool = False) -> tuple[dict[str, Path], bool]:
    """Build into a temporary folder beside out_dir, stamp it, then rename it to out_dir.

    Returns (paths, built): a complete stamped build of the same FIXTURE_VERSION and sample count is
    reused (built False) unless `force`. A folder named out_dir is never half-built.
    """
    out_dir = Path(out_dir).resolve()
    if not force and is_built(out_dir, n_samples):
        return paths(out_dir), False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_all(tmp, n_samples)
        (tmp / STAMP_NAME).write_text(stamp(n_samples))
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process renamed its own complete build in first
            if not is_built(out_dir, n_samples):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return paths(out_dir), True


def _remove_abandoned(out_dir: Path, min_age_s: float = 600.0) -> None:
    """Delete temporary folders beside out_dir left by killed builds (a build takes seconds)."""
    import time

    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for path in out_dir.parent.glob(pattern):
            if time.time() - path.stat().st_mtime > min_age_s:
                shutil.rmtree(path, ignore_errors=True)
