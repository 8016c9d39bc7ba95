"""PUBLISH_SAE: place the SAE folders in <outdir>/sae/, move stale ones aside, write metrics.parquet and report.html."""
import argparse
from pathlib import Path


def main(argv=None) -> int:
    from layerwise.publish.outdir import PUBLISH_MODES
    from layerwise.publish.sae import publish_saes

    p = argparse.ArgumentParser(prog="layerwise-publish-sae", description=__doc__)
    p.add_argument("--outdir", type=Path, required=True, help="the pipeline's --outdir (SAEs go to <outdir>/sae/)")
    p.add_argument("--mode", default="link", choices=PUBLISH_MODES, help="hard link (copy across file systems) or copy")
    p.add_argument("--no-report", action="store_true", help="skip sae/report.html")
    p.add_argument("sae_dirs", nargs="+", type=Path, metavar="SAE_DIR", help="layer_{L}[_{language}]/ folders")
    args = p.parse_args(argv)
    out = publish_saes(args.sae_dirs, args.outdir, args.mode, report=not args.no_report)
    print(f"published {len(out['saes'])} SAE(s) and {out['records']} metric records to {args.outdir}/sae"
          + (f"; {len(out['superseded'])} earlier folder(s) moved to superseded/" if out["superseded"] else ""))
    return 0

