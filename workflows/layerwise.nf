/*
 * layerwise: PREFLIGHT (CPU) -> EXTRACT_ACTIVATIONS (GPU, one job per unit: layer group x language x
 * sample shard) -> PUBLISH_RESULTS (CPU, one job: into --outdir, validated there)
 *   -> [--sae] TRAIN_SAE (GPU, one job per layer, or per layer and language) -> PUBLISH_SAE (CPU)
 *   -> [--analysis] ANALYZE_LAYERS (CPU, one job; after the SAEs when they are trained).
 * The CLI contracts of the processes are in docs/architecture.md.
 */

include { PREFLIGHT            } from '../modules/local/preflight'
include { EXTRACT_ACTIVATIONS  } from '../modules/local/extract_activations'
include { PUBLISH_RESULTS      } from '../modules/local/publish_results'
include { TRAIN_SAE            } from '../modules/local/train_sae'
include { PUBLISH_SAE          } from '../modules/local/publish_sae'
include { ANALYZE_LAYERS       } from '../modules/local/analyze_layers'

workflow LAYERWISE {

    take:
    ch_samplesheet     // value channel: path to the user's samplesheet CSV
    ch_prompts         // value channel: path to prompts.json
    ch_model           // value channel: [model id or absolute local path, revision or '']
    ch_spec            // value channel: [layers:, languages:, layer_groups:, samples_per_task:]
    digest_all         // value channel: digest of layerwise/**.py + assets/prompts.json
    digest_core        // value channel: the same without the modules used only after extraction
    outdir             // value channel: absolute --outdir
    image_cache        // value channel: image-feature cache folder ('' = none: --share_image_features false)
    execution_env      // value channel: file of execution-only settings the extraction jobs source
    digest_sae         // value channel: digest of the sources TRAIN_SAE runs
    sae_options        // value channel: JSON object of SAE options ('' without --sae)

    main:
    ch_versions = Channel.empty()

    //
    // Plan: validated samplesheet + plan.json (layer groups x languages x sample shards) + one input
    // sheet per unit (the rows and the caption column it reads, with each image's sha256)
    //
    PREFLIGHT(ch_samplesheet, ch_prompts, ch_model, ch_spec, digest_all, sae_options)
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
    EXTRACT_ACTIVATIONS(ch_units, ch_prompts, ch_model, digest_core, image_cache, execution_env)
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
    ch_metadata = PUBLISH_RESULTS.out.metadata
        .combine(outdir)
        .map { f, out -> [new groovy.json.JsonSlurperClassic().parse(f.toFile()) as Map, out] }
    ch_layer_files = ch_metadata
        .flatMap { meta, out ->
            (meta.published ?: []).findAll { it.layer != null }
                .collect { [layer: it.layer as int, language: it.language, sha256: it.sha256, file: file("${out}/${it.path}")] }
        }

    //
    // One SAE per layer (languages pooled) or per layer and language, on the published activations
    //
    ch_sae_dirs = Channel.empty()
    if (params.sae) {
        ch_sae_inputs = ch_layer_files
            .map { r -> [params.sae_per_language ? "${r.layer}:${r.language}" : "${r.layer}", r] }
            .groupTuple()
            .map { key, recs ->
                recs = recs.sort { it.language }
                def meta = [layer: recs[0].layer, language: params.sae_per_language ? recs[0].language : 'pooled',
                            sha256: recs.collectEntries { [(it.file.name): it.sha256] }]
                [meta, recs.collect { it.file }]
            }
        TRAIN_SAE(ch_sae_inputs, sae_options, digest_sae)
        ch_versions = ch_versions.mix(TRAIN_SAE.out.versions)
        ch_sae_dirs = TRAIN_SAE.out.sae
            .toSortedList { a, b -> (a[0].layer <=> b[0].layer) ?: (a[0].language <=> b[0].language) }
            .map { items -> items.collect { it[1] } }
        PUBLISH_SAE(ch_sae_dirs, outdir)
        ch_versions = ch_versions.mix(PUBLISH_SAE.out.versions)
    }

    //
    // One analysis job over every published layer file (and the SAEs, once they are trained)
    //
    if (params.analysis) {
        ch_analysis_in = ch_metadata
            .map { meta, out ->
                def layers = (meta.published ?: []).findAll { it.layer != null }.sort { it.path }
                def sheet  = (meta.published ?: []).find { it.path.toString().endsWith('samplesheet.valid.csv') }
                if (!layers || !sheet)
                    error("PUBLISH_RESULTS recorded no ${layers ? 'samplesheet' : 'layer files'} in extraction_metadata.json")
                [layers.collectEntries { [(it.path): it.sha256] } + [samplesheet: sheet?.sha256],
                 layers.collect { file("${out}/${it.path}") }, file("${out}/${sheet.path}")]
            }
        ANALYZE_LAYERS(ch_analysis_in, params.sae ? ch_sae_dirs : Channel.value([]), digest_all)
        ch_versions = ch_versions.mix(ANALYZE_LAYERS.out.versions)
    }

    emit:
    plan        = ch_plan                           // parsed plan.json (Map)
    units       = EXTRACT_ACTIVATIONS.out.unit      // [meta, <unit id>/ with layer files + summary.json]
    published   = PUBLISH_RESULTS.out.log
    versions    = ch_versions
}
