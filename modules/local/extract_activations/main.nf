// One work unit on one GPU: a group of layers x one language x one shard of samples.
// Writes <unit id>/layer_{L}_{language}.pt for every layer of the group (shard rows only, each byte
// written once into its final file) and <unit id>/summary.json (sizes and sha256 of the files) and <unit id>/tokens.parquet (token strings).
// Contract: docs/architecture.md (layerwise-extract).
process EXTRACT_ACTIVATIONS {
    tag "${meta.id}"
    label 'process_gpu'

    // The unit's input sheet holds exactly the rows and captions it reads, with every image's sha256:
    // hashing its content re-runs the unit when, and only when, something it reads has changed.
    cache 'deep'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    // meta: [id, layers, layers_str, language, shard, rows, model_fingerprint]; sheet: units/<id>.csv
    tuple val(meta), path(sheet)
    path prompts
    tuple val(model), val(revision)
    val source_digest
    val image_cache                         // shared image-feature cache folder (a string), '' = none
    val execution_env                       // file exporting LAYERWISE_BATCH_SIZE / _CHECKPOINT_INTERVAL (path as a string: its content is not hashed)

    output:
    tuple val(meta), path("${meta.id}"), emit: unit
    path 'versions.yml'                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''           // --dtype, --token-selection, ... (conf/modules.config)
    def rev   = revision ? "--revision '${revision}'" : ''
    // (a string input: a Path such as workflow.workDir referenced here would be hashed by its contents)
    def cache = image_cache ? "--image-cache '${image_cache}'" : ''
    // A retry (job killed for time or memory: see errorStrategy) continues from the last checkpoint of
    // the previous attempt, unless a live process still owns it (layerwise.extract.unit.adopt_checkpoint).
    def prev  = task.attempt > 1 && task.previousTrace?.workdir ? "--adopt-from '${task.previousTrace.workdir}/${meta.id}'" : ''
    """
    if [ -f '${execution_env}' ]; then . '${execution_env}'; fi

    layerwise-extract \\
        --samplesheet ${sheet} \\
        --model '${model}' ${rev} \\
        --model-fingerprint '${meta.model_fingerprint}' \\
        --language ${meta.language} \\
        --layers '${meta.layers.join(' ')}' \\
        --prompts ${prompts} \\
        ${cache} ${prev} \\
        --out-dir ${meta.id} \\
        ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    def touches = meta.layers.collect { "touch ${meta.id}/layer_${it}_${meta.language}.pt" }.join('\n    ')
    """
    mkdir -p ${meta.id}
    ${touches}
    echo '{"kind": "extract", "stub": true}' > ${meta.id}/summary.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
