"""Generate captions for the evaluation images with one job's SAE latents ablated (or scaled): one Parquet file.

The job file (written by layerwise-select-latents) names the condition (baseline, targeted, random runs), the
hooked layers, the SAE folder of each layer and the latents of each run. The hooks sit on the decoder layers of
the one loaded model; generation is greedy and deterministic. See docs/intervention.md.
"""
import argparse
import json
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="layerwise-intervene", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", type=Path, required=True, help="a job file of layerwise-select-latents")
    p.add_argument("--evaluation", type=Path, required=True, help="evaluation.csv of layerwise-select-latents")
    p.add_argument("--model", help="hub id or local folder")
    p.add_argument("--revision", default=None)
    p.add_argument("--prompts", type=Path, default=None, help="prompts JSON (default: assets/prompts.json)")
    p.add_argument("--options-json", type=Path, help="JSON object of intervention options")
    p.add_argument("--sae-dir", type=Path, action="append", default=[], help="a published SAE folder (repeatable)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True, help="captions Parquet file")
    p.add_argument("--stub", action="store_true", help="for -stub-run: write the rows with empty captions")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd

    from layerwise.core.atomic import atomic_path
    from layerwise.core.errors import LayerwiseError
    from layerwise.core.sheet import read_valid_samplesheet
    from layerwise.intervention.plan import BASELINE, read_job

    job = read_job(args.job)
    lang = job.caption_language
    sheet = read_valid_samplesheet(args.evaluation)
    runs = job.runs or [{"run": 0, "latents": {}}]
    captions_of: dict[int, list[str]] = {}
    if args.stub:
        captions_of = {r["run"]: [""] * len(sheet) for r in runs}
    else:
        if not args.model or not args.options_json:
            raise LayerwiseError("--model and --options-json are required")
        from layerwise.commands.select_latents import read_options, sae_folders
        from layerwise.core.prompts import generation_prompt
        from layerwise.intervention.generate import generate_captions
        from layerwise.intervention.hooks import latent_hooks
        from layerwise.models.inputs import load_rgb
        from layerwise.models.loading import load_model

        options = read_options(args.options_json)
        loaded = load_model(args.model, args.revision, args.dtype, args.device)
        prompt = generation_prompt(lang, args.prompts, loaded.model_type)
        images = [load_rgb(p) for p in sheet["image"]]
        saes = {}
        if job.condition != BASELINE:
            from sae_lens import SAE

            folders = {f.name: f for f in sae_folders(args.sae_dir).values()}
            for layer, name in job.saes.items():
                if name not in folders:
                    raise LayerwiseError(f"job {job.id}: its SAE {name} of layer {layer} was not given (--sae-dir)")
                saes[int(layer)] = SAE.load_from_disk(str(folders[name]), device=str(loaded.device)).eval()
        for run in runs:
            if job.condition == BASELINE:
                captions_of[run["run"]] = generate_captions(loaded, images, prompt, max_new_tokens=options.max_new_tokens,
                                                            batch_size=options.batch_size)
                continue
            edits = {int(layer): (saes[int(layer)], latents) for layer, latents in run["latents"].items()}
            with latent_hooks(loaded.model, edits, hook=options.hook, scale=options.scale,
                              positions=options.positions) as hooks:
                captions_of[run["run"]] = generate_captions(loaded, images, prompt,
                                                            max_new_tokens=options.max_new_tokens,
                                                            batch_size=options.batch_size, hooks=hooks)
            silent = [layer for layer in edits if not hooks.fired.get(layer)]
            if silent:   # the research scripts once hooked a copy of the model: a hook must be seen to fire
                raise LayerwiseError(f"job {job.id} run {run['run']}: the hook on layer(s) {silent} never fired")
    records = []
    for run in runs:
        for (_, row), caption in zip(sheet.iterrows(), captions_of[run["run"]]):
            records.append({"sample_id": str(row["sample_id"]), "image": str(row["image"]),
                            "layers": ",".join(map(str, job.layers)), "feature_language": job.feature_language,
                            "caption_language": lang, "condition": job.condition, "run": int(run["run"]),
                            "caption": caption})
    with atomic_path(args.out) as tmp:
        pd.DataFrame.from_records(records).to_parquet(tmp, index=False)
    print(f"{job.id}: {len(records)} captions ({len(runs)} run(s) x {len(sheet)} images) -> {args.out}"
          + ("" if args.stub else f"; {json.dumps(job.layers)} hooked" if job.condition != BASELINE else ""))
    return 0
