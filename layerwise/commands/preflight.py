"""PREFLIGHT: check the samplesheet, model config and layer spec; write samplesheet.valid.csv + plan.json + storage_plan.json.

Exit status 0 on success, 2 on a user error (message on stderr as 'ERROR: ...').
"""
import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="layerwise-preflight", description=__doc__.splitlines()[0])
    p.add_argument("--samplesheet", required=True, help="CSV with sample_id,image,gender,caption_<language>...")
    p.add_argument("--samplesheet-origin", default=None,
                   help="the user's path of the samplesheet (--input), named in messages instead of the task's staged copy")
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
    from layerwise.core.schema import TOKEN_SELECTIONS

    p.add_argument("--token-selection", "--token_selection", dest="token_selection", default="all",
                   choices=TOKEN_SELECTIONS, help="the extraction's --token_selection (default all): the SAE checks "
                   "refuse token-kind filters it stores no row of, and project its training rows")
    p.add_argument("--sae-per-language", "--sae_per_language", dest="sae_per_language", action="store_true",
                   help="one SAE per layer and language (--sae_per_language): the rows are projected per language")
    p.add_argument("--intervention-options", type=Path, default=None,
                   help="JSON object of intervention options (--intervene): checked against the model and the layers")
    p.add_argument("--analysis-options", type=Path, default=None,
                   help="JSON object of analysis options (--analysis: {option: value of --analysis_<option>}), checked")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True)
    g = p.add_argument_group("storage plan", "storage_plan.json: the bytes the run will write and where, against the "
                             "free space there (with --token-selection and --sae-per-language); refused when they do not fit")
    g.add_argument("--outdir-path", default=None, help="the run's absolute --outdir (its file system is checked)")
    g.add_argument("--work-dir", default=None, help="Nextflow's work directory (its file system is checked)")
    g.add_argument("--ignore-space-check", action="store_true", help="run even when the files do not fit (a warning)")
    g.add_argument("--layout", default="padded", help="the extraction's --layout")
    g.add_argument("--dtype", default="auto", help="the extraction's --dtype")
    g.add_argument("--device", default="auto", help="the extraction's --device (resolves --dtype auto)")
    g.add_argument("--nan-policy", default="zero", help="the extraction's --nan_policy (stored in every file)")
    g.add_argument("--combined", action="store_true", help="--combined_files: one more copy of every layer file")
    g.add_argument("--publish-mode", default="link", help="--publish_dir_mode (link: hard links on one file system)")
    g.add_argument("--image-cache", default=None, help="the image-feature cache folder (none or '': not shared)")
    g.add_argument("--analysis-views", default=None, help="--analysis_views (none: --analysis false)")
    g.add_argument("--analysis-cka-max-samples", type=int, default=2000, help="--analysis_cka_max_samples")
    return p.parse_args(argv)


def check_sae_options(path: Path, d_in: int, df, token_selection: str | None = None, caption_stats: dict | None = None,
                      languages: list[str] | None = None, per_language: bool = False) -> str:
    """Every SAE option valid, and valid for this model, these samples and the extraction's token selection
    (kinds it stores; training rows projected from `caption_stats`, `check_captions`'s result) (SAEOptions owns
    the checks)."""
    import json

    from layerwise.core.errors import LayerwiseError
    from layerwise.core.schema import SAMPLE_ID
    from layerwise.sae.options import SAEOptions, SAEOptionsError, projected_rows_per_sample

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{path}: cannot read the SAE options: {exc}") from exc
    try:
        options = SAEOptions.from_mapping(values)
        rows = (projected_rows_per_sample(token_selection, languages, len(df), caption_stats)
                if token_selection and languages else None)
        d_sae = options.check_run(d_in, df[SAMPLE_ID].astype(str).tolist(), token_selection, rows, per_language)
    except SAEOptionsError as exc:   # name the pipeline's parameters (--sae_<option>) too
        import re
        from dataclasses import fields

        known = {f.name for f in fields(SAEOptions)}
        named = [n for n in dict.fromkeys(re.findall(r"'([a-z0-9_]+)'", str(exc))) if n in known]
        params = ", ".join([f"--sae_{n}" for n in named] + [p for p in ("--token_selection", "--sae_per_language")
                                                             if p in str(exc)]) or "--sae_<option>"
        raise SAEOptionsError(f"{exc} (pipeline parameter{'s' if ',' in params else ''}: {params})") from None
    note = (f"{options.architecture}, d_sae {d_sae} (d_in {d_in}), kinds {','.join(options.kept_kind_names())}, "
            f"validation fraction {options.validation_fraction} of the samples")
    if rows:
        from layerwise.sae.options import projected_train_rows

        n_rows, _ = projected_train_rows(options, df[SAMPLE_ID].astype(str).tolist(), rows, per_language, token_selection)
        note += f", training rows <= {n_rows} (<= {options.budget(n_rows)[0]} optimizer steps)"
    return note


