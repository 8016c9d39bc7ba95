#!/usr/bin/env python3
"""Benchmark of SAE training on layer files: data-provider throughput, host memory, training tokens/s.

    .venv/bin/python benchmarks/bench_sae.py                   # medium: hidden 1024, ~300 positions, 300 samples x 2 languages
    .venv/bin/python benchmarks/bench_sae.py --config tiny     # seconds; what tests/unit/test_sae_bench.py runs
        [--samples N] [--hidden H] [--repeats R] [--train-tokens T] [--device cpu|cuda] [--threads N]
        [--provider-threads 1] [--json-out F] [--workdir D]

Figures (each printed with its goal):

[a] provider throughput: rows/s of one shuffled epoch of the training split (ActivationProvider with
    the default chunk / buffer sizes, batches of 4096 float32 rows) from the bf16 layer files on disk
    (memory-mapped; "cold": the files' pages dropped from the page cache first with
    posix_fadvise(DONTNEED); "warm": in the page cache), against the same provider over the same
    tensors loaded into RAM (torch.load without mmap). RATIO = disk / RAM, median over rounds
    (variants interleaved). Goal: cold RATIO >= 0.8. For context, 4096 single rows read at random
    positions of the cold file (what a per-row shuffle would do).
[b] peak host memory of one provider epoch in a fresh process, for N and 4N samples: peak anonymous
    RSS (RssAnon, sampled every 2 ms; the mmap'd file pages are page cache, not process memory) and
    ru_maxrss (which counts touched file pages too). Goal: 4N peak RssAnon within 10 % of N.
[c] training tokens/s of `train_layer_sae` (SAELens SAETrainer.fit, topk, expansion 4, k 32,
    batch 4096) on `--device` (cpu by default), data read from disk by the provider.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")   # SAELens's progress bars (before tqdm is imported)
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from layerwise.sae.options import SAEOptions  # noqa: E402
from layerwise.sae.provider import ActivationProvider  # noqa: E402
from layerwise.sae.source import LayerSource  # noqa: E402
from tests.support import sae_synthetic as synthetic  # noqa: E402

CONFIGS = {
    # hidden, image tokens, prompt tokens, caption tokens (min, max), samples per language, batch
    "tiny": dict(hidden=32, image_tokens=12, prompt_tokens=4, caption_tokens=(2, 8), samples=40, batch=256,
                 chunk_tokens=256, buffer_tokens=2048, train_tokens=8192, expansion=4.0, k=8),
    "medium": dict(hidden=1024, image_tokens=256, prompt_tokens=8, caption_tokens=(14, 26), samples=300, batch=4096,
                   chunk_tokens=SAEOptions().chunk_tokens, buffer_tokens=SAEOptions().buffer_tokens,
                   train_tokens=4 * 4096, expansion=4.0, k=32),
}
LANGS = ("english", "arabic")


def log(msg: str) -> None:
    print(msg, flush=True)


def make_files(workdir: Path, cfg: dict, samples: int, tag: str, planted: bool = False) -> list[Path]:
    """bf16 padded layer files of one layer, one per language: planted structure (training) or Gaussian."""
    shape = dict(n_samples=samples, hidden=cfg["hidden"], image_tokens=cfg["image_tokens"],
                 prompt_tokens=cfg["prompt_tokens"], caption_tokens=cfg["caption_tokens"])
    if planted:
        out = synthetic.write_planted_set(workdir / tag, layers=[7], languages=LANGS, layout="padded",
                                          dtype=torch.bfloat16, **shape)
        return [out[(7, lang)] for lang in LANGS]
    return [synthetic.write_random_padded(workdir / tag / f"layer_7_{lang}.pt", layer=7, language=lang, **shape)
            for lang in LANGS]


def drop_page_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def options_for(cfg: dict) -> SAEOptions:
    return SAEOptions(batch_size=cfg["batch"], chunk_tokens=cfg["chunk_tokens"], buffer_tokens=cfg["buffer_tokens"],
                      prefetch_batches=0, validation_fraction=0.1)


def one_epoch(sources, opts: SAEOptions) -> tuple[int, float, float]:
    """(rows, wall seconds, CPU seconds) of one shuffled epoch of the training split."""
    p = ActivationProvider.for_split(sources, opts, "train", epochs=1, drop_last=False)
    started, cpu, rows = time.perf_counter(), time.process_time(), 0
    for batch in p:
        rows += batch.shape[0]
    return rows, time.perf_counter() - started, time.process_time() - cpu


def random_rows(path: Path, n: int, seed: int = 0) -> float:
    """rows/s of n single-row reads at random positions of a cold, memory-mapped padded file."""
    drop_page_cache([path])
    src = LayerSource.open(path)
    g = torch.Generator().manual_seed(seed)
    samples = torch.randint(0, src.num_samples, (n,), generator=g)
    started = time.perf_counter()
    acc = torch.zeros(src.hidden_size)
    for i in samples.tolist():
        pos = int(torch.randint(1, int(src.lengths[i]), (1,), generator=g))
        acc += src.activations[i, pos].float()
    return n / (time.perf_counter() - started)


def figure_a(files: list[Path], cfg: dict, repeats: int) -> dict:
    opts = options_for(cfg)
    ram = [LayerSource.from_dict(torch.load(p, map_location="cpu", weights_only=True, mmap=False), str(p))
           for p in files]
    results = {"cold": [], "warm": [], "ram": []}
    cpu = {"cold": [], "warm": [], "ram": []}
    rows = 0
    one_epoch([LayerSource.open(p) for p in files], opts)                 # warm-up (imports, allocator)
    for _ in range(repeats):
        for variant in ("cold", "warm", "ram"):
            if variant == "cold":
                drop_page_cache(files)
            rows, wall, cpu_s = one_epoch(ram if variant == "ram" else [LayerSource.open(p) for p in files], opts)
            results[variant].append(rows / wall)
            cpu[variant].append(rows / cpu_s)

    def ratio(table, a):
        return statistics.median(x / r for x, r in zip(table[a], table["ram"]))

    ratio_cold, ratio_warm = ratio(results, "cold"), ratio(results, "warm")
    cpu_cold, cpu_warm = ratio(cpu, "cold"), ratio(cpu, "warm")
    row_bytes = cfg["hidden"] * 2
    med = {k: statistics.median(v) for k, v in results.items()}
    rand = random_rows(files[0], 4096 if cfg["hidden"] > 64 else 512)
    log(f"[a] provider rows per epoch: {rows} (train split, {len(files)} files, chunk {opts.chunk_tokens} rows, "
        f"buffer {opts.buffer_tokens} rows, batch {opts.batch_size})")
    for k in ("cold", "warm", "ram"):
        log(f"[a] {k:>4}: {med[k]:,.0f} rows/s ({med[k] * row_bytes / 1e6:,.0f} MB/s of bf16 rows)")
    log(f"[a] RATIO disk/RAM (wall time) cold {ratio_cold:.3f}, warm {ratio_warm:.3f}   goal: cold >= 0.8 "
        f"-> {'met' if ratio_cold >= 0.8 else 'NOT met'}")
    log(f"[a] per CPU-second (robust to other load; blind to I/O waits) cold {cpu_cold:.3f}, warm {cpu_warm:.3f}; "
        f"RAM {statistics.median(cpu['ram']):,.0f} rows per CPU-s")
    log(f"[a] context: single-row random reads, cold file: {rand:,.0f} rows/s "
        f"({rand / med['cold']:.3f} of the chunked provider)")
    return {"rows": rows, "rows_per_s": med, "ratio_cold": ratio_cold, "ratio_warm": ratio_warm,
            "cpu_ratio_cold": cpu_cold, "cpu_ratio_warm": cpu_warm,
            "random_rows_per_s": rand, "goal_met": ratio_cold >= 0.8}


_CHILD = r"""
import json, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
import torch
from layerwise.sae.options import SAEOptions
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import LayerSource
cfg = json.loads(sys.argv[2]); torch.set_num_threads(int(sys.argv[3])); files = sys.argv[4:]
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
peak = [0]; stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
opts = SAEOptions(batch_size=cfg["batch"], chunk_tokens=cfg["chunk_tokens"], buffer_tokens=cfg["buffer_tokens"],
                  prefetch_batches=0, validation_fraction=0.1)
