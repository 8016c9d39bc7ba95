// Concatenate the shard files of one (layer, language), in shard order, into layer_{L}_{language}.pt.
// With a single shard the Python side copies/normalises it. Contract: docs/architecture.md (layerwise-merge).
process MERGE_ACTIVATIONS {
    tag "layer ${meta.layer} | ${meta.language}"
    label 'process_low'

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    // every shard file has the same name: stage them as shard_001/..., shard_002/... in shard order
    tuple val(meta), path(shards, stageAs: 'shard_???/*')   // meta: [id, layer, language]
    val source_digest

    output:
    tuple val(meta), path("layer_${meta.layer}_${meta.language}.pt"), emit: layer
    path 'versions.yml'                                              , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''
    def files = (shards instanceof List ? shards : [shards]).join(' ')
    """
    layerwise-merge \\
        --layer ${meta.layer} \\
        --language ${meta.language} \\
        --out layer_${meta.layer}_${meta.language}.pt \\
        ${args} \\
        ${files}

    layerwise-versions '${task.process}' torch > versions.yml
    """

    stub:
    """
    touch layer_${meta.layer}_${meta.language}.pt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
