#!/usr/bin/env python3
"""Build the offline test fixtures: a tiny random Gemma 3 (OUT/model) and a synthetic samplesheet (OUT/data).

Idempotent: a complete build stamped with the current fixture version and sample count is reused.
Test support, not part of the runtime package: the fixtures live in tests/support/fixtures.py.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the checkout's tests/ and layerwise/

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.support import fixtures  # noqa: E402  (after the offline defaults above)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/make-fixtures.py", description=__doc__.splitlines()[0])
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



if __name__ == "__main__":
    sys.exit(main())
