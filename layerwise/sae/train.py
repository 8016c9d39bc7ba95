"""Train one SAE per layer with SAELens's `SAETrainer`, fed by `ActivationProvider` (no model loaded).

`train_layer_sae(layer_files, out_dir, options)` trains on the training split of the layer's files
(all languages pooled, or one language), saves the inference SAE in
`out_dir/layer_{L}[_{language}]/` (loadable with `sae_lens.SAE.load_from_disk`), evaluates that
saved SAE on both splits and returns the metric records. SAELens is imported here only (it takes
~30 s), with Weights & Biases disabled.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core import schema
from layerwise.core.errors import LayerwiseError
from layerwise.sae.dashboard import find_metadata_table, write_dashboard
from layerwise.sae.evaluate import evaluate_split
from layerwise.sae.options import MIN_STEPS, POOLED, SAEOptions
from layerwise.sae.outputs import (
    METRICS_FILE,
    SPLIT_FILE,
    TRAINING_FILE,
    find_samplesheet,
    hook_name,
    layer_outdir,
    model_facts,
    partial_folder,
    publish,
    sae_folder_name,
    saelens_metadata,
    write_json,
)
from layerwise.sae.provider import ActivationProvider
from layerwise.sae.source import open_sources, select_sources
from layerwise.sae.split import TRAIN, VALIDATION, split_ids


def import_sae_lens():
    """`sae_lens`, imported with W&B disabled (no account, no network)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    import sae_lens

    return sae_lens


def context_size(sources) -> int:
    """The longest stored sequence of the layer files (most rows of one sample): metadata.context_size."""
    return max((int(s.lengths.max()) for s in sources if s.num_samples), default=1)


def prepends_bos(sources) -> bool:
    """metadata.prepend_bos: whether the sequences begin with a BOS token, read from the stored token kinds when
    the token selection stores the BOS position (`all`, `text`); else True (SAELens's default: it cannot be told)."""
    kinds = [s.token_kinds for s in sources]
    if any(k is None for k in kinds) or any(s.token_selection not in ("all", "text") for s in sources):
        return True
    return any(bool((k == schema.TOKEN_KINDS["bos"]).any()) for k in kinds)


def build_training_sae(options: SAEOptions, d_in: int, d_sae: int, device: str, metadata: dict[str, Any],
                       steps: int):
    """The SAELens training SAE of `options.architecture`."""
    sl = import_sae_lens()
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=d_in, d_sae=d_sae, dtype=options.dtype, device=device,
                  normalize_activations=options.normalize_activations, metadata=SAEMetadata(**metadata))
    warm = int(options.sparsity_warm_up_fraction * steps)
    if options.architecture == "topk":
        return sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=options.k, **common))
    if options.architecture == "jumprelu":
        return sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(
            l0_coefficient=options.l0_coefficient, l0_warm_up_steps=warm,
            jumprelu_init_threshold=options.jumprelu_init_threshold,
            jumprelu_bandwidth=options.jumprelu_bandwidth, **common))
    if options.architecture == "standard":
        return sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(
            l1_coefficient=options.l1_coefficient, l1_warm_up_steps=warm, **common))
    raise AssertionError(options.architecture)  # SAEOptions checked it


@torch.no_grad()
def input_statistics(provider: ActivationProvider, n_batches: int) -> tuple[float, torch.Tensor]:
    """(mean row norm, mean row [H]) over n_batches shuffled training batches (float64 sums)."""
    norm_sum, row_sum, rows = 0.0, torch.zeros(provider.hidden_size, dtype=torch.float64), 0
    for i, batch in enumerate(provider):
        x = batch.double()
        norm_sum += float(x.norm(dim=1).sum())
        row_sum += x.sum(0)
        rows += x.shape[0]
        if i + 1 >= n_batches:
            break
    return norm_sum / rows, (row_sum / rows).float()


def training_budget(options: SAEOptions, train_rows: int) -> tuple[int, int]:
    """(steps, rows): the rows the trainer consumes, a whole number of batches (at least one)."""
    return options.budget(train_rows)


