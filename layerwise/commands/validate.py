"""Validate a run's layer files; write extraction_metadata.json, metadata/*.parquet and the report."""
import argparse
import json
from pathlib import Path

from layerwise.core.errors import LayerwiseError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="layerwise-validate", description=__doc__)
    p.add_argument("--plan", type=Path, required=True, help="plan.json from layerwise-preflight")
    p.add_argument("--samplesheet", type=Path, required=True, help="samplesheet.valid.csv from layerwise-preflight")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--summaries", nargs="*", type=Path, default=[], metavar="S.json",
                   help="extraction summary.json files (arguments not ending in .json are taken as layer files)")
    p.add_argument("layer_files", nargs="*", type=Path, metavar="LAYER_FILE.pt")
    args = p.parse_args(argv)
    # `--summaries a.json b.json x.pt y.pt`: the layer files follow the summaries.
    summaries = [s for s in args.summaries if s.suffix == ".json"]
    layer_files = [s for s in args.summaries if s.suffix != ".json"] + list(args.layer_files)
    if not layer_files:
        raise LayerwiseError("no layer files given (LAYER_FILE.pt...)")
    try:
        plan = json.loads(args.plan.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{args.plan}: cannot read the plan: {exc}") from exc
    from layerwise.publish.validate import validate  # torch: not for --help

    meta = validate(plan, args.samplesheet, layer_files, summaries, args.out_dir)
    checks = meta["checks"]
    print(f"validation passed: {meta['totals']['files']} layer files "
          f"({len(meta['layers'])} layers x {len(meta['languages'])} languages), "
          f"{meta['samples']} samples, {sum(c['passed'] for c in checks)}/{len(checks)} checks passed; "
          f"metadata in {args.out_dir}")
    return 0

