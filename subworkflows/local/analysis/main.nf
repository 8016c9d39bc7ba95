/*
 * Analysis stage (--analysis, on by default): ANALYZE_LAYERS (CPU, one job) over every published layer
 * file and the published SAE folders (this run's with --sae, else an earlier run's on the same layer files)
 * -> <outdir>/analysis/, with the record of what it read (analysis/inputs.json).
 */

include { ANALYZE_LAYERS } from '../../../modules/local/analyze_layers'

workflow ANALYSIS {

    take:
    ch_published       // [extraction_metadata.json (Map), absolute outdir] from EXTRACTION
    ch_saes            // value channel: the published SAE folders ([] without SAEs)
    ch_sae_record      // value channel: <outdir>/sae/inputs.json ([] without SAEs)
    digests            // value channel: stage -> digest of the code it runs

    main:
    ch_inputs = ch_published
        .map { meta, out ->
            def layers = (meta.published ?: []).findAll { it.layer != null }.sort { it.path }
            def sheet  = (meta.published ?: []).find { it.path.toString().endsWith('samplesheet.valid.csv') }
            if (!layers || !sheet)
                error("PUBLISH_RESULTS recorded no ${layers ? 'samplesheet' : 'layer files'} in extraction_metadata.json")
            [layers.collectEntries { [(it.path): it.sha256] } + [samplesheet: sheet?.sha256],
             layers.collect { file("${out}/${it.path}") }, file("${out}/${sheet.path}")]
        }
    ANALYZE_LAYERS(ch_inputs, ch_saes, ch_sae_record, digests.map { it.analysis })

    emit:
    analysis = ANALYZE_LAYERS.out.analysis
    versions = ANALYZE_LAYERS.out.versions
}
