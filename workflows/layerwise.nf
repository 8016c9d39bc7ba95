/*
 * layerwise: PREFLIGHT -> ENCODE_IMAGES (GPU, one job per sample shard) -> EXTRACT_ACTIVATIONS (GPU, one job per unit) -> MERGE_ACTIVATIONS (per layer
 * and language) -> COMBINE_LAYERS (per language, optional) -> VALIDATE_ACTIVATIONS.
 * The CLI contracts of the processes are in docs/architecture.md.
 */

include { PREFLIGHT            } from '../modules/local/preflight'
include { ENCODE_IMAGES        } from '../modules/local/encode_images'
include { EXTRACT_ACTIVATIONS  } from '../modules/local/extract_activations'
include { MERGE_ACTIVATIONS    } from '../modules/local/merge_activations'
include { COMBINE_LAYERS       } from '../modules/local/combine_layers'
include { VALIDATE_ACTIVATIONS } from '../modules/local/validate_activations'

workflow LAYERWISE {

    take:
    ch_samplesheet     // value channel: path to the user's samplesheet CSV
    ch_prompts         // value channel: path to prompts.json
    ch_model           // value channel: [model id or absolute local path, revision or '']
    ch_spec            // value channel: [layers:, languages:, layer_groups:, samples_per_task:]
    digest_all         // value channel: digest of layerwise/**.py + assets/prompts.json
    digest_core        // value channel: the same without the validation/report-only modules

    main:
    ch_versions = Channel.empty()

    //
    // Plan: validated samplesheet + plan.json (layer groups x languages x sample shards)
    //
    PREFLIGHT(ch_samplesheet, ch_prompts, ch_model, ch_spec, digest_all)
    ch_versions = ch_versions.mix(PREFLIGHT.out.versions)

    ch_plan_file   = PREFLIGHT.out.plan          // value channel (all PREFLIGHT inputs are values)
    ch_sheet_valid = PREFLIGHT.out.samplesheet
    ch_plan        = ch_plan_file.map { f -> new groovy.json.JsonSlurper().parse(f.toFile()) as Map }

    //
    // One meta map per work unit: [id, layers, layers_str, language, shard, rows]. Plan-wide counts
    // (shards, layers) are kept out of it: a meta map is part of the task hash, and adding layers
    // must not invalidate the units that already ran.
    //
    ch_units = ch_plan.flatMap { plan ->
        try {
            LayerwiseUtils.units(plan).collect { it.subMap(['id', 'layers', 'layers_str', 'language', 'shard', 'rows']) }
        } catch (IllegalStateException e) {
            error("PREFLIGHT wrote an inconsistent plan: ${e.message}")
        }
    }
    ch_counts = ch_plan.map { plan -> [n_shards: plan.shards.size(), n_layers: plan.layers.size()] }

    //
    // Compute diet: one ENCODE_IMAGES job per sample shard runs the vision tower once per image; every
    // unit of that shard (each language and layer group) reuses its features.
    //
    if (params.share_image_features) {
        ch_shards = ch_plan.flatMap { plan ->
            plan.shards.collect { s -> [id: "shard_${s.index}", shard: s.index as int, rows: s.rows] }
        }
        ENCODE_IMAGES(ch_shards, ch_sheet_valid, ch_model, digest_core)
        ch_versions = ch_versions.mix(ENCODE_IMAGES.out.versions)
        ch_unit_inputs = ch_units
            .map { meta -> [meta.shard, meta] }
            .combine(ENCODE_IMAGES.out.features.map { meta, f -> [meta.shard, f] }, by: 0)
            .map { shard, meta, features -> [meta, features] }
    } else {
        ch_unit_inputs = ch_units.map { meta -> [meta, []] }
    }

    EXTRACT_ACTIVATIONS(ch_unit_inputs, ch_sheet_valid, ch_prompts, ch_model, digest_core)
    ch_versions = ch_versions.mix(EXTRACT_ACTIVATIONS.out.versions)

    //
    // (unit, [layer files]) -> one item per (layer, language, shard) -> grouped per (layer, language).
    // groupKey carries the number of shards, so each group is emitted as soon as its last shard is done
    // (merging starts while other layer groups are still extracting).
    //
    ch_shard_files = EXTRACT_ACTIVATIONS.out.layers
        .combine(ch_counts)
        .flatMap { meta, files, counts ->
            def byLayer = [:]
            (files instanceof List ? files : [files]).each { f ->
                def m = f.name =~ /^layer_(\d+)_(.+)\.pt$/
                if (!m.matches() || m.group(2) != meta.language)
                    error("EXTRACT_ACTIVATIONS (${meta.id}) wrote an unexpected file: ${f.name}")
                byLayer[m.group(1) as int] = f
            }
            if (byLayer.keySet() != (meta.layers as Set))
                error("EXTRACT_ACTIVATIONS (${meta.id}) wrote layers ${byLayer.keySet().sort()} but the plan asked for ${meta.layers}")
            meta.layers.collect { layer ->
                def key = [id: "layer_${layer}_${meta.language}", layer: layer, language: meta.language]
                [ groupKey(key, counts.n_shards), meta.shard, byLayer[layer] ]
            }
        }
        .groupTuple()
        .map { key, shards, files ->
            // groupTuple gathers in completion order: put the files in shard order
            def ordered = [shards, files].transpose().sort { it[0] }.collect { it[1] }
            [ key.getGroupTarget(), ordered ]
        }

    MERGE_ACTIVATIONS(ch_shard_files, digest_core)
    ch_versions = ch_versions.mix(MERGE_ACTIVATIONS.out.versions)

    //
    // Optional: all layers of a language in one file
    //
    ch_combined = Channel.empty()
    if (params.combined_files) {
        ch_per_language = MERGE_ACTIVATIONS.out.layer
            .combine(ch_counts)
            .map { meta, f, counts -> [ groupKey([id: meta.language, language: meta.language], counts.n_layers), meta.layer, f ] }
            .groupTuple()
            .map { key, layers, files ->
                [ key.getGroupTarget(), [layers, files].transpose().sort { it[0] }.collect { it[1] } ]
            }
        COMBINE_LAYERS(ch_per_language, digest_core)
        ch_combined = COMBINE_LAYERS.out.combined
        ch_versions = ch_versions.mix(COMBINE_LAYERS.out.versions)
    }

    //
    // Validation over all merged files (sorted: a stable input order keeps -resume working)
    //
    // Run summaries of every GPU job (image encoding and extraction), in a stable order for -resume
    ch_encode_summaries = params.share_image_features
        ? ENCODE_IMAGES.out.summary.map { meta, f -> [sprintf('0/%06d', meta.shard), f] }
        : Channel.empty()
    ch_summaries = EXTRACT_ACTIVATIONS.out.summary
        .map { meta, f -> [sprintf('1/%s/%06d/%06d', meta.language, meta.layers[0], meta.shard), f] }
        .mix(ch_encode_summaries)
        .toSortedList { a, b -> a[0] <=> b[0] }
        .map { items -> items.collect { it[1] } }
    ch_layer_files = MERGE_ACTIVATIONS.out.layer
        .toSortedList { a, b -> a[0].layer <=> b[0].layer ?: a[0].language <=> b[0].language }
        .map { items -> items.collect { it[1] } }

    VALIDATE_ACTIVATIONS(ch_plan_file, ch_sheet_valid, ch_summaries, ch_layer_files, digest_all)
    ch_versions = ch_versions.mix(VALIDATE_ACTIVATIONS.out.versions)

    emit:
    plan        = ch_plan                           // parsed plan.json (Map)
    layers      = MERGE_ACTIVATIONS.out.layer       // [meta, layer_{L}_{language}.pt]
    combined    = ch_combined                       // [meta, activations_{language}_all_layers.pt]
    metadata    = VALIDATE_ACTIVATIONS.out.metadata
    report      = VALIDATE_ACTIVATIONS.out.report
    versions    = ch_versions
}
