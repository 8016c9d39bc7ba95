// Check every merged layer file against the plan and the samplesheet; write extraction_metadata.json,
// metadata/samples.parquet, metadata/layers.parquet and validation_report.html.
// Contract: docs/architecture.md (layerwise-validate).
process VALIDATE_ACTIVATIONS {
    tag "${plan.name}"
    label 'process_low'

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    path plan                                                     // plan.json
    path samplesheet                                              // samplesheet.valid.csv
    path summaries, stageAs: 'summaries/summary_???.json'         // image_features.json per ENCODE_IMAGES job + summary.json per EXTRACT unit
    path layer_files                                              // layer_{L}_{language}.pt, sorted
    val source_digest

    output:
    path 'extraction_metadata.json', emit: metadata
    path 'metadata/*.parquet'      , emit: parquet
    path 'validation_report.html'  , emit: report
    path 'versions.yml'            , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''
    def sums  = (summaries instanceof List ? summaries : [summaries]).join(' ')
    def files = (layer_files instanceof List ? layer_files : [layer_files]).join(' ')
    // Layer files (positional) come before --summaries so that a nargs='+' option cannot swallow them.
    """
    layerwise-validate \\
        --plan ${plan} \\
        --samplesheet ${samplesheet} \\
        --out-dir . \\
        ${args} \\
        ${files} \\
        --summaries ${sums}

    layerwise-versions '${task.process}' torch pandas pyarrow > versions.yml
    """

    stub:
    """
    echo '{}' > extraction_metadata.json
    mkdir -p metadata
    touch metadata/samples.parquet metadata/layers.parquet
    echo '<html><body>stub</body></html>' > validation_report.html

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        pandas: "stub"
        pyarrow: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
