// The analysis of a run's layers: gender probes per (layer, language, view) with shuffled-label
// controls, gender directions and their cross-lingual cosine, probe transfer, CKA between layers,
// cross-lingual similarity and, with SAEs, the latents most associated with gender.
// Reads each layer file once, memory-mapped. Writes analysis/ (Parquet tables, report.html).
// Contract: docs/architecture.md (layerwise-analyze), columns: docs/output.md.
process ANALYZE_LAYERS {
    tag "${layer_files instanceof List ? layer_files.size() : 1} layer file(s)"
    label 'process_medium'

    // The layer files and SAE folders are the published ones in --outdir: path + size (lenient) and the
    // layer files' sha256 (a value input) decide a re-run.
    cache 'lenient'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    tuple val(checksums), path(layer_files, stageAs: 'activations/*'), path(samplesheet, stageAs: 'input/*')
    path sae_dirs, stageAs: 'sae/*'         // <outdir>/sae/layer_{L}[_{language}]/ placed by PUBLISH_SAE; none without SAEs
    path sae_record, stageAs: 'sae_record/*'  // <outdir>/sae/inputs.json (recorded as an input); none without SAEs
    val source_digest                       // digest of the analysis stage's code (layerwise/stages.json)

    output:
    path 'analysis'    , emit: analysis
    path 'versions.yml', emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''          // --folds, --permutations, ... (conf/modules.config)
    def sae  = sae_dirs ? '--sae-dir sae' : ''
    def record = sae_record ? "--read sae/inputs.json=${sae_record}" : ''
    """
    layerwise-analyze \\
        --out-dir analysis \\
        --samplesheet ${samplesheet} \\
        --threads ${task.cpus} \\
        --n-jobs ${task.cpus} \\
        --scratch-dir scratch \\
        ${sae} \\
        ${args} \\
        ${layer_files}
    rm -rf scratch
    cat > checksums.json <<'END_CHECKSUMS'
    ${groovy.json.JsonOutput.toJson(new TreeMap(checksums))}
    END_CHECKSUMS
    layerwise-record-inputs --stage analysis --checksums checksums.json --out-dir analysis ${record}

    layerwise-versions '${task.process}' torch numpy scikit-learn matplotlib > versions.yml
    """

    stub:
    """
    mkdir -p analysis
    echo '<html><body>stub</body></html>' > analysis/report.html

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        numpy: "stub"
        scikit-learn: "stub"
        matplotlib: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
