"""Analyse a run's layer files: gender probes, directions, CKA, cross-lingual similarity, SAE latents.

Writes probes.parquet, directions.parquet, cka.parquet, crosslingual.parquet (sae_features.parquet
with --sae-dir), report.html and analysis.json into --out-dir. See docs/analysis.md.
"""
import argparse
import logging
from pathlib import Path

from layerwise.analysis.params import ANALYSIS_PARAMS, analysis_defaults, converter, split_csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="layerwise-analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--sae-dir", action="append", default=[], metavar="ROOT|LAYER[:LANGUAGE]=FOLDER",
                   help="SAE root with layer_<L>[_<language>] subfolders (as layerwise.sae writes them), or one "
                        "SAELens folder for a layer (repeatable)")
    # The options the pipeline exposes as analysis_<option> params: names, types, help and defaults from
    # layerwise.analysis.params (defaults: layerwise.analysis.run.Options)
    defaults = analysis_defaults()
    for name, (_type, desc, _) in ANALYSIS_PARAMS.items():
        default = defaults[name]
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=converter(name), default=default,
                       help=f"{desc} (default {','.join(default) if isinstance(default, tuple) else default})")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel permutation fits (joblib; default 1)")
    p.add_argument("--samplesheet", type=Path, help="samplesheet.valid.csv: group folds by image, and mark the views "
                   "that read a caption holding the label's word (its label_leaks column)")
    p.add_argument("--sae-views", type=split_csv, help="views encoded by the SAEs (default: every pooled view)")
    p.add_argument("--sae-device", default="cpu")
    p.add_argument("--chunk-mb", type=int, default=64, help="float32 working set per chunk of samples")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/BLAS threads inside the stage (default 1; probes always fit single-threaded)")
    p.add_argument("--scratch-dir", type=Path, help="folder for the CKA Gram matrices (default: a temp folder)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("layer_files", nargs="+", type=Path, metavar="LAYER_FILE.pt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from layerwise.analysis import analyze
    from layerwise.analysis.labels import groups_from_samplesheet, label_leaks_from_samplesheet
    from layerwise.analysis.sae import parse_sae_dirs

    result = analyze(
        args.layer_files, args.out_dir, sae_dirs=parse_sae_dirs(args.sae_dir) or None,
        folds=args.folds, permutations=args.permutations, seed=args.seed, classes=args.classes, views=args.views,
        C=args.C, n_jobs=args.n_jobs, cka_max_samples=args.cka_max_samples,
        groups=groups_from_samplesheet(args.samplesheet) if args.samplesheet else None,
        label_leaks=label_leaks_from_samplesheet(args.samplesheet) if args.samplesheet else None,
        sae_views=args.sae_views, sae_top_k=args.sae_top_k, sae_alpha=args.sae_alpha, sae_device=args.sae_device,
        chunk_bytes=args.chunk_mb << 20, scratch_dir=args.scratch_dir, threads=args.threads, report=not args.no_report,
    )
    print(f"analysis done in {result['timings']['total']:.1f} s: {len(result['probes'])} probes, "
          f"{len(result['cka'])} CKA pairs, {len(result['notes'])} note(s); outputs in {args.out_dir}")
    return 0

