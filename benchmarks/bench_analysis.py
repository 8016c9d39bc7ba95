#!/usr/bin/env python3
"""CPU benchmark of the analysis stage (layerwise.analysis.analyze) on synthetic layer files.

    .venv/bin/python benchmarks/bench_analysis.py                       # 6 layers, hidden 256, ~300 positions, N=200 and 4N
    .venv/bin/python benchmarks/bench_analysis.py --samples 100 --permutations 10
    .venv/bin/python benchmarks/bench_analysis.py --smoke               # tiny, seconds: checks the script runs

For N and 4N samples (x 2 languages), the files are written first, then `analyze` runs in a fresh
process each (ru_maxrss is per process), which reports the time of every stage, ru_maxrss and the
peak anonymous RSS (`RssAnon`, sampled every 5 ms: the memory that is really allocated, unlike
page cache of the memory-mapped files that ru_maxrss also counts). Then the projection to the
seed's size (34 layers, hidden 2560, 2000 samples x 2 languages, ~278 positions per sample):

  * reading + pooling   measured seconds per stored byte, times the seed's bytes (page-cache speed;
                        on a cluster file system the read itself may dominate: printed as well at 1 GB/s)
  * probes              one probe fit timed at the seed's shape ([2000, 2560] pooled vectors, 5 folds),
                        times the number of fits: layers x languages x views x (1 + permutations) x folds,
                        plus transfer (layers x views x 2 x folds)
  * CKA Grams           one centered Gram of [2000, 2560] timed, times layers x languages x views
  * the rest            scaled from the 4N run by (samples x hidden x files); CKA pairs by layers^2 x samples^2

Timings of fits on synthetic data are lower bounds: random features converge in ~10 lbfgs
iterations, real residual streams can take several times more.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = dict(layers=34, hidden=2560, samples=2000, languages=2, positions=278, views=4, bytes_per_value=2)

CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.005)
t = threading.Thread(target=sample, daemon=True); t.start()
import logging; logging.disable(logging.WARNING)
from pathlib import Path
from layerwise.analysis import analyze
args = json.loads(sys.argv[2])
files = sorted(Path(args["files"]).glob("layer_*.pt"))
base = peak[0]
res = analyze(files, Path(args["out"]), permutations=args["permutations"], folds=args["folds"], seed=0,
              report=args["report"])
stop.set(); t.join()
print("RESULT " + json.dumps({"timings": res["timings"], "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                              "peak_rss_anon": peak[0], "rss_anon_after_imports": base,
                              "probes": len(res["probes"]), "notes": len(res["notes"])}))
"""


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def make_files(out: Path, n: int, args) -> int:
    import torch

    from tests.support.analysis_synthetic import SyntheticSpec, write_synthetic_run

    n_image = max(1, args.positions - 12 - 8 - 22)       # bos + template 11, prompt ~8, caption ~22
    spec = SyntheticSpec(n_samples=n, hidden=args.hidden, layers=tuple(range(args.layers)), layout=args.layout,
                         dtype=torch.bfloat16 if args.dtype == "bfloat16" else torch.float32, n_image=n_image,
                         prompt_len=(6, 10), caption_len=(18, 26), signal={"image": 0.5, "caption": 0.3})
    run = write_synthetic_run(out, spec)
    return sum(p.stat().st_size for p in run.paths)


def run_child(files: Path, out: Path, args) -> dict:
    payload = json.dumps({"files": str(files), "out": str(out), "permutations": args.permutations,
                          "folds": args.folds, "report": not args.no_report})
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), payload], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"analysis child failed:\n{done.stdout}\n{done.stderr}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def calibrate(args) -> dict:
    """Time one probe (observed + 1 permutation) and one centered Gram at the seed's shape."""
    import numpy as np

    from layerwise.analysis.cka import centered_gram
    from layerwise.analysis.labels import fold_splits
    from layerwise.analysis.probes import probe

    rng = np.random.default_rng(0)
    n, h = SEED["samples"], SEED["hidden"]
    X = rng.standard_normal((n, h)).astype(np.float32)
    y = np.arange(n) % 2
    X[:, :8] += 0.3 * y[:, None]
    X += 5 * rng.standard_normal(h).astype(np.float32)   # a common offset, like residual streams
    splits = fold_splits(y, args.folds, 0)
    t0 = time.perf_counter()
    probe(X, y, splits, permutations=1)
    fit_s = (time.perf_counter() - t0) / (2 * args.folds)
    t0 = time.perf_counter()
    centered_gram(X)
    gram_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "gram_s": gram_s}


