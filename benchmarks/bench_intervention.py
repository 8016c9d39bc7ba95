#!/usr/bin/env python3
"""Benchmark of the intervention's generation: greedy captions with the latent hook against plain generation.

    .venv/bin/python benchmarks/bench_intervention.py                  # CPU, the `medium` Gemma 3 of bench_extraction
    .venv/bin/python benchmarks/bench_intervention.py --config tiny    # seconds; what tests/unit/test_benchmarks.py runs
    .venv/bin/python benchmarks/bench_intervention.py --device cuda    # on a GPU (a real model: --model ID_OR_PATH)

Prints, for the same images and tokens: plain generation's throughput (new tokens/s), the same with the
`residual` hook of `layerwise.intervention.hooks` ablating k latents of a random SAE (8 x the hidden size) on one
decoder layer, their ratio (goal >= 0.9), and the projection of the published design (500 images x (1 baseline +
1 targeted + 25 random) conditions x 2 caption languages x 64 new tokens) at the measured hooked throughput on this
device. The projection is for the model measured; on a GPU with the real 4B model it is the design's GPU time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DESIGN = {"images": 500, "conditions": 1 + 1 + 25, "caption_languages": 2, "new_tokens": 64}


def random_sae(d_in: int, d_sae: int, seed: int = 0):
    """A SAELens StandardSAE with random weights (the hook's cost does not depend on what the latents mean)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5)
        sae.b_enc.zero_()
    return sae.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("tiny", "medium"), default="medium", help="the model when --model is not given")
    p.add_argument("--model", help="a model folder or hub id (default: built from --config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from layerwise.intervention.generate import generate_ids
    from layerwise.intervention.hooks import latent_hooks
    from layerwise.models.inputs import load_rgb
    from layerwise.models.loading import load_model
    from tests.support import fixtures

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-intervention-") as tmp:
        work = Path(tmp)
        if args.model:
            model_dir = args.model
        elif args.config == "tiny":
            model_dir = str(fixtures.ensure_fixtures(ROOT / "tests" / "fixtures" / "build")[0]["model"])
        else:
            from bench_extraction import build_medium_model

            model_dir = str(build_medium_model(work / "model"))
        loaded = load_model(model_dir, dtype="float32" if args.device == "cpu" else "auto", device=args.device)
        sheet = fixtures.build_dataset(work / "data", args.images)
        images = [load_rgb(p) for p in sorted((sheet.parent / "images").iterdir())][:args.images]
        layer = loaded.num_layers // 2
        sae = random_sae(loaded.hidden_size, 8 * loaded.hidden_size).to(loaded.device)
        latents = list(range(min(args.k, 8 * loaded.hidden_size)))
        prompt = "Write a one-sentence caption for this image."

        def plain():
            return generate_ids(loaded, images, prompt, max_new_tokens=args.new_tokens, batch_size=args.batch_size)

        def hooked():
            with latent_hooks(loaded.model, {layer: (sae, latents)}, hook="residual") as hooks:
                return generate_ids(loaded, images, prompt, max_new_tokens=args.new_tokens,
                                    batch_size=args.batch_size, hooks=hooks)

        timings = {"plain": [], "hooked": []}
        tokens = {}
        for name, fn in (("plain", plain), ("hooked", hooked)):
            tokens[name] = sum(len(t) for t in fn())                   # warm-up
        for _ in range(args.repeats):                                 # interleaved: load hits both alike
            for name, fn in (("plain", plain), ("hooked", hooked)):
                if loaded.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if loaded.device.type == "cuda":
                    torch.cuda.synchronize()
                timings[name].append(time.perf_counter() - t0)
    rate = {name: tokens[name] / min(ts) for name, ts in timings.items()}
    ratio = rate["hooked"] / rate["plain"]
    print(f"layerwise intervention benchmark: model {model_dir} ({loaded.model_type}, {loaded.num_layers} layers x "
          f"{loaded.hidden_size}), device {loaded.device}, torch threads {torch.get_num_threads()}, "
          f"{args.images} images x {args.new_tokens} new tokens, batch {args.batch_size}, k {len(latents)} of "
          f"{8 * loaded.hidden_size} latents on layer {layer}")
    print(f"plain generation:  {rate['plain']:.1f} new tokens/s (best of {args.repeats})")
    print(f"with the hook:     {rate['hooked']:.1f} new tokens/s")
    print(f"ratio hooked/plain: {ratio:.3f} (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    design_tokens = DESIGN["images"] * DESIGN["conditions"] * DESIGN["caption_languages"] * DESIGN["new_tokens"]
    print(f"published design: {DESIGN['images']} images x {DESIGN['conditions']} conditions x "
          f"{DESIGN['caption_languages']} caption languages x {DESIGN['new_tokens']} tokens = {design_tokens:,} new "
          f"tokens; at the hooked rate on this device and model: {design_tokens / rate['hooked'] / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
