#!/usr/bin/env python3
"""GPU benchmark of layerwise extraction at Gemma-3-4B size, self-contained (no network, no weights).

    python3 benchmarks/gpu_benchmark.py                      # on a GPU machine, from the repo root
    python3 benchmarks/gpu_benchmark.py --dry-run            # same code path, tiny config, CPU

The full Gemma-3-4B-it architecture (config embedded below; 4,300,079,472 parameters) is built
with random bf16 weights directly on the GPU. Inputs are built without a tokenizer, token by
token the way Gemma3Processor lays them out (256 image soft tokens between <start_of_image> and
<end_of_image>, token_type_ids 1 on them), with random text tokens and random 896 px pixels; each
sample has two "languages" (two prompt/caption token sets) over the same image.

Phases (each gets a share of `--budget-s`; a phase cut short reports what it measured):
  bare          model.model(..., output_hidden_states=True) per language, nothing leaves the GPU
  caption       layerwise capture_layers/run_until for all 34 layers, caption tokens -> LayerFileWriter
  caption-diet  as caption, but the vision tower runs once per image (get_image_features) and the
                features are reused for both languages through mm_encoder_outputs
  all           as caption with every token kept (the I/O-heavy case; capped by --max-write-gb)
  all-diet      (optional) all tokens with the compute diet

The extraction phases use layerwise's own hot path: capture.capture_layers + capture.run_until,
one gather and one device-to-host copy per layer and batch, extract.store_batch (NaN count and policy on the device)
and store.LayerFileWriter.append / state (checkpoint) / finish, writing real files into a local
scratch folder. Figures: samples/s, GPU peak memory, bytes/s written, and the projected wall time
of the seed's job (2000 samples x 2 languages x 34 layers) with the goal <= 10 min on one GPU.
The last line is `BENCHMARK_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's own layerwise
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED_SAMPLES, SEED_LANGUAGES, GOAL_S = 2000, 2, 600.0
LANGS = ("lang_a", "lang_b")

# google/gemma-3-4b-it (docs: /work/shared/notes/facts.md): text, vision and the token ids that matter.
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
    # pad, eos, bos, <start_of_turn>, <end_of_turn>, "\n", "\n\n", "user", "model", boi, eoi, image soft token
    "ids": dict(pad=0, eos=1, bos=2, sot=105, eot=106, nl=107, nlnl=108, user=2364, model=4368,
                boi=255_999, eoi=256_000, image=262_144),
    "text_id_range": (1_000, 200_000),  # random "word" tokens, clear of every special id
    "params": 4_300_079_472,
}
# The same architecture class at toy size, for --dry-run on a CPU.
TINY = {
    "name": "tiny gemma 3 (dry run)",
    "text": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
        max_position_embeddings=2048, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
    ),
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=64, patch_size=8, layer_norm_eps=1e-6, vision_use_head=False),
    "mm_tokens_per_image": 16,
    "ids": dict(pad=0, eos=1, bos=2, sot=105, eot=106, nl=107, nlnl=108, user=300, model=301,
                boi=255, eoi=256, image=262),
    "text_id_range": (310, 500),
    "params": None,
}
PROMPT_LEN = {"lang_a": 7, "lang_b": 9}   # "Describe the person in this image." ~7 tokens; Arabic a bit longer
CAPTION_LEN = (14, 26)                    # ~20 caption tokens, varied so batches get padded


def say(line: str = "") -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------------ model
def make_config(spec: dict):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = spec["ids"]
    eos = [ids["eos"], ids["eot"]]
    kwargs = dict(spec["text"])
    try:  # transformers 5.x: RoPE per layer type
        text = Gemma3TextConfig(pad_token_id=ids["pad"], eos_token_id=eos, bos_token_id=ids["bos"], **kwargs)
    except (TypeError, ValueError):
        text = None
    if text is None or rope_summary(text) != rope_summary_of(kwargs["rope_parameters"]):
        rope = kwargs.pop("rope_parameters")  # older releases: rope_theta / rope_local_base_freq / rope_scaling
        full, local = rope["full_attention"], rope["sliding_attention"]
        text = Gemma3TextConfig(pad_token_id=ids["pad"], eos_token_id=eos, bos_token_id=ids["bos"],
                                rope_theta=full["rope_theta"], rope_local_base_freq=local["rope_theta"],
                                rope_scaling={"rope_type": full["rope_type"], "factor": full["factor"]}, **kwargs)
    return Gemma3Config(text_config=text, vision_config=SiglipVisionConfig(**spec["vision"]),
                        mm_tokens_per_image=spec["mm_tokens_per_image"], boi_token_index=ids["boi"],
                        eoi_token_index=ids["eoi"], image_token_index=ids["image"], pad_token_id=ids["pad"],
                        eos_token_id=eos, bos_token_id=ids["bos"])


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


def build_model(spec: dict, device, dtype, attn: str | None):
    """Random-init Gemma3ForConditionalGeneration built directly on `device` in `dtype`."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    config = make_config(spec)
    kwargs = {"attn_implementation": attn} if attn else {}
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=dtype, **kwargs)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        # Norm weights are zeros (Gemma's RMSNorm scales by 1 + weight); linear/embedding weights are
        # normal(0, 0.02). transformers zero-initialises the projector: randomise it or images vanish.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, spec["vision"]["hidden_size"] ** -0.5)
    return model


