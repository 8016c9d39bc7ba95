#!/usr/bin/env nextflow
/*
 * layerwise: record the hidden states of every decoder layer of a vision-language model
 * (Gemma 3) for a captioned image dataset, split into GPU jobs by layer group, language and
 * sample shard, each byte written once, then published to --outdir and validated there.
 *
 *   nextflow run . -profile test                          # tiny offline model, CPU (after scripts/setup.sh)
 *   nextflow run . -profile ncc --input samples.csv --outdir /path/results
 *   nextflow run . --help
 *
 * Developer contract (graph and CLI of the bin/ scripts): docs/architecture.md
 */

nextflow.enable.dsl = 2

include { LAYERWISE               } from './workflows/layerwise'
include { PIPELINE_INITIALISATION } from './subworkflows/local/utils_layerwise_pipeline'
include { PIPELINE_COMPLETION     } from './subworkflows/local/utils_layerwise_pipeline'

workflow {

    // --help, parameter checks (nothing is submitted if they fail), digests of the Python sources
    PIPELINE_INITIALISATION()

    LAYERWISE(
        PIPELINE_INITIALISATION.out.samplesheet,
        PIPELINE_INITIALISATION.out.prompts,
        PIPELINE_INITIALISATION.out.model,
        PIPELINE_INITIALISATION.out.spec,
        PIPELINE_INITIALISATION.out.digests,
        PIPELINE_INITIALISATION.out.outdir,
        PIPELINE_INITIALISATION.out.image_cache,
        PIPELINE_INITIALISATION.out.execution_env,
        PIPELINE_INITIALISATION.out.sae_options,
        PIPELINE_INITIALISATION.out.intervention_options,
    )

    // All versions.yml -> pipeline_info/software_versions.yml
    LAYERWISE.out.versions
        .map { f -> f.text }
        .unique()
        .collect()
        .map { texts -> LayerwiseUtils.versionsYaml(texts, nextflow.version.toString(), workflow.manifest.version ?: '') }
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info")

    // Completion summary (+ e-mail when --email / --email_on_fail is set)
    PIPELINE_COMPLETION(LAYERWISE.out.plan)
}
