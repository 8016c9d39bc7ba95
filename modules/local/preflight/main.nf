// Check the samplesheet (every image decoded and hashed), the model (config, processor, weight
// headers: no weights loaded) and the layer specification, and plan the work: layer groups x
// languages x sample shards, with one input sheet per unit; project the run's bytes against the free space of
// the outdir's and work dir's file systems (storage_plan.json; refused when they do not fit). Runs in seconds on a CPU node.
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
    val spec                                // [layers:, languages:, layer_groups:, samples_per_task:, storage: [...]]
                                            // storage (optional): what the storage plan needs (outdir, work_dir, ...)
    val source_digest                       // digest of layerwise/**.py
    val sae_options                         // JSON object of the SAE options (--sae), '' = no SAE training
    val intervention_options                // JSON object of the intervention options (--intervene), '' = none

    output:
    path 'plan.json'            , emit: plan
    path 'samplesheet.valid.csv', emit: samplesheet
    path 'units/*.csv'          , emit: unit_sheets
    path 'storage_plan.json'    , emit: storage     // bytes per item and file system (not in plan.json: -resume)
    path 'versions.yml'         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def rev  = revision ? "--revision '${revision}'" : ''
    // messages name the user's samplesheet, not the staged copy (spec.input: the --input path given)
    def origin = spec.input ? "--samplesheet-origin '${spec.input}'" : ''
    // the extraction's token selection: the SAE and intervention checks (the kinds and rows it stores), the storage plan
    def selection = "--token-selection ${params.token_selection}"
    def sae  = sae_options ? '--sae-options sae_options.json' + (params.sae_per_language ? ' --sae-per-language' : '') : ''
    def intervention = intervention_options ? '--intervention-options intervention_options.json' : ''
    def analysis = spec.analysis_options ? '--analysis-options analysis_options.json' : ''
    def st   = spec.storage ?: [:]           // the storage plan: refused here when the run's files do not fit
    def storage = st ? [
        "--outdir-path '${st.outdir}' --work-dir '${st.work_dir}' --publish-mode ${st.publish_mode}",
        "--layout ${st.layout} --dtype ${st.dtype} --device ${st.device}",
        "--nan-policy ${st.nan_policy}", st.image_cache ? "--image-cache '${st.image_cache}'" : '',
        st.combined ? '--combined' : '', st.ignore_space_check ? '--ignore-space-check' : '',
        st.analysis_views ? "--analysis-views '${st.analysis_views}' --analysis-cka-max-samples ${st.cka_max_samples}" : '',
    ].findAll().join(' ') : ''
    """
    cat > sae_options.json <<'END_OPTIONS'
    ${sae_options}
    END_OPTIONS
    cat > intervention_options.json <<'END_OPTIONS'
    ${intervention_options}
    END_OPTIONS
    cat > analysis_options.json <<'END_OPTIONS'
    ${spec.analysis_options ?: ''}
    END_OPTIONS

    layerwise-preflight \\
        --samplesheet ${samplesheet} ${origin} \\
        --model '${model}' ${rev} \\
        --layers '${spec.layers}' \\
        --languages '${spec.languages}' \\
        --layer-groups '${spec.layer_groups}' \\
        --samples-per-task ${spec.samples_per_task} \\
        --prompts ${prompts} \\
        --out-dir . \\
        ${selection} ${sae} ${intervention} ${analysis} ${storage} ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    // The real planner (same code as a real run), without decoding images or checking weight files
    def rev = revision ? "--revision '${revision}'" : ''
    def selection = "--token-selection ${params.token_selection}"
    def sae = sae_options ? '--sae-options sae_options.json' + (params.sae_per_language ? ' --sae-per-language' : '') : ''
    def st  = spec.storage ?: [:]            // the storage plan is written; a stub run is never refused for space
    def storage = st ? [
        "--outdir-path '${st.outdir}' --work-dir '${st.work_dir}' --publish-mode ${st.publish_mode}",
        "--layout ${st.layout} --dtype ${st.dtype} --device ${st.device}",
        "--nan-policy ${st.nan_policy}", st.image_cache ? "--image-cache '${st.image_cache}'" : '',
        st.combined ? '--combined' : '',
        st.analysis_views ? "--analysis-views '${st.analysis_views}' --analysis-cka-max-samples ${st.cka_max_samples}" : '',
    ].findAll().join(' ') : ''
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
        --stub ${selection} ${sae} ${storage}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
