"""Select the SAE latents to ablate (no model): latents.parquet, matched random controls, evaluation images, jobs.

For each hooked layer (--intervention_layers) and feature language, the latents of the layer's SAE ranked by how
much their mean activation differs between male and female samples of the SAE's training split; k random latents
per control run, matched by firing rate; up to --intervention_images held-out samples, one per image; one JSON file
per generation job (baseline, targeted, chunk of random runs) under <out-dir>/jobs/. See docs/intervention.md.
"""
import argparse
import json
import re
from pathlib import Path

SAE_FOLDER = re.compile(r"^layer_(\d+)(?:_(.+))?$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="layerwise-select-latents", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplesheet", type=Path, required=True, help="the published samplesheet.valid.csv")
    p.add_argument("--options-json", type=Path, required=True, help="JSON object of intervention options")
    p.add_argument("--num-layers", type=int, required=True, help="the model's decoder layer count")
    p.add_argument("--sae-dir", type=Path, action="append", default=[], help="a published SAE folder (repeatable)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--stub", action="store_true", help="for -stub-run: plan the jobs with no latent selected")
    p.add_argument("layer_files", nargs="+", type=Path, metavar="LAYER_FILE.pt")
    return p.parse_args(argv)


def read_options(path: Path):
    from layerwise.core.errors import LayerwiseError
    from layerwise.intervention.options import InterventionOptions

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerwiseError(f"{path}: cannot read the intervention options: {exc}") from None
    return InterventionOptions.from_mapping(values)


def sae_folders(dirs: list[Path]) -> dict[tuple[int, str], Path]:
    """(layer, language or 'pooled') -> folder, from the folders' names (layerwise.sae.outputs names them)."""
    from layerwise.core.errors import LayerwiseError

    out = {}
    for d in dirs:
        m = SAE_FOLDER.match(d.name)
        if not m:
            raise LayerwiseError(f"--sae-dir {d}: not an SAE folder of layerwise (layer_<L>[_<language>])")
        out[(int(m.group(1)), m.group(2) or "pooled")] = d
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    options = read_options(args.options_json)            # checked before anything heavy is imported
    import pandas as pd

    from layerwise.core import schema
    from layerwise.core.atomic import atomic_path
    from layerwise.core.errors import LayerwiseError
    from layerwise.core.sheet import read_valid_samplesheet
    from layerwise.intervention import plan
    from layerwise.layerfile.reader import open_layer_file

    folders = sae_folders(args.sae_dir)
    files: dict[tuple[int, str], Path] = {}
    for path in args.layer_files:
        if args.stub:   # a stub run's layer files are placeholders: their names say what they are
            key = schema.parse_layer_filename(path.name)
            if key is None:
                raise LayerwiseError(f"{path}: not a layer file name (layer_<L>_<language>.pt)")
            files[key] = path
            continue
        lf = open_layer_file(path)
        files[(lf.layer, lf.language)] = path
    languages = sorted({lang for _, lang in files})
    layers = plan.resolve_layers(options.layers, args.num_layers, sorted({layer for layer, _ in folders}))
    sheet = read_valid_samplesheet(args.samplesheet)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = {key: folder.name for key, folder in folders.items()}

    targeted, random_sets, latent_tables, control_tables, held_out = {}, {}, [], [], None
    for layer in layers:
        for fl in languages:
            folder = folders[next(k for k in ((layer, fl), (layer, "pooled")) if k in folders)]
            split = json.loads((folder / "split.json").read_text(encoding="utf-8")) if not args.stub else \
                {"validation": sheet["sample_id"].astype(str).tolist()}
            ids = set(map(str, split["validation"]))
            held_out = ids if held_out is None else held_out & ids
            if args.stub:
                targeted[(layer, fl)] = []
                random_sets[(layer, fl)] = [[] for _ in range(options.runs)]
                continue
            from layerwise.intervention.controls import controls_table, matched_random_sets
            from layerwise.intervention.select import select_latents

            paths = [files[(layer, fl)]]
            table = select_latents(paths, folder, options, language=fl)
            latent_tables.append(table)
            chosen = table[table["selected"]].sort_values("rank")
            targeted[(layer, fl)] = [int(x) for x in chosen["latent"]]
            sets = matched_random_sets(table, options.k, options.runs, options.firing_bins, options.seed, layer, fl)
            random_sets[(layer, fl)] = sets
            control_tables.append(controls_table(sets, layer, fl))
    evaluation = plan.evaluation_samples(sheet, held_out or set(), options.images, options.seed)
    rows = sheet[sheet["sample_id"].astype(str).isin(evaluation)]
    with atomic_path(args.out_dir / "evaluation.csv") as tmp:
        rows.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    for name, tables in (("latents.parquet", latent_tables), ("controls.parquet", control_tables)):
        if tables:
            with atomic_path(args.out_dir / name) as tmp:
                pd.concat(tables, ignore_index=True).to_parquet(tmp, index=False)
    if len(languages) > 1 and not args.stub and latent_tables:
        from layerwise.intervention.overlap import language_overlap

        with atomic_path(args.out_dir / "overlap.parquet") as tmp:
            language_overlap(pd.concat(latent_tables, ignore_index=True), folders, options).to_parquet(tmp, index=False)
    jobs = plan.plan_jobs(options, layers, languages, names, targeted, random_sets)
    if not jobs:
        raise LayerwiseError("the intervention design gives no generation job")
    plan.write_jobs(jobs, args.out_dir)
    print(f"layers {','.join(map(str, layers))}: {len(evaluation)} evaluation images, {len(jobs)} generation jobs "
          f"-> {args.out_dir}")
    return 0
