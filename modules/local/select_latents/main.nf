// The intervention's selection (no model): for each hooked layer and feature language, the latents of the
// layer's published SAE that differ most between male and female samples (on the SAE's training split), random
// control sets matched by firing rate, the evaluation images (held-out samples, one per image) and one JSON
// file per generation job. Contract: docs/architecture.md (layerwise-select-latents), docs/intervention.md.
process SELECT_LATENTS {
    tag "${layer_files instanceof List ? layer_files.size() : 1} layer file(s)"
    label 'process_medium'

    // Published layer files and SAE folders (path + size, lenient) and their sha256 (a value input)
    cache 'lenient'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    tuple val(checksums), path(layer_files, stageAs: 'activations/*'), path(samplesheet, stageAs: 'input/*')
    path sae_dirs, stageAs: 'sae/*'          // <outdir>/sae/layer_{L}[_{language}]/ placed by PUBLISH_SAE
    path sae_record, stageAs: 'sae_record/*' // <outdir>/sae/inputs.json (recorded as an input)
    val options                             // JSON object of intervention options (InterventionOptions)
    val num_layers                          // the model's decoder layers (for --intervention_layers mid)
    val source_digest                       // digest of the intervention stage's code (layerwise/stages.json)

    output:
    path 'selection'            , emit: selection
    path 'selection/jobs/*.json', emit: jobs
    path 'versions.yml'         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def saes = sae_dirs.collect { "--sae-dir ${it}" }.join(' ')
    """
    cat > intervention_options.json <<'END_OPTIONS'
    ${options}
    END_OPTIONS

    layerwise-select-latents \\
        --samplesheet ${samplesheet} \\
        --options-json intervention_options.json \\
        --num-layers ${num_layers} \\
        ${saes} \\
        --out-dir selection \\
        ${layer_files}
    cat > checksums.json <<'END_CHECKSUMS'
    ${groovy.json.JsonOutput.toJson(new TreeMap(checksums))}
    END_CHECKSUMS
    layerwise-record-inputs --stage intervention --checksums checksums.json --out-dir selection \\
        --read sae/inputs.json=${sae_record}

    layerwise-versions '${task.process}' torch sae_lens > versions.yml
    """

    stub:
    def saes = sae_dirs.collect { "--sae-dir ${it}" }.join(' ')
    """
    cat > intervention_options.json <<'END_OPTIONS'
    ${options}
    END_OPTIONS
    layerwise-select-latents --stub --samplesheet ${samplesheet} --options-json intervention_options.json \\
        --num-layers ${num_layers} ${saes} --out-dir selection ${layer_files}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        sae_lens: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
