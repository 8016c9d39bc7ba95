// One generation job of the intervention: captions for the evaluation images, greedy, with the job's latents
// ablated (or scaled) by hooks on the decoder layers of the one loaded model: the baseline (no hook), the
// targeted latents, or a chunk of random control runs. Contract: docs/architecture.md (layerwise-intervene).
process GENERATE_CAPTIONS {
    tag "${job_id}"
    label 'process_gpu'

    // The job is a value (its JSON text: the latent sets of its runs), so each chunk of runs has its own cache
    // entry and raising --intervention_runs re-runs only the new chunks; the SAE folders are the published
    // ones (path + size, lenient) and the evaluation sheet is hashed by its sha256 (a value).
    cache 'lenient'

    // container: one image for every process, named once in nextflow.config (--container)

    input:
    tuple val(job_id), val(job)             // job id, and the job file's JSON text (layerwise.intervention.plan.Job)
    tuple val(evaluation_sha256), path(evaluation, stageAs: 'input/*')   // evaluation.csv of SELECT_LATENTS
    path sae_dirs, stageAs: 'sae/*'          // the published SAE folders
    path prompts
    tuple val(model), val(revision)         // hub id or absolute local path; revision '' = none
    val options                             // JSON object of intervention options
    val source_digest                       // digest of the intervention stage's code

    output:
    tuple val(job_id), path("captions_${job_id}.parquet"), emit: captions
    path 'versions.yml'                                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''          // --dtype, --device (conf/modules.config)
    def rev  = revision ? "--revision '${revision}'" : ''
    def saes = sae_dirs.collect { "--sae-dir ${it}" }.join(' ')
    """
    cat > job.json <<'END_JOB'
    ${job}
    END_JOB
    cat > intervention_options.json <<'END_OPTIONS'
    ${options}
    END_OPTIONS

    layerwise-intervene \\
        --job job.json \\
        --evaluation ${evaluation} \\
        --model '${model}' ${rev} \\
        --prompts ${prompts} \\
        --options-json intervention_options.json \\
        ${saes} \\
        --out captions_${job_id}.parquet \\
        ${args}

    layerwise-versions '${task.process}' torch transformers sae_lens > versions.yml
    """

    stub:
    """
    cat > job.json <<'END_JOB'
    ${job}
    END_JOB
    layerwise-intervene --stub --job job.json --evaluation ${evaluation} --out captions_${job_id}.parquet

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        sae_lens: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
