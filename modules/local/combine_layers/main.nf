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

    echo '"${task.process}":' > versions.yml
    python3 - '${projectDir}' >> versions.yml <<'END_VERSIONS' || echo '    python: "NA"' >> versions.yml
    import platform, sys
    from importlib.metadata import version, PackageNotFoundError
    print('    python: "%s"' % platform.python_version())
    for pkg in ('torch',):
        try:
            print('    %s: "%s"' % (pkg, version(pkg)))
        except PackageNotFoundError:
            print('    %s: "NA"' % pkg)
    sys.path.insert(0, sys.argv[1])
    try:
        import layerwise
        print('    layerwise: "%s"' % layerwise.__version__)
    except Exception:
        print('    layerwise: "NA"')
    END_VERSIONS
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
