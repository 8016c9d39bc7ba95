// The compute diet: the vision tower and projector run once per image of a sample shard. Every
// extraction unit of that shard (all languages, all layer groups) reuses image_features.pt instead
// of re-encoding the pixels. Contract: docs/architecture.md (layerwise-encode-images).
process ENCODE_IMAGES {
    tag "shard ${meta.shard}"
    label 'process_gpu'

    cache 'deep'   // small text inputs: see EXTRACT_ACTIVATIONS

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    val meta                                // [id, shard, rows]
    path samplesheet                        // samplesheet.valid.csv from PREFLIGHT
    tuple val(model), val(revision)
    val source_digest

    output:
    tuple val(meta), path('image_features.pt'), emit: features
    tuple val(meta), path('image_features.json'), emit: summary
    path 'versions.yml'                        , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''           // --dtype, --batch-size (conf/modules.config)
    def rev  = revision ? "--revision '${revision}'" : ''
    """
    layerwise-encode-images \\
        --samplesheet ${samplesheet} \\
        --model '${model}' ${rev} \\
        --rows ${meta.rows} \\
        --out image_features.pt \\
        ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    """
    touch image_features.pt
    echo '{}' > image_features.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
