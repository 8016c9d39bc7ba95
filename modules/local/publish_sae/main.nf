// Place every trained SAE folder in <outdir>/sae/ (hard links, one rename per folder), move folders of
// earlier runs that this run did not train to superseded/, and write sae/metrics.parquet (written last:
// it lists exactly this run's SAEs) and sae/report.html (metrics by layer).
// Contract: docs/architecture.md (layerwise-publish-sae).
process PUBLISH_SAE {
    tag "${outdir}/sae"
    label 'process_single'

    // Always runs, like PUBLISH_RESULTS: it checks and repairs the outdir as it is now.
    cache false

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    path sae_dirs, stageAs: 'sae/*'         // layer_{L}[_{language}]/ from TRAIN_SAE
    val outdir                              // absolute --outdir

    output:
    path 'published_sae.txt', emit: log
    path 'versions.yml'     , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''          // --mode (conf/modules.config)
    """
    layerwise-publish-sae --outdir '${outdir}' ${args} ${sae_dirs} | tee published_sae.txt

    layerwise-versions '${task.process}' pandas pyarrow matplotlib > versions.yml
    """

    stub:
    """
    for d in ${sae_dirs}; do mkdir -p "${outdir}/sae/\$(basename "\$d")"; done
    echo '{"stage": "sae", "inputs": {}}' > '${outdir}/sae/inputs.json'
    echo stub > published_sae.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        pandas: "stub"
        pyarrow: "stub"
        matplotlib: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
