// The intervention's result: gendered words counted in every caption (the gender lexicon), the statistics of
// each condition (change against baseline, the random distribution, specificity, ratio, bootstrap CI,
// Wilcoxon, empirical p) and the report. Writes intervention/ (publishDir). Columns: docs/output.md.
process SUMMARIZE_INTERVENTION {
    tag "${captions instanceof List ? captions.size() : 1} caption file(s)"
    label 'process_single'

    cache 'lenient'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    path captions, stageAs: 'captions/*'    // captions_<job>.parquet of every GENERATE_CAPTIONS job
    path selection                          // SELECT_LATENTS' folder: latents, controls, overlap, evaluation
    val options                             // JSON object of intervention options
    tuple val(model), val(model_type)       // --model and its family (recorded in the summary)
    val source_digest                       // digest of the intervention stage's code

    output:
    path 'intervention', emit: intervention
    path 'versions.yml', emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    cat > intervention_options.json <<'END_OPTIONS'
    ${options}
    END_OPTIONS

    layerwise-summarize-intervention \\
        --options-json intervention_options.json \\
        --model-id '${model}' \\
        --model-type '${model_type}' \\
        --selection ${selection} \\
        --out-dir intervention \\
        ${captions}
    # what the intervention was computed from (SELECT_LATENTS recorded it), written last
    cp ${selection}/inputs.json intervention/inputs.json

    layerwise-versions '${task.process}' pandas scipy matplotlib > versions.yml
    """

    stub:
    """
    mkdir -p intervention
    echo '<html><body>stub</body></html>' > intervention/report.html

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        pandas: "stub"
        scipy: "stub"
        matplotlib: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
