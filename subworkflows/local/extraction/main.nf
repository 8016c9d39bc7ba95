/*
 * Extraction stage: PREFLIGHT (CPU; every check before any GPU job) -> EXTRACT_ACTIVATIONS (GPU, one job
 * per unit: layer group x language x sample shard) -> PUBLISH_RESULTS (CPU, one job: into --outdir,
 * validated there). Emits the published, verified layer files that every later stage reads.
 */

include { PREFLIGHT            } from '../../../modules/local/preflight'
include { EXTRACT_ACTIVATIONS  } from '../../../modules/local/extract_activations'
include { PUBLISH_RESULTS      } from '../../../modules/local/publish_results'

workflow EXTRACTION {

    take:
    ch_samplesheet     // value channel: path to the user's samplesheet CSV
    ch_prompts         // value channel: path to prompts.json
    ch_model           // value channel: [model id or absolute local path, revision or '']
    ch_spec            // value channel: [layers:, languages:, layer_groups:, samples_per_task:]
    digests            // value channel: stage -> digest of the code it runs (layerwise/stages.json)
    outdir             // value channel: absolute --outdir
    image_cache        // value channel: image-feature cache folder ('' = none: --share_image_features false)
    execution_env      // value channel: file of execution-only settings the extraction jobs source
    sae_options        // value channel: JSON object of SAE options ('' without --sae), checked by PREFLIGHT
    intervention_options // value channel: JSON object of intervention options ('' without --intervene), checked by PREFLIGHT

    main:
    ch_versions = Channel.empty()

    //
    // Plan: validated samplesheet + plan.json (layer groups x languages x sample shards) + one input
    // sheet per unit (the rows and the caption column it reads, with each image's sha256)
    //
    // + what its storage plan needs (the bytes of the run against the free space of the outdir and work dir;
    // it fails before any GPU job when they do not fit): PREFLIGHT is never cached, so they re-run nothing
    ch_preflight_spec = ch_spec.combine(outdir).combine(image_cache)
        .map { spec, out, cache ->
            spec + [input: file(params.input.toString()).toAbsolutePath().toString(),   // named in its messages
                    storage: [outdir: out, work_dir: workflow.workDir.toString(), image_cache: cache,
                              ignore_space_check: params.ignore_space_check as boolean,
                              token_selection: params.token_selection, layout: params.layout, dtype: params.dtype,
                              device: params.device, nan_policy: params.nan_policy,
                              combined: params.combined_files as boolean, publish_mode: params.publish_dir_mode,
                              analysis_views: params.analysis ? params.analysis_views.toString() : '',
                              cka_max_samples: params.analysis_cka_max_samples],
                      // every analysis option, checked before any GPU job (layerwise.analysis.params.check_params)
                      analysis_options: params.analysis ? groovy.json.JsonOutput.toJson(new TreeMap(
                          params.findAll { k, v -> k.toString().startsWith('analysis_') }
                                .collectEntries { k, v -> [(k.toString().substring('analysis_'.length())): v] })) : '']
        }
        .first()
    PREFLIGHT(ch_samplesheet, ch_prompts, ch_model, ch_preflight_spec, digests.map { it.preflight }, sae_options,
              intervention_options)
    ch_versions = ch_versions.mix(PREFLIGHT.out.versions)

    ch_plan_file   = PREFLIGHT.out.plan          // value channel (all PREFLIGHT inputs are values)
    ch_sheet_valid = PREFLIGHT.out.samplesheet
    // JsonSlurperClassic: plain maps. JsonSlurper's lazy maps are built on first read and are not safe to
    // read from two operators at once (the parsed plan and metadata each feed several channels).
    ch_plan        = ch_plan_file.map { f -> new groovy.json.JsonSlurperClassic().parse(f.toFile()) as Map }

    //
    // One (meta, sheet) per work unit (layer group, language, sample shard). Plan-wide counts are kept
    // out of meta: a meta map is part of the task hash, and adding layers or languages must not
    // invalidate the units that already ran.
    //
    ch_sheets = PREFLIGHT.out.unit_sheets.flatten().map { f -> [f.name, f] }
    ch_units = ch_plan
        .flatMap { plan ->
            try {
                LayerwiseUtils.units(plan)
            } catch (IllegalStateException e) {
                error("PREFLIGHT wrote an inconsistent plan: ${e.message}")
            }
        }
        .map { meta -> [meta.sheet, meta.subMap(['id', 'layers', 'layers_str', 'language', 'shard', 'rows', 'model_fingerprint'])] }
        .join(ch_sheets, failOnMismatch: true)
        .map { name, meta, sheet -> [meta, sheet] }

    //
    // One GPU job per unit; the vision tower runs once per image: the first unit of a shard fills a
    // content-addressed feature cache that the shard's other units (and later runs) memory-map
    //
    EXTRACT_ACTIVATIONS(ch_units, ch_prompts, ch_model, digests.map { it.extract }, image_cache, execution_env)
    ch_versions = ch_versions.mix(EXTRACT_ACTIVATIONS.out.versions)

    //
    // One publishing job: hard links (or merges of shards) into --outdir, validation of the outdir
    // files against the checksums their writers recorded, metadata and report. Units in a stable order.
    //
    ch_unit_dirs = EXTRACT_ACTIVATIONS.out.unit
        .toSortedList { a, b -> a[0].id <=> b[0].id }
        .map { items -> items.collect { it[1] } }
    PUBLISH_RESULTS(ch_plan_file, ch_sheet_valid, ch_unit_dirs, outdir)
    ch_versions = ch_versions.mix(PUBLISH_RESULTS.out.versions)

    //
    // What the later stages read: the published, validated files in --outdir (they survive cleaning
    // work/), each with the sha256 that PUBLISH_RESULTS verified
    //
    ch_published = PUBLISH_RESULTS.out.metadata
        .combine(outdir)
        .map { f, out -> [new groovy.json.JsonSlurperClassic().parse(f.toFile()) as Map, out] }

    emit:
    plan      = ch_plan                           // parsed plan.json (Map)
    units     = EXTRACT_ACTIVATIONS.out.unit      // [meta, <unit id>/ with layer files + summary.json]
    published = ch_published                      // [extraction_metadata.json (Map), absolute outdir]
    publish_log = PUBLISH_RESULTS.out.log
    versions  = ch_versions
}
