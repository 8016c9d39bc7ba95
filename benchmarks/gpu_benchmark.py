#!/usr/bin/env python3
"""GPU benchmark of layerwise's extraction data path at Gemma-3-4B size (random weights, no network).

    python3 benchmarks/gpu_benchmark.py                   # on a GPU machine, from the repository root
    python3 benchmarks/gpu_benchmark.py --smoke           # the same code on the CPU: tiny fixture architecture

The full Gemma-3-4B-it architecture (config embedded below; 4,300,079,472 parameters) is built
with random bf16 weights directly on the GPU. Inputs go through layerwise's own encoding
(`inputs.InputBuilder` on a `Gemma3Processor`): the chat template, 256 image soft tokens per
image at 896 px, `token_type_ids`. There is no Gemma tokenizer offline, so the processor uses the
test fixture's tokenizer (`tests.support.fixtures.make_tokenizer`, trained in a second on English and
Arabic captions); the model's image-token ids follow it. A synthetic samplesheet (JPEG images,
English and Arabic captions) is written to the write folder.

Every byte goes through the new write-once path: positions planned up front
(`extract.plan_layout` -> `layerfile.UnitLayout`), one `layerfile.LayerFileStream` per layer and
language streaming rows straight into the final `.pt` in the write folder (`--write-dir`, default a
temp dir on the local disk), `extract.store_batch` per batch, a checkpoint (`state()`: fsync) every
`--checkpoint-interval` samples, `finish()`. Phases (each gets a share of `--budget-s`):

  disk      the write folder's ceilings: plain write+fsync, sha256, crc32, and PtFileWriter streaming
  bare      model.model(..., output_hidden_states=True) per language; vision tower once per image
  capture   capture.capture_layers (all layers) + run_until (early exit); nothing leaves the GPU
  extract   the engine's hot path: capture + store_batch -> LayerFileStream (all tokens by default)
  unit      extract.run_unit itself, once per language, sharing one image_cache (vision tower once per
            image): preflight, plan_layout, image cache, input encoding, extraction, finish, summary

Figures: (a) the projected wall time of the seed job on one GPU (2000 samples x 2 languages x 34
layers, all tokens, bf16) from the measured per-sample times, goal <= 10 min; (b) capture+write
throughput as a ratio of the bare forward over the same inputs, goal >= 0.8. The last line is
`BENCHMARK_JSON {...}` (also --json-out).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's own layerwise
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # run_unit's progress bar would clutter the figures

SEED_SAMPLES, SEED_LANGUAGES, SEED_LAYERS, GOAL_S, GOAL_RATIO = 2000, 2, 34, 600.0, 0.8
LANGS = ("english", "arabic")      # assets/prompts.json; the synthetic samplesheet has both captions
FINGERPRINT = "gpu-benchmark-random-init"

# google/gemma-3-4b-it: text and vision towers (token ids come from the processor's tokenizer).
GEMMA3_4B = {
    "name": "gemma-3-4b (random init)",
    "text": dict(
        vocab_size=262_208, hidden_size=2560, intermediate_size=10_240, num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=1024, max_position_embeddings=131_072, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(34)],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
    ),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=896, patch_size=14, layer_norm_eps=1e-6, vision_use_head=False),
    "mm_tokens_per_image": 256,
    "image_px": 768,                 # synthetic JPEGs (the processor resizes them to 896)
    "params": 4_300_079_472,
}


def tiny_spec() -> dict:
    """The test fixture's architecture (tests/fixtures/build/model): 6 layers, hidden 64, 64 px images."""
    from tests.support import fixtures

    return {"name": "tiny gemma 3 (fixture architecture, smoke)", "text": dict(fixtures.TEXT, vocab_size=None),
            "vision": dict(fixtures.VISION), "mm_tokens_per_image": fixtures.MM_TOKENS_PER_IMAGE,
            "image_px": 0, "params": None}


def say(line: str = "") -> None:
    print(line, flush=True)


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ------------------------------------------------------------------------------------ model + processor
def make_processor(spec: dict):
    """Gemma3Processor: the fixture tokenizer (right padding, as load_model sets) + Gemma 3's image processor."""
    from transformers import Gemma3Processor

    from tests.support import fixtures

    tokenizer = fixtures.make_tokenizer()
    tokenizer.padding_side = "right"
    size = spec["vision"]["image_size"]
    kwargs = dict(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                  do_pan_and_scan=False)
    try:  # what AutoProcessor picks for google/gemma-3-4b-it: the torchvision backend where installed
        import torchvision  # noqa: F401
        from transformers import Gemma3ImageProcessor as ImageProcessor
    except ImportError:
        try:
            from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import Gemma3ImageProcessor as ImageProcessor
    image_processor = ImageProcessor(**kwargs)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=fixtures.CHAT_TEMPLATE,
                           image_seq_length=spec["mm_tokens_per_image"])


def rope_summary_of(rope: dict) -> str:
    full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
    return (f"global {full.get('rope_type')} x{full.get('factor', 1.0):g} theta {full.get('rope_theta', 0):g}, "
            f"local {local.get('rope_type')} theta {local.get('rope_theta', 0):g}")


