// One work unit on one GPU: a group of layers x one language x one shard of samples.
// Writes layer_{L}_{language}.pt for every layer of the group (shard rows only) and summary.json.
// Contract: docs/architecture.md (layerwise-extract).
process EXTRACT_ACTIVATIONS {
    tag "layers ${meta.layers_str} | ${meta.language} | shard ${meta.shard}"
    label 'process_gpu'

    // The inputs are small text files (samplesheet, prompts): hash their content, so that a re-run
    // PREFLIGHT that writes an identical plan does not invalidate hours of cached GPU work on -resume.
    cache 'deep'

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    // meta: [id, layers, layers_str, language, shard, rows]; image_features: the
    // shard's ENCODE_IMAGES output, or [] to run the vision tower here (--share_image_features false)
    tuple val(meta), path(image_features)
    path samplesheet                        // samplesheet.valid.csv from PREFLIGHT
    path prompts
    tuple val(model), val(revision)
    val source_digest

    output:
    tuple val(meta), path('layer_*_*.pt'), emit: layers
    tuple val(meta), path('summary.json'), emit: summary
    path 'versions.yml'                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''           // --batch-size, --checkpoint-interval, --dtype, ... (conf/modules.config)
    def rev  = revision ? "--revision '${revision}'" : ''
    def rows = meta.rows ? "--rows ${meta.rows}" : ''
    def feats = image_features ? "--image-features ${image_features}" : ''
    // A retry (job killed for time or memory: see errorStrategy) continues from the last checkpoint
    // of the previous attempt: its .partial/ scratch is moved into this task directory.
    def prev = task.attempt > 1 && task.previousTrace?.workdir ? task.previousTrace.workdir : ''
    """
    prev='${prev}'
    if [ -n "\$prev" ] && [ -d "\$prev/.partial" ]; then
        echo "layerwise: continuing from the checkpoint of attempt ${task.attempt - 1} in \$prev" >&2
        mv "\$prev/.partial" .partial
    fi

    layerwise-extract \\
        --samplesheet ${samplesheet} \\
        --model '${model}' ${rev} \\
        --language ${meta.language} \\
        --layers '${meta.layers.join(' ')}' \\
        ${rows} ${feats} \\
        --prompts ${prompts} \\
        --out-dir . \\
        ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    def touches = meta.layers.collect { "touch layer_${it}_${meta.language}.pt" }.join('\n    ')
    """
    ${touches}
    echo '{}' > summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