def _excluded_note(providers: dict[str, ActivationProvider], sources) -> str | None:
    """One sentence on the samples left out for NaN/Inf values at extraction, or None when there are none."""
    counts = {split: {lang: n for lang, n in p.excluded.items() if n} for split, p in providers.items()}
    if not any(counts.values()):
        return None
    parts = "; ".join(f"{split}: " + ", ".join(f"{lang} {n}" for lang, n in sorted(c.items()))
                      for split, c in counts.items() if c)
    policies = sorted({s.policy_words() for s in sources})
    return (f"samples left out because extraction saw NaN/Inf values in them (nan_counts > 0 in their layer "
            f"file; {'; '.join(policies)}): {parts}")


def check_finite_parameters(sae, layer: int, options: SAEOptions, sources) -> None:
    """Every parameter of the trained SAE is finite, else a LayerwiseError naming the likely causes."""
    bad = [name for name, t in sae.named_parameters() if not bool(torch.isfinite(t).all())]
    if bad:
        raise LayerwiseError(_nonfinite_message(layer, options, sources, f"non-finite (NaN/Inf) weights in {', '.join(bad)}"))


def check_finite_metrics(records: list[dict[str, Any]], layer: int, options: SAEOptions, sources) -> None:
    bad = [f"{r['split']} {key}={r[key]}" for r in records for key in FINITE_METRICS
           if not math.isfinite(float(r[key]))]
    if bad:
        raise LayerwiseError(_nonfinite_message(layer, options, sources, f"non-finite metrics ({', '.join(bad)})"))


FINITE_METRICS = ("explained_variance", "fvu", "mse", "mean_l0", "dead_fraction")


def _nonfinite_message(layer: int, options: SAEOptions, sources, what: str) -> str:
    files = ", ".join(Path(s.path).name for s in sources)
    return (f"layer {layer}: the trained SAE has {what}; it is not published. Likely causes: a learning rate "
            f"too high for these activations (SAE option 'lr' = {options.lr:g}, pipeline --sae_lr: try a tenth), "
            f"or non-finite values in the input rows that nan_counts does not record (check {files} with "
            "layerwise-validate), or a split whose rows are all the same (zero variance)")


