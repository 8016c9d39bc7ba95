"""Compare models: several published outdirs side by side, by relative depth (comparison.parquet, report.html).

    layerwise compare --out compare_dir results_gemma results_qwen
    layerwise compare --out compare_dir --label gemma-3-4b results_gemma --label qwen2-vl-7b results_qwen

Reads each outdir's extraction_metadata.json (required), analysis/probes.parquet, sae/metrics.parquet and
intervention/summary.parquet (each optional: a part an outdir lacks is a note, not an error) and writes
OUT/comparison.parquet (one row per model, layer, language and view) and OUT/report.html (self-contained).
See docs/usage.md ("Comparing models") and docs/output.md ("comparison.parquet").
"""
import argparse
from pathlib import Path

LABEL = "--label"


def split_labels(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str | None]]:
    """argv without its --label options, and the label of each outdir (positional) in order: a
    `--label NAME` names the outdir that follows it."""
    rest, labels, pending = [], [], None
    args = iter(argv)
    positional_only = False
    for arg in args:
        if positional_only or arg == "-" or not arg.startswith("-"):
            labels.append(pending)
            pending = None
            rest.append(arg)
            continue
        if arg == "--":
            positional_only = True
            rest.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        if name == LABEL:
            if pending is not None:
                parser.error(f"{LABEL} {pending} names no outdir (a {LABEL} goes before the outdir it names)")
            if not has_value:
                value = next(args, None)
                if value is None:
                    parser.error(f"{LABEL} needs a NAME")
            pending = value
            continue
        rest.append(arg)
        action = parser._option_string_actions.get(name)   # an option that takes a value: skip its value
        if action is not None and action.nargs != 0 and not has_value:
            value = next(args, None)
            if value is not None:
                rest.append(value)
    if pending is not None:
        parser.error(f"{LABEL} {pending} names no outdir (a {LABEL} goes before the outdir it names)")
    return rest, labels


def main(argv=None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="layerwise-compare", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for comparison.parquet and report.html")
    p.add_argument(LABEL, metavar="NAME", help="the name of the outdir that follows (default: its folder's name); "
                   "one per outdir, optional")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("outdirs", nargs="+", type=Path, metavar="OUTDIR", help="the --outdir of a layerwise run")
    rest, labels = split_labels(p, list(sys.argv[1:] if argv is None else argv))
    args = p.parse_intermixed_args(rest)

    from layerwise.compare import compare

    done = compare(args.outdirs, args.out, labels=labels, report=not args.no_report)
    for label, note in done["notes"]:
        print(f"note: {label}: {note}")
    print(f"compared {len(done['results'])} model(s): {len(done['table'])} rows; written "
          + ", ".join(str(w) for w in done["written"]))
    return 0
