"""Write a stage folder's record of the outdir files it was computed from (<folder>/inputs.json).

The stages after publishing (ANALYZE_LAYERS, SELECT_LATENTS) call it on their output folder; PUBLISH_RESULTS of a
later run checks the record against the layer files it publishes (layerwise.core.provenance).
"""
import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    from layerwise.core.errors import LayerwiseError
    from layerwise.core.outdir import STAGE_DIRS
    from layerwise.core.provenance import inputs_from_checksums, sha256_file, write_record

    p = argparse.ArgumentParser(prog="layerwise-record-inputs", description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, choices=STAGE_DIRS, help="the stage folder's name in the outdir")
    p.add_argument("--checksums", type=Path, required=True,
                   help='JSON {layer-file path in the outdir: sha256, "samplesheet": sha256} (the workflow\'s record)')
    p.add_argument("--read", action="append", default=[], metavar="OUTDIR_PATH=FILE",
                   help="another outdir file the stage read (e.g. sae/inputs.json=<its staged copy>), hashed here")
    p.add_argument("--out-dir", type=Path, required=True, help="the stage's output folder")
    args = p.parse_args(argv)
    try:
        checksums = json.loads(args.checksums.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{args.checksums}: cannot read the checksums: {exc}") from None
    inputs = inputs_from_checksums(checksums)
    for item in args.read:
        rel, sep, local = item.partition("=")
        if not sep or not rel or not local:
            raise LayerwiseError(f"--read {item!r}: expected OUTDIR_PATH=FILE")
        inputs[rel] = sha256_file(local)
    path = write_record(args.out_dir, args.stage, inputs)
    print(f"{path}: {len(inputs)} input(s) recorded")
    return 0
