#!/usr/bin/env python3
"""Write the derived groups of nextflow_schema.json (sae_options, analysis_options) from their owners.

    scripts/sync-schema.py           # rewrite nextflow_schema.json
    scripts/sync-schema.py --check   # exit 1 when the file differs from what the owners say

The owners: layerwise.sae.options.SAEOptions and layerwise.analysis.run.Options, via
layerwise.params_schema. Every other group of the schema is edited by hand.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerwise.params_schema import derived_groups  # noqa: E402

SCHEMA = ROOT / "nextflow_schema.json"


def synced(schema: dict) -> dict:
    out = dict(schema)
    defs = dict(out["$defs"])
    generic = defs.pop("generic_options", None)
    for name, group in derived_groups().items():
        defs[name] = group
    if generic is not None:            # the generic group stays last in --help
        defs["generic_options"] = generic
    out["$defs"] = defs
    out["allOf"] = [{"$ref": f"#/$defs/{k}"} for k in defs]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    new = synced(schema)
    if args.check:
        if new != schema:
            print(f"{SCHEMA} is out of date: run scripts/sync-schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(json.dumps(new, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
