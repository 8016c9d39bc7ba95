"""Build the offline test fixtures: a tiny random Gemma 3 (OUT/model) and a synthetic samplesheet (OUT/data).

Idempotent: a complete build stamped with the current fixture version and sample count is reused.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from layerwise import fixtures  # noqa: E402  (after the offline defaults above)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="layerwise-make-fixtures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="build folder (model/ and data/ go inside)")
    parser.add_argument("--samples", type=int, default=fixtures.N_SAMPLES, help="synthetic samples (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a current build is there")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    paths, built = fixtures.ensure_fixtures(args.out, args.samples, force=args.force)
    print(f"{'built' if built else 'up to date'} (fixture version {fixtures.FIXTURE_VERSION}):")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0