def train_layer_sae(layer_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                    options: SAEOptions | None = None, samplesheet: str | os.PathLike | None = None, *,
                    tokens: str | os.PathLike | None = None,
                    samples: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Train, save and evaluate the SAE of one layer, and write its per-latent dashboard (unless
    `options.dashboard_latents` is 0); returns its metric records (train, validation).

    `samplesheet`: the samplesheet the layer files were extracted from (cfg.json metadata.dataset_path and its
    sha256); by default the outdir's `pipeline_info/samplesheet.valid.csv` when the files are published ones.
    `tokens` / `samples`: the outdir's `metadata/tokens.parquet` and `metadata/samples.parquet` (the dashboard's token
    strings and images); by default the outdir's when the files are published ones, else none (token ids, no images)."""
    options = options or SAEOptions()
    samplesheet = find_samplesheet(layer_files, samplesheet)
    if options.dashboard_latents > 0:
        tokens = find_metadata_table(layer_files, tokens, schema.TOKENS_PARQUET, "--tokens")
        samples = find_metadata_table(layer_files, samples, schema.SAMPLES_PARQUET, "--samples")
    sources = select_sources(open_sources(list(layer_files)), options.language)
    if options.filters_kinds():
        for s in sources:
            s.require_kinds(f"the token-kind filter (keep_kinds={options.keep_kinds!r}, drop_kinds={options.drop_kinds!r})")
    for s in sources:
        options.check_selection(s.token_selection, f" of {Path(s.path).name}")
    layer, d_in = sources[0].layer, sources[0].hidden_size
    d_sae = options.width(d_in)
    device = options.resolved_device()
    languages = sorted(s.language for s in sources)

    train_data = ActivationProvider.for_split(sources, options, TRAIN)
    val_check = ActivationProvider.for_split(sources, options, VALIDATION, shuffle=False, epochs=1)
    providers = {TRAIN: train_data, VALIDATION: val_check}
    for name, p in providers.items():
        if p.num_samples == 0 and sum(p.excluded.values()):
            raise LayerwiseError(
                f"layer {layer}: every sample of the {name} split ({sum(p.excluded.values())} in "
                f"{', '.join(Path(s.path).name for s in sources)}) had NaN/Inf values at extraction (nan_counts > 0; "
                f"{'; '.join(sorted({s.policy_words() for s in sources}))}), so no sample is left to "
                f"{'train' if name == TRAIN else 'validate'} on. Such rows are never used: find the cause of the "
                "non-finite activations (the model's dtype: try --dtype float32) and extract again")
        if p.num_samples == 0 or p.num_rows == 0:
            raise LayerwiseError(
                f"layer {layer}: the {name} split has {p.num_samples} samples and {p.num_rows} rows of the kept token "
                f"kinds ({', '.join(options.kept_kind_names())}); change 'validation_fraction' "
                f"({options.validation_fraction}) or 'split_seed', or use more samples")
    options.check_rows(train_data.num_rows, f"training rows of layer {layer} ({train_data.num_rows}: "
                       f"{train_data.num_samples} training samples, {'pooled ' if options.language == POOLED else ''}"
                       f"{', '.join(languages)}, token selection {sources[0].token_selection!r}, kinds "
                       f"{','.join(options.kept_kind_names())})")
    steps, total_rows = training_budget(options, train_data.num_rows)
    notes = []
    excluded_note = _excluded_note(providers, sources)
    if excluded_note:
        notes.append(excluded_note)
    if steps < MIN_STEPS:
        notes.append(f"only {steps} optimizer steps ({train_data.num_rows} training rows, batch_size "
                     f"{options.batch_size}, {'training_tokens ' + str(options.training_tokens) if options.training_tokens else f'{options.epochs:g} epochs'}): "
                     f"fewer than {MIN_STEPS}, the SAE may be little more than its initialisation; lower 'batch_size' "
                     "or raise 'epochs'")
    for note in notes:
        print(f"WARNING: layer {layer}: {note}", file=sys.stderr, flush=True)

    sl = import_sae_lens()
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.prefetch import PrefetchingIterator

    torch.manual_seed(options.seed)
    model = model_facts(sources[0].model_id, layer_outdir(layer_files))
    metadata = saelens_metadata(layer=layer, model=model, context_size=context_size(sources),
                                prepend_bos=prepends_bos(sources), samplesheet=samplesheet, options=options,
                                languages=languages, token_selection=sources[0].token_selection)
    sae = build_training_sae(options, d_in, d_sae, device, metadata, steps)
    dead_window = max(1, min(1000, steps // 10))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_rows, train_batch_size_samples=options.batch_size, lr=options.lr,
        lr_end=options.lr, lr_scheduler_name="constant", lr_warm_up_steps=int(options.lr_warm_up_fraction * steps),
        lr_decay_steps=int(options.lr_decay_fraction * steps), device=device, autocast=False,
        dead_feature_window=dead_window, feature_sampling_window=max(1, min(2000, steps)), n_checkpoints=0,
        checkpoint_path=None, save_final_checkpoint=False, logger=sl.LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=options.norm_estimate_batches)
    stream = iter(train_data)
    if options.prefetch_batches > 0:
        stream = PrefetchingIterator(stream, prefetch=options.prefetch_batches)
    trainer = sl.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=stream)
    scaling = None
    if options.normalize_activations == "expected_average_only_in" or options.init_b_dec == "mean":
        mean_norm, mean = input_statistics(ActivationProvider.for_split(sources, options, TRAIN, seed=options.seed + 1),
                                           options.norm_estimate_batches)
        if options.normalize_activations == "expected_average_only_in":
            # SAELens's own estimate (ActivationScaler.estimate_scaling_factor), from the same batches;
            # setting it here makes fit() skip its estimate and fold the factor into the weights at the end.
            scaling = trainer.activation_scaler.scaling_factor = d_in ** 0.5 / mean_norm
        if options.init_b_dec == "mean":
            with torch.no_grad():
                sae.b_dec.copy_((mean * (scaling or 1.0)).to(sae.b_dec.dtype))
    started = time.perf_counter()
    try:
        trainer.fit()
    finally:
        if isinstance(stream, PrefetchingIterator):
            stream.close()
    train_s = time.perf_counter() - started
    # Never publish a diverged SAE: its weights (here, before anything is written) and its metrics (below,
    # before the folder gets its final name) must be finite.
    check_finite_parameters(sae, layer, options, sources)

    final = Path(out_dir) / sae_folder_name(layer, options.language)
    part = partial_folder(final)
    try:
        sae.save_inference_model(part)
        inference = sl.SAE.load_from_disk(part, device=device)   # evaluate exactly what was saved

        ids = split_ids((sid for s in sources for sid in s.sample_ids), options.validation_fraction, options.split_seed)
        records = []
        for split in (TRAIN, VALIDATION):
            stats = evaluate_split(inference, sources, options, split, device)
            records.append({
                "layer": layer, "language": options.language, "languages": ",".join(languages),
                "architecture": options.architecture, "d_in": d_in, "d_sae": d_sae,
                "k": options.k if options.architecture == "topk" else 0, "split": split,
                **stats, "tokens_seen": trainer.n_training_samples,
                "epochs_seen": trainer.n_training_samples / train_data.num_rows, "sae_dir": final.name,
                "steps": trainer.n_training_steps, "notes": notes})
        check_finite_metrics(records, layer, options, sources)
        dashboard = write_dashboard(inference, sources, part, options, tokens=tokens, samples=samples, device=device,
                                    sae_dir=final.name)
        if dashboard is not None:
            print(f"layer {layer}: dashboard of {dashboard['latents']} latent(s), {dashboard['examples']} example(s) "
                  f"in {dashboard['seconds']:.1f} s -> {final / dashboard['html']}", flush=True)
        excluded = {split: p.excluded_ids for split, p in providers.items()}
        write_json(part / SPLIT_FILE, {
            "layer": layer, "language": options.language, "languages": languages,
            "validation_fraction": options.validation_fraction, "split_seed": options.split_seed,
            "rule": "validation iff layerwise.sae.split.split_key(sample_id, split_seed) < validation_fraction",
            TRAIN: ids[TRAIN], VALIDATION: ids[VALIDATION],
            "excluded_nonfinite": {split: {lang: v for lang, v in by_lang.items() if v}
                                   for split, by_lang in excluded.items()}})
        write_json(part / METRICS_FILE, records)
        write_json(part / TRAINING_FILE, {
            "options": options.to_dict(), "layer_files": [s.path for s in sources], "layer": layer,
            "languages": languages, "d_in": d_in, "d_sae": d_sae, "device": device, "steps": trainer.n_training_steps,
            "planned_steps": steps, "min_steps": MIN_STEPS,
            "tokens_seen": trainer.n_training_samples, "train_rows": train_data.num_rows,
            "validation_rows": val_check.num_rows,
            "train_samples": train_data.num_samples, "validation_samples": val_check.num_samples,
            "excluded_samples": {split: dict(p.excluded) for split, p in providers.items()},
            "excluded_sample_ids": excluded,
            "nan_policies": {s.language: s.nan_policy for s in sources},
            "notes": notes, "activation_scaling_factor": scaling,
            "dead_feature_window_steps": dead_window, "train_seconds": round(train_s, 3),
            "train_tokens_per_second": trainer.n_training_samples / train_s if train_s > 0 else None,
            "hook_name": hook_name(layer), "hf_hook_name": metadata["hf_hook_name"], "model_id": sources[0].model_id,
            "model": model.to_dict(), "context_size": metadata["context_size"],
            "samplesheet": {"path": metadata["dataset_path"], "sha256": metadata["layerwise_dataset_sha256"]},
            "dashboard": dashboard,
            "versions": {"sae_lens": sl.__version__, "torch": torch.__version__, "python": platform.python_version()}})
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)     # no half-written folder left beside the published ones
        raise
    publish(part, final)
    return records
