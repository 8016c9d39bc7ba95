"""Train one SAE per layer with SAELens's `SAETrainer`, fed by `ActivationProvider` (no model loaded).

`train_layer_sae(layer_files, out_dir, options)` trains on the training split of the layer's files
(all languages pooled, or one language), saves the inference SAE in
`out_dir/layer_{L}[_{language}]/` (loadable with `sae_lens.SAE.load_from_disk`), evaluates that
saved SAE on both splits and returns the metric records. SAELens is imported here only (it takes
~30 s), with Weights & Biases disabled.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.core.errors import LayerwiseError
from layerwise.sae.evaluate import evaluate_split
from layerwise.sae.options import SAEOptions
from layerwise.sae.outputs import (
    METRICS_FILE,
    SPLIT_FILE,
    TRAINING_FILE,
    partial_folder,
    publish,
    sae_folder_name,
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


def hook_name(layer: int) -> str:
    """SAELens / TransformerLens name of what layerwise stores for layer L (raw output of decoder layer L)."""
    return f"blocks.{layer}.hook_resid_post"


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
    rows = options.training_tokens if options.training_tokens > 0 else int(round(options.epochs * train_rows))
    steps = max(1, rows // options.batch_size)
    return steps, steps * options.batch_size


def train_layer_sae(layer_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                    options: SAEOptions | None = None) -> list[dict[str, Any]]:
    """Train, save and evaluate the SAE of one layer; returns its metric records (train, validation)."""
    options = options or SAEOptions()
    sources = select_sources(open_sources(list(layer_files)), options.language)
    if options.filters_kinds():
        for s in sources:
            s.require_kinds(f"the token-kind filter (keep_kinds={options.keep_kinds!r}, drop_kinds={options.drop_kinds!r})")
    layer, d_in = sources[0].layer, sources[0].hidden_size
    d_sae = options.width(d_in)
    device = options.resolved_device()
    languages = sorted(s.language for s in sources)

    train_data = ActivationProvider.for_split(sources, options, TRAIN)
    val_check = ActivationProvider.for_split(sources, options, VALIDATION, shuffle=False, epochs=1)
    for name, p in ((TRAIN, train_data), (VALIDATION, val_check)):
        if p.num_samples == 0 or p.num_rows == 0:
            raise LayerwiseError(
                f"layer {layer}: the {name} split has {p.num_samples} samples and {p.num_rows} rows of the kept token "
                f"kinds ({', '.join(options.kept_kind_names())}); change 'validation_fraction' "
                f"({options.validation_fraction}) or 'split_seed', or use more samples")
    steps, total_rows = training_budget(options, train_data.num_rows)

    sl = import_sae_lens()
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.prefetch import PrefetchingIterator

    torch.manual_seed(options.seed)
    metadata = {"model_name": sources[0].model_id, "hook_name": hook_name(layer), "hook_head_index": None,
                "prepend_bos": True, "layerwise_layer": layer, "layerwise_language": options.language,
                "layerwise_languages": languages, "layerwise_token_kinds": list(options.kept_kind_names()),
                "layerwise_token_selection": sources[0].token_selection}
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

    final = Path(out_dir) / sae_folder_name(layer, options.language)
    part = partial_folder(final)
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
            "epochs_seen": trainer.n_training_samples / train_data.num_rows, "sae_dir": final.name})
    write_json(part / SPLIT_FILE, {
        "layer": layer, "language": options.language, "languages": languages,
        "validation_fraction": options.validation_fraction, "split_seed": options.split_seed,
        "rule": "validation iff layerwise.sae.split.split_key(sample_id, split_seed) < validation_fraction",
        TRAIN: ids[TRAIN], VALIDATION: ids[VALIDATION]})
    write_json(part / METRICS_FILE, records)
    write_json(part / TRAINING_FILE, {
        "options": options.to_dict(), "layer_files": [s.path for s in sources], "layer": layer,
        "languages": languages, "d_in": d_in, "d_sae": d_sae, "device": device, "steps": trainer.n_training_steps,
        "tokens_seen": trainer.n_training_samples, "train_rows": train_data.num_rows,
        "validation_rows": val_check.num_rows, "activation_scaling_factor": scaling,
        "dead_feature_window_steps": dead_window, "train_seconds": round(train_s, 3),
        "train_tokens_per_second": trainer.n_training_samples / train_s if train_s > 0 else None,
        "hook_name": hook_name(layer), "model_id": sources[0].model_id,
        "versions": {"sae_lens": sl.__version__, "torch": torch.__version__, "python": platform.python_version()}})
    publish(part, final)
    return records
