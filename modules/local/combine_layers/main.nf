// All layers of one language in one file: activations_{language}_all_layers.pt (the seed's combined file).
// Contract: docs/architecture.md (layerwise-combine).
process COMBINE_LAYERS {
    tag "${meta.language}"
    label 'process_medium'

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    tuple val(meta), path(layer_files)   // meta: [id, language]; files in layer order
    val source_digest

    output:
    tuple val(meta), path("activations_${meta.language}_all_layers.pt"), emit: combined
    path 'versions.yml'                                                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''
    def files = (layer_files instanceof List ? layer_files : [layer_files]).join(' ')
    """
    layerwise-combine \\
        --language ${meta.language} \\
        --out activations_${meta.language}_all_layers.pt \\
        ${args} \\
        ${files}

    layerwise-versions '${task.process}' torch > versions.yml
    """

    stub:
    """
    touch activations_${meta.language}_all_layers.pt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
