"""PREFLIGHT: check the samplesheet, model config and layer spec; write samplesheet.valid.csv + plan.json.

Exit status 0 on success, 2 on a user error (message on stderr as 'ERROR: ...').
"""
import argparse
import os
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="layerwise-preflight", description=__doc__.splitlines()[0])
    p.add_argument("--samplesheet", required=True, help="CSV with sample_id,image,gender,caption_<language>...")
    p.add_argument("--model", required=True, help="hub id (e.g. google/gemma-3-4b-it) or local model folder")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--layers", required=True, help="'all', '0-33', '0 10 14 18', '0,10,14-18'")
    p.add_argument("--languages", required=True, help="comma/space separated, e.g. english,arabic")
    p.add_argument("--layer-groups", "--layer_groups", dest="layer_groups", default="auto",
                   help="'auto' (one group per contiguous run), a number N, or explicit '0-8,9-16'")
    p.add_argument("--samples-per-task", "--samples_per_task", dest="samples_per_task", default="0",
                   help="samples per extraction task; 0 = all in one task")
    p.add_argument("--prompts", default=None, help="prompts JSON (default: assets/prompts.json)")
    p.add_argument("--hf-home", "--hf_home", dest="hf_home", default=None,
                   help="Hugging Face cache root (sets HF_HOME)")
    p.add_argument("--skip-image-check", action="store_true", help="do not open the images (faster)")
    p.add_argument("--stub", action="store_true",
                   help="plan only (for -stub-run): the same planner, without decoding images or checking weights")
    p.add_argument("--sae-options", type=Path, default=None,
                   help="JSON object of SAE options (--sae): checked against the model and the samples")
    p.add_argument("--intervention-options", type=Path, default=None,
                   help="JSON object of intervention options (--intervene): checked against the model and the layers")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True)
    return p.parse_args(argv)


def check_sae_options(path: Path, d_in: int, df) -> str:
    """Every SAE option valid, and valid for this model and these samples (SAEOptions owns the checks)."""
    import json

    from layerwise.core.errors import LayerwiseError
    from layerwise.core.schema import SAMPLE_ID
    from layerwise.sae.options import SAEOptions, SAEOptionsError

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{path}: cannot read the SAE options: {exc}") from exc
    try:
        options = SAEOptions.from_mapping(values)
        d_sae = options.check_run(d_in, df[SAMPLE_ID].astype(str).tolist())
    except SAEOptionsError as exc:   # name the pipeline's parameters (--sae_<option>) too
        import re
        from dataclasses import fields

        known = {f.name for f in fields(SAEOptions)}
        named = [n for n in dict.fromkeys(re.findall(r"'([a-z0-9_]+)'", str(exc))) if n in known]
        params = ", ".join(f"--sae_{n}" for n in named) or "--sae_<option>"
        raise SAEOptionsError(f"{exc} (pipeline parameter{'s' if len(named) > 1 else ''}: {params})") from None
    return (f"{options.architecture}, d_sae {d_sae} (d_in {d_in}), kinds {','.join(options.kept_kind_names())}, "
            f"validation fraction {options.validation_fraction} of the samples")


def check_intervention_options(path: Path, num_layers: int, layers: list[int]) -> None:
    """Every intervention option valid, and the hooked layers among the extracted ones (each gets an SAE)."""
    import json

    from layerwise.core.errors import LayerwiseError
    from layerwise.intervention.options import InterventionOptions
    from layerwise.intervention.plan import resolve_layers

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{path}: cannot read the intervention options: {exc}") from exc
    options = InterventionOptions.from_mapping(values)
    resolve_layers(options.layers, num_layers, layers)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.hf_home:
        os.environ["HF_HOME"] = str(Path(args.hf_home).expanduser().absolute())
    from layerwise.core.layers import format_layers
    from layerwise.core.prompts import load_prompts
    from layerwise.models.families import family_of
    from layerwise.models.loading import read_model_info
    from layerwise.preflight.caption_check import check_captions
    from layerwise.preflight.model_check import check_model, load_processor
    from layerwise.preflight.plan import (
        PLAN_FILE,
        VALID_SAMPLESHEET_FILE,
        make_plan,
        parse_languages,
        write_plan,
        write_unit_sheets,
    )
    from layerwise.preflight.samplesheet import read_samplesheet, write_valid_samplesheet

    prompts = load_prompts(args.prompts)
    languages = parse_languages(args.languages, prompts)
    full = not (args.skip_image_check or args.stub)
    df = read_samplesheet(args.samplesheet, languages, check_images=full)
    if args.stub:   # the plan only: model facts from its config, no weight headers or tokenizer
        info = read_model_info(args.model, args.revision)
        info["fingerprint"] = f"stub:{info['id']}@{info['revision']}"
    else:
        info = check_model(args.model, args.revision)
        processor = load_processor(args.model, args.revision)
        prompts = load_prompts(args.prompts, info["model_type"])   # a family's own prompt where it has one
        check_captions(df, processor, prompts, languages, info["max_position_embeddings"],
                       family=family_of(info["model_type"]))
    plan = make_plan(df, info, args.layers, languages, args.layer_groups, args.samples_per_task, prompts=prompts)
    sae_note = check_sae_options(args.sae_options, info["hidden_size"], df) if args.sae_options else None
    if args.intervention_options:
        check_intervention_options(args.intervention_options, info["num_layers"], plan["layers"])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_valid_samplesheet(df, out / VALID_SAMPLESHEET_FILE)
    write_unit_sheets(df, plan, out)
    write_plan(plan, out / PLAN_FILE)

    groups = " ".join(format_layers(g) for g in plan["layer_groups"])
    print(f"model      {info['id']} ({info['model_type']}, revision {info['revision']}): "
          f"{info['num_layers']} layers, hidden size {info['hidden_size']}")
    print(f"samples    {len(df)}")
    print(f"layers     {format_layers(plan['layers'])} ({len(plan['layers'])})")
    print(f"languages  {', '.join(plan['languages'])}")
    print(f"groups     {len(plan['layer_groups'])}: {groups}")
    print(f"shards     {len(plan['shards'])}: {' '.join(s['rows'] for s in plan['shards'])}")
    print(f"units      {len(plan['units'])} extraction tasks")
    if sae_note:
        print(f"sae        {sae_note}")
    return 0

