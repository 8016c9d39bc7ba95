// Place every layer file in --outdir (hard links from the units that wrote them; shards merged into
// place), remove earlier runs' leftovers from view (superseded/), validate the files as they are in
// the outdir, and write extraction_metadata.json, metadata/*.parquet and validation_report.html.
// Contract: docs/architecture.md (layerwise-publish).
process PUBLISH_RESULTS {
    tag "${params.outdir}"
    label 'process_low'

    // Always runs: it checks the outdir as it is now (a published file may have been removed or damaged
    // since the last run) and re-links, re-merges or reports what is needed.
    cache false

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    path plan                                   // plan.json
    path samplesheet                            // samplesheet.valid.csv
    path units                                  // one <unit id>/ folder per extraction unit
    val outdir                                  // absolute --outdir

    output:
    path 'published.txt', emit: log
    path 'extraction_metadata.json', emit: metadata   // the verified result: published files with their sha256
    path 'versions.yml' , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''              // --mode, --combined (conf/modules.config)
    """
    layerwise-publish \\
        --plan ${plan} \\
        --samplesheet ${samplesheet} \\
        --outdir '${outdir}' \\
        --run-id '${workflow.sessionId}' \\
        --run-name '${workflow.runName}' \\
        ${args} \\
        ${units} | tee published.txt
    cp '${outdir}/extraction_metadata.json' extraction_metadata.json

    layerwise-versions '${task.process}' torch pandas pyarrow > versions.yml
    """

    stub:
    // The same placement and records as a real run (layerwise.publish.outdir.publish_stub), nothing validated
    """
    layerwise-publish --stub --plan ${plan} --samplesheet ${samplesheet} --outdir '${outdir}' ${units} | tee published.txt
    cp '${outdir}/extraction_metadata.json' extraction_metadata.json

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
