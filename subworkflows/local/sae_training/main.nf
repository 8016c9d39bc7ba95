/*
 * SAE stage (--sae): TRAIN_SAE (GPU, one job per layer with every language pooled, or per layer and
 * language with --sae_per_language) on the published layer files -> PUBLISH_SAE (CPU, one job) into
 * <outdir>/sae/. Emits the published SAE folders, which the analysis reads.
 */

include { TRAIN_SAE   } from '../../../modules/local/train_sae'
include { PUBLISH_SAE } from '../../../modules/local/publish_sae'

workflow SAE_TRAINING {

    take:
    ch_published       // [extraction_metadata.json (Map), absolute outdir] from EXTRACTION
    sae_options        // value channel: JSON object of SAE options
    digests            // value channel: stage -> digest of the code it runs
    outdir             // value channel: absolute --outdir

    main:
    ch_versions = Channel.empty()
    ch_inputs = ch_published
        .flatMap { meta, out ->
            (meta.published ?: []).findAll { it.layer != null }
                .collect { [layer: it.layer as int, language: it.language, sha256: it.sha256, file: file("${out}/${it.path}"),
                            // the token strings and image paths of the per-latent dashboards (metadata/)
                            tables: ['tokens.parquet', 'samples.parquet'].collect { t -> file("${out}/metadata/${t}") }
                                        .findAll { t -> t.exists() }] }
        }
        .map { r -> [params.sae_per_language ? "${r.layer}:${r.language}" : "${r.layer}", r] }
        .groupTuple()
        .map { key, recs ->
            recs = recs.sort { it.language }
            def meta = [layer: recs[0].layer, language: params.sae_per_language ? recs[0].language : 'pooled',
                        sha256: recs.collectEntries { [(it.file.name): it.sha256] }]
            [meta, recs.collect { it.file }, recs[0].tables]
        }
    TRAIN_SAE(ch_inputs, sae_options, digests.map { it.sae })
    ch_versions = ch_versions.mix(TRAIN_SAE.out.versions)
    ch_trained = TRAIN_SAE.out.sae
        .toSortedList { a, b -> (a[0].layer <=> b[0].layer) ?: (a[0].language <=> b[0].language) }
        .map { items -> items.collect { it[1] } }
    PUBLISH_SAE(ch_trained, outdir)
    ch_versions = ch_versions.mix(PUBLISH_SAE.out.versions)

    // What later stages read: the SAE folders PUBLISH_SAE placed in <outdir>/sae/ (same names as trained)
    ch_saes = PUBLISH_SAE.out.log
        .combine(ch_trained.map { dirs -> [dirs] })
        .combine(outdir)
        .map { _published, dirs, out -> dirs.collect { d -> file("${out}/sae/${d.name}") } }
        .first()                // a value: every job of the later stages reads it
    // ...and their record (the layer files they were trained on, the sha256 of every SAE file)
    ch_record = PUBLISH_SAE.out.log.combine(outdir).map { _published, out -> file("${out}/sae/inputs.json") }.first()

    emit:
    saes     = ch_saes          // the published SAE folders, sorted by layer and language
    record   = ch_record        // <outdir>/sae/inputs.json
    versions = ch_versions
}