sources = [LayerSource.open(f) for f in files]
base = anon()
t = threading.Thread(target=sample, daemon=True); t.start()
rows = sum(b.shape[0] for b in ActivationProvider.for_split(sources, opts, "train", epochs=1, drop_last=False))
stop.set(); t.join()
print(json.dumps({"rows": rows, "base_anon": base, "peak_anon": max(peak[0], anon()),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def figure_b(sets: dict[str, list[Path]], cfg: dict) -> dict:
    out = {}
    for label, files in sets.items():
        drop_page_cache(files)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), json.dumps(cfg), str(torch.get_num_threads()),
                               *map(str, files)],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"memory child failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["file_bytes"] = sum(p.stat().st_size for p in files)
        out[label] = r
        log(f"[b] {label}: {r['rows']} rows, files {r['file_bytes'] / 2**20:,.0f} MiB: peak RssAnon "
            f"{r['peak_anon'] / 2**20:,.0f} MiB (+{(r['peak_anon'] - r['base_anon']) / 2**20:,.0f} MiB over the "
            f"process before reading), ru_maxrss {r['ru_maxrss'] / 2**20:,.0f} MiB")
    n, n4 = out["N"], out["4N"]
    growth = n4["peak_anon"] / n["peak_anon"] - 1
    share = (n4["peak_anon"] - n["peak_anon"]) / max(1, n4["file_bytes"] - n["file_bytes"])
    log(f"[b] 4N vs N: peak RssAnon {growth * 100:+.1f} % ({share * 100:.1f} % of the files' growth)   goal: within "
        f"10 % -> {'met' if abs(growth) <= 0.10 else 'NOT met'}")
    return {**out, "growth": growth, "goal_met": abs(growth) <= 0.10}


def figure_c(files: list[Path], cfg: dict, device: str, tokens: int, workdir: Path) -> dict:
    from layerwise.sae.train import train_layer_sae

    opts = SAEOptions(architecture="topk", expansion_factor=cfg["expansion"], k=cfg["k"], batch_size=cfg["batch"],
                      training_tokens=tokens, device=device, chunk_tokens=cfg["chunk_tokens"],
                      buffer_tokens=min(cfg["buffer_tokens"], 65536), norm_estimate_batches=2, validation_fraction=0.1)
    started = time.perf_counter()
    records = train_layer_sae(files, workdir / "sae", opts)
    wall = time.perf_counter() - started
    training = json.loads((workdir / "sae" / records[0]["sae_dir"] / "training.json").read_text())
    tps = training["train_tokens_per_second"]
    val = next(r for r in records if r["split"] == "validation")
    log(f"[c] training on {device}: topk d_in {val['d_in']} d_sae {val['d_sae']} k {cfg['k']}, batch {cfg['batch']}, "
        f"{training['tokens_seen']} tokens in {training['train_seconds']:.1f} s: {tps:,.0f} tokens/s "
        f"(train_layer_sae wall {wall:.1f} s with evaluation)   goal: reported (at this size and rate, 5 epochs of "
        f"the seed job's ~1.1M training tokens per layer would take {5 * 1.1e6 / tps / 60:,.1f} min)")
    return {"tokens_per_s": tps, "tokens": training["tokens_seen"], "seconds": training["train_seconds"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="medium")
    p.add_argument("--samples", type=int, help="N: samples per language (default: the config's)")
    p.add_argument("--hidden", type=int, help="hidden size (default: the config's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-tokens", type=int, help="training budget of [c] (default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads for [c] training (default: torch's)")
    p.add_argument("--provider-threads", type=int, default=1,
                   help="torch threads for [a] and [b] (default 1: the provider's copies are memory-bound, and on a "
                        "shared machine more threads only add contention)")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    if args.hidden:
        cfg["hidden"] = args.hidden
    n = args.samples or cfg["samples"]
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_sae_")
    workdir = args.workdir or Path(tmp.name)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.provider_threads)
    try:
        load = os.getloadavg()[0]
        positions = 1 + 1 + cfg["image_tokens"] + 1 + cfg["prompt_tokens"] + 2 + sum(cfg["caption_tokens"]) / 2 + 2
        log(f"bench_sae: config {args.config}: hidden {cfg['hidden']}, ~{positions:.0f} positions per sample, "
            f"N = {n} samples x {len(LANGS)} languages (bf16, padded), torch threads {args.provider_threads} for "
            f"[a] [b], {args.threads or threads} for [c], "
            f"load average {load:.1f} on {os.cpu_count()} CPUs" + ("  (machine busy: timings noisy)" if load > (os.cpu_count() or 1) else ""))
        started = time.perf_counter()
        files_n = make_files(workdir, cfg, n, "N")
        files_4n = make_files(workdir, cfg, 4 * n, "4N")
        small = make_files(workdir, cfg, max(8, min(n, 40)), "train", planted=True)
        log(f"files written in {time.perf_counter() - started:.1f} s under {workdir}")
        result = {"config": args.config, "hidden": cfg["hidden"], "samples": n, "load_average": load}
        result["a"] = figure_a(files_n, cfg, args.repeats)
        result["b"] = figure_b({"N": files_n, "4N": files_4n}, cfg)
        torch.set_num_threads(args.threads or threads)
        result["c"] = figure_c(small, cfg, args.device, args.train_tokens or cfg["train_tokens"], workdir)
        log(f"Summary: [a] cold ratio {result['a']['ratio_cold']:.3f} (goal >= 0.8: "
            f"{'met' if result['a']['goal_met'] else 'NOT met'}); [b] memory 4N vs N {result['b']['growth'] * 100:+.1f} % "
            f"(goal within 10 %: {'met' if result['b']['goal_met'] else 'NOT met'}); [c] {result['c']['tokens_per_s']:,.0f} "
            f"training tokens/s on {args.device}")
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
