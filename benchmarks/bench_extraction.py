#!/usr/bin/env python3
"""CPU benchmark of the layerwise extraction engine: one run prints every figure.

    .venv/bin/python benchmarks/bench_extraction.py                    # tiny fixture, 16 samples
    .venv/bin/python benchmarks/bench_extraction.py --config medium    # larger random Gemma 3

Figures (see benchmarks/README.md for what each one means and its goal):

  [a] extraction throughput of all layers (run_unit: inputs, forward, gather, writing) against a
      bare `model.model(..., output_hidden_states=True)` loop over the same inputs and batch size;
  [b] bytes written by the write-once writer (layerfile.LayerFileStream: each layer file is streamed
      once into its final .pt) against the payload, ragged and padded layouts: measured as the sum
      of the final files' sizes (os.stat), cross-checked with the kernel's /proc/self/io counters
      (wchar, write_bytes) over the whole run_unit;
  [c] peak host memory at N and 4N samples, each in a fresh process (ru_maxrss and sampled RssAnon);
  [d] vision-tower images: one unit without `image_cache` against two units of the same shard
      (both languages) sharing one `image_cache`, and per simulated pipeline run (2 languages x 2
      layer groups x 2 shards) without and with the shared cache (images.shared_features);
  [e] decoder-layer forwards of a 4-group layer split against the default single group.

Everything runs on the CPU with random weights; no network. Timing figures of the tiny model are
dominated by per-batch and per-sample overhead (its forward pass is ~milliseconds), which is what
makes them a good detector of overhead on the hot path; absolute GPU figures come from
benchmarks/gpu_benchmark.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmark the checkout's layerwise, as bin/ scripts do
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # run_unit's progress bar would clutter the figures

GOAL_RATIO = 0.9
GOAL_BYTES = 1.02
GOAL_MEMORY = 0.10
LANGUAGES = ("english", "arabic")

# A larger random-init Gemma 3 (same architecture class) for --config medium.
MEDIUM_IMAGE_SIZE, MEDIUM_PATCH, MEDIUM_MM_TOKENS = 224, 14, 64  # 16x16 patches pooled 2x2 to 8x8
MEDIUM_TEXT = dict(
    hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
    head_dim=128, query_pre_attn_scalar=128, sliding_window=64, max_position_embeddings=4096,
    layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)
MEDIUM_VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                     image_size=MEDIUM_IMAGE_SIZE, patch_size=MEDIUM_PATCH, layer_norm_eps=1e-6,
                     vision_use_head=False)


def say(line: str = "") -> None:
    print(line, flush=True)


def mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ------------------------------------------------------------------------------------ set-up
def build_medium_model(out_dir: Path) -> Path:
    """Random-init Gemma3ForConditionalGeneration (float32) + processor at 224 px / 64 image tokens."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from tests.support import fixtures

    tokenizer = fixtures.make_tokenizer()
    image_processor = Gemma3ImageProcessorPil(size={"height": MEDIUM_IMAGE_SIZE, "width": MEDIUM_IMAGE_SIZE},
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=fixtures.CHAT_TEMPLATE, image_seq_length=MEDIUM_MM_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    eos = [1, ids("<end_of_turn>")]
    text = Gemma3TextConfig(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=eos, bos_token_id=2, **MEDIUM_TEXT)
    config = Gemma3Config(text_config=text, vision_config=SiglipVisionConfig(**MEDIUM_VISION),
                          mm_tokens_per_image=MEDIUM_MM_TOKENS, boi_token_index=ids("<start_of_image>"),
                          eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
                          pad_token_id=0, eos_token_id=eos, bos_token_id=2)
    torch.manual_seed(fixtures.SEED)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():  # transformers zero-initialises the projector: image features would all be 0
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, MEDIUM_VISION["hidden_size"] ** -0.5)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def prepare(config: str, n_samples: int, work: Path) -> tuple[Path, Path]:
    """(model dir, samplesheet with n_samples rows) for the chosen config."""
    from tests.support import fixtures

    if config == "tiny":
        model_dir = fixtures.ensure_fixtures(ROOT / "tests" / "fixtures" / "build")[0]["model"]
    else:
        model_dir = build_medium_model(work / "model")
    samplesheet = fixtures.build_dataset(work / "data", n_samples)
    from tests.support.sheets import verified_sheet  # what a unit reads: PREFLIGHT's verified sheet

    return Path(model_dir), verified_sheet(samplesheet, work / "verified")