def rope_summary(text_config) -> str:
    rope = getattr(text_config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        return rope_summary_of(rope)
    scaling = getattr(text_config, "rope_scaling", None) or {}
    return rope_summary_of({"full_attention": {"rope_type": scaling.get("rope_type", "default"),
                                               "factor": scaling.get("factor", 1.0),
                                               "rope_theta": getattr(text_config, "rope_theta", 0)},
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": getattr(text_config, "rope_local_base_freq", 0)}})


def make_config(spec: dict, tokenizer):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = tokenizer.convert_tokens_to_ids
    eos = [tokenizer.eos_token_id, ids("<end_of_turn>")]
    kwargs = dict(spec["text"])
    kwargs["vocab_size"] = kwargs.get("vocab_size") or len(tokenizer)
    common = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    try:  # transformers 5.x: RoPE per layer type
        text = Gemma3TextConfig(**common, **kwargs)
    except (TypeError, ValueError):
        text = None
    if text is None or rope_summary(text) != rope_summary_of(kwargs["rope_parameters"]):
        rope = kwargs.pop("rope_parameters")  # older releases: rope_theta / rope_local_base_freq / rope_scaling
        full, local = rope["full_attention"], rope["sliding_attention"]
        text = Gemma3TextConfig(**common, rope_theta=full["rope_theta"], rope_local_base_freq=local["rope_theta"],
                                rope_scaling={"rope_type": full["rope_type"], "factor": full["factor"]}, **kwargs)
    return Gemma3Config(text_config=text, vision_config=SiglipVisionConfig(**spec["vision"]),
                        mm_tokens_per_image=spec["mm_tokens_per_image"], boi_token_index=ids("<start_of_image>"),
                        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"), **common)


def build_model(config, spec: dict, device, dtype, attn: str | None):
    """Random-init Gemma3ForConditionalGeneration built directly on `device` in `dtype`."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    kwargs = {"attn_implementation": attn} if attn else {}
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=dtype, **kwargs)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        # transformers zero-initialises the projector: randomise it or every image feature is 0.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, spec["vision"]["hidden_size"] ** -0.5)
    return model


# ------------------------------------------------------------------------------------ data
def build_dataset(out_dir: Path, n: int, image_px: int) -> Path:
    """samples.csv (sample_id,image,gender,caption_english,caption_arabic) + images; returns the CSV.

    image_px 0: the fixture's small PNG drawings; otherwise smooth random JPEGs of image_px x image_px
    (decoding and resizing them costs about what a photo does)."""
    import csv

    import numpy as np
    from PIL import Image

    from layerwise.core import schema
    from tests.support import fixtures

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(fixtures.SEED)
    path = out_dir / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([schema.SAMPLE_ID, schema.IMAGE, schema.GENDER,
                         schema.caption_column("english"), schema.caption_column("arabic")])
        for i, gender in enumerate(fixtures.genders(n)):
            if image_px:
                name = f"images/s{i:05d}.jpg"
                coarse = rng.integers(0, 256, (image_px // 16, image_px // 16, 3), dtype=np.uint8)
                img = Image.fromarray(coarse).resize((image_px, image_px), Image.BILINEAR)
                noise = rng.integers(-12, 13, (image_px, image_px, 3))
                img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
                img.save(out_dir / name, format="JPEG", quality=90)
            else:
                name = f"images/s{i:05d}.png"
                fixtures.draw_image(i).save(out_dir / name, format="PNG")
            writer.writerow([f"s{i:05d}", name, gender, *fixtures.captions(i, gender)])
    return path


class Data:
    """Samples, prompts and pre-encoded batches (CPU) of both languages; pixels kept once per batch."""

    def __init__(self, processor, samplesheet: Path, n: int, batch_size: int, dtype):
        import torch

        from layerwise.core.prompts import load_prompts, prompt_for
        from layerwise.core.sheet import iter_samples
        from layerwise.models.inputs import InputBuilder, load_rgb
        from layerwise.models.token_kinds import TokenKinds
        from layerwise.preflight.samplesheet import read_samplesheet

        self.builder, self.kinds = InputBuilder(processor), TokenKinds(processor)
        table = read_samplesheet(samplesheet, list(LANGS), check_images=False)
        self.samples = list(iter_samples(table, None, f"0:{n}"))
        prompts = load_prompts(None)
        self.prompts = {lang: prompt_for(lang, prompts) for lang in LANGS}
        self.batch_size = batch_size
        self.chunks = [self.samples[i:i + batch_size] for i in range(0, n, batch_size)]
        self.batches: list[dict] = []   # [{"pixels": tensor, lang: EncodedBatch without pixel_values}]
        for chunk in self.chunks:
            images = [load_rgb(s.image) for s in chunk]
            entry = {}
            for lang in LANGS:
                b = self.builder.encode(images, [self.prompts[lang]] * len(chunk), [s.captions[lang] for s in chunk],
                                        torch.device("cpu"), dtype)
                pixels = b.inputs.pop("pixel_values")
                entry.setdefault("pixels", pixels)
                entry[lang] = b
            self.batches.append(entry)
        self.tokens = {lang: int(sum(int(e[lang].attention_mask.sum()) for e in self.batches)) for lang in LANGS}

    def layout(self, lang: str, selection: str, n: int):
        """extract.plan_layout for the first n samples, checked against the encoded batches."""
        import torch

        from layerwise.extract.unit import plan_layout
        from layerwise.models.inputs import selection_mask

        plan = plan_layout(self.builder, self.kinds, self.samples[:n], self.prompts[lang], lang, selection)
        if selection != "mean":
            i = 0
            for e in self.batches:
                b = e[lang]
                keep = selection_mask(b, selection)
                for row in range(b.input_ids.shape[0]):
                    if i < n and not torch.equal(b.input_ids[row][keep[row]].to(torch.int64), plan.token_ids[i]):
                        raise RuntimeError(f"sample {i}: encoded tokens differ from plan_layout's")
                    i += 1
        return plan


# ------------------------------------------------------------------------------------ writers
class TimedWriter:
    """Passes append() to a LayerFileStream and adds up its time (sha256 + crc32 + write syscalls)."""

    __slots__ = ("w", "seconds")

    def __init__(self, w):
        self.w, self.seconds = w, 0.0

    def append(self, rows, nan_count: int = 0) -> None:
        t0 = time.perf_counter()
        self.w.append(rows, nan_count)
        self.seconds += time.perf_counter() - t0


class NullWriter:
    def append(self, rows, nan_count: int = 0) -> None:
        pass


def disk_check(directory: Path, nbytes: int) -> dict:
    """Ceilings of the write folder: plain write+fsync, sha256, crc32, PtFileWriter (all single-threaded)."""
    import torch

    from layerwise.layerfile.ptfile import PtFileWriter, TensorSlot

    chunk_bytes = min(64 << 20, nbytes)
    chunk = torch.randn(chunk_bytes // 2).to(torch.bfloat16)
    view = chunk.view(torch.uint8).numpy().data
    reps = max(1, nbytes // chunk_bytes)
    total = reps * chunk_bytes
    res = {"bytes": total}
    path = directory / "disk_check.bin"
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        for _ in range(reps):
            fh.write(view)
        os.fsync(fh.fileno())
    res["write_fsync_Bps"] = total / (time.perf_counter() - t0)
    path.unlink()
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for _ in range(reps):
        h.update(view)
    res["sha256_Bps"] = total / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    crc = 0
    for _ in range(reps):
        crc = zlib.crc32(view, crc)
    res["crc32_Bps"] = total / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    w = PtFileWriter(directory / "disk_check.pt", {"activations": TensorSlot([total // 2], torch.bfloat16)},
                     ["activations"])
    for _ in range(reps):
        w.write(chunk)
    w.finish()
    res["ptfile_Bps"] = total / (time.perf_counter() - t0)
    (directory / "disk_check.pt").unlink()
    return res


# ------------------------------------------------------------------------------------ bench
class Bench:
    def __init__(self, args, spec, model, processor, device, dtype, work: Path, data: Data):
        import inspect

        import torch

        from layerwise.models.capture import decoder_layers

        self.args, self.spec, self.model, self.processor = args, spec, model, processor
        self.device, self.dtype, self.work, self.data = device, dtype, work, data
        self.cuda = device.type == "cuda"
        self.num_layers = len(decoder_layers(model))
        self.layers = list(range(self.num_layers))
        self.hidden = int(model.config.text_config.hidden_size)
        self.row_bytes = self.hidden * torch.empty((), dtype=dtype).element_size()
        self.diet_path = ("mm_encoder_outputs" if "mm_encoder_outputs" in inspect.signature(model.model.forward).parameters
                          else "patched get_image_features")
        self._returns_output = True

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    # -- one forward (the vision tower once per image, as the shared image cache gives it) ----------------
    def image_features(self, pixels):
        import torch

        with torch.inference_mode():
            out = self.model.model.get_image_features(pixel_values=pixels)
        self._returns_output = not isinstance(out, torch.Tensor)
        return getattr(out, "pooler_output", out)

    def model_inputs(self, b, pixels, features) -> dict:
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in b.inputs.items()}
        if features is None or self.diet_path != "mm_encoder_outputs":
            inputs["pixel_values"] = pixels
        else:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return inputs

    def _patched(self, features):
        """Older transformers without mm_encoder_outputs: the vision call returns the cached features."""
        from contextlib import contextmanager

        from transformers.modeling_outputs import BaseModelOutputWithPooling

        @contextmanager
        def ctx():
            if features is None or self.diet_path == "mm_encoder_outputs":
                yield
                return
            restore = self.model.model.get_image_features

            def cached(*_a, **k):
                if k.get("return_dict") or self._returns_output:
                    return BaseModelOutputWithPooling(pooler_output=features)
                return features

            self.model.model.get_image_features = cached
            try:
                yield
            finally:
                self.model.model.get_image_features = restore
        return ctx()

    def forward_capture(self, inputs: dict, features) -> dict:
        import torch

        from layerwise.models.capture import capture_layers, run_until

        with self._patched(features), torch.inference_mode(), capture_layers(self.model, self.layers) as captured:
            run_until(self.model, **inputs)
        return dict(captured)

    def forward_bare(self, inputs: dict, features) -> None:
        import torch

        with self._patched(features), torch.inference_mode():
            self.model.model(**inputs, output_hidden_states=True, use_cache=False)

    def check_diet(self) -> float:
        """Max |plain - reused features| over every captured layer of batch 0 (should be ~0)."""
        e = self.data.batches[0]
        pixels = e["pixels"].to(self.device)
        b = e[LANGS[0]]
        plain = self.forward_capture(self.model_inputs(b, pixels, None), None)
        features = self.image_features(pixels)
        diet = self.forward_capture(self.model_inputs(b, pixels, features), features)
        return max(float((plain[k].float() - diet[k].float()).abs().max()) for k in plain)

    # -- phases -----------------------------------------------------------------------------------
    def _peak_reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _peak(self):
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated())
        return None

    def run_forward_phase(self, name: str, share_s: float, deadline: float) -> dict:
        """bare / capture: every batch, both languages; nothing leaves the GPU."""
        from layerwise.extract.images import VisionCallCounter

        batches = self.data.batches

        def one(e) -> None:
            pixels = e["pixels"].to(self.device, non_blocking=True)
            features = self.image_features(pixels)
            for lang in LANGS:
                inputs = self.model_inputs(e[lang], pixels, features)
                if name == "bare":
                    self.forward_bare(inputs, features)
                else:
                    captured = self.forward_capture(inputs, features)
                    del captured
            self.sync()

        one(batches[0])   # warm-up (kernels, cuBLAS handles, allocator), not timed
        self._peak_reset()
        counter = VisionCallCounter(self.model)
        started = time.perf_counter()
        limit = min(started + share_s, deadline)
        done, stopped = 0, None
        try:
            for e in batches:
                if time.perf_counter() > limit:
                    stopped = "budget"
                    break
                one(e)
                done += e["pixels"].shape[0]
        finally:
            counter.close()
        seconds = time.perf_counter() - started
        tokens = sum(int(e[lang].attention_mask.sum()) for e in batches[:self._batches_for(done)] for lang in LANGS)
        return self._result(name, done, seconds, stopped, tokens=tokens, vision_tower_images=counter.images,
                            peak_gpu_memory_bytes=self._peak())

    def _batches_for(self, samples: int) -> int:
        return -(-samples // self.data.batch_size)

    def samples_that_fit(self, n: int, cap_bytes: float, languages: int) -> int:
        """Largest sample count (<= n, whole batches) whose layer files for `languages` languages fit in cap_bytes."""
        import torch

        from layerwise.models.inputs import selection_mask

        sel, bs = self.args.selection, self.data.batch_size
        lengths = {lang: torch.cat([selection_mask(e[lang], sel).sum(dim=1) for e in self.data.batches]).tolist()
                   for lang in LANGS}
        if sel == "mean":
            lengths = {lang: [1] * len(v) for lang, v in lengths.items()}

        def need(k: int) -> int:
            rows = [k * max(v[:k]) if self.args.layout == "padded" else sum(v[:k]) for v in lengths.values()]
            return max(rows) * languages * self.row_bytes * self.num_layers

        n = min(n, len(self.data.samples))
        while n > bs and need(n) > cap_bytes:
            n = max(bs, min(n - bs, int(n * cap_bytes / need(n)) // bs * bs))
        return n

    def run_extract(self, share_s: float, deadline: float) -> dict:
        """The engine's hot path: capture + store_batch -> LayerFileStream, checkpoints, finish."""
        from layerwise.core import schema
        from layerwise.extract.images import VisionCallCounter
        from layerwise.extract.unit import store_batch
        from layerwise.layerfile.store import atomic_write_json
        from layerwise.layerfile.stream import LayerFileStream
        from layerwise.models.inputs import selection_mask

        args, sel = self.args, self.args.selection
        n = self.samples_that_fit(len(self.data.samples), self.cap_bytes, languages=len(LANGS))
        batches = self.data.batches[:self._batches_for(n)]
        plans = {lang: self.data.layout(lang, sel, n) for lang in LANGS}
        phase_dir = self.work / "extract"
        shutil.rmtree(phase_dir, ignore_errors=True)
        (phase_dir / ".partial").mkdir(parents=True)
        samples = self.data.samples[:n]
        meta = {"genders": [s.gender for s in samples], "sample_ids": [s.sample_id for s in samples],
                "token_selection": sel, "nan_policy": "zero", "model_id": self.spec["name"],
                "model_revision": "random", "num_layers": self.num_layers}
        streams = {lang: {layer: LayerFileStream(phase_dir / schema.layer_filename(layer, lang), plans[lang],
                                                 args.layout, self.hidden, self.dtype,
                                                 {**meta, "language": lang, "layer": layer})
                          for layer in self.layers} for lang in LANGS}
        timed = {lang: {layer: TimedWriter(w) for layer, w in ws.items()} for lang, ws in streams.items()}
        null = {layer: NullWriter() for layer in self.layers}
        expected_bytes = sum(w.writer.expected_bytes for ws in streams.values() for w in ws.values())
        times = dict(forward=0.0, store=0.0, commit=0.0)

        def one(e, start: int, writers) -> int:
            chunk = self.data.samples[start:start + e["pixels"].shape[0]]
            ids = [s.sample_id for s in chunk]
            t0 = time.perf_counter()
            pixels = e["pixels"].to(self.device, non_blocking=True)
            features = self.image_features(pixels)
            kept = 0
            for lang in LANGS:
                b = e[lang]
                captured = self.forward_capture(self.model_inputs(b, pixels, features), features)
                self.sync()
                t1 = time.perf_counter()
                times["forward"] += t1 - t0
                kept += store_batch(captured, selection_mask(b, sel), sel, "zero", ids,
                                    writers[lang] if writers else null)
                del captured
                t0 = time.perf_counter()
                times["store"] += t0 - t1
            return kept

        one(batches[0], 0, None)   # warm-up: the same gathers, NaN counts and copies, nothing written
        times.update(forward=0.0, store=0.0, commit=0.0)
        self._peak_reset()
        counter = VisionCallCounter(self.model)
        started = time.perf_counter()
        limit = min(started + share_s, deadline)
        done = kept = commits = 0
        stopped, last_commit = None, 0
        try:
            for e in batches:
                if time.perf_counter() > limit:
                    stopped = "budget"
                    break
                kept += one(e, done, timed)
                done += e["pixels"].shape[0]
                if done - last_commit >= args.checkpoint_interval and done < n:
                    t0 = time.perf_counter()   # Extractor._commit: state() fsyncs every file, then progress.json
                    state = {"fingerprint": FINGERPRINT, "done": done,
                             "writers": {f"{lang}/{layer}": w.state() for lang, ws in streams.items()
                                         for layer, w in ws.items()}}
                    atomic_write_json(phase_dir / ".partial" / "progress.json", state)
                    times["commit"] += time.perf_counter() - t0
                    last_commit, commits = done, commits + 1
        finally:
            counter.close()
        loop_s = time.perf_counter() - started
        finish_s, final_bytes, files, check = None, 0, 0, None
        nan_values = int(sum(sum(w.nan_counts) for ws in streams.values() for w in ws.values()))
        streamed = sum(w.writer.bytes_written for ws in streams.values() for w in ws.values())
        if stopped is None:
            t0 = time.perf_counter()
            for ws in streams.values():
                for w in ws.values():
                    final_bytes += w.finish()["bytes"]
                    files += 1
            finish_s = time.perf_counter() - t0
            check = self.check_file(phase_dir / schema.layer_filename(self.layers[-1], LANGS[-1]), plans[LANGS[-1]], n)
        else:
            for ws in streams.values():
                for w in ws.values():
                    w.abort()
        shutil.rmtree(phase_dir, ignore_errors=True)
        append_s = sum(w.seconds for ws in timed.values() for w in ws.values())
        tokens = sum(int(e[lang].attention_mask.sum()) for e in batches[:self._batches_for(done)] for lang in LANGS)
        rows = kept * self.row_bytes * self.num_layers
        total_s = loop_s + (finish_s or 0.0)
        res = self._result("extract", done, loop_s, stopped, tokens=tokens, positions_kept=kept,
                           vision_tower_images=counter.images, peak_gpu_memory_bytes=self._peak(),
                           planned_samples=n, forward_s=round(times["forward"], 3),
                           store_batch_s=round(times["store"], 3), append_s=round(append_s, 3),
                           gather_copy_s=round(times["store"] - append_s, 3), commit_s=round(times["commit"], 3),
                           checkpoints=commits, finish_s=None if finish_s is None else round(finish_s, 3),
                           total_s=round(total_s, 3), files=files, final_bytes=final_bytes,
                           expected_bytes=expected_bytes, row_bytes_written=rows, nan_values=nan_values,
                           bytes_written=final_bytes or streamed,
                           write_bytes_per_s=round((final_bytes or streamed) / total_s) if total_s else None,
                           file_check=check,
                           selection=sel, layout=args.layout)
        if done:
            res["projected_seed_job_s"] = round(SEED_SAMPLES * loop_s / done + (finish_s or 0.0), 1)
            res["projected_seed_job_bytes"] = int(expected_bytes * SEED_SAMPLES / n)
        return res

    def check_file(self, path: Path, plan, n: int) -> dict:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        shape = list(data["activations"].shape)
        ok = (shape == plan.activation_shape(self.args.layout, self.hidden) and len(data["sample_ids"]) == n
              and data["lengths"].tolist() == plan.lengths and int(data["nan_counts"].sum()) == 0
              and bool(torch.isfinite(data["activations"][-1].float()).all()))
        return {"file": path.name, "activations": shape, "ok": bool(ok)}

    def run_units(self, share_s: float, deadline: float) -> dict:
        """extract.run_unit once per language (all layers), sharing one image_cache, as the pipeline does."""
        from layerwise.extract.unit import UnitConfig, preflight, run_unit
        from layerwise.models.loading import LoadedModel

        args = self.args
        model_dir = self.work / "model"
        self.model.config.save_pretrained(model_dir)          # preflight reads config.json only
        loaded = LoadedModel(self.model, self.processor, self.device, self.dtype, str(model_dir), "local",
                             self.num_layers, self.hidden, self.model.config.model_type)
        n = self.samples_that_fit(args.unit_samples, self.cap_bytes, languages=1)   # one unit's files at a time
        cache = self.work / "image_cache" if self.diet_path == "mm_encoder_outputs" else None
        started = time.perf_counter()
        units, stopped = [], None
        self._peak_reset()
        for lang in LANGS:
            if time.perf_counter() > min(started + share_s, deadline) and units:
                stopped = "budget"
                break
            out = self.work / f"unit_{lang}"
            cfg = UnitConfig(samplesheet=str(self.data_csv), model=str(model_dir), language=lang, layers="all",
                             out_dir=str(out), rows=f"0:{n}", batch_size=args.batch_size,
                             checkpoint_interval=args.checkpoint_interval, dtype=str(self.dtype).removeprefix("torch."),
                             token_selection=args.selection, layout=args.layout, device=self.device.type,
                             image_cache=str(cache) if cache else None, model_fingerprint=FINGERPRINT)
            t0 = time.perf_counter()
            preflight(cfg)
            preflight_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = run_unit(cfg, loaded=loaded)
            wall = time.perf_counter() - t0
            on_disk = sum(p.stat().st_size for p in out.glob("layer_*.pt"))
            fill = summary.get("image_features") or {}
            fill_s = float(fill.get("seconds", 0.0)) if not fill.get("cache_hit", True) else 0.0
            units.append({
                "language": lang, "samples": summary["samples"], "wall_s": round(wall, 3),
                "loop_s": summary["seconds"], "preflight_s": round(preflight_s, 3), "image_cache_fill_s": round(fill_s, 3),
                "other_s": round(wall - summary["seconds"] - preflight_s - fill_s, 3),
                "positions_kept": summary["positions_kept"], "bytes_written": summary["bytes_written"],
                "bytes_on_disk": on_disk, "files": len(summary["files"]),
                "vision_tower_images": summary["vision_tower_images"],
                "image_cache_hit": fill.get("cache_hit"), "nan_values": sum(summary["nan_counts"].values()),
            })
            shutil.rmtree(out, ignore_errors=True)
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
        done = min((u["samples"] for u in units), default=0)
        wall = sum(u["wall_s"] for u in units)
        res = self._result("unit", done if len(units) == len(LANGS) else 0, wall, stopped,
                           positions_kept=sum(u["positions_kept"] for u in units),
                           vision_tower_images=sum(u["vision_tower_images"] for u in units),
                           peak_gpu_memory_bytes=self._peak(), units=units, image_cache=bool(cache),
                           final_bytes=sum(u["bytes_written"] for u in units), files=sum(u["files"] for u in units),
                           nan_values=sum(u["nan_values"] for u in units), selection=args.selection,
                           layout=args.layout, total_s=round(wall, 3),
                           write_bytes_per_s=round(sum(u["bytes_written"] for u in units) / wall) if wall else None)
        if len(units) == len(LANGS) and done:
            res["projected_seed_job_s"] = round(SEED_SAMPLES * wall / done, 1)
            res["projected_seed_job_bytes"] = int(res["final_bytes"] * SEED_SAMPLES / done)
        return res

    def _result(self, name: str, done: int, seconds: float, stopped, **extra) -> dict:
        passes = done * len(LANGS)
        res = {"phase": name, "samples": done, "passes": passes, "seconds": round(seconds, 3), "stopped_early": stopped,
               "samples_per_s": round(done / seconds, 3) if done and seconds else None,
               "seconds_per_sample": round(seconds / done, 5) if done else None,
               "batch_size": self.data.batch_size}
        res.update(extra)
        if res.get("tokens"):
            res["tokens_per_s"] = round(res["tokens"] / seconds, 1) if seconds else None
        return res


# ------------------------------------------------------------------------------------ report
def report(res: dict, bench: Bench, smoke: bool) -> None:
    name = res["phase"]
    if not res.get("samples"):
        say(f"[{name}] measured nothing ({res.get('error') or res.get('stopped_early') or 'skipped'})")
        return
    cut = f", stopped early ({res['stopped_early']})" if res["stopped_early"] else ""
    gpu = res.get("peak_gpu_memory_bytes")
    gpu_text = "n/a (cpu)" if gpu is None else f"{gpu / 2**30:.2f} GiB"
    say(f"[{name}] {res['samples']} samples x {len(LANGS)} languages, batch {res['batch_size']}, in {res['seconds']:.2f} s"
        f"{cut}: {res['samples_per_s']:.2f} samples/s ({res['seconds_per_sample'] * 1000:.1f} ms per sample, "
        f"{res['samples_per_s'] * len(LANGS):.2f} sample-language passes/s"
        + (f", {res['tokens_per_s']:.0f} tokens/s" if res.get("tokens_per_s") else "")
        + f"); vision-tower images {res['vision_tower_images']}; peak GPU memory {gpu_text}")
    if name == "extract":
        t = res["total_s"] or 1.0
        say(f"[extract] time: forward (vision once per image + capture + early exit) {res['forward_s']:.2f} s "
            f"({res['forward_s'] / t:.0%}), store_batch {res['store_batch_s']:.2f} s ({res['store_batch_s'] / t:.0%}: "
            f"gather + NaN count + device-to-host copy {res['gather_copy_s']:.2f} s, LayerFileStream.append "
            f"(sha256 + crc32 + write) {res['append_s']:.2f} s), {res['checkpoints']} checkpoints (state(): fsync of "
            f"{len(bench.layers) * len(LANGS)} files) {res['commit_s']:.2f} s, finish() "
            + ("not run (stopped early: partial files aborted)" if res["finish_s"] is None else f"{res['finish_s']:.2f} s"))
        say(f"[extract] selection {res['selection']}, layout {res['layout']}: positions kept {res['positions_kept']:,d} "
            f"of {res['tokens']:,d} tokens; rows {human(res['row_bytes_written'])} -> {res['files']} final .pt files of "
            f"{human(res['final_bytes'])} (planned {human(res['expected_bytes'])}: padding, token ids/kinds, zip), "
            f"each byte written once: {human(res['bytes_written'])} at {human(res['write_bytes_per_s'] or 0)}/s over "
            f"the phase; NaN/Inf values {res['nan_values']}; file check {res['file_check']}")
    if name == "unit":
        for u in res["units"]:
            say(f"[unit] {u['language']}: run_unit {u['samples']} samples, all {bench.num_layers} layers, wall "
                f"{u['wall_s']:.2f} s = extraction loop {u['loop_s']:.2f} s + image cache fill "
                f"{u['image_cache_fill_s']:.2f} s + preflight {u['preflight_s']:.2f} s + plan_layout/set-up/finish/summary "
                f"{u['other_s']:.2f} s; vision-tower images {u['vision_tower_images']} (cache hit {u['image_cache_hit']}); "
                f"{u['files']} files, {human(u['bytes_written'])} (on disk {human(u['bytes_on_disk'])}); NaN/Inf "
                f"{u['nan_values']}")
        if not res["image_cache"]:
            say("[unit] no image_cache: this transformers has no mm_encoder_outputs; every unit ran the vision tower")
    proj = res.get("projected_seed_job_s")
    if proj is not None:
        note = " [smoke: tiny model on CPU, NOT a Gemma-3-4B figure]" if smoke else ""
        disk = res.get("projected_seed_job_bytes")
        how = ("2000 x the loop's seconds per sample + finish()" if name == "extract" else
               "2000 x the two units' wall seconds per sample: fixed costs scaled too, so an upper bound; "
               "model loading not included")
        say(f"[{name}] PROJECTED{note} seed job ({SEED_SAMPLES} samples x {SEED_LANGUAGES} languages x "
            f"{SEED_LAYERS} layers, selection {res.get('selection')}, bf16, batch {res['batch_size']}) on one GPU: "
            f"{proj / 60:.1f} min ({how}), writing {human(disk)} (needs {human(disk / GOAL_S)}/s sustained for "
            f"{GOAL_S / 60:.0f} min)  (goal <= {GOAL_S / 60:.0f} min: {verdict(proj <= GOAL_S)})")


def filesystem(path: Path) -> str:
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return f"{fstype} on {best or '?'}"


PHASES = ("disk", "bare", "capture", "extract", "unit")
WEIGHT = {"disk": 0.3, "bare": 0.6, "capture": 0.6, "extract": 3.0, "unit": 2.5}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None,
                   help="images for bare/capture/extract, each in 2 languages (default 160; smoke 4)")
    p.add_argument("--unit-samples", type=int, default=None, help="images per run_unit (default 64; smoke 4)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (the pipeline's --batch_size default is 1); smoke 2")
    p.add_argument("--budget-s", type=float, default=None,
                   help="hard wall-clock budget for the whole script, model build included (default 360; smoke 120)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)}")
    p.add_argument("--selection", default="all", help="token selection of extract/unit (the seed job: all)")
    p.add_argument("--layout", default="padded", choices=("padded", "ragged"), help="layer file layout (pipeline default padded)")
    p.add_argument("--checkpoint-interval", type=int, default=50, help="as layerwise-extract: commit every N samples")
    p.add_argument("--max-write-gb", type=float, default=24.0,
                   help="cap on one phase's layer files (also at most 40%% of the write folder's free space)")
    p.add_argument("--disk-check-gb", type=float, default=None, help="bytes for the disk phase (default 2; smoke 0.016)")
    p.add_argument("--write-dir", default=None,
                   help="parent of the work folder (samplesheet, layer files, image cache); default: the system temp dir")
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' default, sdpa)")
    p.add_argument("--smoke", action="store_true", help="tiny fixture architecture on the CPU, same code path")
    p.add_argument("--dry-run", dest="smoke", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--json-out", default=None)
    p.add_argument("--force-patched-diet", action="store_true", help=argparse.SUPPRESS)  # tests the fallback path
    args = p.parse_args()
    args.samples = args.samples or (4 if args.smoke else 160)
    args.unit_samples = args.unit_samples or (4 if args.smoke else 64)
    args.batch_size = args.batch_size or (2 if args.smoke else 8)
    args.budget_s = args.budget_s or (120.0 if args.smoke else 360.0)
    args.disk_check_gb = args.disk_check_gb or (0.016 if args.smoke else 2.0)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; choose from {list(PHASES)}")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()   # e.g. the image-processor backend notice
    if args.smoke:
        spec, device = tiny_spec(), torch.device("cpu")
        torch.set_num_threads(1)  # small shared CPUs: one thread gives steadier timings
    else:
        if not torch.cuda.is_available():
            say("no CUDA device: run on a GPU machine, or pass --smoke")
            return 2
        spec, device = GEMMA3_4B, torch.device("cuda")
    dtype = torch.bfloat16
    say(f"layerwise GPU benchmark{' (SMOKE: tiny fixture architecture on CPU)' if args.smoke else ''}: "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"cpus {os.cpu_count()}")

    work = Path(tempfile.mkdtemp(prefix="layerwise-gpu-bench-", dir=args.write_dir))
    results, out, bench = [], {}, None
    try:
        t0 = time.perf_counter()
        processor = make_processor(spec)
        config = make_config(spec, processor.tokenizer)
        model = build_model(config, spec, device, dtype, args.attn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        params = sum(q.numel() for q in model.parameters())
        say(f"model: {spec['name']}, {params:,d} parameters"
            + (f" (expected {spec['params']:,d}: {'ok' if params == spec['params'] else 'MISMATCH'})" if spec["params"] else "")
            + f", built on {device} in {time.perf_counter() - t0:.1f} s, dtype bf16; global layers "
            f"{[i for i, t in enumerate(model.config.text_config.layer_types) if t == 'full_attention']}, sliding "
            f"window {model.config.text_config.sliding_window}, RoPE {rope_summary(model.config.text_config)}; attention "
            f"{model.config._attn_implementation}; image processor {type(processor.image_processor).__name__}; weights "
            + (f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB on the GPU" if device.type == "cuda" else "on CPU"))

        t0 = time.perf_counter()
        n_data = max(args.samples, args.unit_samples)
        csv_path = build_dataset(work / "data", n_data, spec["image_px"])
        data = Data(processor, csv_path, args.samples, args.batch_size, dtype)
        bench = Bench(args, spec, model, processor, device, dtype, work, data)
        bench.data_csv = csv_path
        if args.force_patched_diet:
            bench.diet_path = "patched get_image_features"
        free = shutil.disk_usage(work).free
        bench.cap_bytes = min(args.max_write_gb * 1e9, free * 0.4)
        say(f"inputs: {n_data} synthetic samples ({'JPEG ' + str(spec['image_px']) + ' px' if spec['image_px'] else 'fixture PNGs'}"
            f"), encoded by layerwise.models.inputs.InputBuilder in {time.perf_counter() - t0:.1f} s: "
            f"{data.tokens[LANGS[0]] / args.samples:.0f} / {data.tokens[LANGS[1]] / args.samples:.0f} tokens per sample "
            f"({LANGS[0]} / {LANGS[1]}; {spec['mm_tokens_per_image']} image tokens); batch {args.batch_size}, layout "
            f"{args.layout}, selection {args.selection}, checkpoint every {args.checkpoint_interval}; write folder {work} "
            f"({filesystem(work)}, {free / 1e9:.0f} GB free, cap per phase {bench.cap_bytes / 1e9:.1f} GB); vision "
            f"tower once per image via {bench.diet_path}; budget {args.budget_s:.0f} s")

        if filesystem(work).startswith("tmpfs"):
            say(f"WARNING: {work} is in memory (tmpfs): write figures are not the local disk's; pass --write-dir")
        diet_diff = bench.check_diet()
        say(f"compute-diet check: max |plain - reused image features| over all captured layers of batch 0: {diet_diff:.3g}")
        out["compute_diet_max_abs_diff"] = diet_diff

        for i, name in enumerate(phases):
            left = deadline - time.perf_counter()
            share = left * WEIGHT[name] / sum(WEIGHT[x] for x in phases[i:])
            if left < 5:
                say(f"[{name}] skipped: budget spent")
                results.append({"phase": name, "samples": 0, "skipped": "budget"})
                continue
            try:
                if name == "disk":
                    d = disk_check(work, int(args.disk_check_gb * 1e9))
                    say(f"[disk] {human(d['bytes'])} on {filesystem(work)}: write+fsync {human(d['write_fsync_Bps'])}/s, "
                        f"sha256 {human(d['sha256_Bps'])}/s, crc32 {human(d['crc32_Bps'])}/s, PtFileWriter (write + "
                        f"sha256 + crc32 + fsync) {human(d['ptfile_Bps'])}/s  (single thread each)")
                    results.append({"phase": "disk", **{k: round(v) for k, v in d.items()}})
                    continue
                if name in ("bare", "capture"):
                    res = bench.run_forward_phase(name, share, deadline)
                elif name == "extract":
                    res = bench.run_extract(share, deadline)
                else:
                    res = bench.run_units(share, deadline)
            except Exception as exc:  # a broken phase must not cost the others their figures
                import traceback

                traceback.print_exc()
                res = {"phase": name, "samples": 0, "error": f"{type(exc).__name__}: {exc}"}
            results.append(res)
            report(res, bench, args.smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r["phase"]: r for r in results if r.get("samples")}
    say()
    ratios = {}
    if "bare" in by:
        for name in ("capture", "extract", "unit"):
            if name in by:
                ratios[name] = by["bare"]["seconds_per_sample"] / by[name]["seconds_per_sample"]
        if "capture" in ratios:
            say(f"ratio capture/bare (hooks + early exit, nothing copied; same inputs): {ratios['capture']:.3f}")
        if "extract" in ratios:
            say(f"RATIO capture+write/bare throughput (extract vs bare forward, same inputs, vision once per image in "
                f"both): {ratios['extract']:.3f}  (goal >= {GOAL_RATIO}: {verdict(ratios['extract'] >= GOAL_RATIO)})")
        if "unit" in ratios:
            say(f"ratio run_unit end to end/bare (incl. preflight, input encoding, image cache, finish): {ratios['unit']:.3f}")
    projected = {name: r["projected_seed_job_s"] for name, r in by.items() if r.get("projected_seed_job_s") is not None}
    head = "unit" if "unit" in projected else ("extract" if "extract" in projected else None)
    parts = []
    if head:
        parts.append(f"(a) seed job projected {projected[head] / 60:.1f} min from {head}"
                     + (f" (hot path alone {projected['extract'] / 60:.1f} min)" if head == "unit" and "extract" in projected else "")
                     + f" -> goal <= {GOAL_S / 60:.0f} min {verdict(projected[head] <= GOAL_S)}")
    if "extract" in ratios:
        parts.append(f"(b) capture+write/bare {ratios['extract']:.3f} -> goal >= {GOAL_RATIO} "
                     f"{verdict(ratios['extract'] >= GOAL_RATIO)}")
    failed = [r["phase"] for r in results if r.get("error")]
    say("Summary: " + "; ".join(parts or ["nothing measured"])
        + (f"; FAILED phases: {', '.join(failed)}" if failed else "")
        + f". Wall time {time.perf_counter() - t_start:.1f} s of a {args.budget_s:.0f} s budget.")
    out.update({
        "smoke": args.smoke, "dry_run": args.smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "model": spec["name"],
        "parameters": params,
        "samples": args.samples, "unit_samples": args.unit_samples, "batch_size": args.batch_size,
        "layout": args.layout, "selection": args.selection, "languages": len(LANGS),
        "layers": bench.num_layers if bench else None, "compute_diet_path": bench.diet_path if bench else None,
        "seed_job": {"samples": SEED_SAMPLES, "languages": SEED_LANGUAGES, "layers": SEED_LAYERS, "goal_s": GOAL_S,
                     "goal_ratio": GOAL_RATIO},
        "ratios_vs_bare": {k: round(v, 4) for k, v in ratios.items()}, "projected_seed_job_s": projected,
        "phases": results, "failed_phases": failed, "wall_s": round(time.perf_counter() - t_start, 1),
        "budget_s": args.budget_s,
    })
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    say("BENCHMARK_JSON " + json.dumps(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