# ------------------------------------------------------------------------------------ inputs
class Inputs:
    """Token sequences laid out like Gemma3Processor's, for `n` samples x 2 languages."""

    def __init__(self, spec: dict, n: int, seed: int = 0):
        import torch

        self.spec, self.n = spec, n
        ids, (lo, hi) = spec["ids"], spec["text_id_range"]
        g = torch.Generator().manual_seed(seed)

        def rand(k: int) -> list[int]:
            return torch.randint(lo, hi, (k,), generator=g).tolist()

        prompts = {lang: rand(PROMPT_LEN[lang]) for lang in LANGS}
        head = [ids["bos"], ids["sot"], ids["user"], ids["nl"], ids["nlnl"], ids["boi"]]
        image = [ids["image"]] * spec["mm_tokens_per_image"]
        self.seqs: dict[str, list[tuple[list[int], int]]] = {lang: [] for lang in LANGS}
        for _ in range(n):
            for lang in LANGS:
                caption = rand(int(torch.randint(CAPTION_LEN[0], CAPTION_LEN[1] + 1, (1,), generator=g)))
                prefix = (head + image + [ids["eoi"], ids["nlnl"]] + prompts[lang]
                          + [ids["eot"], ids["nl"], ids["sot"], ids["model"], ids["nl"]])
                # layerwise's caption mask: everything after the "model\n" header (incl. <end_of_turn>\n)
                self.seqs[lang].append((prefix + caption + [ids["eot"], ids["nl"]], len(prefix)))

    def batch(self, lang: str, start: int, stop: int) -> dict:
        """Right-padded batch: CPU tensors input_ids, attention_mask, token_type_ids, caption_mask."""
        import torch

        rows = self.seqs[lang][start:stop]
        t = max(len(s) for s, _ in rows)
        pad, img = self.spec["ids"]["pad"], self.spec["ids"]["image"]
        input_ids = torch.full((len(rows), t), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), t), dtype=torch.bool)
        caption = torch.zeros((len(rows), t), dtype=torch.bool)
        for i, (seq, cap_start) in enumerate(rows):
            input_ids[i, :len(seq)] = torch.tensor(seq)
            attention[i, :len(seq)] = True
            caption[i, cap_start:len(seq)] = True
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": (input_ids == img).long(),
                "caption_mask": caption}

    def pixels(self, start: int, count: int, device, dtype):
        import torch

        size = self.spec["vision"]["image_size"]
        g = torch.Generator(device=device).manual_seed(10_000 + start)
        return torch.randn((count, 3, size, size), generator=g, device=device, dtype=torch.float32).to(dtype)

    def tokens(self, lang: str, start: int, stop: int) -> int:
        return sum(len(s) for s, _ in self.seqs[lang][start:stop])


# ------------------------------------------------------------------------------------ phases
class Phase:
    def __init__(self, name: str, selection: str | None, diet: bool):
        self.name, self.selection, self.diet = name, selection, diet


PHASES = {
    "bare": Phase("bare", None, False),
    "caption": Phase("caption", "caption", False),
    "caption-diet": Phase("caption-diet", "caption", True),
    "all": Phase("all", "all", False),
    "all-diet": Phase("all-diet", "all", True),
}
WEIGHT = {"bare": 1.0, "caption": 1.0, "caption-diet": 1.0, "all": 2.0, "all-diet": 2.0}


