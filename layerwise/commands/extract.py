"""Extract per-layer hidden states for one work unit (layers x language x sample rows).

Execution-only settings (batch size, checkpoint interval) default to the environment variables
LAYERWISE_BATCH_SIZE and LAYERWISE_CHECKPOINT_INTERVAL: the pipeline passes them that way so that
changing them (e.g. after an out-of-memory error) keeps finished units cached on -resume.
"""
import argparse
import dataclasses
import os

from layerwise.core import schema
from layerwise.extract.unit import UnitConfig, run_unit


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    default = {f.name: f.default for f in dataclasses.fields(UnitConfig)}   # UnitConfig owns the defaults
    p = argparse.ArgumentParser(prog="layerwise-extract", description=__doc__.splitlines()[0])
    p.add_argument("--samplesheet", required=True, help="samplesheet CSV (sample_id,image,gender,caption_<language>)")
    p.add_argument("--model", required=True, help="hub id or local folder")
    p.add_argument("--revision", default=default["revision"], help="hub revision (branch, tag or commit)")
    p.add_argument("--language", required=True)
    p.add_argument("--layers", default="all", help="all | 0-33 | '0 10 14 18' | mixes")
    p.add_argument("--rows", default=default["rows"], help="START:END (0-based, end exclusive) rows of the samplesheet")
    p.add_argument("--batch-size", type=int, default=_env_int("LAYERWISE_BATCH_SIZE", default["batch_size"]))
    p.add_argument("--checkpoint-interval", type=int,
                   default=_env_int("LAYERWISE_CHECKPOINT_INTERVAL", default["checkpoint_interval"]))
    p.add_argument("--dtype", default=default["dtype"],
                   help=" | ".join(schema.DTYPES) + " (auto: bfloat16 on a GPU that has it, else float32)")
    p.add_argument("--token-selection", default=default["token_selection"], help=" | ".join(schema.TOKEN_SELECTIONS))
    p.add_argument("--layout", default=default["layout"], help=" | ".join(schema.LAYOUTS) + " (padded [N,T,H], ragged [tokens,H])")
    p.add_argument("--nan-policy", default=default["nan_policy"], help=" | ".join(schema.NAN_POLICIES))
    p.add_argument("--prompts", default=default["prompts"], help="prompts JSON (default: assets/prompts.json)")
    p.add_argument("--device", default=default["device"], help=" | ".join(schema.DEVICES) + " (or a torch device such as cuda:1)")
    p.add_argument("--image-cache", default=default["image_cache"],
                   help="shared image-feature cache folder: the vision tower runs once per image across units")
    p.add_argument("--model-fingerprint", default=default["model_fingerprint"],
                   help="identity of the model weights (from PREFLIGHT)")
    p.add_argument("--adopt-from", default=default["adopt_from"],
                   help="work dir of a failed attempt: continue from its checkpoint")
    p.add_argument("--out-dir", required=True)
    return p


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    summary = run_unit(UnitConfig(**{k.replace("-", "_"): v for k, v in args.items()}))
    print(f"extracted {summary['samples']} samples x {len(summary['layers'])} layers ({summary['language']}) "
          f"in {summary['seconds']} s -> {args['out_dir']}")
    return 0

