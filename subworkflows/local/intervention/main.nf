/*
 * Intervention stage (--intervene; SAEs of --sae, or published in --outdir by an earlier run): SELECT_LATENTS (CPU, no model) -> GENERATE_CAPTIONS (GPU, one
 * job per baseline, targeted condition and chunk of random runs; each cached on its own) -> SUMMARIZE_INTERVENTION
 * (CPU) -> <outdir>/intervention/. Reads the published layer files and the published SAE folders only.
 */

include { SELECT_LATENTS         } from '../../../modules/local/select_latents'
include { GENERATE_CAPTIONS      } from '../../../modules/local/generate_captions'
include { SUMMARIZE_INTERVENTION } from '../../../modules/local/summarize_intervention'

workflow INTERVENTION {

    take:
    ch_published       // [extraction_metadata.json (Map), absolute outdir] from EXTRACTION
    ch_saes            // value channel: the published SAE folders
    ch_sae_record      // value channel: <outdir>/sae/inputs.json
    ch_plan            // parsed plan.json (Map): the model's facts
    ch_prompts         // value channel: path to prompts.json
    ch_model           // value channel: [model id or absolute local path, revision or '']
    options            // value channel: JSON object of intervention options
    digests            // value channel: stage -> digest of the code it runs

    main:
    ch_versions = Channel.empty()
    ch_inputs = ch_published
        .map { meta, out ->
            def layers = (meta.published ?: []).findAll { it.layer != null }.sort { it.path }
            def sheet  = (meta.published ?: []).find { it.path.toString().endsWith('samplesheet.valid.csv') }
            [layers.collectEntries { [(it.path): it.sha256] } + [samplesheet: sheet?.sha256],
             layers.collect { file("${out}/${it.path}") }, file("${out}/${sheet.path}")]
        }
    ch_num_layers = ch_plan.map { plan -> plan.model.num_layers as int }
    SELECT_LATENTS(ch_inputs, ch_saes, ch_sae_record, options, ch_num_layers, digests.map { it.intervention })
    ch_versions = ch_versions.mix(SELECT_LATENTS.out.versions)

    // one line of JSON per job (the task script writes it back with a here-document)
    ch_jobs = SELECT_LATENTS.out.jobs
        .flatten()
        .map { f -> [f.baseName, groovy.json.JsonOutput.toJson(new groovy.json.JsonSlurperClassic().parse(f.toFile()))] }
    ch_evaluation = SELECT_LATENTS.out.selection      // a value: every job reads it
        .map { d -> def f = d.resolve('evaluation.csv'); [f.bytes.digest('SHA-256'), f] }
        .first()
    GENERATE_CAPTIONS(ch_jobs, ch_evaluation, ch_saes, ch_prompts, ch_model, options, digests.map { it.intervention })
    ch_versions = ch_versions.mix(GENERATE_CAPTIONS.out.versions)

    ch_captions = GENERATE_CAPTIONS.out.captions
        .toSortedList { a, b -> a[0] <=> b[0] }
        .map { items -> items.collect { it[1] } }
    ch_model_info = ch_model.combine(ch_plan.map { plan -> plan.model.model_type.toString() })
        .map { model, revision, model_type -> [model, model_type] }
    SUMMARIZE_INTERVENTION(ch_captions, SELECT_LATENTS.out.selection, options, ch_model_info,
                           digests.map { it.intervention })
    ch_versions = ch_versions.mix(SUMMARIZE_INTERVENTION.out.versions)

    emit:
    intervention = SUMMARIZE_INTERVENTION.out.intervention
    versions     = ch_versions
}