class Bench:
    def __init__(self, args, spec, model, device, dtype, scratch: Path):
        import torch

        from layerwise.capture import decoder_layers

        self.args, self.spec, self.model, self.device, self.dtype = args, spec, model, device, dtype
        self.scratch = scratch
        self.num_layers = len(decoder_layers(model))
        self.layers = list(range(self.num_layers))
        self.hidden = spec["text"]["hidden_size"]
        self.inputs = Inputs(spec, args.samples)
        self.row_bytes = self.hidden * torch.empty((), dtype=dtype).element_size()
        import inspect

        self.diet_path = ("mm_encoder_outputs" if "mm_encoder_outputs" in inspect.signature(model.model.forward).parameters
                          else "patched get_image_features")

    def check_diet(self) -> float:
        """Max |plain - diet| over every captured layer of the first batch (should be ~0)."""
        stop = min(self.args.batch_size, self.args.samples)
        pixels = self.inputs.pixels(0, stop, self.device, self.dtype)
        b = self.inputs.batch(LANGS[0], 0, stop)
        plain = self.forward_capture(self.model_inputs(b, pixels, None), None)
        features = self.image_features(pixels)
        diet = self.forward_capture(self.model_inputs(b, pixels, features), features)
        return max(float((plain[k].float() - diet[k].float()).abs().max()) for k in plain)

    # -- one forward ---------------------------------------------------------------------------
    def model_inputs(self, b: dict, pixels, features) -> dict:
        inputs = {k: b[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        inputs["attention_mask"] = inputs["attention_mask"].long()
        if features is None:
            inputs["pixel_values"] = pixels
        elif self.diet_path == "mm_encoder_outputs":
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        else:  # older transformers: no mm_encoder_outputs; the vision call is replaced by the cached features
            inputs["pixel_values"] = pixels
        return inputs

    def image_features(self, pixels):
        import torch

        with torch.inference_mode():
            out = self.model.model.get_image_features(pixel_values=pixels)
        self._returns_output = not isinstance(out, torch.Tensor)
        return getattr(out, "pooler_output", out)

    def forward_capture(self, inputs: dict, features):
        import torch

        from layerwise.capture import capture_layers, run_until

        restore = None
        if features is not None and self.diet_path != "mm_encoder_outputs":
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            def cached(*_a, **k):  # what the original returns, with the features computed once per image
                if k.get("return_dict") or self._returns_output:
                    return BaseModelOutputWithPooling(pooler_output=features)
                return features

            restore = self.model.model.get_image_features
            self.model.model.get_image_features = cached
        try:
            with torch.inference_mode(), capture_layers(self.model, self.layers) as captured:
                run_until(self.model, **inputs)
        finally:
            if restore is not None:
                self.model.model.get_image_features = restore
        return dict(captured)

    # -- the engine's per-batch hot path (layerwise.extract.store_batch) --------------------------
    def write_batch(self, captured: dict, b: dict, selection: str, lang: str, writers: dict, start: int) -> int:
        from layerwise.extract import store_batch

        keep = b["caption_mask"] if selection == "caption" else b["attention_mask"]
        sample_ids = [f"s{start + i}" for i in range(keep.shape[0])]
        return store_batch(captured, keep, b["input_ids"], selection, "zero", sample_ids,
                           {layer: writers[(layer, lang)] for layer in captured})

    def make_writers(self, phase_dir: Path) -> dict:
        from layerwise import schema
        from layerwise.store import LayerFileWriter

        return {(layer, lang): LayerFileWriter(phase_dir / schema.layer_filename(layer, lang),
                                               phase_dir / ".partial" / f"layer_{layer}", self.hidden, self.dtype,
                                               self.args.layout)
                for layer in self.layers for lang in LANGS}

    # -- a phase ---------------------------------------------------------------------------------
    def run(self, phase: Phase, share_s: float, deadline: float) -> dict:
        import torch

        from layerwise.images import VisionCallCounter
        from layerwise.store import atomic_torch_save

        args, n, bs = self.args, self.args.samples, self.args.batch_size
        cuda = self.device.type == "cuda"
        phase_dir = self.scratch / phase.name
        shutil.rmtree(phase_dir, ignore_errors=True)
        phase_dir.mkdir(parents=True)
        writers = self.make_writers(phase_dir) if phase.selection else None
        max_bytes = args.max_write_gb * 1e9

        def one_batch(start: int, stop: int, write: bool) -> tuple[int, int, float]:
            """(positions kept, tokens, forward seconds) for samples start:stop in both languages."""
            pixels = self.inputs.pixels(start, stop - start, self.device, self.dtype)
            t0 = time.perf_counter()
            features = self.image_features(pixels) if phase.diet else None
            fwd, kept, tokens = 0.0, 0, 0
            for lang in LANGS:
                b = self.inputs.batch(lang, start, stop)
                tokens += int(b["attention_mask"].sum())
                inputs = self.model_inputs(b, pixels, features)
                if phase.selection is None:
                    with torch.inference_mode():
                        self.model.model(**inputs, output_hidden_states=True, use_cache=False)
                    if cuda:
                        torch.cuda.synchronize()
                    continue
                captured = self.forward_capture(inputs, features)
                if cuda:
                    torch.cuda.synchronize()
                fwd += time.perf_counter() - t0
                if write:
                    kept += self.write_batch(captured, b, phase.selection, lang, writers, start)
                else:  # warm-up: the same gathers and copies, nothing written
                    keep = (b["caption_mask"] if phase.selection == "caption" else b["attention_mask"]).to(self.device)
                    for hidden in captured.values():
                        hidden[keep].to("cpu")
                del captured
                t0 = time.perf_counter()
            if phase.selection is None:
                fwd = time.perf_counter() - t0
            return kept, tokens, fwd

        # warm-up (kernels, cuBLAS handles, allocator) on the first batch, not timed
        one_batch(0, min(bs, n), write=False)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        counter = VisionCallCounter(self.model)
        started = time.perf_counter()
        loop_limit = started + share_s
        done = kept = tokens = 0
        fwd_s = 0.0
        stopped = None
        last_commit = 0
        try:
            while done < n:
                now = time.perf_counter()
                appended = kept * self.row_bytes
                finish_guess = appended / 0.5e9 if phase.selection else 0.0  # assume >= 0.5 GB/s to finish
                if now + finish_guess > min(loop_limit, deadline):
                    stopped = "budget"
                    break
                if appended >= max_bytes:
                    stopped = f"--max-write-gb {args.max_write_gb}"
                    break
                stop = min(done + bs, n)
                k, t, f = one_batch(done, stop, write=phase.selection is not None)
                kept, tokens, fwd_s = kept + k, tokens + t, fwd_s + f
                done = stop
                if writers and done - last_commit >= args.checkpoint_interval and done < n:
                    # Extractor._commit: flush + fsync every writer, save progress atomically
                    state = {"done": done, "writers": {f"{l}_{g}": w.state() for (l, g), w in writers.items()}}
                    atomic_torch_save(state, phase_dir / ".partial" / "progress.pt")
                    last_commit = done
        finally:
            counter.close()
        loop_s = time.perf_counter() - started
        finish_s, final_bytes = 0.0, 0
        if writers:
            t0 = time.perf_counter()
            sample_ids = [f"s{i:05d}" for i in range(done)]
            for (layer, lang), w in writers.items():
                meta = {"layer": layer, "genders": ["unknown"] * done, "language": lang, "sample_ids": sample_ids,
                        "token_selection": phase.selection, "nan_policy": "zero", "model_id": self.spec["name"],
                        "model_revision": "random", "num_layers": self.num_layers}
                final_bytes += w.finish(meta)
            finish_s = time.perf_counter() - t0
        total_s = loop_s + finish_s
        nan_values = int(sum(sum(w.nan_counts) for w in writers.values())) if writers else 0
        shutil.rmtree(phase_dir, ignore_errors=True)
        passes = done * len(LANGS)
        res = {
            "phase": phase.name, "selection": phase.selection, "compute_diet": phase.diet,
            "samples": done, "passes": passes, "stopped_early": stopped, "tokens": tokens, "positions_kept": kept,
            "loop_s": round(loop_s, 3), "forward_s": round(fwd_s, 3), "finish_s": round(finish_s, 3),
            "total_s": round(total_s, 3),
            "samples_per_s": round(done / total_s, 3) if total_s and done else None,
            "passes_per_s": round(passes / total_s, 3) if total_s and done else None,
            "tokens_per_s": round(tokens / total_s, 1) if total_s and done else None,
            "rows_bytes": kept * self.row_bytes, "final_bytes": final_bytes,
            "write_bytes_per_s": round((kept * self.row_bytes + final_bytes) / total_s) if total_s else None,
            "vision_tower_images": counter.images, "nan_values": nan_values,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
        if done:
            res["projected_seed_job_s"] = round(SEED_SAMPLES * total_s / done, 1)
            res["projected_seed_job_bytes"] = int((kept * self.row_bytes + final_bytes) * SEED_SAMPLES / done)
        return res


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def report(res: dict, dry_run: bool) -> None:
    name = res["phase"]
    if not res["samples"]:
        say(f"[{name}] measured nothing (stopped: {res['stopped_early']})")
        return
    cut = f", stopped early ({res['stopped_early']})" if res["stopped_early"] else ""
    say(f"[{name}] {res['samples']} samples x {len(LANGS)} languages in {res['total_s']:.2f} s{cut}: "
        f"{res['samples_per_s']:.2f} samples/s ({res['passes_per_s']:.2f} sample-language passes/s, "
        f"{res['tokens_per_s']:.0f} tokens/s); forward {res['forward_s']:.2f} s, loop {res['loop_s']:.2f} s, "
        f"finish {res['finish_s']:.2f} s")
    gpu = res["peak_gpu_memory_bytes"]
    say(f"[{name}] vision-tower images {res['vision_tower_images']}; peak GPU memory "
        f"{'n/a (cpu)' if gpu is None else f'{gpu / 2**30:.2f} GiB'}; NaN/Inf values {res['nan_values']}")
    if res["selection"]:
        say(f"[{name}] positions kept {res['positions_kept']:,d}; bytes written {human(res['rows_bytes'])} rows "
            f"(scratch) + {human(res['final_bytes'])} final .pt at {human(res['write_bytes_per_s'])}/s")
    proj = res["projected_seed_job_s"]
    extra = f", writing {human(res['projected_seed_job_bytes'])}" if res["selection"] else ""
    note = " [dry run: tiny model on CPU, NOT a Gemma-3-4B figure]" if dry_run else ""
    say(f"[{name}] PROJECTED{note} seed job ({SEED_SAMPLES} samples x {SEED_LANGUAGES} languages x 34 layers): "
        f"{proj / 60:.1f} min{extra}  (goal <= {GOAL_S / 60:.0f} min on one GPU: "
        f"{'MET' if proj <= GOAL_S else 'NOT MET'})")


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None, help="images per phase (each in 2 languages); default 200, dry run 12")
    p.add_argument("--batch-size", type=int, default=None, help="default 8, dry run 4")
    p.add_argument("--budget-s", type=float, default=None, help="hard wall-clock budget for the whole script (default 420, dry run 120)")
    p.add_argument("--phases", default="bare,caption,caption-diet,all",
                   help=f"comma-separated, in order, from {', '.join(PHASES)}")
    p.add_argument("--layout", default="padded", choices=("padded", "ragged"), help="layer file layout (pipeline default padded)")
    p.add_argument("--checkpoint-interval", type=int, default=50, help="as layerwise-extract: commit every N samples")
    p.add_argument("--max-write-gb", type=float, default=24.0, help="stop a phase once its scratch rows reach this")
    p.add_argument("--scratch", default=None, help="folder for the written files (default: a temp dir; never $OUT)")
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' default, sdpa)")
    p.add_argument("--dry-run", action="store_true", help="tiny config on the CPU, same code path")
    p.add_argument("--json-out", default=None)
    p.add_argument("--force-patched-diet", action="store_true", help=argparse.SUPPRESS)  # tests the fallback path
    args = p.parse_args()
    args.samples = args.samples or (12 if args.dry_run else 200)
    args.batch_size = args.batch_size or (4 if args.dry_run else 8)
    args.budget_s = args.budget_s or (120.0 if args.dry_run else 420.0)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; choose from {list(PHASES)}")

    import torch
    import transformers

    if args.dry_run:
        spec, device = TINY, torch.device("cpu")
        torch.set_num_threads(1)  # small shared CPUs: one thread gives steadier timings
    else:
        if not torch.cuda.is_available():
            say("no CUDA device: run on a GPU machine, or pass --dry-run")
            return 2
        spec, device = GEMMA3_4B, torch.device("cuda")
    dtype = torch.bfloat16
    say(f"layerwise GPU benchmark{' (DRY RUN, tiny config on CPU)' if args.dry_run else ''}: "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")

    t0 = time.perf_counter()
    model = build_model(spec, device, dtype, args.attn)
    if device.type == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {spec['name']}, {params:,d} parameters"
        + (f" (expected {spec['params']:,d}: {'ok' if params == spec['params'] else 'MISMATCH'})" if spec["params"] else "")
        + f", built on {device} in {time.perf_counter() - t0:.1f} s, dtype bf16; global layers "
        f"{[i for i, t in enumerate(model.config.text_config.layer_types) if t == 'full_attention']}, "
        f"sliding window {model.config.text_config.sliding_window}, RoPE {rope_summary(model.config.text_config)}; attention "
        f"{model.config._attn_implementation}, weights "
        + (f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB on the GPU" if device.type == "cuda" else "on CPU"))

    scratch = Path(tempfile.mkdtemp(prefix="layerwise-gpu-bench-", dir=args.scratch))
    free = shutil.disk_usage(scratch).free
    args.max_write_gb = min(args.max_write_gb, free * 0.4 / 1e9)  # rows + final files must both fit
    bench = Bench(args, spec, model, device, dtype, scratch)
    if args.force_patched_diet:
        bench.diet_path = "patched get_image_features"
    say(f"inputs: {args.samples} samples x {len(LANGS)} languages, batch {args.batch_size}, "
        f"{bench.inputs.tokens(LANGS[0], 0, args.samples) / args.samples:.0f} / "
        f"{bench.inputs.tokens(LANGS[1], 0, args.samples) / args.samples:.0f} tokens per sample "
        f"({spec['mm_tokens_per_image']} image tokens), layout {args.layout}; scratch {scratch} "
        f"({filesystem(scratch)}, {free / 1e9:.0f} GB free, phase cap {args.max_write_gb:.1f} GB); compute diet via "
        f"{bench.diet_path}; budget {args.budget_s:.0f} s")

    results = []
    diet_diff = None
    if any(PHASES[x].diet for x in phases):
        diet_diff = bench.check_diet()
        say(f"compute-diet check: max |plain - reused features| over all captured layers of batch 0: {diet_diff:.3g}")
    try:
        for i, name in enumerate(phases):
            left = deadline - time.perf_counter()
            weights = sum(WEIGHT[x] for x in phases[i:])
            share = left * WEIGHT[name] / weights
            if left < 5:
                say(f"[{name}] skipped: budget spent")
                results.append({"phase": name, "skipped": "budget"})
                continue
            res = bench.run(PHASES[name], share, deadline)
            results.append(res)
            report(res, args.dry_run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    by = {r["phase"]: r for r in results if r.get("samples")}
    say()
    if "bare" in by:
        for name, r in by.items():
            if name != "bare":
                say(f"ratio {name}/bare throughput: {r['samples_per_s'] / by['bare']['samples_per_s']:.3f}")
    goals = {name: r["projected_seed_job_s"] <= GOAL_S for name, r in by.items() if r["selection"]}
    say("Summary: " + "; ".join(f"{name} projected {by[name]['projected_seed_job_s'] / 60:.1f} min "
                                f"({'MET' if ok else 'NOT MET'})" for name, ok in goals.items())
        + f". Wall time {time.perf_counter() - t_start:.1f} s of a {args.budget_s:.0f} s budget.")
    out = {
        "dry_run": args.dry_run, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "model": spec["name"],
        "parameters": params, "samples": args.samples, "batch_size": args.batch_size, "layout": args.layout,
        "languages": len(LANGS), "layers": bench.num_layers, "compute_diet_path": bench.diet_path,
        "compute_diet_max_abs_diff": diet_diff,
        "seed_job": {"samples": SEED_SAMPLES, "languages": SEED_LANGUAGES, "layers": 34, "goal_s": GOAL_S},
        "phases": results, "wall_s": round(time.perf_counter() - t_start, 1), "budget_s": args.budget_s,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    say("BENCHMARK_JSON " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
