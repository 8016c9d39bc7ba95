"""Train one SAE per layer (SAELens) on layer files; write <out-dir>/layer_{L}[_{language}]/ and metrics.parquet.

Files are grouped by their `layer` key; each layer's files (one per language) train one SAE,
all languages pooled (--language pooled, the default) or one language's file only. Every option
of layerwise.sae.options.SAEOptions is a flag (--name-with-dashes); defaults and checks live there.
Each SAE folder also gets its per-latent dashboard (dashboard.html, dashboard.parquet; --dashboard-latents 0: none),
with token strings from --tokens and images from --samples.
"""
import argparse
import json
from dataclasses import fields
from pathlib import Path

from layerwise.core.errors import LayerwiseError
from layerwise.sae.options import SAEOptions, option_specs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerwise-train-sae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, help="SAE root folder (e.g. results/sae)")
    p.add_argument("--metrics", type=Path, help="metrics table (default: <out-dir>/metrics.parquet)")
    p.add_argument("--samplesheet", type=Path,
                   help="the samplesheet the layer files were extracted from, recorded with its sha256 in each cfg.json "
                        "(metadata.dataset_path); default: <outdir>/pipeline_info/samplesheet.valid.csv when the layer "
                        "files are an outdir's layer_checkpoints/ (links followed), else none")
    p.add_argument("--tokens", type=Path,
                   help="the token table of the layer files (<outdir>/metadata/tokens.parquet): token strings for the "
                        "per-latent dashboard; default: the outdir's when the layer files are an outdir's "
                        "layer_checkpoints/ (links followed), else none (token ids are shown)")
    p.add_argument("--samples", type=Path,
                   help="the samples table (<outdir>/metadata/samples.parquet): image thumbnails for the per-latent "
                        "dashboard; default: the outdir's as for --tokens, else none (no images)")
    p.add_argument("--options-json", type=Path, help="JSON object of SAE options (flags override it)")
    p.add_argument("--stub-layer", type=int, default=None, metavar="L",
                   help="for -stub-run: write the (empty) SAE folder of layer L as a real run names it, train nothing")
    p.add_argument("--print-options-schema", action="store_true",
                   help="print every SAE option as JSON schema (for nextflow_schema.json) and exit")
    specs = option_specs()
    g = p.add_argument_group("SAE options (layerwise.sae.options.SAEOptions)")
    for f in fields(SAEOptions):
        spec = specs[f.name]
        choices = " {" + ",".join(spec["enum"]) + "}" if "enum" in spec else ""
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=spec["type"].upper(),
                       help=f"{spec['description']}{choices} (default: {spec['default']})")
    p.add_argument("layer_files", nargs="*", type=Path, metavar="LAYER_FILE.pt")
    return p


def parse_options(args: argparse.Namespace) -> SAEOptions:
    values = {}
    if args.options_json:
        try:
            values = json.loads(args.options_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LayerwiseError(f"{args.options_json}: cannot read the SAE options: {exc}") from exc
        if not isinstance(values, dict):
            raise LayerwiseError(f"{args.options_json}: SAE options must be a JSON object")
    values.update({f.name: getattr(args, f.name) for f in fields(SAEOptions) if getattr(args, f.name) is not None})
    return SAEOptions.from_mapping(values)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_options_schema:
        print(json.dumps(option_specs(), indent=2))
        return 0
    options = parse_options(args)           # checked before anything heavy is imported
    if args.out_dir is None:
        raise LayerwiseError("--out-dir is required")
    if args.stub_layer is not None:
        from layerwise.sae.outputs import METRICS_FILE, sae_folder_name

        folder = args.out_dir / sae_folder_name(args.stub_layer, options.language)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cfg.json").write_text('{"stub": true}\n', encoding="utf-8")
        (folder / METRICS_FILE).write_text("[]\n", encoding="utf-8")
        print(f"stub: {folder}")
        return 0
    if not args.layer_files:
        raise LayerwiseError("no layer files given (LAYER_FILE.pt...)")
    for flag, path in (("--tokens", args.tokens), ("--samples", args.samples)):
        if path is not None and not path.is_file():
            raise LayerwiseError(f"{flag} {path}: no such file")
    from layerwise.sae.metrics import write_metrics
    from layerwise.sae.outputs import METRICS_TABLE
    from layerwise.sae.source import group_by_layer
    from layerwise.sae.train import train_layer_sae

    records = []
    for layer, paths in group_by_layer(args.layer_files).items():
        recs = train_layer_sae(paths, args.out_dir, options, samplesheet=args.samplesheet, tokens=args.tokens,
                               samples=args.samples)
        records += recs
        val = next(r for r in recs if r["split"] == "validation")
        left_out = sum(n for r in recs for n in r["excluded_samples"].values())
        print(f"layer {layer} ({val['language']}: {val['languages']}): {val['architecture']} d_sae={val['d_sae']}, "
              f"held-out explained variance {val['explained_variance']:.4f}, L0 {val['mean_l0']:.1f}, "
              f"dead {val['dead_fraction']:.3f}, {val['tokens_seen']} tokens seen in {val['steps']} steps"
              + (f", {left_out} (sample, language) pair(s) left out for NaN/Inf values" if left_out else "")
              + f" -> {args.out_dir / val['sae_dir']}", flush=True)
    path = write_metrics(records, args.metrics or args.out_dir / METRICS_TABLE)
    print(f"{len(records)} metric records -> {path}")
    return 0