def unit_cfg(model_dir: Path, samplesheet: Path, out: Path, **kw):
    from layerwise.extract.unit import UnitConfig

    base = dict(samplesheet=str(samplesheet), model=str(model_dir), language="english", layers="all",
                out_dir=str(out), dtype="float32", device="cpu", token_selection="all", layout="padded")
    base.update(kw)
    return UnitConfig(**base)


def round_robin(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant: one warm-up call each, then `repeats` interleaved rounds.

    Interleaving makes load from other processes on the machine hit every variant alike.
    """
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
    return times


def final_bytes(out_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(out_dir).glob("layer_*.pt"))


def proc_io() -> dict[str, int]:
    """This process's I/O counters (/proc/self/io): wchar = bytes passed to write(), write_bytes =
    bytes the kernel accounted to storage (page-rounded); {} where the kernel does not provide them."""
    try:
        with open("/proc/self/io") as fh:
            return {k: int(v) for k, _, v in (line.partition(": ") for line in fh.read().splitlines()) if v}
    except (OSError, ValueError):
        return {}


def io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before if k in after}


# ------------------------------------------------------------------------------------ [a] + [b]
def bench_throughput(args, loaded, model_dir, samplesheet, work) -> dict:
    import torch

    from layerwise.extract.unit import Extractor, preflight, run_unit

    n, bs = args.samples, args.batch_size
    rows = f"0:{n}"
    base_cfg = unit_cfg(model_dir, samplesheet, work / "a_unit", rows=rows, batch_size=bs)
    pre = preflight(base_cfg)
    ext = Extractor(loaded)
    chunks = [pre.samples[i:i + bs] for i in range(0, len(pre.samples), bs)]
    batches = [ext.encode(c, pre.prompt, base_cfg.language) for c in chunks]
    tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
    model = loaded.model

    def encode_only():
        for c in chunks:
            ext.encode(c, pre.prompt, base_cfg.language)

    @torch.inference_mode()
    def bare_base():
        for b in batches:
            model.model(**b.inputs, output_hidden_states=True, use_cache=False)

    @torch.inference_mode()
    def bare_full():
        for b in batches:
            model(**b.inputs, output_hidden_states=True, use_cache=False)

    def capture_only():
        for b in batches:
            ext.forward(b, pre.layers)

    summaries: dict[str, list[dict]] = {"padded": [], "ragged": []}
    io_runs: dict[str, list[dict]] = {"padded": [], "ragged": []}

    def unit(layout: str):
        def go():
            out = work / f"a_unit_{layout}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = unit_cfg(model_dir, samplesheet, out, rows=rows, batch_size=bs, layout=layout)
            before = proc_io()
            summaries[layout].append(run_unit(cfg, loaded=loaded))
            io_runs[layout].append(io_delta(before, proc_io()))
        return go

    variants = {"encode": encode_only, "bare": bare_base, "full": bare_full, "capture": capture_only,
                "unit_padded": unit("padded"), "unit_ragged": unit("ragged")}
    r = args.repeats
    times = round_robin(variants, r)
    med = {k: statistics.median(v) for k, v in times.items()}
    t_encode, t_bare, t_capture = med["encode"], med["bare"], med["capture"]
    t_unit = med["unit_padded"]
    loop_s = statistics.median(s["seconds"] for s in summaries["padded"][1:])  # run_unit's own extraction loop
    s_pad, s_rag = summaries["padded"][-1], summaries["ragged"][-1]

    def rate(key):
        seconds = med[key] if isinstance(key, str) else key
        spread = f", best {min(times[key]) * 1000:7.1f} ms" if isinstance(key, str) else ""
        return f"{n / seconds:8.2f} samples/s {tokens / seconds:10.1f} tokens/s  (median {seconds * 1000:7.1f} ms{spread})"

    def per_repeat(num, den):  # ratio of throughputs = ratio of times, paired within each round
        return statistics.median(sum(times[k][i] for k in num) / sum(times[k][i] for k in den) for i in range(r))

    L = len(pre.layers)
    say(f"[a] setup: config={args.config} samples={n} batch_size={bs} threads={torch.get_num_threads()} "
        f"layers={L} (all) hidden={pre.hidden_size} dtype=float32 tokens={tokens}; {r} rounds after 1 warm-up, "
        f"variants interleaved round-robin, ratios = median of per-round ratios")
    say(f"[a] bare model.model(output_hidden_states=True), forward only:         {rate('bare')}")
    say(f"[a] bare model(...) incl. LM head, forward only:                        {rate('full')}")
    say(f"[a] input encoding only (images + chat template + processor):          {rate('encode')}")
    say(f"[a] bare loop incl. input encoding (encoding + model.model):            {rate(t_encode + t_bare)}")
    say(f"[a] layerwise capture+early exit (Extractor.forward), forward only:      {rate('capture')}")
    say(f"[a] EXTRACTION run_unit, all {L} layers, selection=all, layout=padded:    {rate('unit_padded')}")
    say(f"[a] EXTRACTION run_unit, all {L} layers, selection=all, layout=ragged:    {rate('unit_ragged')}")
    say(f"[a]   of which run_unit's extraction loop (summary 'seconds': encode+forward+gather+append to the final "
        f"files): {loop_s * 1000:.1f} ms; preflight + plan_layout + writer set-up + finish() (small tensors, zip "
        f"directory, fsync, rename) + summary: {(t_unit - loop_s) * 1000:.1f} ms")
    other = t_unit - t_encode - t_capture
    say(f"[a]   breakdown of run_unit (padded, medians): encoding {t_encode / t_unit:5.1%}, forward {t_capture / t_unit:5.1%}, "
        f"gather/copy/append/preflight/finish {other / t_unit:5.1%}")
    ratio_e2e = per_repeat(("encode", "bare"), ("unit_padded",))
    ratio_rag = per_repeat(("encode", "bare"), ("unit_ragged",))
    ratio_fwd = per_repeat(("bare",), ("capture",))
    ratio_unit_vs_fwd = per_repeat(("bare",), ("unit_padded",))
    say(f"[a] RATIO extraction/bare, end-to-end (run_unit padded vs encoding+model.model): {ratio_e2e:.3f}  "
        f"(goal >= {GOAL_RATIO}: {verdict(ratio_e2e >= GOAL_RATIO)})")
    say(f"[a] ratio extraction/bare, end-to-end, ragged layout: {ratio_rag:.3f}")
    loops = [x["seconds"] for x in summaries["padded"][1:]]
    ratio_loop = statistics.median((times["encode"][i] + times["bare"][i]) / loops[i] for i in range(r))
    say(f"[a] ratio steady state, run_unit's per-batch loop only (summary 'seconds') vs encoding+model.model: "
        f"{ratio_loop:.3f}; fixed cost per unit (preflight, plan_layout, writer set-up, finish() with one fsync per "
        f"layer file, scratch removal): {(t_unit - loop_s) * 1000:.1f} ms, i.e. {(t_unit - loop_s) / n * 1000:.2f} ms per sample at N={n}")
    say(f"[a] ratio capture/bare, forward only (Extractor.forward vs model.model): {ratio_fwd:.3f}")
    say(f"[a] ratio run_unit padded / bare forward-only model.model (baseline without input encoding): {ratio_unit_vs_fwd:.3f}")

    # [b] bytes written vs payload. Primary method (as before): the sizes of the final files (os.stat),
    # which for the write-once writer are also the bytes it wrote; cross-check: /proc/self/io over run_unit.
    import torch as _t
    dsize = _t.empty((), dtype=loaded.dtype).element_size()
    results = {}
    for layout, s in (("ragged", s_rag), ("padded", s_pad)):
        out = work / f"a_unit_{layout}"
        written = final_bytes(out)
        payload = s["positions_kept"] * L * pre.hidden_size * dsize
        first = out / f"layer_{pre.layers[0]}_english.pt"
        data = _t.load(first, weights_only=True, mmap=True)
        acts = data["activations"].numel() * dsize
        ids = data["token_ids"].numel() * 8
        kinds = data["token_kinds"].numel() * 1
        small = (data["lengths"].numel() + data["offsets"].numel() + data["nan_counts"].numel()) * 8
        one = first.stat().st_size
        one_payload = s["positions_kept"] * pre.hidden_size * dsize
        io = io_runs[layout][-1]
        results[layout] = dict(written=written, payload=payload, ratio=written / payload, acts=acts, ids=ids,
                               kinds=kinds, small=small, other=one - acts - ids - kinds - small, one=one,
                               one_payload=one_payload, proc_io=io)
        assert written == s["bytes_written"], (written, s["bytes_written"])
        say(f"[b] {layout:6s}: bytes written {written:>12,d} (sum of {L} final .pt, os.stat) vs payload {payload:>12,d} "
            f"(positions {s['positions_kept']} x layers {L} x hidden {pre.hidden_size} x {dsize} B): "
            f"ratio {written / payload:.4f}" + (f"  (goal <= {GOAL_BYTES}: {verdict(written / payload <= GOAL_BYTES)})"
                                                  if layout == "ragged" else ""))
        say(f"[b] {layout:6s}: per layer file {one:,d} bytes vs its payload {one_payload:,d}: ratio "
            f"{one / one_payload:.4f}; = activations {acts:,d} + token_ids (int64) {ids:,d} + token_kinds (int8) "
            f"{kinds:,d} + lengths/offsets/nan_counts {small:,d} + pickle/zip/metadata "
            f"{one - acts - ids - kinds - small:,d} bytes; ratio without token_ids/kinds "
            f"{(written - L * (ids + kinds)) / payload:.4f}")
        if io:
            say(f"[b] {layout:6s}: kernel /proc/self/io over the whole run_unit: wchar {io['wchar']:,d} B passed to "
                f"write() = {io['wchar'] / written:.4f}x the final files (each byte written once; the rest is "
                f"summary.json and progress), write_bytes {io['write_bytes']:,d} B accounted to storage = "
                f"{io['write_bytes'] / written:.4f}x (rounded up to 4 KiB pages per file)")
        else:
            say(f"[b] {layout:6s}: kernel /proc/self/io: not available on this kernel")
    rg = results["ragged"]
    per_pos = s_rag["positions_kept"]
    fixed = rg["small"] + rg["other"]
    # The same files for Gemma-3-4B in bf16 (row 2560 x 2 B, token id 8 B, kind 1 B) over the same positions.
    proj = (per_pos * (2560 * 2 + 8 + 1) + fixed) / (per_pos * 2560 * 2)
    say(f"[b] ragged: projected ratio for Gemma-3-4B bf16 rows (5120 B + 8 B token id + 1 B token kind per position, "
        f"same fixed per-file overhead, {per_pos} positions/file): {proj:.4f}")
    return dict(tokens=tokens, seconds=times, ratio_e2e=ratio_e2e, ratio_e2e_ragged=ratio_rag, ratio_loop=ratio_loop,
                ratio_forward_only=ratio_fwd, bytes=results, bytes_ratio_ragged=rg["ratio"], projected_4b_ratio=proj)


# ------------------------------------------------------------------------------------ [c]
class RssSampler(threading.Thread):
    """Peak of /proc/self/status memory fields, sampled every `interval` seconds."""

    FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM")

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = {k: 0 for k in self.FIELDS}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(rest.split()[0]) * 1024)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        self.sample()
        return dict(self.peak)


def memory_child(spec: dict) -> None:
    """Run one unit in this fresh process and print its memory figures as one JSON line."""
    import torch

    torch.set_num_threads(spec["threads"])
    from layerwise.extract.unit import run_unit
    from layerwise.models.loading import load_model

    sampler = RssSampler()
    sampler.start()
    loaded = load_model(spec["model"], dtype="float32", device="cpu")
    sampler.sample()
    before = dict(sampler.peak)
    summary = run_unit(unit_cfg(Path(spec["model"]), Path(spec["samplesheet"]), Path(spec["out"]), rows=spec["rows"],
                                batch_size=spec["batch_size"], layout=spec["layout"]), loaded=loaded)
    peak = sampler.stop()
    print("MEMORY_JSON " + json.dumps({
        "summary_peak_host_memory_bytes": summary["peak_host_memory_bytes"],
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak": peak, "after_model_load": before, "bytes_written": summary["bytes_written"],
        "positions_kept": summary["positions_kept"], "samples": summary["samples"],
    }), flush=True)


def bench_memory(args, model_dir, samplesheet, work) -> dict:
    n = args.samples
    res: dict = {}
    for layout in ("padded", "ragged"):
        for count in (n, 4 * n):
            spec = dict(model=str(model_dir), samplesheet=str(samplesheet), out=str(work / f"c_{layout}_{count}"),
                        rows=f"0:{count}", batch_size=args.batch_size, layout=layout, threads=args.threads)
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_memory-child", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"memory child failed:\n{done.stdout}\n{done.stderr}")
            line = next(ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY_JSON "))
            res[(layout, count)] = json.loads(line.removeprefix("MEMORY_JSON "))
            shutil.rmtree(work / f"c_{layout}_{count}", ignore_errors=True)
    out = {}
    for layout in ("padded", "ragged"):
        a, b = res[(layout, n)], res[(layout, 4 * n)]
        g_sum = b["summary_peak_host_memory_bytes"] / a["summary_peak_host_memory_bytes"] - 1
        g_anon = b["peak"]["RssAnon"] / a["peak"]["RssAnon"] - 1
        payload_growth = b["bytes_written"] - a["bytes_written"]
        say(f"[c] {layout:6s}: summary peak_host_memory_bytes (ru_maxrss) at N={n}: {mb(a['summary_peak_host_memory_bytes'])}, "
            f"at 4N={4 * n}: {mb(b['summary_peak_host_memory_bytes'])}  growth {g_sum:+.1%}  "
            f"(goal within {GOAL_MEMORY:.0%}: {verdict(abs(g_sum) <= GOAL_MEMORY)})")
        say(f"[c] {layout:6s}: peak anonymous RSS (RssAnon, sampled every 2 ms) at N: {mb(a['peak']['RssAnon'])}, "
            f"at 4N: {mb(b['peak']['RssAnon'])}  growth {g_anon:+.1%}; peak file-backed RssFile "
            f"{mb(a['peak']['RssFile'])} -> {mb(b['peak']['RssFile'])}, RssShmem {mb(a['peak']['RssShmem'])} -> "
            f"{mb(b['peak']['RssShmem'])}")
        growth_abs = b["summary_peak_host_memory_bytes"] - a["summary_peak_host_memory_bytes"]
        anon_abs = b["peak"]["RssAnon"] - a["peak"]["RssAnon"]
        say(f"[c] {layout:6s}: the files grow by {mb(payload_growth)} from N to 4N; peak RSS grows by {mb(growth_abs)} "
            f"({growth_abs / payload_growth:.0%} of it), peak RssAnon by {mb(anon_abs)} ({anon_abs / payload_growth:.0%} of it)")
        say(f"[c] {layout:6s}: of that peak, {mb(b['after_model_load']['VmHWM'])} was already reached by load_model "
            f"(4N run; RssAnon peak after loading {mb(b['after_model_load']['RssAnon'])}): extraction adds "
            f"{mb(max(0, b['peak']['VmHWM'] - b['after_model_load']['VmHWM']))} to the process peak")
        out[layout] = dict(n=a, n4=b, growth_summary=g_sum, growth_anon=g_anon, payload_growth=payload_growth)
    say("[c] note: ru_maxrss (summary.json's peak_host_memory_bytes) counts file-backed pages too (the model's "
        "mmap'd safetensors); the write-once writer maps nothing (rows go through write() into page cache, which "
        "is not in RSS), so growth with N shows up in RssAnon: the figure that shows memory that really grows.")
    return out


# ------------------------------------------------------------------------------------ [d]
def bench_vision(args, loaded, model_dir, samplesheet, work) -> dict:
    from layerwise.core.layers import split_layer_groups
    from layerwise.extract.unit import run_unit
    from layerwise.preflight.plan import make_shards

    n = args.samples
    shards = make_shards(n, max(1, n // 2))
    groups = split_layer_groups(list(range(loaded.num_layers)), 2)
    units = [(g, lang, s) for g in groups for lang in LANGUAGES for s in shards]
    fingerprint = "bench-extraction-random-init"   # what PREFLIGHT passes as --model-fingerprint

    def one(tag: str, layers: list[int], lang: str, rows: str, cache: Path | None) -> dict:
        out = work / f"d_{tag}_{layers[0]}_{lang}_{rows.replace(':', '-')}"
        summary = run_unit(unit_cfg(model_dir, samplesheet, out, language=lang, rows=rows,
                                    layers=f"{layers[0]}-{layers[-1]}", batch_size=args.batch_size,
                                    image_cache=str(cache) if cache else None, model_fingerprint=fingerprint),
                           loaded=loaded)
        shutil.rmtree(out, ignore_errors=True)
        fill = summary.get("image_features") or {}
        return dict(total=summary["vision_tower_images"], fill=fill.get("vision_tower_images", 0),
                    hit=fill.get("cache_hit"), samples=summary["samples"])

    # One unit without a cache against two units of the same shard (both languages) sharing one cache.
    rows0 = shards[0]["rows"]
    n0 = int(rows0.split(":")[1]) - int(rows0.split(":")[0])
    all_layers = list(range(loaded.num_layers))
    alone = one("alone", all_layers, LANGUAGES[0], rows0, None)
    pair_cache = work / "d_pair_cache"
    pair = [one("pair", all_layers, lang, rows0, pair_cache) for lang in LANGUAGES]
    shutil.rmtree(pair_cache, ignore_errors=True)
    pair_total = sum(u["total"] for u in pair)
    say(f"[d] one unit without image_cache (shard 0, rows {rows0}, {n0} image(s), {LANGUAGES[0]}): vision-tower "
        f"images {alone['total']}; two units of that shard ({' + '.join(LANGUAGES)}) sharing one image_cache: "
        f"vision-tower images {pair_total} ({pair[0]['total']} in the first, which fills the cache: "
        f"{pair[0]['fill']}; {pair[1]['total']} in the second, cache hit {pair[1]['hit']}) = "
        f"{pair_total / n0:.1f} per distinct image (without the cache the two would run {2 * alone['total']})")

    def pipeline(shared: bool) -> dict:
        started = time.perf_counter()
        cache = work / "d_cache" if shared else None
        fills = in_units = hits = 0
        for g, lang, s in units:
            u = one("cache" if shared else "plain", g, lang, s["rows"], cache)
            fills += u["fill"]
            in_units += u["total"] - u["fill"]
            hits += bool(u["hit"])
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
        return dict(fills=fills, units=in_units, total=fills + in_units, cache_hits=hits,
                    seconds=time.perf_counter() - started)

    plain, diet = pipeline(False), pipeline(True)
    say(f"[d] pipeline simulated: {len(LANGUAGES)} languages x {len(groups)} layer groups "
        f"({', '.join(f'{g[0]}-{g[-1]}' for g in groups)}) x {len(shards)} shards = {len(units)} units, "
        f"{n} distinct images")
    say(f"[d] without image_cache: vision-tower images {plain['total']} (units {plain['units']}) = "
        f"{plain['total'] / n:.1f} per distinct image; wall {plain['seconds']:.2f} s")
    say(f"[d] with shared image_cache: vision-tower images {diet['total']} (cache fills {diet['fills']} + units' own "
        f"forward {diet['units']}; {diet['cache_hits']} of {len(units)} units hit the cache) = "
        f"{diet['total'] / n:.1f} per distinct image; wall {diet['seconds']:.2f} s  "
        f"(goal equal to distinct images: {verdict(diet['total'] == n)})")
    return dict(plain=plain, diet=diet, distinct=n, units=len(units), alone=alone, pair=pair, pair_total=pair_total,
                pair_images=n0)


# ------------------------------------------------------------------------------------ [e]
def bench_layer_forwards(args, loaded, model_dir, samplesheet, work) -> dict:
    from layerwise.core.layers import format_layers, split_layer_groups
    from layerwise.extract.unit import run_unit
    from layerwise.models.capture import decoder_layers

    def cost(groups):  # early exit: a group ending at layer m runs layers 0..m
        return sum(max(g) + 1 for g in groups)

    seed = split_layer_groups(list(range(34)), 4)
    default = split_layer_groups(list(range(34)), "auto")
    say(f"[e] Gemma-3-4B (34 layers), computed from split_layer_groups: 4 groups "
        f"{' '.join(format_layers(g) for g in seed)} cost {' + '.join(str(max(g) + 1) for g in seed)} = {cost(seed)} "
        f"layer forwards per sample and language vs default {len(default)} group(s) = {cost(default)}: "
        f"overhead {cost(seed) / cost(default):.2f}x")

    L, n = loaded.num_layers, args.samples
    counter = {"n": 0}

    def pre_hook(_module, args_, kwargs):
        hidden = kwargs.get("hidden_states", args_[0] if args_ else None)
        counter["n"] += int(hidden.shape[0])

    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in decoder_layers(loaded.model)]
    measured = {}
    try:
        for name, spec in (("4 groups", 4), ("default", "auto")):
            groups = split_layer_groups(list(range(L)), spec)
            counter["n"] = 0
            started = time.perf_counter()
            for g in groups:
                out = work / f"e_{g[0]}"
                run_unit(unit_cfg(model_dir, samplesheet, out, rows=f"0:{n}", layers=f"{g[0]}-{g[-1]}",
                                  batch_size=args.batch_size), loaded=loaded)
                shutil.rmtree(out, ignore_errors=True)
            measured[name] = dict(groups=groups, forwards=counter["n"] / n, expected=cost(groups),
                                  seconds=time.perf_counter() - started)
    finally:
        for h in handles:
            h.remove()
    a, b = measured["4 groups"], measured["default"]
    say(f"[e] tiny model ({L} layers), measured with pre-hooks on the decoder layers over {n} samples: 4 groups "
        f"{' '.join(format_layers(g) for g in a['groups'])}: {a['forwards']:.0f} layer forwards per sample "
        f"(expected {a['expected']}), wall {a['seconds']:.2f} s; default ({len(b['groups'])} group): "
        f"{b['forwards']:.0f} (expected {b['expected']}), wall {b['seconds']:.2f} s; overhead "
        f"{a['forwards'] / b['forwards']:.2f}x layer forwards, {a['seconds'] / b['seconds']:.2f}x wall")
    return dict(seed_4b=cost(seed), default_4b=cost(default), measured=measured)


# ------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("tiny", "medium"), default="tiny",
                   help="tiny: the test fixture (6 layers, hidden 64); medium: random Gemma 3, hidden 512, "
                        "8 layers, 224 px images pooled to 64 tokens")
    p.add_argument("--samples", type=int, default=16, help="N (memory is also measured at 4N)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a small machine that other jobs share, a "
                        "descheduled OpenMP thread stalls every op and medians swing by 4x with 2 threads)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median) after one warm-up")
    p.add_argument("--json-out", default=None, help="also write all figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    if args.samples < 2:
        p.error("--samples must be at least 2 (two shards)")

    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    from layerwise.models.loading import load_model

    work = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
    try:
        model_dir, samplesheet = prepare(args.config, 4 * args.samples, work)
        loaded = load_model(str(model_dir), dtype="float32", device="cpu")
        say(f"layerwise CPU benchmark: config={args.config} model={model_dir} torch {torch.__version__} "
            f"transformers {transformers.__version__} cpus={os.cpu_count()} threads={args.threads} "
            f"load average {os.getloadavg()[0]:.2f}")
        if os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75:
            say("WARNING: other processes are loading this machine; timings are noisy (ratios are paired per round)")
        a = bench_throughput(args, loaded, model_dir, samplesheet, work)
        c = bench_memory(args, model_dir, samplesheet, work)
        d = bench_vision(args, loaded, model_dir, samplesheet, work)
        e = bench_layer_forwards(args, loaded, model_dir, samplesheet, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ok_a = a["ratio_e2e"] >= GOAL_RATIO
    ok_b = a["bytes_ratio_ragged"] <= GOAL_BYTES
    ok_c = all(abs(c[lay]["growth_summary"]) <= GOAL_MEMORY for lay in c)
    ok_d = d["diet"]["total"] == d["distinct"]
    ok_e = e["measured"]["default"]["forwards"] == loaded.num_layers
    wchar_text = ", ".join(f"{lay} {a['bytes'][lay]['proc_io']['wchar'] / a['bytes'][lay]['written']:.4f}x"
                           if a["bytes"][lay]["proc_io"] else f"{lay} n/a" for lay in ("ragged", "padded"))
    growth_text = ", ".join(f"{lay} {c[lay]['growth_summary']:+.1%} (RssAnon {c[lay]['growth_anon']:+.1%})" for lay in c)
    say()
    say("Summary: "
        f"(a) extraction/bare throughput {a['ratio_e2e']:.2f} end-to-end ({a['ratio_loop']:.2f} for the per-batch loop "
        f"without the fixed per-unit cost, {a['ratio_forward_only']:.2f} forward-only) "
        f"-> goal >= {GOAL_RATIO} {verdict(ok_a)}; "
        f"(b) ragged bytes/payload {a['bytes_ratio_ragged']:.4f} -> goal <= {GOAL_BYTES} {verdict(ok_b)} "
        f"(padded {a['bytes']['padded']['ratio']:.4f}; projected for Gemma-3-4B bf16 rows {a['projected_4b_ratio']:.4f}; "
        f"written once: /proc/self/io wchar / final files {wchar_text}); "
        f"(c) peak host memory N -> 4N {growth_text} "
        f"-> goal within {GOAL_MEMORY:.0%} {verdict(ok_c)}; "
        f"(d) vision-tower images: two units of one shard sharing an image_cache {d['pair_total']} vs "
        f"{2 * d['alone']['total']} without, for {d['pair_images']} image(s); per pipeline run {d['diet']['total']} with "
        f"the shared image_cache vs {d['plain']['total']} without, for {d['distinct']} distinct image(s) "
        f"-> goal equal {verdict(ok_d)}; "
        f"(e) the default single group costs {e['default_4b']} layer forwards for 34 layers vs {e['seed_4b']} for the "
        f"seed's 4 groups ({e['seed_4b'] / e['default_4b']:.2f}x), measured {e['measured']['4 groups']['forwards']:.0f} vs "
        f"{e['measured']['default']['forwards']:.0f} on the {loaded.num_layers}-layer model -> default is one pass "
        f"{verdict(ok_e)}. Total benchmark time {time.perf_counter() - started:.1f} s "
        f"(load average at the end {os.getloadavg()[0]:.2f}).")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"a_b": a, "c": c, "d": d, "e": e}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
