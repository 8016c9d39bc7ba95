// Check the samplesheet (every image decoded and hashed), the model (config, processor, weight
// headers: no weights loaded) and the layer specification, and plan the work: layer groups x
// languages x sample shards, with one input sheet per unit. Runs in seconds on a CPU node.
// Contract: docs/architecture.md (layerwise-preflight).
process PREFLIGHT {
    tag "${model}"
    label 'process_single'

    // Always runs: it is what notices a changed image or model weight file behind an unchanged path.
    // Its outputs are compared by content downstream (cache 'deep'), so an unchanged plan keeps every
    // extraction unit cached.
    cache false

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    path samplesheet, stageAs: 'input/*'   // staged apart so that it never collides with the outputs
    path prompts
    tuple val(model), val(revision)         // hub id or absolute local path; revision '' = none
    val spec                                // [layers:, languages:, layer_groups:, samples_per_task:]
    val source_digest                       // digest of layerwise/**.py
    val sae_options                         // JSON object of the SAE options (--sae), '' = no SAE training
    val intervention_options                // JSON object of the intervention options (--intervene), '' = none

    output:
    path 'plan.json'            , emit: plan
    path 'samplesheet.valid.csv', emit: samplesheet
    path 'units/*.csv'          , emit: unit_sheets
    path 'versions.yml'         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def rev  = revision ? "--revision '${revision}'" : ''
    def sae  = sae_options ? '--sae-options sae_options.json' : ''
    def intervention = intervention_options ? '--intervention-options intervention_options.json' : ''
    """
    cat > sae_options.json <<'END_OPTIONS'
    ${sae_options}
    END_OPTIONS
    cat > intervention_options.json <<'END_OPTIONS'
    ${intervention_options}
    END_OPTIONS

    layerwise-preflight \\
        --samplesheet ${samplesheet} \\
        --model '${model}' ${rev} \\
        --layers '${spec.layers}' \\
        --languages '${spec.languages}' \\
        --layer-groups '${spec.layer_groups}' \\
        --samples-per-task ${spec.samples_per_task} \\
        --prompts ${prompts} \\
        --out-dir . \\
        ${sae} ${intervention} ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    // The real planner (same code as a real run), without decoding images or checking weight files
    def rev = revision ? "--revision '${revision}'" : ''
    def sae = sae_options ? '--sae-options sae_options.json' : ''
    """
    cat > sae_options.json <<'END_OPTIONS'
    ${sae_options}
    END_OPTIONS

    layerwise-preflight \\
        --samplesheet ${samplesheet} \\
        --model '${model}' ${rev} \\
        --layers '${spec.layers}' \\
        --languages '${spec.languages}' \\
        --layer-groups '${spec.layer_groups}' \\
        --samples-per-task ${spec.samples_per_task} \\
        --prompts ${prompts} \\
        --out-dir . \\
        --stub ${sae}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
