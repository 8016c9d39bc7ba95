"""Count the gendered words of every generated caption and summarise the intervention: <out-dir>/ with
captions.parquet, terms.parquet, latents.parquet, controls.parquet, overlap.parquet, summary.parquet, report.html.
See docs/intervention.md; columns: docs/output.md.
"""
import argparse
import shutil
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="layerwise-summarize-intervention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options-json", type=Path, required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--model-type", default="")
    p.add_argument("--selection", type=Path, required=True, help="the folder layerwise-select-latents wrote")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("captions", nargs="+", type=Path, metavar="CAPTIONS.parquet")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from layerwise.commands.select_latents import read_options

    options = read_options(args.options_json)
    import pandas as pd

    from layerwise.core.atomic import atomic_path
    from layerwise.core.sheet import read_valid_samplesheet
    from layerwise.intervention.counts import count_captions
    from layerwise.intervention.report import write_report
    from layerwise.intervention.stats import summarize

    captions = pd.concat([pd.read_parquet(p) for p in args.captions], ignore_index=True)
    captions, terms = count_captions(captions)
    summary = summarize(captions, model=args.model_type, model_id=args.model_id, options=options, seed=options.seed)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("captions.parquet", captions), ("terms.parquet", terms), ("summary.parquet", summary)):
        with atomic_path(out / name) as tmp:
            frame.to_parquet(tmp, index=False)
    latents = pd.DataFrame()
    for name in ("latents.parquet", "controls.parquet", "overlap.parquet"):
        if (args.selection / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(args.selection / name, tmp)
    if (args.selection / "latents.parquet").is_file():
        latents = pd.read_parquet(args.selection / "latents.parquet")
    evaluation = read_valid_samplesheet(args.selection / "evaluation.csv")
    images = dict(zip(evaluation["sample_id"].astype(str), evaluation["image"].astype(str)))
    write_report(summary, captions, terms, latents, out / "report.html", images=images)
    print(f"{len(captions)} captions, {len(summary)} conditions -> {out}")
    return 0