def project(measured: dict, n_big: int, args, cal: dict | None) -> list[str]:
    s = SEED
    files = s["layers"] * s["languages"]
    seed_bytes = files * s["samples"] * s["positions"] * s["hidden"] * s["bytes_per_value"]
    t = measured["timings"]
    bench_bytes = measured["file_bytes"]
    lines = [f"seed size: {s['layers']} layers x {s['languages']} languages, hidden {s['hidden']}, "
             f"{s['samples']} samples, ~{s['positions']} positions (bf16): {seed_bytes / 1e9:.0f} GB of activations"]
    read_s = t.get("read_pool", 0.0) * seed_bytes / bench_bytes
    lines.append(f"  reading + pooling: {read_s / 60:.1f} min at the measured {bench_bytes / max(t.get('read_pool', 1e-9), 1e-9) / 1e6:.0f} MB/s "
                 f"(page cache); at 1 GB/s from disk the read alone is {seed_bytes / 1e9 / 60:.1f} min")
    total = read_s
    fits = files * s["views"] * (1 + args.permutations) * args.folds + s["layers"] * s["views"] * 2 * args.folds
    if cal:
        probe_s = fits * cal["fit_s"]
        gram_s = files * s["views"] * cal["gram_s"]
        lines.append(f"  probes: {fits} fits x {cal['fit_s']:.2f} s (one fit timed at [{s['samples']}, {s['hidden']}]) = "
                     f"{probe_s / 60:.0f} min on one core; divide by --n-jobs workers")
        lines.append(f"  CKA Grams: {files * s['views']} x {cal['gram_s']:.2f} s = {gram_s / 60:.1f} min; "
                     f"Gram scratch on disk {files * s['views'] * min(s['samples'], 2000) ** 2 * 4 / 1e9:.1f} GB")
        total += probe_s + gram_s
    scale = (s["samples"] * s["hidden"] * files) / (n_big * args.hidden * args.layers * 2)
    rest = (t.get("directions", 0.0) + t.get("crosslingual", 0.0)) * scale
    rest += t.get("cka_pairs", 0.0) * (s["layers"] / args.layers) ** 2 * (min(s["samples"], 2000) / min(n_big, 2000)) ** 2
    lines.append(f"  directions, cross-lingual cosines and CKA, CKA pairs: ~{rest / 60:.1f} min (scaled by samples x "
                 "hidden x files; pairs by layers^2 x samples^2)")
    total += rest
    if not cal:
        probe_fits = t.get("probes", 0.0) + t.get("transfer", 0.0)
        lines.append(f"  probes (not calibrated): {probe_fits:.0f} s here; scale by fits and by [N, H] per fit")
    pooled = s["languages"] * s["views"] * s["samples"] * s["hidden"] * 4
    lines.append(f"  host memory: pooled vectors of one layer {_mib(pooled)} (+ one chunk, 64 MiB, and one Gram "
                 f"{_mib(2000 ** 2 * 8)}), independent of the number of layers")
    lines.append(f"  PROJECTED total ~{total / 3600:.1f} h on this machine's CPU "
                 f"({'probes dominate' if cal and probe_s > total / 2 else 'see the lines above'})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200, help="N (runs N and 4N)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--positions", type=int, default=300)
    p.add_argument("--permutations", type=int, default=20)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--layout", choices=("padded", "ragged"), default="padded")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-calibrate", action="store_true", help="skip timing one probe fit / Gram at the seed's shape")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a check that the script runs)")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the synthetic files")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.layers, args.hidden, args.positions, args.permutations = 20, 2, 16, 60, 2
        args.no_calibrate = True
    load = os.getloadavg()[0]
    print(f"bench_analysis: {args.layers} layers x 2 languages, hidden {args.hidden}, ~{args.positions} positions, "
          f"{args.dtype} {args.layout}, {args.folds} folds, {args.permutations} permutations; "
          f"{os.cpu_count()} CPUs, load average {load:.1f}" + ("  (WARNING: loaded machine, timings are noisy)"
                                                               if load > (os.cpu_count() or 1) else ""))
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    results = {}
    try:
        for n in (args.samples, 4 * args.samples):
            files = tmp / f"n{n}"
            t0 = time.perf_counter()
            nbytes = make_files(files, n, args)
            gen_s = time.perf_counter() - t0
            r = run_child(files, tmp / f"out{n}", args)
            r["file_bytes"], r["generate_s"] = nbytes, gen_s
            results[n] = r
            t = r["timings"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
            print(f"[N={n}] files {nbytes / 2**20:.0f} MiB (written in {gen_s:.0f} s); analyze {t['total']:.1f} s "
                  f"({stages}); peak RssAnon {_mib(r['peak_rss_anon'])} (after imports {_mib(r['rss_anon_after_imports'])}), "
                  f"ru_maxrss {_mib(r['ru_maxrss'])}; {r['probes']} probes")
            if not args.keep:
                shutil.rmtree(files, ignore_errors=True)
        n1, n4 = args.samples, 4 * args.samples
        a, b = results[n1], results[n4]
        grow_rss = b["peak_rss_anon"] - a["peak_rss_anon"]
        grow_files = b["file_bytes"] - a["file_bytes"]
        pooled_growth = 3 * n1 * args.hidden * 4 * 4 * 2        # views x languages x float32 [N, H] sums, one layer
        print(f"[memory] N -> 4N: files +{_mib(grow_files)}, peak RssAnon +{_mib(grow_rss)} "
              f"({100 * grow_rss / max(grow_files, 1):.1f} % of the file growth; one layer's pooled vectors grow by "
              f"{_mib(pooled_growth)})")
        print(f"[time] N -> 4N: x{b['timings']['total'] / max(a['timings']['total'], 1e-9):.2f} "
              f"(read_pool x{b['timings'].get('read_pool', 0) / max(a['timings'].get('read_pool', 1e-9), 1e-9):.2f}, "
              f"probes x{b['timings'].get('probes', 0) / max(a['timings'].get('probes', 1e-9), 1e-9):.2f})")
        cal = None
        if not args.no_calibrate:
            cal = calibrate(args)
            print(f"[calibration] one probe fit at [{SEED['samples']}, {SEED['hidden']}]: {cal['fit_s']:.2f} s; "
                  f"one centered Gram: {cal['gram_s']:.2f} s")
        for line in project(b, n4, args, cal):
            print(f"[projection] {line}")
        if args.json_out:
            args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)},
                                                 "results": results, "calibration": cal}, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"files kept in {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
