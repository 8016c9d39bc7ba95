"""The causal intervention stage: ablate (or scale) the SAE latents that carry gender while the model writes
captions, against random controls matched by firing rate (docs/intervention.md).

- `options`   every option (params `intervention_<option>`), checked before any job
- `select`    latent selection from the published activations and SAEs (no model): latents.parquet
- `controls`  random latent sets matched by firing rate, seeded per run
- `hooks`     forward hooks on the decoder layers of the one loaded model (residual / reconstruction, scale)
- `generate`  greedy, batched, deterministic caption generation with the hooks
- `counts`    gendered words per caption (layerwise.lexicon)
- `stats`     change %, random distribution, specificity, ratio, bootstrap CI, Wilcoxon, empirical p
- `report`    summary.parquet and report.html
"""