def _read_options(path: Path, what: str) -> dict:
    import json

    from layerwise.core.errors import LayerwiseError

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{path}: cannot read the {what} options: {exc}") from exc
    if not isinstance(values, dict):
        raise LayerwiseError(f"{path}: the {what} options are not a JSON object")
    return values


def check_intervention_options(path: Path, num_layers: int, layers: list[int], token_selection: str = "all") -> None:
    """Every intervention option valid, the hooked layers among the extracted ones (each gets an SAE), and layer
    files of token rows (the hooks apply the SAEs per token)."""
    from layerwise.core import schema
    from layerwise.core.errors import LayerwiseError
    from layerwise.intervention.options import InterventionOptions
    from layerwise.intervention.plan import resolve_layers

    options = InterventionOptions.from_mapping(_read_options(path, "intervention"))
    resolve_layers(options.layers, num_layers, layers)
    if token_selection in schema.PER_SAMPLE_SELECTIONS:
        raise LayerwiseError(f"--intervene with --token_selection {token_selection}: the layer files (and the SAEs "
                             "trained on them) hold one vector per sample, but the intervention applies the SAEs to "
                             "every token position while the model writes; use --token_selection all, text or caption")


def check_analysis_options(path: Path) -> None:
    """Every analysis option valid (--analysis_<option>), before any GPU job."""
    from layerwise.analysis.params import check_params

    check_params(_read_options(path, "analysis"))


def main(argv=None) -> int:
    args = parse_args(argv)
    from layerwise.core.errors import LayerwiseError

    try:
        return _preflight(args)
    except LayerwiseError as exc:   # name the user's file, not the task's staged copy of it
        if not args.samplesheet_origin or args.samplesheet_origin == args.samplesheet:
            raise
        raise LayerwiseError(str(exc).replace(args.samplesheet, args.samplesheet_origin)) from None


def _preflight(args) -> int:
    if args.hf_home:
        os.environ["HF_HOME"] = str(Path(args.hf_home).expanduser().absolute())
    from layerwise.core.errors import LayerwiseError
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
    from layerwise.preflight.storage import STORAGE_PLAN_FILE, for_preflight, refusal, write_storage_plan
    from layerwise.preflight.storage import table as storage_table

    prompts = load_prompts(args.prompts)
    languages = parse_languages(args.languages, prompts)
    full = not (args.skip_image_check or args.stub)
    df = read_samplesheet(args.samplesheet, languages, check_images=full)
    caption_stats = processor = None   # each sample's planned positions per language (none in a stub run)
    if args.stub:   # the plan only: model facts from its config, no weight headers or tokenizer
        info = read_model_info(args.model, args.revision)
        info["fingerprint"] = f"stub:{info['id']}@{info['revision']}"
    else:
        info = check_model(args.model, args.revision)
        processor = load_processor(args.model, args.revision)
        prompts = load_prompts(args.prompts, info["model_type"])   # a family's own prompt where it has one
        caption_stats = check_captions(df, processor, prompts, languages, info["max_position_embeddings"],
                                       family=family_of(info["model_type"]))
    plan = make_plan(df, info, args.layers, languages, args.layer_groups, args.samples_per_task, prompts=prompts)
    sae_note = check_sae_options(args.sae_options, info["hidden_size"], df, args.token_selection, caption_stats,
                                 plan["languages"], args.sae_per_language) if args.sae_options else None
    if args.intervention_options:
        check_intervention_options(args.intervention_options, info["num_layers"], plan["layers"], args.token_selection)
    if args.analysis_options:
        check_analysis_options(args.analysis_options)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # in its own file: free space changes between runs, plan.json must not (it decides which units re-run)
    storage = for_preflight(args, plan, df, info, caption_stats, processor, prompts)
    write_storage_plan(storage, out / STORAGE_PLAN_FILE)
    if storage.fits is False:
        if not storage.ignored:
            print(storage_table(storage))
            raise LayerwiseError(refusal(storage))
        print(f"WARNING: {refusal(storage)}", file=sys.stderr)
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
    print(storage_table(storage))
    return 0

