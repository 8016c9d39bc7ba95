/*
 * layerwise: one subworkflow per stage.
 *   EXTRACTION   PREFLIGHT (CPU) -> EXTRACT_ACTIVATIONS (GPU, one job per unit) -> PUBLISH_RESULTS (CPU)
 *   SAE_TRAINING [--sae] TRAIN_SAE (GPU, one job per layer, or per layer and language) -> PUBLISH_SAE (CPU);
 *                without --sae, the later stages read the SAEs an earlier run published on the same layer files
 *   ANALYSIS     [--analysis] ANALYZE_LAYERS (CPU, one job; after the SAEs when they are trained)
 *   INTERVENTION [--intervene] SELECT_LATENTS (CPU) -> GENERATE_CAPTIONS (GPU, per condition and chunk of runs)
 *                -> SUMMARIZE_INTERVENTION (CPU)
 * Every stage after publishing reads published, verified outputs only (the PUBLISH_* records).
 * The CLI contracts of the processes are in docs/architecture.md.
 */

include { EXTRACTION   } from '../subworkflows/local/extraction'
include { SAE_TRAINING } from '../subworkflows/local/sae_training'
include { ANALYSIS     } from '../subworkflows/local/analysis'
include { INTERVENTION } from '../subworkflows/local/intervention'

workflow LAYERWISE {

    take:
    ch_samplesheet     // value channel: path to the user's samplesheet CSV
    ch_prompts         // value channel: path to prompts.json
    ch_model           // value channel: [model id or absolute local path, revision or '']
    ch_spec            // value channel: [layers:, languages:, layer_groups:, samples_per_task:]
    digests            // value channel: stage -> digest of the code it runs (layerwise/stages.json)
    outdir             // value channel: absolute --outdir
    image_cache        // value channel: image-feature cache folder ('' = none: --share_image_features false)
    execution_env      // value channel: file of execution-only settings the extraction jobs source
    sae_options        // value channel: JSON object of SAE options ('' without --sae)
    intervention_options // value channel: JSON object of intervention options ('' without --intervene)

    main:
    EXTRACTION(ch_samplesheet, ch_prompts, ch_model, ch_spec, digests, outdir, image_cache, execution_env, sae_options,
               intervention_options)
    ch_versions = EXTRACTION.out.versions

    if (params.sae) {
        SAE_TRAINING(EXTRACTION.out.published, sae_options, digests, outdir)
        ch_saes = SAE_TRAINING.out.saes
        ch_sae_record = SAE_TRAINING.out.record
        ch_versions = ch_versions.mix(SAE_TRAINING.out.versions)
    } else {
        // SAEs an earlier run published on these same layer files (PUBLISH_RESULTS moved any others aside)
        ch_published_saes = EXTRACTION.out.published
            .map { _meta, out -> LayerwiseUtils.publishedSaes(file(out)) }
            .first()
        ch_saes = ch_published_saes.map { it.folders }
        ch_sae_record = ch_published_saes.map { it.record ?: [] }
    }

    if (params.analysis) {
        ANALYSIS(EXTRACTION.out.published, ch_saes, ch_sae_record, digests)
        ch_versions = ch_versions.mix(ANALYSIS.out.versions)
    }

    if (params.intervene) {
        ch_intervention_saes = ch_saes.map { dirs ->
            if (!dirs)
                error("--intervene: ${params.outdir}/sae/ holds no SAEs of this run's layer files (an earlier run's were " +
                      "moved to superseded/ when the layer files changed): add --sae to train them")
            dirs
        }
        INTERVENTION(EXTRACTION.out.published, ch_intervention_saes, ch_sae_record, EXTRACTION.out.plan, ch_prompts,
                     ch_model, intervention_options, digests)
        ch_versions = ch_versions.mix(INTERVENTION.out.versions)
    }

    emit:
    plan        = EXTRACTION.out.plan              // parsed plan.json (Map)
    units       = EXTRACTION.out.units             // [meta, <unit id>/ with layer files + summary.json]
    published   = EXTRACTION.out.publish_log
    versions    = ch_versions
}
