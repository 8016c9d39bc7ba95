#!/usr/bin/env python3
"""The storage plan of the seed job, from layerwise.preflight.storage (the code PREFLIGHT runs), as Markdown tables.

    .venv/bin/python benchmarks/storage_projection.py                       # the figures of docs/usage.md
    .venv/bin/python benchmarks/storage_projection.py --caption-mean 30 --caption-max 90 --samples 5000
    .venv/bin/python benchmarks/storage_projection.py --free 200e9     # + PREFLIGHT's table and refusal

PREFLIGHT counts every sample's positions with the model's tokenizer and prints the same tables for the real
samplesheet (`storage_plan.json`); without the seed's captions here, the lengths are a stated assumption:
`--fixed` positions around the caption (Gemma-3-4B: 256 image tokens + `<bos>`, the chat template and the
prompt; 278 is the figure the earlier docs used for a whole sequence) plus the caption's tokens, `--caption-mean`
on average and `--caption-max` for the longest caption of each language. `caption` stores the caption's tokens
+ `<end_of_turn>` + `\\n`; `text` drops the 256 image tokens; `mean`/`last` store one position.
Every byte figure is the writer's own layout planning (`storage.layer_file_bytes`, `ptfile.PtFileWriter`):
activations, token ids and kinds, the pickled metadata and the zip records.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerwise.preflight import storage  # noqa: E402

GB = 1e9


def caption_tokens(n: int, mean: int, longest: int) -> list[int]:
    """n caption lengths with exactly this mean (n * mean tokens in all) and this longest one."""
    rest = n * mean - longest
    base, extra = divmod(rest, n - 1)
    return [longest] + [base + 1] * extra + [base] * (n - 1 - extra)


def lengths_for(selection: str, captions: list[int], fixed: int, image_tokens: int) -> list[int]:
    return {"all": [fixed + c for c in captions], "text": [fixed - image_tokens + c for c in captions],
            "caption": [c + 2 for c in captions], "mean": [1] * len(captions), "last": [1] * len(captions)}[selection]


def seed_plan(args) -> dict:
    languages = [f"language{i}" for i in range(args.languages)] if args.languages > 2 else ["english", "arabic"][:args.languages]
    return {"model": {"id": "google/gemma-3-4b-it", "revision": "0" * 40, "num_layers": args.layers,
                      "hidden_size": args.hidden}, "layers": list(range(args.layers)), "languages": languages,
            "shards": [{"index": 0, "rows": f"0:{args.samples}"}], "units": []}


def project(args, plan, captions, selection="all", layout="padded", dtype="bfloat16", **settings):
    n = args.samples
    ids = [f"img{i:05d}" for i in range(n)]
    genders = ["male", "female"] * (n // 2) + ["male"] * (n % 2)
    def by_language(sel):
        return {lang: lengths_for(sel, captions, args.fixed, args.image_tokens) for lang in plan["languages"]}

    return storage.project(plan, ids, genders, by_language(selection), storage.StorageSettings(
        token_selection=selection, layout=layout, dtype=dtype, **settings), feature_cache=True,
        image_tokens=args.image_tokens, other_lengths={sel: by_language(sel) for sel in ("all", "caption")})


def gb(n: int) -> str:
    return f"{n / GB:,.1f} GB" if n >= 10 * GB else f"{n / GB:,.2f} GB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--layers", type=int, default=34)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--languages", type=int, default=2)
    p.add_argument("--image-tokens", type=int, default=256)
    p.add_argument("--fixed", type=int, default=278, help="positions of a sequence besides its caption")
    p.add_argument("--caption-mean", type=int, default=20)
    p.add_argument("--caption-max", type=int, default=60)
    p.add_argument("--d-sae", type=int, default=0, help="SAE width (0: 4 x hidden, the default expansion factor)")
    p.add_argument("--free", type=float, default=None,
                   help="also print PREFLIGHT's table and refusal for the default run with this many bytes free on "
                        "one file system holding the outdir and the work dir")
    args = p.parse_args(argv)
    plan = seed_plan(args)
    files = args.layers * len(plan["languages"])
    captions = caption_tokens(args.samples, args.caption_mean, args.caption_max)
    uniform = [0] * args.samples
    print(f"Seed job: {args.samples} samples x {len(plan['languages'])} languages x {args.layers} layers "
          f"(hidden {args.hidden}) = {files} layer files, one shard, {args.image_tokens} image tokens, "
          f"bfloat16 (float32: x2).\n")

    print("| `--token_selection` | positions per sample: mean / longest | `--layout padded` | `--layout ragged` "
          "| padded, per file |")
    print("|---|---|---|---|---|")
    base = project(args, plan, uniform)
    t = base.positions[plan["languages"][0]]
    pad, rag = base.item("layer_files").bytes, project(args, plan, uniform, layout="ragged").item("layer_files").bytes
    print(f"| `all`, every sample {args.fixed} positions (the earlier docs' assumption) | {t['mean']:g} / {t['max']} "
          f"| {gb(pad)} | {gb(rag)} | {gb(pad // files)} |")
    for selection in ("all", "text", "caption", "mean", "last"):
        padded = project(args, plan, captions, selection)
        ragged = project(args, plan, captions, selection, layout="ragged")
        t = padded.positions[plan["languages"][0]]
        print(f"| `{selection}` | {t['mean']:g} / {t['max']} | {gb(padded.item('layer_files').bytes)} "
              f"| {gb(ragged.item('layer_files').bytes)} | {gb(padded.item('layer_files').bytes // files)} |")
    widened = [captions[0] + 1] + captions[1:]            # the longest caption one token longer: T_max + 1
    per_position = (project(args, plan, widened).item("layer_files").bytes
                    - project(args, plan, captions).item("layer_files").bytes)
    print(f"\nEach position of the longest sample costs {gb(per_position)} over the {files} padded files "
          f"({args.samples} x {args.hidden} x 2 bytes + 9 bytes of token id and kind, per file).\n")

    d_sae = args.d_sae or 4 * args.hidden
    full = project(args, plan, captions, image_cache="cache",
                   sae={"d_in": args.hidden, "d_sae": d_sae, "dtype": "float32", "architecture": "topk",
                        "per_language": False},
                   analysis_views=("image", "prompt", "caption", "all"), cka_max_samples=2000)
    combined = project(args, plan, captions, combined=True).item("combined")
    copied = project(args, plan, captions, publish_mode="copy").item("published")
    print("| item (defaults: `all`, padded, bf16; `--sae`; analysis on) | where | files | bytes | new bytes |")
    print("|---|---|---|---|---|")
    for i in full.items + [combined]:
        print(f"| {i.what} | {i.where.replace('image_cache', 'work')} | {i.files} | {gb(i.bytes)} | {gb(i.new_bytes)} |")
    work = sum(i.new_bytes for i in full.items if i.where in ("work", "image_cache"))
    outdir = sum(i.new_bytes for i in full.items if i.where == "outdir")
    print(f"\nOne file system for work and outdir (hard links): {gb(work + outdir)} at the peak "
          f"({gb(sum(i.new_bytes for i in full.items if not i.transient))} kept after the run), "
          f"+ {gb(combined.bytes)} with `--combined_files true`. Outdir on another file system (or "
          f"`--publish_dir_mode copy`): + {gb(copied.bytes)} there for the layer files "
          f"(and the SAE folders are copied too).")
    if args.free is not None:
        free = {where: storage.FreeSpace(f"/scratch/you/{name}", "/scratch/you", 1, int(args.free))
                for where, name in (("outdir", "results"), ("work", "work"),
                                    ("image_cache", "work/layerwise-image-features"))}
        storage.check_space(full, free)
        print("\n```\n" + storage.table(full) + "\n```\n")
        if not full.fits:
            print("```\nERROR: " + storage.refusal(full) + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
