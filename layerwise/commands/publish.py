"""PUBLISH_RESULTS: place a run's layer files in --outdir (hard links, merges), validate them there, write metadata.

Exit status 0 when the outdir holds this run's complete, verified result; 2 with the reasons otherwise.
"""
import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    from layerwise.core.errors import LayerwiseError
    from layerwise.publish.outdir import PUBLISH_MODES, publish_run, publish_stub

    p = argparse.ArgumentParser(prog="layerwise-publish", description=__doc__.splitlines()[0])
    p.add_argument("--plan", type=Path, required=True, help="plan.json from layerwise-preflight")
    p.add_argument("--samplesheet", type=Path, required=True, help="samplesheet.valid.csv from layerwise-preflight")
    p.add_argument("--outdir", type=Path, required=True, help="the pipeline's --outdir")
    p.add_argument("--mode", default="link", choices=PUBLISH_MODES, help="hard link (copy across file systems) or copy")
    p.add_argument("--combined", action="store_true", help="also write activations_{language}_all_layers.pt")
    p.add_argument("--run-id", default=None, help="Nextflow session id: the outdir lock must be this run's")
    p.add_argument("--run-name", default=None)
    p.add_argument("--rewrites", default="", help="comma-separated stage folders this run writes again (e.g. sae): "
                   "not checked against the published files (their own publishing replaces them)")
    p.add_argument("--stub", action="store_true", help="for -stub-run: link and record the files, validate nothing")
    p.add_argument("unit_dirs", nargs="+", type=Path, metavar="UNIT_DIR", help="one output folder per extraction unit")
    args = p.parse_args(argv)
    try:
        plan = json.loads(args.plan.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{args.plan}: cannot read the plan: {exc}") from exc
    if args.stub:
        meta = publish_stub(plan, args.samplesheet, args.unit_dirs, args.outdir, plan_file=args.plan)
        print(f"stub: linked {len(meta['published'])} layer files into {args.outdir}")
        return 0
    meta = publish_run(plan, args.samplesheet, args.unit_dirs, args.outdir, mode=args.mode, combined=args.combined,
                       run_id=args.run_id, run_name=args.run_name, plan_file=args.plan,
                       rewrites=tuple(x for x in args.rewrites.split(",") if x))
    hows = {}
    for rec in meta["published"]:
        hows[rec["how"]] = hows.get(rec["how"], 0) + 1
    print(f"published and validated {meta['totals']['files']} layer files ({len(meta['layers'])} layers x "
          f"{len(meta['languages'])} languages, {meta['samples']} samples) in {args.outdir}: "
          + ", ".join(f"{n} {h}" for h, n in sorted(hows.items())))
    return 0

