// One sparse autoencoder (SAELens SAETrainer) on one layer's published activations: every language
// pooled, or one language. No model is loaded. Writes layer_{L}[_{language}]/ (cfg.json + sae_weights.safetensors,
// loadable with sae_lens.SAE.load_from_disk, and split.json, metrics.json, training.json, and the per-latent
// dashboard.html + dashboard.parquet).
// Contract: docs/architecture.md (layerwise-train-sae), options: docs/sae.md.
process TRAIN_SAE {
    tag "layer ${meta.layer} ${meta.language}"
    label 'process_gpu'

    // The layer files are the published ones in --outdir (hard links: replaced, never rewritten in place);
    // meta carries their sha256, so path + size (lenient) and meta together decide a re-run.
    cache 'lenient'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    // meta: [layer, language ('pooled' or a language), sha256: [file name: sha256]]
    // tables: the outdir's metadata/tokens.parquet and samples.parquet (token strings and images of the dashboards)
    tuple val(meta), path(layer_files, stageAs: 'activations/*'), path(tables, stageAs: 'metadata/*')
    val options                             // JSON object of SAE options (layerwise.sae.options.SAEOptions)
    val source_digest                       // digest of the layerwise Python sources the training uses

    output:
    tuple val(meta), path('layer_*', type: 'dir'), emit: sae   // layer_{L}[_{language}]/: named by layerwise.sae.outputs
    path 'versions.yml'                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def staged = (tables instanceof List ? tables : [tables]).collect { it.name }
    def dashboard = ['tokens', 'samples'].findAll { "${it}.parquet" in staged }
        .collect { "--${it} metadata/${it}.parquet" }.join(' ')
    """
    cat > sae_options.json <<'END_OPTIONS'
    ${options}
    END_OPTIONS

    layerwise-train-sae \\
        --options-json sae_options.json \\
        --language '${meta.language}' \\
        --out-dir . \\
        --metrics metrics.parquet ${dashboard} \\
        ${layer_files}
    # the layer files it was trained on (PUBLISH_SAE checks them against the outdir and records them)
    cat > trained_on.json <<'END_INPUTS'
    ${groovy.json.JsonOutput.toJson(new TreeMap(meta.sha256))}
    END_INPUTS
    for d in layer_*/; do cp trained_on.json "\$d"; done

    layerwise-versions '${task.process}' torch sae_lens > versions.yml
    """

    stub:
    // The folder a real run writes (named by layerwise.sae.outputs), with a stub config; nothing trained
    """
    layerwise-train-sae --stub-layer ${meta.layer} --language '${meta.language}' --out-dir .

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        sae_lens: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
